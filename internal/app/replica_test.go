package app_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/testenv/faultproxy"
	"github.com/circlebot/circlebot/internal/testenv/motoserver"
)

const replicaTag = "circleci_services_replica"

// newReplicaEnv is a sandbox on a patched moto (CreateImage keeps the
// box's volumes) at test speed.
func newReplicaEnv(t *testing.T, edit func(*config.Config)) *env {
	t.Helper()
	e := newEnvOn(t, patchedMoto(t), edit)
	e.app.Snapshot.Poll = 20 * time.Millisecond // the pace replica builds poll at
	e.app.Engine.MinInterval = 20 * time.Millisecond
	return e
}

// byName lists the non-terminated instances with a Name tag.
func (e *env) byName(name string) []ec2types.Instance {
	e.t.Helper()
	insts, err := ops.FindByName(context.Background(), ec2.NewFromConfig(e.aws), name)
	if err != nil {
		e.t.Fatal(err)
	}
	return insts
}

// dropSeededReplica terminates the sandbox's replica, as if none had been
// built yet.
func (e *env) dropSeededReplica() {
	e.t.Helper()
	if _, err := ec2.NewFromConfig(e.aws).TerminateInstances(context.Background(), &ec2.TerminateInstancesInput{InstanceIds: []string{e.inst.Replica.ID}}); err != nil {
		e.t.Fatal(err)
	}
	e.proxy.Reset()
}

func (e *env) volumeLayout(in ec2types.Instance) []string {
	e.t.Helper()
	var ids []string
	dev := map[string]string{}
	for _, m := range in.BlockDeviceMappings {
		if m.Ebs != nil {
			ids = append(ids, aws.ToString(m.Ebs.VolumeId))
			dev[aws.ToString(m.Ebs.VolumeId)] = aws.ToString(m.DeviceName)
		}
	}
	out, err := ec2.NewFromConfig(e.aws).DescribeVolumes(context.Background(), &ec2.DescribeVolumesInput{VolumeIds: ids})
	if err != nil {
		e.t.Fatal(err)
	}
	var layout []string
	for _, v := range out.Volumes {
		layout = append(layout, fmt.Sprintf("%s %d GiB %s", dev[aws.ToString(v.VolumeId)], aws.ToInt32(v.Size), v.VolumeType))
	}
	slices.Sort(layout)
	return layout
}

func countCalls(calls []faultproxy.Call, action string) int {
	n := 0
	for _, c := range calls {
		if c.Action == action {
			n++
		}
	}
	return n
}

// `replica build` images the running box without a reboot (the plan says
// what that means for consistency) and launches the replica from the
// image in the configured subnet, with the box's type and volume layout,
// tagged as the replica; a second build is refused (never two replicas),
// and status shows the replica's age.
func TestReplicaBuildImagesTheBoxAndLaunchesTheReplica(t *testing.T) {
	e := newReplicaEnv(t, nil)
	e.dropSeededReplica()
	box := e.instance(e.inst.ServicesBox.ID)
	sub := e.inst.Subnets[1]

	req := e.request(alice, "replica build --subnet "+sub)
	plan := e.waitText("plan", req, "Approval needed")
	for _, want := range []string{"CreateImage", "without a reboot", "crash-consistent", "replica.image_reboot", sub, e.inst.AZs[1], "--subnet", "Name=" + replicaTag, "m5.2xlarge", e.inst.ServicesBox.ID} {
		if !strings.Contains(plan, want) {
			t.Errorf("plan lacks %q:\n%s", want, plan)
		}
	}
	e.proxy.Reset()
	e.click(bob, "approve "+req, "rep.1")
	sum := e.waitText("summary", "The replica is `i-")
	e.server.Wait()

	reps := e.byName(replicaTag)
	if len(reps) != 1 {
		t.Fatalf("%d replicas after the build", len(reps))
	}
	rep := reps[0]
	id := aws.ToString(rep.InstanceId)
	if !strings.Contains(sum, id) || !strings.Contains(sum, "approved by <@"+bob+">") {
		t.Errorf("summary: %s", sum)
	}
	if aws.ToString(rep.SubnetId) != sub || rep.InstanceType != box.InstanceType || rep.State.Name != ec2types.InstanceStateNameRunning {
		t.Errorf("replica in %s as %s (%s); want %s, %s, running", aws.ToString(rep.SubnetId), rep.InstanceType, rep.State.Name, sub, box.InstanceType)
	}
	if got, want := e.volumeLayout(rep), e.volumeLayout(box); !slices.Equal(got, want) || len(want) != 3 {
		t.Errorf("replica volumes %v, box volumes %v", got, want)
	}
	tags := map[string]string{}
	for _, tg := range rep.Tags {
		tags[aws.ToString(tg.Key)] = aws.ToString(tg.Value)
	}
	if tags[ops.TagReplicaOf] != e.inst.ServicesBox.ID || tags[ops.TagBoxType] != "m5.2xlarge" || !strings.HasPrefix(tags[ops.TagReplicaOp], "op-") || tags[ops.TagReplicaData] == "" {
		t.Errorf("replica tags %v", tags)
	}
	calls := e.proxy.Calls()
	ci := callIndex(calls, "CreateImage", e.inst.ServicesBox.ID)
	if ci < 0 || countCalls(calls, "CreateImage") != 1 || countCalls(calls, "RunInstances") != 1 {
		t.Fatalf("CreateImage %d times, RunInstances %d times", countCalls(calls, "CreateImage"), countCalls(calls, "RunInstances"))
	}
	if nr := calls[ci].Params["NoReboot"]; !slices.Equal(nr, []string{"true"}) {
		t.Errorf("CreateImage NoReboot = %v, want true (the default: no downtime)", nr)
	}
	for _, c := range calls {
		if (c.Action == "StopInstances" || c.Action == "RebootInstances" || c.Action == "TerminateInstances") && c.Fault == "" {
			t.Errorf("a build called %s", c.Action)
		}
	}
	if l, _ := e.app.Store.Locks(t.Context()); len(l) != 0 {
		t.Errorf("locks left after the build: %+v", l)
	}

	// Never two replicas: a second build is refused before anyone is asked.
	if txt := e.answer(e.slash(alice, incident, "replica build --subnet "+sub)); !strings.Contains(txt, "a replica exists already") || !strings.Contains(txt, id) || !strings.Contains(txt, "replica refresh") {
		t.Errorf("a second build: %s", txt)
	}
	// Status shows its age; the box has not changed since.
	e.slash(alice, incident, "status")
	if st := e.waitText("status", "Replica's data as of"); !strings.Contains(st, "the box has not changed since") || strings.Contains(st, ":warning: Replica") {
		t.Errorf("status lacks the replica's age:\n%s", st)
	}
}

// Bad input and impossible builds are refused with what to do, and
// nothing is made: no subnet configured or given, a subnet that does not
// exist, a malformed one, a refresh with no replica, a build while a
// replica exists. --dry-run shows the plan and asks nobody.
func TestReplicaBuildRefusals(t *testing.T) {
	e := newReplicaEnv(t, nil)
	if txt := e.answer(e.slash(alice, incident, "replica build --subnet "+e.inst.Subnets[1])); !strings.Contains(txt, "a replica exists already") || !strings.Contains(txt, e.inst.Replica.ID) {
		t.Errorf("build with a replica: %s", txt)
	}
	e.dropSeededReplica()
	for cmd, wants := range map[string][]string{
		"replica build": {"no subnet to launch the replica in", "--subnet <subnet-id>", "replica.subnet", "Nothing was requested"},
		"replica build --subnet subnet-0123456789abcdef0": {"subnet `subnet-0123456789abcdef0` (--subnet) does not exist", "Nothing was requested"},
		"replica build --subnet sg-0123456789abcdef0":     {`"sg-0123456789abcdef0" is not a subnet ID`},
		"replica refresh": {"there is no replica tagged Name=" + replicaTag, "replica build", "Nothing was requested"},
		"replica refresh --subnet subnet-0123456789abcdef0": {"--subnet only applies to replica build"},
	} {
		txt := e.answer(e.slash(alice, incident, cmd))
		for _, want := range wants {
			if !strings.Contains(txt, want) {
				t.Errorf("%s: answer lacks %q: %s", cmd, want, txt)
			}
		}
	}
	if txt := e.answer(e.slash(vera, incident, "replica build --subnet "+e.inst.Subnets[1])); strings.Contains(txt, "Approval needed") || strings.Contains(txt, "Dry run") {
		t.Errorf("a viewer's build was taken: %s", txt)
	}
	dry := e.answer(e.slash(alice, incident, "replica build --subnet "+e.inst.Subnets[1]+" --dry-run"))
	if !strings.Contains(dry, "Dry run of") || !strings.Contains(dry, "CreateImage") {
		t.Errorf("dry run: %s", dry)
	}
	e.server.Wait()
	if all, _ := e.app.Approvals.Store.All(t.Context()); len(all) != 0 {
		t.Fatalf("refusals and a dry run made %d requests", len(all))
	}
	for _, c := range e.proxy.Calls() {
		if c.Action == "CreateImage" || c.Action == "RunInstances" || c.Action == "CreateTags" {
			t.Errorf("a refused or dry-run request called %s", c.Action)
		}
	}
	if help := e.answer(e.slash(alice, incident, "help")); !strings.Contains(help, "replica build") || !strings.Contains(help, "replica refresh") {
		t.Errorf("an operator's help lacks the replica commands:\n%s", help)
	}
	if help := e.answer(e.slash(vera, incident, "help")); strings.Contains(help, "replica build") {
		t.Errorf("a viewer's help offers replica build:\n%s", help)
	}
}

// A refresh builds the new replica, then stops the old one and renames it
// <tag>-retired, so the replica's tag names one instance. Every answer of
// CreateImage and RunInstances is lost on the way back, and AWS fails the
// first stops: the image and the instance are found again by their tag
// (one of each), the step is tried again, and the result is one replica.
func TestReplicaRefreshRetiresTheOldOneAndNeverMakesTwo(t *testing.T) {
	e := newReplicaEnv(t, func(c *config.Config) { c.Replica.Subnet = "" })
	old := e.inst.Replica.ID

	req := e.request(alice, "replica refresh")
	plan := e.waitText("plan", req, "Approval needed")
	for _, want := range []string{old, "stop it and rename it " + replicaTag + "-retired", "the old replica's subnet", e.inst.Subnets[1]} {
		if !strings.Contains(plan, want) {
			t.Errorf("plan lacks %q:\n%s", want, plan)
		}
	}
	e.proxy.SetFaults(faultproxy.Faults{LostAnswerRate: 1, Match: func(c faultproxy.Call) bool {
		return c.Action == "CreateImage" || c.Action == "RunInstances"
	}})
	e.proxy.Reset()
	e.click(bob, "approve "+req, "ref.1")
	sum := e.waitText("summary", "The replica is `i-")
	e.server.Wait()
	if !strings.Contains(sum, "old replica `"+old+"` is stopped and kept as Name="+replicaTag+"-retired") {
		t.Errorf("summary: %s", sum)
	}
	calls := e.proxy.Calls()
	lost := 0
	for _, c := range calls {
		if c.Fault == faultproxy.FaultLostAnswer {
			lost++
		}
	}
	if lost < 2 {
		t.Errorf("%d answers were lost; the test meant to lose CreateImage's and RunInstances'", lost)
	}
	images, err := ec2.NewFromConfig(e.aws).DescribeImages(context.Background(), &ec2.DescribeImagesInput{Owners: []string{"self"},
		Filters: []ec2types.Filter{{Name: aws.String("tag-key"), Values: []string{ops.TagReplicaOp}}}})
	if err != nil || len(images.Images) != 1 {
		t.Errorf("%d replica images (%v), want 1", len(images.Images), err)
	}
	reps := e.byName(replicaTag)
	if len(reps) != 1 || aws.ToString(reps[0].InstanceId) == old {
		t.Fatalf("replicas after the refresh: %d", len(reps))
	}
	launched, err := ec2.NewFromConfig(e.aws).DescribeInstances(context.Background(), &ec2.DescribeInstancesInput{
		Filters: []ec2types.Filter{{Name: aws.String("tag-key"), Values: []string{ops.TagReplicaOp}}}})
	if n := len(launched.Reservations); err != nil || n != 1 {
		t.Errorf("%d launches tagged by the refresh (%v), want 1", n, err)
	}
	o := e.instance(old)
	if o.State.Name != ec2types.InstanceStateNameStopped {
		t.Errorf("old replica is %s", o.State.Name)
	}
	name := ""
	for _, tg := range o.Tags {
		if aws.ToString(tg.Key) == "Name" {
			name = aws.ToString(tg.Value)
		}
	}
	if name != replicaTag+"-retired" {
		t.Errorf("old replica's Name = %q", name)
	}
	// A failover now plans for the new replica.
	if dry := e.answer(e.slash(alice, incident, "failover --dry-run")); !strings.Contains(dry, aws.ToString(reps[0].InstanceId)) {
		t.Errorf("failover plan after the refresh: %s", dry)
	}
}

// With replica.retire: terminate the old replica is terminated, and the
// plan says that cannot be undone. A refresh that stops part-way (AWS
// fails every RunInstances) keeps backups and other replica work out, but
// not a failover (past its image it no longer holds the Services box: the
// old replica is still the only one); the resume launches once and
// finishes.
func TestReplicaRefreshTerminatesAndResumes(t *testing.T) {
	e := newReplicaEnv(t, func(c *config.Config) { c.Replica.Retire = "terminate" })
	old := e.inst.Replica.ID
	req := e.request(alice, "replica refresh")
	plan := e.waitText("plan", req, "Approval needed")
	if !strings.Contains(plan, "*terminate* it") || !strings.Contains(plan, "cannot be undone") {
		t.Errorf("plan: %s", plan)
	}
	e.proxy.SetFaults(faultproxy.Faults{ServerErrorRate: 1, Match: func(c faultproxy.Call) bool { return c.Action == "RunInstances" }})
	e.click(bob, "approve "+req, "ref.t")
	stopped := e.waitText("stop", "Later steps did not run")
	e.server.Wait()
	op := opIDRE.FindString(stopped)
	var keys []string
	l, _ := e.app.Store.Locks(t.Context())
	for _, k := range l {
		keys = append(keys, k.Key)
	}
	slices.Sort(keys)
	if want := []string{"backups/circleci_services", "replica/" + replicaTag}; !slices.Equal(keys, want) {
		t.Errorf("locks while the refresh is stopped: %v; want %v", keys, want)
	}
	if txt := e.answer(e.slash(alice, incident, "backup now")); !strings.Contains(txt, op) {
		t.Errorf("a backup while the refresh is stopped: %s", txt)
	}
	if txt := e.answer(e.slash(alice, incident, "replica refresh")); !strings.Contains(txt, op) || !strings.Contains(txt, "cancel "+op) {
		t.Errorf("a second refresh while the first is stopped: %s", txt)
	}
	// Planned for the old replica, not refused by the refresh (this
	// sandbox's replica is in another subnet: the plan says what that
	// means for a secondary IP).
	if txt := e.answer(e.slash(alice, incident, "failover --dry-run")); strings.Contains(txt, "another operation") || !strings.Contains(txt, old) {
		t.Errorf("a failover while the refresh is stopped: %s", txt)
	}
	e.proxy.SetFaults(faultproxy.Faults{})
	e.proxy.Reset()
	e.slash(alice, incident, "resume "+op)
	e.waitText("summary", "The replica is `i-", "terminated")
	e.server.Wait()
	if n := countCalls(e.proxy.Calls(), "CreateImage"); n != 0 {
		t.Errorf("the resume made %d more images", n)
	}
	if st := e.instance(old).State.Name; st != ec2types.InstanceStateNameTerminated {
		t.Errorf("old replica is %s", st)
	}
	if reps := e.byName(replicaTag); len(reps) != 1 {
		t.Errorf("%d replicas", len(reps))
	}
	if l, _ := e.app.Store.Locks(t.Context()); len(l) != 0 {
		t.Errorf("locks left: %+v", l)
	}
}

// The replication check runs on the replica through SSM. With
// failover.require_in_sync, a replica 42 seconds behind is refused, and
// the refusal says how much and how to go on; --force-stale is accepted
// and its plan says what is lost; a check that fails is "unknown" and
// refused too; once the replica is in sync the plan says so. Status and
// the daily report show the verdict.
func TestFailoverRequiresTheReplicaInSyncUnlessForceStale(t *testing.T) {
	b := newBoxEnv(t, motoserver.ForTest(t), func(c *config.Config) {
		c.Replica.ReplicationCheckCommand = "replication-lag"
		c.Failover.RequireInSync = true
		c.Failover.Discovery = "none" // the seeded replica is in another subnet
		c.Slack.ReportChannel = incident
	})
	rep := b.ssm.AddBox(b.inst.Replica.ID)
	rep.WriteCommand("replication-lag", "#!/bin/sh\necho 42\n")

	refused := b.answer(b.slash(alice, incident, "failover --dry-run"))
	for _, want := range []string{"not known to be in sync", "42 seconds behind", "--force-stale", b.inst.Replica.ID} {
		if !strings.Contains(refused, want) {
			t.Errorf("refusal lacks %q: %s", want, refused)
		}
	}
	forced := b.answer(b.slash(alice, incident, "failover --force-stale --dry-run"))
	for _, want := range []string{"Dry run of", "42 seconds behind", "--force-stale", "is lost"} {
		if !strings.Contains(forced, want) {
			t.Errorf("forced plan lacks %q: %s", want, forced)
		}
	}
	b.slash(alice, incident, "status")
	if st := b.waitText("status", "Replication: the replica is 42 seconds behind"); !strings.Contains(st, ":warning: Replication") {
		t.Errorf("status: %s", st)
	}
	if err := b.app.Reports.Send(t.Context(), b.web().For(chat.Request{ChannelID: incident})); err != nil {
		t.Fatal(err)
	}
	b.waitText("report", "Daily backup report", "42 seconds behind")

	rep.WriteCommand("replication-lag", "#!/bin/sh\necho 'cannot reach the primary' >&2\nexit 3\n")
	if txt := b.answer(b.slash(alice, incident, "failover --dry-run")); !strings.Contains(txt, "unknown (the check exited 3: cannot reach the primary)") {
		t.Errorf("a failing check: %s", txt)
	}
	rep.WriteCommand("replication-lag", "#!/bin/sh\necho 'in sync'\n")
	if plan := b.answer(b.slash(alice, incident, "failover --dry-run")); !strings.Contains(plan, "Dry run of") || !strings.Contains(plan, "the replica is in sync") {
		t.Errorf("in sync: %s", plan)
	}
	b.server.Wait()
	if all, _ := b.app.Approvals.Store.All(t.Context()); len(all) != 0 {
		t.Errorf("dry runs and refusals made %d requests", len(all))
	}
}

func TestParseLag(t *testing.T) {
	now := time.Now()
	for out, want := range map[string]string{
		"in sync\n": "in sync", "0": "in sync", "12.5": "12.5 seconds behind", "300s": "300 seconds behind",
		"r0 role:Secondary\n  disk:UpToDate\n  peer role:Primary\n    replication:Established peer-disk:UpToDate": "in sync",
		"r0 role:Secondary\n  disk:Inconsistent\n  peer replication:SyncTarget":                                   "not in sync (DRBD: this node's disk is Inconsistent)",
		// The primary died: its lines say Connecting for good, this disk
		// is still up to date as of the disconnect.
		"r0 role:Secondary\n  disk:UpToDate\n  peer connection:Connecting":                "in sync (DRBD: up to date as of the disconnect from the primary)",
		"r0 role:Secondary\n  disk:Outdated\n  peer connection:Connecting":                "not in sync (DRBD: this node's disk is Outdated)",
		"r0 role:Secondary\n  disk:UpToDate\n  peer role:Primary\n    peer-disk:DUnknown": "in sync (DRBD: up to date as of the disconnect from the primary)",
		"":      "unknown (the check printed nothing)",
		"hello": "unknown (unrecognised output: hello)",
		"-3":    "unknown (unrecognised output: -3)",
	} {
		if got := ops.ParseLag(out, now).String(); got != want {
			t.Errorf("ParseLag(%q) = %q, want %q", out, got, want)
		}
	}
	// replica.max_lag: a fraction of a second behind is in sync, saying
	// so; more is not, nor is a behind without seconds.
	for _, c := range []struct {
		out  string
		max  time.Duration
		want string
	}{
		{"0.4", 0, "0.4 seconds behind"},
		{"0.4", 2 * time.Second, "in sync (0.4 seconds behind, within replica.max_lag 2s)"},
		{"2", 2 * time.Second, "in sync (2 seconds behind, within replica.max_lag 2s)"},
		{"2.5", 2 * time.Second, "2.5 seconds behind"},
		{"r0 role:Secondary\n  disk:Inconsistent", time.Hour, "not in sync (DRBD: this node's disk is Inconsistent)"},
	} {
		if got := ops.ParseLag(c.out, now).Within(c.max).String(); got != c.want {
			t.Errorf("ParseLag(%q).Within(%s) = %q, want %q", c.out, c.max, got, c.want)
		}
	}
}
