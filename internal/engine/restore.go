package engine

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/circlebot/circlebot/internal/approvals"
	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/commands"
	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/ops"
)

// The kinds' names, as the journal records them.
const (
	KindRestoreEBS     = "restore-ebs"
	KindRestoreTarball = "restore-tarball"
	KindFailover       = "failover"
	KindRotate         = "builders-rotate"
	KindPrune          = "backup-prune"
	KindSecret         = "secret"
)

// BoxLock is the lock key of every operation that changes or reads the
// Services box as a whole (backups, pruning, restores, failover): one at
// a time.
func BoxLock(nameTag string) string { return "box/" + nameTag }

// Setup is what the kinds share: the slash command for the hints they
// give, the Services box they act on, and the first pause when a read is
// retried after an AWS fault.
type Setup struct {
	SlashCommand string
	NameTag      string
	// EC2 reads live state when a stopped operation is resumed.
	EC2 ops.EC2
	// RetryWait is the first pause (read when used: tests tune it).
	RetryWait func() time.Duration
	// Journal is the operations' history, for predicted recovery times
	// (zero: the timing model's defaults).
	Journal journal.Store
}

func (s Setup) box() string { return BoxLock(s.NameTag) }

// BackupsLock is held by backups and pruning from start to end: one at a
// time, also while an EBS backup only follows its snapshots and has freed
// the box (a second set would race the first to AWS's limit of pending
// snapshots per volume, and a prune would judge a set still completing).
func BackupsLock(nameTag string) string { return "backups/" + nameTag }

func (s Setup) wait() time.Duration {
	if s.RetryWait != nil && s.RetryWait() > 0 {
		return s.RetryWait()
	}
	return time.Second
}

// RestoreEBS is `restore <snap-…|latest>`: a new Services box from an EBS
// restore point, on the old one's private IP.
func RestoreEBS(s Setup, r *ops.SnapshotRestore) Kind[ops.RestorePlan, ops.RestoreResult] {
	return Kind[ops.RestorePlan, ops.RestoreResult]{
		Name: KindRestoreEBS, What: "restore", Command: commands.Restore,
		Match: func(c commands.Command) bool { return c.Source.Kind != commands.SourceS3 },
		Plan: func(ctx context.Context, cmd commands.Command) (ops.RestorePlan, error) {
			p, err := ops.RetryRead(ctx, s.wait(), func() (ops.RestorePlan, error) { return r.Plan(ctx, cmd.Source.SnapshotID, cmd.Rebuild) })
			if err != nil {
				return p, err
			}
			// The plan's own steps: their order and set follow the plan.
			path := pathRebuild
			if p.IsInPlace() {
				path = pathInPlace
			}
			p.RTO = predictRTO(ctx, s.Journal, path, ops.StepNames(r.Steps(p)), stepDefaults(path, false))
			completing(ctx, s.Journal, &p, r.StopLead)
			return p, nil
		},
		Approval: snapshotApproval,
		Title: func(p ops.RestorePlan) string {
			if p.IsInPlace() {
				return "In-place restore of the Services box from `" + p.Source + "`"
			}
			return "Restore of the Services box from `" + p.Source + "`"
		},
		Target:    s.box,
		Preflight: r.Preflight,
		Steps:     func(p ops.RestorePlan, _ Env) []journal.Def { return r.Steps(p) },
		Recheck: func(ctx context.Context, p ops.RestorePlan, op Record) ([]string, error) {
			if err := r.Recheck(ctx, p); err != nil {
				return nil, err
			}
			// Until the step that stops the old instance (step 4, or 3
			// when the source was still completing) is done, the old box must be as approved: a box
			// that came back, or went, is a different decision.
			if p.Old == nil || op.done(p.StopStep()) {
				return nil, nil
			}
			c, err := ops.Changed(ctx, s.EC2, "the old Services box", p.Old.InstanceID, p.Old.State)
			return nonEmpty(c), err
		},
		Summary: func(p ops.RestorePlan, r ops.RestoreResult, op Record) string {
			if p.IsInPlace() {
				return inPlaceSummary(s, p, r, op)
			}
			var b strings.Builder
			fmt.Fprintf(&b, "Restored `%s` onto `%s` (%s, %s) in %s (approved by <@%s>).", p.Source, r.InstanceID, r.InstanceType, p.Shape.PrivateIP, op.Took, op.Approver)
			if len(r.KeptVolumes) > 0 && p.Old != nil {
				fmt.Fprintf(&b, " The old instance %s was terminated; its volumes %s are kept (tag %s=%s): delete them once you are sure.", p.Old.InstanceID, strings.Join(r.KeptVolumes, ", "), ops.TagKeptBy, op.ID)
			}
			if a := p.RTO.Actual(toApp(op.Op, appStepRestore)); a != "" {
				b.WriteString(" " + a)
			}
			fmt.Fprintf(&b, " Image `%s` stays registered. Next: `%s builders rotate` so builders reconnect; webhooks sent while the box was down were lost; take a fresh backup with `%s backup now`.",
				r.ImageID, s.SlashCommand, s.SlashCommand)
			return b.String()
		},
		LeftBehind: func(p ops.RestorePlan, r ops.RestoreResult, op Record) []string {
			var h []string
			if p.IsInPlace() {
				return inPlaceLeftBehind(p, r, op)
			}
			if len(r.KeptVolumes) > 0 {
				h = append(h, "old volumes "+strings.Join(r.KeptVolumes, ",")+" (tag "+ops.TagKeptBy+"="+op.ID+")")
			}
			if r.ImageID != "" {
				h = append(h, "image `"+r.ImageID+"`")
			}
			if r.InstanceID != "" {
				h = append(h, "new instance `"+r.InstanceID+"`")
			}
			return h
		},
		Hold: true, BoxLine: true,
	}
}

func snapshotApproval(p ops.RestorePlan) approvals.Plan {
	if p.IsInPlace() {
		return inPlaceApproval(p)
	}
	sh := p.Shape
	ap := approvals.Plan{Action: "restore", Facts: p.Facts()}
	if p.Why != "" {
		ap.Changes = append(ap.Changes, "rebuild: "+p.Why)
	}
	if l := p.CompletingLine(); l != "" {
		ap.Changes = append(ap.Changes, l+"; the image is registered once they complete, after the stop")
	}
	if p.Old != nil {
		ap.Changes = append(ap.Changes,
			fmt.Sprintf("turn off DeleteOnTermination on every volume of `%s` and tag them, then stop it (forced after `restore.stop_timeout`)", p.Old.InstanceID),
			fmt.Sprintf("terminate `%s` (now %s) so that %s is free for the new box", p.Old.InstanceID, p.Old.State, sh.PrivateIP))
	}
	ap.Changes = append(ap.Changes,
		fmt.Sprintf("register image `circleci-restore-op-…` from restore point `%s` (%s), %d volumes:", p.Source, p.SourceTime.UTC().Format("2006-01-02 15:04 UTC"), len(p.Snapshots)))
	// Each device on a line of its own with the volume it becomes (type,
	// size, IOPS, throughput, encryption and key), then the boot settings.
	for _, l := range p.VolumeLines() {
		ap.Changes = append(ap.Changes, "volume "+l)
	}
	ap.Changes = append(ap.Changes, "boot: "+p.BootLine(),
		fmt.Sprintf("launch the new Services box: %s in `%s` (%s), private IP %s%s, security groups %s (launch shape %s)",
			strings.Join(append([]string{sh.Type}, p.Fallbacks...), " or "), sh.SubnetID, sh.AZ, sh.PrivateIP, secondaries(sh.SecondaryIPs), strings.Join(sh.SecurityGroups, ", "), p.ShapeFrom))
	if kp := p.Old.KeptPrimary(); kp != nil {
		ap.Changes = append(ap.Changes, fmt.Sprintf("launch it on the old box's primary interface `%s` (%s), which AWS keeps when the old box is terminated (DeleteOnTermination false): the interface, its addresses and security groups move to the new box", kp.ID, strings.Join(kp.IPs, ", ")))
	}
	for _, n := range p.Old.Others() {
		if n.DeleteOnTermination {
			ap.Undo = append(ap.Undo, fmt.Sprintf("interface `%s` (device %d, %s) of `%s` is deleted with it (DeleteOnTermination): its addresses are not carried to the new box", n.ID, n.DeviceIndex, strings.Join(n.IPs, ", "), p.Old.InstanceID))
			continue
		}
		ap.Changes = append(ap.Changes, fmt.Sprintf("reattach interface `%s` (%s) to the new box at device %d once the old box's termination frees it; if something else took it by then it is left, and the step says so", n.ID, strings.Join(n.IPs, ", "), n.DeviceIndex))
	}
	if p.AppStart != "" {
		ap.Changes = append(ap.Changes, "start the app on it through SSM: `"+p.AppStart+"`")
	}
	if p.Old != nil {
		var vols []string
		for _, v := range p.Old.Volumes {
			vols = append(vols, fmt.Sprintf("`%s` (%s)", v.ID, v.Device))
		}
		ap.Keeps = append(ap.Keeps, "the old box's volumes, detached and tagged: "+strings.Join(vols, ", "))
	}
	ap.Keeps = append(ap.Keeps, "the restore point's snapshots and the new image")
	if p.Old != nil {
		ap.Undo = append(ap.Undo, fmt.Sprintf("`%s` is terminated (its volumes stay; a box can be built from them by hand)", p.Old.InstanceID))
	}
	if p.RTO.Predicted > 0 {
		ap.Undo = append(ap.Undo, p.RTO.Line(pathRebuild.what))
	}
	ap.Undo = append(ap.Undo, fmt.Sprintf("the new box has the data of %s UTC (%s old): builds and settings since then are not in it", p.SourceTime.UTC().Format("2006-01-02 15:04"), chat.Age(time.Since(p.SourceTime))))
	if p.Newer != "" {
		ap.Undo = append(ap.Undo, p.Newer)
	}
	return ap
}

func secondaries(ips []string) string {
	if len(ips) == 0 {
		return ""
	}
	return " (secondary " + strings.Join(ips, ", ") + ")"
}

// TarballRestorer restores a tarball onto the Services box.
type TarballRestorer interface {
	Plan(ctx context.Context, bucket, key string) (ops.TarballRestorePlan, error)
	Steps(plan ops.TarballRestorePlan) []journal.Def
	Recheck(ctx context.Context, plan ops.TarballRestorePlan) error
	Preflight(ctx context.Context, plan ops.TarballRestorePlan) ops.Preflight
}

// RestoreTarball is `restore s3://bucket/key`: circleci-restore on the
// Services box; t is nil when backup.bucket is unset.
func RestoreTarball(s Setup, t TarballRestorer) Kind[ops.TarballRestorePlan, ops.TarballRestoreResult] {
	return Kind[ops.TarballRestorePlan, ops.TarballRestoreResult]{
		Name: KindRestoreTarball, What: "restore", Command: commands.Restore,
		Match: func(c commands.Command) bool { return c.Source.Kind == commands.SourceS3 },
		Ready: func() error {
			if t == nil {
				return refusef("tarball restores need `backup.bucket` in the config (and SSM on the Services box). Nothing was requested.")
			}
			return nil
		},
		Plan: func(ctx context.Context, cmd commands.Command) (ops.TarballRestorePlan, error) {
			return ops.RetryRead(ctx, s.wait(), func() (ops.TarballRestorePlan, error) { return t.Plan(ctx, cmd.Source.Bucket, cmd.Source.Key) })
		},
		Approval:  tarballApproval,
		Preflight: func(ctx context.Context, p ops.TarballRestorePlan) ops.Preflight { return t.Preflight(ctx, p) },
		Title: func(p ops.TarballRestorePlan) string {
			return "Restore of the Services box from `s3://" + p.Bucket + "/" + p.Key + "`"
		},
		Target: s.box,
		Steps:  func(p ops.TarballRestorePlan, _ Env) []journal.Def { return t.Steps(p) },
		Recheck: func(ctx context.Context, p ops.TarballRestorePlan, op Record) ([]string, error) {
			if err := t.Recheck(ctx, p); err != nil {
				return nil, err
			}
			// Until step 4 (stop the app) is done, the box must be the
			// running one the plan was approved for.
			if op.done(3) {
				return nil, nil
			}
			c, err := ops.Changed(ctx, s.EC2, "the Services box", p.InstanceID, "running")
			return nonEmpty(c), err
		},
		Summary: func(p ops.TarballRestorePlan, r ops.TarballRestoreResult, op Record) string {
			return fmt.Sprintf("Restored `s3://%s/%s` onto `%s` in %s (approved by <@%s>). The data that was there is in `%s` on the box: delete it once you have checked the restore. Next: take a backup (`%s backup now`); webhooks sent while the app was stopped were lost.",
				p.Bucket, p.Key, p.InstanceID, op.Took, op.Approver, r.MovedAside, s.SlashCommand)
		},
		LeftBehind: func(_ ops.TarballRestorePlan, r ops.TarballRestoreResult, _ Record) []string {
			if r.MovedAside != "" {
				return []string{"moved-aside data `" + r.MovedAside + "` on the box"}
			}
			return nil
		},
		Hold: true, BoxLine: true,
	}
}

func tarballApproval(p ops.TarballRestorePlan) approvals.Plan {
	ap := approvals.Plan{Action: "restore", Facts: p.Facts()}
	ap.Changes = []string{
		fmt.Sprintf("download `s3://%s/%s` (%s) onto the Services box `%s` (%s) through a presigned URL", p.Bucket, p.Key, chat.Bytes(p.Size), p.InstanceID, p.PrivateIP),
	}
	if p.AppStop != "" {
		ap.Changes = append(ap.Changes, "stop the app: `"+p.AppStop+"`")
	}
	ap.Changes = append(ap.Changes, "run `circleci-restore` on it")
	if p.AppStart != "" {
		ap.Changes = append(ap.Changes, "start the app: `"+p.AppStart+"`")
	}
	ap.Keeps = []string{"the box's current data: circleci-restore moves it to `/data/circleci-restore-<time>` (delete that by hand once the restore is confirmed)", "the tarball in S3"}
	ap.Undo = []string{fmt.Sprintf("the app runs on the data of %s UTC: builds and settings since then are not in it (the moved-aside data still has them)", p.Modified.UTC().Format("2006-01-02 15:04"))}
	return ap
}

// done reports whether step i (from 0) of the operation finished.
func (r Record) done(i int) bool { return i < len(r.Steps) && r.Steps[i].State == journal.StepDone }

func nonEmpty(s ...string) []string {
	var out []string
	for _, v := range s {
		if v != "" {
			out = append(out, v)
		}
	}
	return out
}

// completing adds to a plan whose restore point is still completing the
// time its snapshots still need (the box keeps serving meanwhile, but the
// app starts that much later) and the stop time the restore overlaps with
// their tail: the median of the stops this account's restores measured,
// else the timing model's.
func completing(ctx context.Context, j journal.Store, p *ops.RestorePlan, def time.Duration) {
	if p.Completing == nil {
		return
	}
	p.StopLead = measuredStop(ctx, j, cmp.Or(def, ops.DefaultStopLead))
	// The stop begins StopLead before the snapshots complete and is
	// already in the path's own prediction: only the wait before it adds.
	wait := max(0, p.SourceETA-p.StopLead)
	p.RTO.Predicted += wait
	// Said in the sentence: how much of it is the wait, or (no progress
	// yet, SourceETA 0) that it is not in the number.
	for i := range p.RTO.Parts {
		if d, ok := ops.StepTimes[ops.PathInPlace][p.RTO.Parts[i].Steps[0]]; ok && d.PlanTimed && (wait > 0 || p.SourceETA == 0) {
			p.RTO.Parts[i].Took, p.RTO.Parts[i].Plan, p.RTO.Parts[i].Default = wait, true, false
		}
	}
}

// The names a restore's stop step has had.
var stopSteps = []string{"Stop the Services box", "Stop the old instance"}

func measuredStop(ctx context.Context, j journal.Store, def time.Duration) time.Duration {
	var took []time.Duration
	if j.KV != nil {
		if all, err := j.All(ctx); err == nil {
			for i := len(all) - 1; i >= 0 && len(took) < rtoSamples; i-- {
				op := all[i]
				if op.Kind != KindRestoreEBS || op.State != journal.Done {
					continue
				}
				for _, st := range op.Steps {
					if slices.Contains(stopSteps, st.Name) && st.State == journal.StepDone && !st.Started.IsZero() && st.Finished.After(st.Started) {
						took = append(took, st.Finished.Sub(st.Started))
					}
				}
			}
		}
	}
	if len(took) == 0 {
		return def
	}
	slices.Sort(took)
	return took[len(took)/2].Round(time.Second)
}
