package bot

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/circlebot/circlebot/internal/approvals"
	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/commands"
	"github.com/circlebot/circlebot/internal/engine"
	"github.com/circlebot/circlebot/internal/ops"
)

// Doctor answers "will a recovery work right now?": read-only checks
// and the dry runs of each operation's pre-flight, against the real
// account. It changes nothing.
type Doctor struct {
	// Status finds the Services box, the replica and the newest restore
	// point (its Target names them and the RPO).
	Status *ops.Status
	// EC2 makes the EBS backup's dry run.
	EC2 ops.SnapshotMaker
	// SSM reads the agents (nil: SSM is not used).
	SSM ops.AgentInfo
	// S3 reads the tarball bucket; Bucket is backup.bucket ("": no
	// tarballs).
	S3     ops.BucketEncryption
	Bucket string
	// Engine derives the plans of restore latest, failover and builders
	// rotate and runs their pre-flights, as a request would.
	Engine *engine.Engine
	// Rotation: builders.asg_name is set, so builders rotate is checked.
	Rotation bool
	// Replicas checks the bot's replicas (nil: one replica).
	Replicas func(ctx context.Context) DoctorCheck
	// Volumes reads the Services box's volumes (nil: not checked) and
	// KMSKeys are aws.kms_key_arns: every customer-managed key that
	// encrypts a volume must be among them, or a restore's launch is
	// refused its grant and the new box goes from pending to terminated.
	Volumes func(ctx context.Context) ([]ops.VolumeSpec, error)
	KMSKeys []string
	// KMS reads each key's state (nil: not read): a key disabled or
	// pending deletion fails every launch from its snapshots.
	KMS          ops.KeyDescriber
	SlashCommand string
}

// DoctorCheck is one line of the doctor's table.
type DoctorCheck struct {
	Name    string
	Verdict string // ok, fail, warn
	Detail  string
	Fix     string // for a failure or warning: what to do
}

// The verdicts of a DoctorCheck.
const (
	VerdictOK   = "ok"
	VerdictFail = "fail"
	VerdictWarn = "warn"
)

// DoctorReport is the doctor's table and its verdict.
type DoctorReport struct {
	At     time.Time
	Checks []DoctorCheck
}

// Ready is true when nothing would block a recovery.
func (r DoctorReport) Ready() bool {
	for _, c := range r.Checks {
		if c.Verdict == VerdictFail {
			return false
		}
	}
	return true
}

// Verdict is the one line the daily report carries.
func (r DoctorReport) Verdict() string {
	var fails []string
	warns := 0
	for _, c := range r.Checks {
		switch c.Verdict {
		case VerdictFail:
			fails = append(fails, c.Name)
		case VerdictWarn:
			warns++
		}
	}
	if len(fails) == 0 {
		s := fmt.Sprintf("Recovery readiness: ready (%d checks passed", len(r.Checks)-warns)
		if warns > 0 {
			s += fmt.Sprintf(", %d warnings", warns)
		}
		return s + ")."
	}
	return fmt.Sprintf("Recovery readiness: NOT READY — %s would block a recovery.", strings.Join(fails, ", "))
}

// Run checks everything and returns the table. A check that cannot be
// made is a failure that says why.
func (d *Doctor) Run(ctx context.Context) DoctorReport {
	rep := DoctorReport{At: time.Now()}
	add := func(c DoctorCheck) { rep.Checks = append(rep.Checks, c) }
	st := d.Status.Run(ctx)
	tag := d.Status.Target.NameTag
	boxID := ""
	switch n := len(st.Box.Instances); {
	case st.Box.Err != nil:
		add(DoctorCheck{"Services box", VerdictFail, "cannot be read: " + ops.Explain(st.Box.Err), "give the bot `ec2:DescribeInstances` (deploy/iam/policy.json, statement Read)"})
	case n == 0:
		add(DoctorCheck{"Services box", VerdictFail, "no instance is tagged Name=" + tag, "tag the Services box `Name=" + tag + "` (services_box.name_tag), or restore it: `" + d.SlashCommand + " restore latest`"})
	case n > 1:
		var ids []string
		for _, in := range st.Box.Instances {
			ids = append(ids, in.ID+" ("+in.State+")")
		}
		add(DoctorCheck{"Services box", VerdictFail, fmt.Sprintf("%d instances are tagged Name=%s: %s", n, tag, strings.Join(ids, ", ")), "retag or stop the extra one: every operation refuses to guess which is the box"})
	default:
		in := st.Box.Instances[0]
		boxID = in.ID
		add(DoctorCheck{"Services box", VerdictOK, fmt.Sprintf("`%s` (%s, %s, %s), found once by Name=%s", in.ID, in.State, in.AZ, in.PrivateIP, tag), ""})
	}
	replicaID, replicaState := "", ""
	if st.Replica != nil {
		switch r := st.Replica; {
		case r.Err != nil:
			add(DoctorCheck{"Replica", VerdictFail, "cannot be read: " + ops.Explain(r.Err), "give the bot `ec2:DescribeInstances`"})
		case len(r.Instances) != 1:
			add(DoctorCheck{"Replica", VerdictFail, fmt.Sprintf("%d instances are tagged Name=%s", len(r.Instances), r.Tag), "keep exactly one replica tagged `" + r.Tag + "` (replica.name_tag)"})
		default:
			replicaID, replicaState = r.Instances[0].ID, r.Instances[0].State
			add(DoctorCheck{"Replica", VerdictOK, fmt.Sprintf("`%s` (%s, %s, %s)", replicaID, replicaState, r.Instances[0].AZ, r.Instances[0].PrivateIP), ""})
		}
		if len(st.Building) > 0 {
			// A refresh in progress, or what a given-up one left: either
			// way not the replica, and it keeps the next refresh out.
			add(DoctorCheck{"Replica being built", VerdictWarn, BuildingLine(st.Building, st.Replica.Tag), "let its refresh finish (`" + d.SlashCommand + " resume <op>` if it stopped); if it was given up, terminate it or rename it by hand"})
		}
	}
	// The replica's age and replication: a failover to a replica older
	// than the box's last change, or behind, brings back old data.
	if a := st.ReplicaAge; a != nil && replicaID != "" {
		line := strings.TrimSuffix(ReplicaAgeLine(a, st.At), ".")
		if len(a.Warnings) > 0 {
			add(DoctorCheck{"Replica age", VerdictWarn, line + "; " + strings.Join(a.Warnings, "; "), "`" + d.SlashCommand + " replica refresh` builds a new replica from the box as it is now"})
		} else {
			add(DoctorCheck{"Replica age", VerdictOK, line, ""})
		}
	}
	if l := st.Lag; l != nil {
		if l.State == ops.LagInSync {
			add(DoctorCheck{"Replication", VerdictOK, "the replica is " + l.String(), ""})
		} else {
			add(DoctorCheck{"Replication", VerdictWarn, "the replica is " + l.String(), "check replica.replication_check_command on the replica; a failover now loses what it has not received"})
		}
	}
	if boxID != "" && d.Volumes != nil {
		add(d.kmsCheck(ctx))
	}
	if d.SSM != nil {
		if boxID != "" {
			add(agentCheck(ctx, d.SSM, "SSM agent on the Services box", boxID, ""))
		}
		if replicaID != "" {
			add(agentCheck(ctx, d.SSM, "SSM agent on the replica", replicaID, replicaState))
		}
	}
	if boxID != "" && d.EC2 != nil {
		add(preflightCheck("Backup (EBS)", ops.BackupPreflight(ctx, d.EC2, boxID)))
	}
	if d.Bucket != "" && d.S3 != nil {
		add(preflightCheck("Backup (tarball): bucket", ops.BucketPreflight(ctx, d.S3, d.Bucket)))
	}
	if d.Engine != nil {
		texts := []string{"restore latest", "failover"}
		if d.Rotation {
			texts = append(texts, "builders rotate")
		}
		if held := d.held(ctx); held != "" {
			// Its plan would be refused as busy, which says nothing
			// about a recovery.
			add(DoctorCheck{"Operations", VerdictWarn, held + ": the plans of " + strings.Join(texts, ", ") + " were not checked", "run the doctor again when it is done"})
		} else {
			for _, text := range texts {
				add(d.proposal(ctx, text))
			}
		}
	}
	add(d.rpoCheck(st))
	if d.Replicas != nil {
		add(d.Replicas(ctx))
	}
	return rep
}

// kmsCheck: the keys of the box's encrypted volumes are all ones the
// policy lets EC2 use on the bot's behalf (aws.kms_key_arns).
func (d *Doctor) kmsCheck(ctx context.Context) DoctorCheck {
	const name = "KMS keys of the volumes"
	vols, err := d.Volumes(ctx)
	if err != nil {
		return DoctorCheck{name, VerdictFail, "the box's volumes cannot be read: " + ops.Explain(err), "give the bot `ec2:DescribeVolumes` (statement Read)"}
	}
	var keys, missing []string
	for _, v := range vols {
		if !v.Encrypted || v.KMSKeyID == "" || slices.Contains(keys, v.KMSKeyID) {
			continue
		}
		keys = append(keys, v.KMSKeyID)
		if !slices.Contains(d.KMSKeys, v.KMSKeyID) {
			missing = append(missing, "`"+v.KMSKeyID+"` ("+v.Device+")")
		}
	}
	var unusable []string
	if d.KMS != nil {
		for _, k := range d.KMSKeys {
			if err := ops.KeyUsable(ctx, d.KMS, k); err != nil {
				unusable = append(unusable, ops.Explain(err))
			}
		}
	}
	switch {
	case len(unusable) > 0:
		return DoctorCheck{name, VerdictFail, strings.Join(unusable, "; "),
			"enable the key (or cancel its deletion) in KMS, or take it out of aws.kms_key_arns if nothing uses it; the bot needs kms:DescribeKey on it (statement KmsKeysReadable)"}
	case len(missing) > 0:
		return DoctorCheck{name, VerdictFail, "not in aws.kms_key_arns: " + strings.Join(missing, ", ") + "; a restore or drill launching from these snapshots would be refused the key and its box terminated",
			"add the keys to aws.kms_key_arns and deploy the policy `bot iam-policy` prints (statements KmsForEncryptedVolumes, KmsGrantsForEncryptedVolumes)"}
	case len(keys) == 0 && len(d.KMSKeys) == 0:
		return DoctorCheck{name, VerdictOK, "no volume of the box is encrypted under a customer-managed key", ""}
	}
	if d.KMS != nil && len(d.KMSKeys) > 0 {
		return DoctorCheck{name, VerdictOK, fmt.Sprintf("%d key(s), each in aws.kms_key_arns; the %d key(s) there enabled", len(keys), len(d.KMSKeys)), ""}
	}
	return DoctorCheck{name, VerdictOK, fmt.Sprintf("%d key(s), each in aws.kms_key_arns", len(keys)), ""}
}

func agentCheck(ctx context.Context, api ops.AgentInfo, name, id, state string) DoctorCheck {
	if state == "stopped" {
		return DoctorCheck{name, VerdictWarn, fmt.Sprintf("`%s` is stopped: its agent is checked when it runs", id), "a failover starts it and waits for its agent; start it now and then to check"}
	}
	if err := ops.AgentOnline(ctx, api, id); err != nil {
		return DoctorCheck{name, VerdictFail, ops.Explain(err), "install and start amazon-ssm-agent on `" + id + "`, give its instance profile AmazonSSMManagedInstanceCore, and let it reach SSM (VPC endpoints or NAT)"}
	}
	return DoctorCheck{name, VerdictOK, "`" + id + "`: online", ""}
}

// preflightCheck is one line for a pre-flight: ok, or the refused calls.
func preflightCheck(name string, pf ops.Preflight) DoctorCheck {
	if err := pf.Err(); err != nil {
		var pe *ops.PreflightError
		errors.As(err, &pe)
		return DoctorCheck{name, VerdictFail, refusedText(pe.Refused), fixFor(pe.Refused)}
	}
	return DoctorCheck{name, VerdictOK, fmt.Sprintf("%s tried without effect; AWS would accept it", calls(len(pf.Checks))), ""}
}

func calls(n int) string {
	if n == 1 {
		return "1 call"
	}
	return fmt.Sprintf("%d calls", n)
}

func refusedText(rows []ops.Check) string {
	var parts []string
	for _, c := range rows {
		s := "`" + c.Call + "`"
		if c.On != "" {
			s += " on " + c.On
		}
		parts = append(parts, s+" refused: "+c.Reason)
	}
	return strings.Join(parts, "; ")
}

// fixFor names what to change for refused rows: the policy's actions
// for IAM refusals, else AWS's own reason.
func fixFor(rows []ops.Check) string {
	var actions []string
	for _, c := range rows {
		if c.Denied && !strings.Contains(strings.Join(actions, ","), c.Call) {
			actions = append(actions, "`"+c.Call+"`")
		}
	}
	if len(actions) > 0 {
		return "allow " + strings.Join(actions, ", ") + " in the bot's IAM policy (`bot iam-policy` prints it for this config)"
	}
	return "fix what AWS names above, then run the doctor again"
}

// held names an operation that holds a lock ("" when none does).
func (d *Doctor) held(ctx context.Context) string {
	locks, err := d.Engine.Store.Locks(ctx)
	if err != nil || len(locks) == 0 {
		return ""
	}
	return fmt.Sprintf("`%s` (%s) holds `%s`", locks[0].OpID, locks[0].What, locks[0].Key)
}

// proposal derives the plan of a destructive command as a request would,
// pre-flight included.
func (d *Doctor) proposal(ctx context.Context, text string) DoctorCheck {
	name := "`" + text + "`"
	cmd, err := commands.Parse(text)
	if err == nil {
		var plan approvals.Plan
		plan, err = d.Engine.Propose(ctx, cmd)
		if err == nil {
			return planCheck(name, plan)
		}
	}
	return DoctorCheck{name, VerdictFail, "cannot be planned: " + strings.TrimSuffix(ops.Explain(err), "."), "fix what the plan names, then run the doctor again"}
}

func planCheck(name string, plan approvals.Plan) DoctorCheck {
	if b := plan.Blocked(); b != "" {
		var rows []ops.Check
		for _, c := range plan.Preflight {
			if c.Status == approvals.CheckRefused {
				rows = append(rows, ops.Check{Call: c.Call, On: c.On, Status: c.Status, Reason: c.Reason, Denied: c.Denied})
			}
		}
		return DoctorCheck{name, VerdictFail, "pre-flight: " + refusedText(rows), fixFor(rows)}
	}
	skipped := 0
	for _, c := range plan.Preflight {
		if c.Status == ops.CheckSkipped {
			skipped++
		}
	}
	detail := fmt.Sprintf("planned; %s tried without effect, AWS would accept them", calls(len(plan.Preflight)-skipped))
	if skipped > 0 {
		detail += fmt.Sprintf(" (%d checked later)", skipped)
	}
	return DoctorCheck{name, VerdictOK, detail, ""}
}

func (d *Doctor) rpoCheck(st *ops.StatusReport) DoctorCheck {
	rpo := d.Status.Target.RPO
	switch {
	case st.PointErr != nil:
		return DoctorCheck{"Newest restore point", VerdictFail, "cannot be read: " + ops.Explain(st.PointErr), "give the bot `ec2:DescribeSnapshots`"}
	case st.Newest == nil:
		return DoctorCheck{"Newest restore point", VerdictFail, "there is none", "take one: `" + d.SlashCommand + " backup now`"}
	}
	age := st.At.Sub(st.Newest.Started)
	detail := fmt.Sprintf("`%s` (%s), %s old", st.Newest.ID, st.Newest.Kind, chat.Age(age))
	if rpo > 0 && age > rpo {
		return DoctorCheck{"Newest restore point", VerdictFail, detail + ", older than the RPO " + chat.Age(rpo), "take a backup now (`" + d.SlashCommand + " backup now`) and check the schedule (backup.schedule)"}
	}
	if rpo > 0 {
		detail += ", within the RPO " + chat.Age(rpo)
	}
	return DoctorCheck{"Newest restore point", VerdictOK, detail, ""}
}

// DoctorText is the table for Slack and the terminal: one line per
// check with its verdict, and a fix under each failure.
func DoctorText(r DoctorReport) string {
	var b strings.Builder
	b.WriteString("*Doctor:* " + r.Verdict() + "\n")
	for _, c := range r.Checks {
		mark := ":white_check_mark: ok  "
		switch c.Verdict {
		case VerdictFail:
			mark = ":x: FAIL"
		case VerdictWarn:
			mark = ":warning: warn"
		}
		fmt.Fprintf(&b, "%s  *%s* — %s\n", mark, c.Name, c.Detail)
		if c.Fix != "" {
			fmt.Fprintf(&b, "        fix: %s\n", c.Fix)
		}
	}
	return b.String()
}

func (d Deps) doctor(ctx context.Context, c Call) (Outcome, error) {
	if d.Doctor == nil {
		return Outcome{}, &UserError{Msg: "the doctor is not set up in this bot."}
	}
	rep := d.Doctor.Run(ctx)
	res := "ok"
	if !rep.Ready() {
		res = "not ready"
	}
	return Outcome{Result: "ok", Detail: res}, c.Reply.Ephemeral(ctx, chat.Text(DoctorText(rep)))
}

// DoctorTable is the table for a terminal (`bot doctor`): the same
// lines without Slack's markup.
func DoctorTable(r DoctorReport) string {
	var b strings.Builder
	b.WriteString(r.Verdict() + "\n\n")
	for _, c := range r.Checks {
		fmt.Fprintf(&b, "%-5s %-34s %s\n", strings.ToUpper(c.Verdict), strings.ReplaceAll(c.Name, "`", ""), strings.ReplaceAll(c.Detail, "`", ""))
		if c.Fix != "" {
			fmt.Fprintf(&b, "%-5s %-34s fix: %s\n", "", "", strings.ReplaceAll(c.Fix, "`", ""))
		}
	}
	return b.String()
}
