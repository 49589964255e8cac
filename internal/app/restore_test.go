package app_test

import (
	"context"
	"io"
	"log/slog"
	"maps"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/circlebot/circlebot/internal/app"
	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/progress"
	"github.com/circlebot/circlebot/internal/testenv/faultproxy"
	"github.com/circlebot/circlebot/internal/testenv/ssmbox"
)

type restoreEnv struct {
	*env
	ssm    *ssmbox.Server
	oldBox *ssmbox.Box
	backup *ops.Backup
	skew   time.Duration
	mu     sync.Mutex
}

// newRestoreEnv is a sandbox on the patched moto (terminated instances
// free their IP, images keep their block devices, client tokens hold),
// an SSM stand-in on which launched instances come up as boxes, and one
// completed bot backup of the Services box, whose root volume is set to
// be deleted on termination as AWS does by default.
func newRestoreEnv(t *testing.T, edit func(*config.Config)) *restoreEnv {
	t.Helper()
	moto := patchedMoto(t)
	if err := moto.AutoCompleteSnapshots(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	ssmSrv := ssmbox.New(t)
	ssmSrv.RegisterNew(func(id string) bool { return strings.HasPrefix(id, "i-") })
	e := newEnvOn(t, moto, func(c *config.Config) {
		c.Roles.Viewers = []string{vera}
		// Alice may approve too: only not her own request.
		c.Roles.Approvers = []string{bob, alice}
		if edit != nil {
			edit(c)
		}
	}, func(o *app.Options) { o.SSMEndpoint = ssmSrv.URL })
	r := &restoreEnv{env: e, ssm: ssmSrv, oldBox: ssmSrv.AddBox(e.inst.ServicesBox.ID)}
	r.tune(e.app)
	e.slash(alice, incident, "backup now")
	r.backup = e.lastBackup(ops.StateCompleted)
	e.server.Wait()
	api := ec2.NewFromConfig(e.aws)
	if _, err := api.ModifyInstanceAttribute(context.Background(), &ec2.ModifyInstanceAttributeInput{
		InstanceId: aws.String(e.inst.ServicesBox.ID),
		BlockDeviceMappings: []ec2types.InstanceBlockDeviceMappingSpecification{{
			DeviceName: aws.String(r.backup.Shape.RootDevice), Ebs: &ec2types.EbsInstanceBlockDeviceSpecification{DeleteOnTermination: aws.Bool(true)},
		}},
	}); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *restoreEnv) tune(a *app.App) {
	a.Snapshot.Poll = 20 * time.Millisecond
	a.Engine.MinInterval = 20 * time.Millisecond
	a.Approvals.Now = func() time.Time {
		r.mu.Lock()
		defer r.mu.Unlock()
		return time.Now().Add(r.skew)
	}
}

// request sends a destructive command and returns the new request's ID.
func (e *env) request(user, text string) string {
	e.t.Helper()
	seen := map[string]bool{}
	for _, c := range e.slack.Calls() {
		if m := reqIDRE.FindStringSubmatch(e.slack.Text(c)); m != nil {
			seen[m[1]] = true
		}
	}
	e.slash(user, incident, text)
	c := e.waitPost(incident, "approval request for "+text, func(s string) bool {
		m := reqIDRE.FindStringSubmatch(s)
		return strings.Contains(s, "Approval needed") && m != nil && !seen[m[1]]
	})
	e.server.Wait()
	return reqIDRE.FindStringSubmatch(e.slack.Text(c))[1]
}

// ephemeralTo waits for an ephemeral answer to the slash command rid.
func (e *env) answer(rid string) string {
	e.t.Helper()
	return e.slack.Text(e.waitResponse(rid, "answer to "+rid))
}

// restored lists the instances a restore launched (not terminated).
func (e *env) restored() []ec2types.Instance {
	e.t.Helper()
	out, err := ec2.NewFromConfig(e.aws).DescribeInstances(context.Background(), &ec2.DescribeInstancesInput{Filters: []ec2types.Filter{
		{Name: aws.String("tag-key"), Values: []string{ops.TagRestoreOp}},
	}})
	if err != nil {
		e.t.Fatal(err)
	}
	var got []ec2types.Instance
	for _, res := range out.Reservations {
		for _, in := range res.Instances {
			if in.State.Name != ec2types.InstanceStateNameTerminated {
				got = append(got, in)
			}
		}
	}
	return got
}

func (e *env) instance(id string) ec2types.Instance {
	e.t.Helper()
	out, err := ec2.NewFromConfig(e.aws).DescribeInstances(context.Background(), &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	if err != nil || len(out.Reservations) == 0 {
		e.t.Fatalf("describe %s: %v", id, err)
	}
	return out.Reservations[0].Instances[0]
}

// waitText waits for any message in the channel containing all parts.
func (e *env) waitText(what string, parts ...string) string {
	e.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		for _, m := range e.slack.Messages(incident) {
			txt := m.AllText()
			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(txt, p)
			}
			if ok {
				return txt
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	var all []string
	for _, m := range e.slack.Messages(incident) {
		all = append(all, m.AllText())
	}
	e.t.Fatalf("no message with %q (%s); messages:\n%s", parts, what, strings.Join(all, "\n---\n"))
	return ""
}

// checkRestored asserts the end state of a successful restore: one new
// box with the recorded IPs, built from the backup's snapshots, its app
// started; the old box terminated with every volume still there.
func (r *restoreEnv) checkRestored() ec2types.Instance {
	t := r.t
	t.Helper()
	got := r.restored()
	if len(got) != 1 {
		t.Fatalf("%d restored instances, want exactly 1", len(got))
	}
	nb := got[0]
	if ip := aws.ToString(nb.PrivateIpAddress); ip != r.inst.ServicesBox.PrivateIP {
		t.Errorf("new box IP %s, want the recorded %s", ip, r.inst.ServicesBox.PrivateIP)
	}
	var ips []string
	for _, a := range nb.NetworkInterfaces[0].PrivateIpAddresses {
		ips = append(ips, aws.ToString(a.PrivateIpAddress))
	}
	if !strings.Contains(strings.Join(ips, ","), r.inst.ServicesBox.SecondaryIP) {
		t.Errorf("new box IPs %v lack the secondary %s", ips, r.inst.ServicesBox.SecondaryIP)
	}
	if tagOf(nb.Tags, "Name") != r.app.Config.ServicesBox.NameTag || string(nb.InstanceType) != r.backup.Shape.Type || aws.ToString(nb.SubnetId) != r.backup.Shape.SubnetID {
		t.Errorf("new box shape: name %s type %s subnet %s; recorded %+v", tagOf(nb.Tags, "Name"), nb.InstanceType, aws.ToString(nb.SubnetId), r.backup.Shape)
	}
	if len(nb.SecurityGroups) != 1 || aws.ToString(nb.SecurityGroups[0].GroupId) != r.inst.SecurityGroupID {
		t.Errorf("new box security groups %+v", nb.SecurityGroups)
	}
	// Its volumes come from the backup's snapshots, device for device.
	vols, err := ec2.NewFromConfig(r.aws).DescribeVolumes(context.Background(), &ec2.DescribeVolumesInput{Filters: []ec2types.Filter{
		{Name: aws.String("attachment.instance-id"), Values: []string{aws.ToString(nb.InstanceId)}}}})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for _, s := range r.backup.Snapshots {
		want[s.Device] = s.ID
	}
	for _, v := range vols.Volumes {
		dev := aws.ToString(v.Attachments[0].Device)
		if want[dev] != aws.ToString(v.SnapshotId) {
			t.Errorf("new volume on %s from %q, want %q", dev, aws.ToString(v.SnapshotId), want[dev])
		}
		delete(want, dev)
	}
	if len(want) != 0 {
		t.Errorf("devices not restored: %v", want)
	}
	old := r.instance(r.inst.ServicesBox.ID)
	if old.State.Name != ec2types.InstanceStateNameTerminated {
		t.Errorf("old box is %s", old.State.Name)
	}
	ids := r.inst.ServicesBox.Volumes
	ov, err := ec2.NewFromConfig(r.aws).DescribeVolumes(context.Background(), &ec2.DescribeVolumesInput{VolumeIds: ids})
	if err != nil || len(ov.Volumes) != len(ids) {
		t.Fatalf("old volumes: %v, %d of %d left", err, len(ov.Volumes), len(ids))
	}
	for _, v := range ov.Volumes {
		if tagOf(v.Tags, ops.TagKeptFrom) != r.inst.ServicesBox.ID || !strings.HasPrefix(tagOf(v.Tags, ops.TagKeptBy), "op-") {
			t.Errorf("old volume %s not tagged as kept: %+v", aws.ToString(v.VolumeId), v.Tags)
		}
	}
	if b := r.ssm.Box(aws.ToString(nb.InstanceId)); b == nil || b.AppState() != ssmbox.AppStarted {
		t.Errorf("the app was not started on the new box")
	}
	return nb
}

func TestRestoreNeedsAnApproverAndKeepsTheIPAndTheOldVolumes(t *testing.T) {
	t.Parallel()
	r := newRestoreEnv(t, nil)

	// A request that expires cannot be approved.
	stale := r.request(alice, "restore latest --rebuild")
	r.mu.Lock()
	r.skew = r.app.Config.Approvals.TTL.D() + time.Minute
	r.mu.Unlock()
	if txt := r.answer(r.slash(bob, incident, "approve "+stale)); !strings.Contains(txt, "expired") {
		t.Fatalf("approval after expiry: %q", txt)
	}
	r.mu.Lock()
	r.skew = 0
	r.mu.Unlock()

	req := r.request(alice, "restore "+r.backup.Snapshots[1].ID+" --rebuild")
	plan := r.waitText("plan", req, "Approval needed")
	for _, want := range []string{r.backup.ID, r.inst.ServicesBox.PrivateIP, r.inst.ServicesBox.ID, "terminate", "DeleteOnTermination"} {
		if !strings.Contains(plan, want) {
			t.Errorf("the plan does not name %q:\n%s", want, plan)
		}
	}
	if txt := r.answer(r.slash(alice, incident, "approve "+req)); !strings.Contains(txt, "second person") {
		t.Fatalf("requester's own approval: %q", txt)
	}
	if txt := r.answer(r.slash(vera, incident, "approve "+req)); !strings.Contains(txt, "approver") {
		t.Fatalf("viewer's approval: %q", txt)
	}
	r.server.Wait()
	if n := len(r.restored()); n != 0 {
		t.Fatalf("refused approvals launched %d instances", n)
	}

	// Two approvers' clicks at once: one decision, one restore.
	before := realCount(r.proxy, "RunInstances")
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Go(func() { r.click(bob, "approve "+req, "double."+string(rune('a'+i))) })
	}
	wg.Wait()
	sum := r.waitText("summary", "Restored `"+r.backup.ID+"`")
	r.server.Wait()
	nb := r.checkRestored()
	if n := realCount(r.proxy, "RunInstances") - before; n != 1 {
		t.Errorf("RunInstances called %d times", n)
	}
	if !strings.Contains(sum, aws.ToString(nb.InstanceId)) || !strings.Contains(sum, "builders rotate") {
		t.Errorf("summary: %s", sum)
	}
	// The box is free again: a backup of the new box runs.
	r.slash(alice, incident, "backup now")
	r.server.Wait()
	if b := r.lastBackup(ops.StateCompleted); b.ID == r.backup.ID || b.Shape.InstanceID != aws.ToString(nb.InstanceId) {
		t.Errorf("backup after the restore: %s of %s", b.ID, b.Shape.InstanceID)
	}
}

// resumeFinishes sends `resume` through e (a replica of r, or r itself)
// and checks the restore ends restored without a second RunInstances.
func (r *restoreEnv) resumeFinishes(e *env, opID string) {
	r.t.Helper()
	before := realCount(e.proxy, "RunInstances")
	e.slash(alice, incident, "resume "+opID)
	e.waitText("summary", "Restored `"+r.backup.ID+"`")
	e.server.Wait()
	r.checkRestored()
	// With AWS's lag the look-up by tag may miss the instance; the launch
	// then carries the first attempt's client token, and AWS answers with
	// that instance (checkRestored: exactly one).
	if n := realCount(e.proxy, "RunInstances") - before; n != 0 && e.lag == nil {
		r.t.Errorf("resume called RunInstances %d times; the instance existed", n)
	}
}

// restart replaces the bot process: the old App is closed and a new one
// opens the same data_dir, with its own HTTP server.
func (r *restoreEnv) restart() {
	t := r.t
	t.Helper()
	r.server.Wait()
	r.http.Close()
	cfg := r.app.Config
	r.app.Close()
	a, err := app.New(context.Background(), app.Options{Config: cfg, Version: "test", AWS: botAWS(t, r.proxy.URL, r.aws, &cfg), SSMEndpoint: r.ssm.URL, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	r.tune(a)
	a.Engine.MinInterval = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	srv := a.NewServer(ctx)
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		hs.Close()
		srv.Wait()
		cancel()
		a.Close()
	})
	r.app, r.server, r.http = a, srv, hs
	web := r.web()
	a.Resume(context.Background(), func(ch string) progress.Poster { return web.For(chat.Request{ChannelID: ch}) })
}

// The bot stops (its context ends) in the middle of the launch step, just
// after RunInstances; a new process announces the interrupted restore
// with its state, and `resume` finishes it without a second instance.
func TestRestoreInterruptedMidStepResumesWithoutASecondInstance(t *testing.T) {
	t.Parallel()
	r := newRestoreEnv(t, nil)
	req := r.request(alice, "restore latest --rebuild")

	ctx, stop := context.WithCancel(context.Background())
	var once sync.Once
	r.proxy.SetFaults(faultproxy.Faults{Match: func(c faultproxy.Call) bool {
		if c.Action == "AssignPrivateIpAddresses" {
			once.Do(stop) // the launch step is half done: the instance exists
		}
		return false
	}})
	web := r.web()
	r.app.Bot.Handle(ctx, chat.Request{ID: "t1", UserID: bob, ChannelID: incident, Text: "approve " + req, Source: "test"},
		web.For(chat.Request{ChannelID: incident, UserID: bob}))
	r.proxy.SetFaults(faultproxy.Faults{})

	ops_, err := destructiveOps(t.Context(), r.app)
	if err != nil || len(ops_) != 1 {
		t.Fatalf("journal: %v %d ops", err, len(ops_))
	}
	op := ops_[0]
	if op.State != journal.Stopped || op.Next() != 5 {
		t.Fatalf("after the stop: state %s, next step %d (%s)", op.State, op.Next()+1, op.Why)
	}
	if n := len(r.restored()); n != 1 {
		t.Fatalf("%d instances launched before the stop", n)
	}
	// What a kill -9 at this point leaves: the step still marked running
	// under the dead process.
	if _, err := r.app.Journal.Update(t.Context(), op.ID, func(o *journal.Op) error {
		o.State, o.Process, o.Why = journal.Running, "dead-process", ""
		o.Steps[5].State = journal.StepRunning
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	r.restart()
	r.waitText("announcement", op.ID, "was interrupted during step 6 (Launch the new Services box)", "resume "+op.ID)
	// The box stays locked for it: no new restore, no backup.
	if txt := r.answer(r.slash(alice, incident, "backup now")); !strings.Contains(txt, op.ID) {
		t.Errorf("a backup during an interrupted restore: %q", txt)
	}

	r.resumeFinishes(r.env, op.ID)
	done, _ := r.app.Journal.Get(t.Context(), op.ID)
	if done.State != journal.Done || done.Steps[0].Attempts != 1 || done.Steps[3].Attempts != 1 {
		t.Errorf("journal after resume: %+v", done)
	}
	if txt := r.answer(r.slash(alice, incident, "resume "+op.ID)); !strings.Contains(txt, "done") {
		t.Errorf("resuming a finished restore: %q", txt)
	}
}

// A cancel asked during a restore stops it at the next step boundary;
// cancelling the stopped restore gives it up, and what it made is listed,
// not deleted.
func TestRestoreCancelStopsBetweenStepsAndGivesUp(t *testing.T) {
	t.Parallel()
	r := newRestoreEnv(t, nil)
	req := r.request(alice, "restore latest --rebuild")
	var once sync.Once
	r.proxy.SetFaults(faultproxy.Faults{Match: func(c faultproxy.Call) bool {
		if c.Action == "RegisterImage" && c.Params.Get("DryRun") != "true" {
			once.Do(func() {
				// `cancel` while the image step runs; hold the step until
				// the cancel is recorded, so the boundary is the next one.
				ops_, _ := destructiveOps(t.Context(), r.app)
				r.slash(alice, incident, "cancel "+ops_[0].ID)
				for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
					if o, _ := r.app.Journal.Get(t.Context(), ops_[0].ID); o.CancelBy != "" {
						return
					}
				}
				t.Error("the cancel was not recorded")
			})
		}
		return false
	}})
	r.click(bob, "approve "+req, "cancel.1")
	r.waitText("stopped", "Stopped by <@"+alice+">", "before step 3", "is running")
	r.server.Wait()
	r.proxy.SetFaults(faultproxy.Faults{})
	if n := len(r.restored()); n != 0 {
		t.Fatalf("a cancelled restore launched %d instances", n)
	}
	op, _ := r.app.Journal.ByRequest(t.Context(), req)
	res, _ := ops.ResultOf[ops.RestoreResult](op)
	if op.State != journal.Stopped || res.ImageID == "" || op.Next() != 2 {
		t.Fatalf("cancelled op: %+v", op)
	}
	// The image step comes first: the old box was not touched.
	if st := r.instance(r.inst.ServicesBox.ID).State.Name; st != ec2types.InstanceStateNameRunning {
		t.Errorf("old box is %s after a cancel before the stop", st)
	}
	r.slash(alice, incident, "cancel "+op.ID)
	txt := r.waitText("given up", "gave up `"+op.ID+"`")
	for _, want := range []string{res.ImageID, "is running"} {
		if !strings.Contains(txt, want) {
			t.Errorf("give-up message lacks %q: %s", want, txt)
		}
	}
	r.server.Wait()
	if l, _ := r.app.Store.Locks(t.Context()); len(l) != 0 {
		t.Errorf("locks after giving up: %+v", l)
	}
	if txt := r.answer(r.slash(alice, incident, "resume "+op.ID)); !strings.Contains(txt, "abandoned") {
		t.Errorf("resuming a given-up restore: %q", txt)
	}
}

// With a fifth of EC2 calls throttled or failing, the restore completes,
// once.
func TestRestoreCompletesOnceUnderAWSFaults(t *testing.T) {
	t.Parallel()
	r := newRestoreEnv(t, nil)
	req := r.request(alice, "restore latest --rebuild")
	r.proxy.SetFaults(faultproxy.Faults{ThrottleRate: 0.1, ServerErrorRate: 0.1, Seed: 7,
		Match: func(c faultproxy.Call) bool { return c.Service == "ec2" }})
	r.click(bob, "approve "+req, "faults.1")
	r.waitText("summary", "Restored `"+r.backup.ID+"`")
	r.server.Wait()
	r.proxy.SetFaults(faultproxy.Faults{})
	r.checkRestored()
	faulted := 0
	for _, c := range r.proxy.Calls() {
		if c.Fault != faultproxy.FaultNone {
			faulted++
		}
	}
	if faulted == 0 {
		t.Fatal("no call was faulted; the test proves nothing")
	}
	t.Logf("%d of %d calls faulted", faulted, len(r.proxy.Calls()))
}

// The answers of the first RegisterImage, RunInstances, StopInstances and
// TerminateInstances are lost after AWS acted on them: the restore still
// makes one image and one instance (tag look-ups, client tokens).
func TestRestoreSurvivesLostAnswers(t *testing.T) {
	t.Parallel()
	r := newRestoreEnv(t, nil)
	req := r.request(alice, "restore latest --rebuild")
	var mu sync.Mutex
	seen := map[string]bool{}
	r.proxy.SetFaults(faultproxy.Faults{LostAnswerRate: 1, Match: func(c faultproxy.Call) bool {
		switch c.Action {
		case "RegisterImage", "RunInstances", "StopInstances", "TerminateInstances":
			mu.Lock()
			defer mu.Unlock()
			first := !seen[c.Action]
			seen[c.Action] = true
			return first
		}
		return false
	}})
	r.click(bob, "approve "+req, "lost.1")
	r.waitText("summary", "Restored `"+r.backup.ID+"`")
	r.server.Wait()
	r.proxy.SetFaults(faultproxy.Faults{})
	r.checkRestored()
	lost := 0
	for _, c := range r.proxy.Calls() {
		if c.Fault == faultproxy.FaultLostAnswer {
			lost++
		}
	}
	if lost != 4 {
		t.Fatalf("%d answers lost, want 4", lost)
	}
	op, _ := r.app.Journal.ByRequest(t.Context(), req)
	imgs, err := ec2.NewFromConfig(r.aws).DescribeImages(context.Background(), &ec2.DescribeImagesInput{Filters: []ec2types.Filter{{Name: aws.String("tag:" + ops.TagRestoreOp), Values: []string{op.ID}}}})
	if err != nil || len(imgs.Images) != 1 {
		t.Fatalf("images of the restore: %v, %d", err, len(imgs.Images))
	}
}

// Bad input is refused with a reason, and nothing is requested or changed.
func TestRestoreRefusesBadSources(t *testing.T) {
	t.Parallel()
	r := newRestoreEnv(t, func(c *config.Config) { c.Backup.Bucket = "circleci-backups-sandbox" })
	ctx := context.Background()
	api := ec2.NewFromConfig(r.aws)
	// A snapshot of another instance's volume (a builder's, say).
	vol, err := api.CreateVolume(ctx, &ec2.CreateVolumeInput{AvailabilityZone: aws.String(r.backup.Shape.AZ), Size: aws.Int32(8)})
	if err != nil {
		t.Fatal(err)
	}
	other, err := api.CreateSnapshot(ctx, &ec2.CreateSnapshotInput{VolumeId: vol.VolumeId, Description: aws.String("builder scratch")})
	if err != nil {
		t.Fatal(err)
	}
	// A restore point whose snapshot failed.
	r.slash(alice, incident, "backup now")
	failed := r.lastBackup(ops.StateCompleted)
	r.server.Wait()
	if err := r.moto.SetSnapshotState(ctx, failed.Snapshots[0].ID, "error", ""); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ cmd, want string }{
		{"restore snap-0123456789abcdef0", "does not exist"},
		{"restore " + aws.ToString(other.SnapshotId), "not a Services box restore point"},
		{"restore " + failed.Snapshots[1].ID, "is error"},
		{"restore snap-xyz", "snapshot"},
		{"restore s3://circleci-backups-sandbox/nope.tar.bz2", "does not exist"},
	} {
		if txt := r.answer(r.slash(alice, incident, c.cmd)); !strings.Contains(txt, c.want) {
			t.Errorf("%s: %q, want %q", c.cmd, txt, c.want)
		}
	}
	r.server.Wait()
	if all, _ := r.app.Approvals.Store.All(t.Context()); len(all) != 0 {
		t.Errorf("bad input made %d requests", len(all))
	}
	if n := len(r.restored()); n != 0 {
		t.Errorf("bad input launched %d instances", n)
	}
	if st := r.instance(r.inst.ServicesBox.ID).State.Name; st != ec2types.InstanceStateNameRunning {
		t.Errorf("the box is %s", st)
	}
}

// Without capacity for the recorded type, the fallback type is launched.
func TestRestoreFallsBackToAnotherInstanceType(t *testing.T) {
	t.Parallel()
	r := newRestoreEnv(t, func(c *config.Config) { c.Restore.FallbackInstanceTypes = []string{"m5a.2xlarge"} })
	if err := r.moto.SetUnavailableTypes(context.Background(), r.backup.Shape.Type); err != nil {
		t.Fatal(err)
	}
	req := r.request(alice, "restore latest --rebuild")
	r.click(bob, "approve "+req, "cap.1")
	r.waitText("capacity note", "no "+r.backup.Shape.Type+" capacity")
	r.waitText("summary", "Restored `"+r.backup.ID+"`", "m5a.2xlarge")
	r.server.Wait()
	got := r.restored()
	if len(got) != 1 || got[0].InstanceType != "m5a.2xlarge" {
		t.Fatalf("restored: %+v", got)
	}
}

// A tarball restore runs circleci-restore on the box: the data is the
// backup's again, what was there is moved aside (never deleted), the app
// is stopped for it and started after, and the download is removed.
func TestTarballRestoreMovesTheDataAsideAndRestartsTheApp(t *testing.T) {
	t.Parallel()
	e, box, ssmSrv := tarballEnvSSM(t)
	e.app.Engine.MinInterval = 20 * time.Millisecond
	e.app.Tarball.Poll = 20 * time.Millisecond
	e.slash(alice, incident, "backup now tarball")
	b := e.lastBackup(ops.StateCompleted)
	e.server.Wait()
	backedUp, err := box.DataTree()
	if err != nil {
		t.Fatal(err)
	}
	// Work done after the backup, which the restore must not destroy.
	if err := os.WriteFile(box.Path("/data/after-backup.txt"), []byte("build 4242\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	uri := "s3://" + b.Bucket + "/" + b.Key
	req := e.request(alice, "restore "+uri)
	// The request shows its pre-flight: the object readable, the agent
	// online, room on the box (read with df through SSM).
	msg := e.waitText("the request's pre-flight", req)
	for _, want := range []string{"Pre-flight", "`s3:GetObject`", "`ssm:DescribeInstanceInformation`", "agent online", "disk space", "MiB in /data"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the request lacks %q:\n%s", want, msg)
		}
	}
	e.click(bob, "approve "+req, "tar.1")
	sum := e.waitText("summary", "Restored `"+uri+"`")
	e.server.Wait()

	aside := box.RestoreAsideDirs()
	if len(aside) != 1 || !strings.Contains(sum, aside[0]) {
		t.Fatalf("moved aside: %v; summary: %s", aside, sum)
	}
	if got, err := os.ReadFile(box.Path(aside[0] + "/after-backup.txt")); err != nil || string(got) != "build 4242\n" {
		t.Errorf("post-backup work is not in %s: %q %v", aside[0], got, err)
	}
	now, err := box.DataTree()
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range backedUp {
		if now[k] != v {
			t.Errorf("after restore %s = %q, the backup had %q", k, now[k], v)
		}
	}
	if _, err := os.Stat(box.Path("/data/after-backup.txt")); !os.IsNotExist(err) {
		t.Errorf("post-backup file still in /data: %v", err)
	}
	if box.AppState() != ssmbox.AppStarted {
		t.Errorf("app is %s", box.AppState())
	}
	// The download URL is a bearer credential: not in Slack.
	for _, c := range e.slack.Calls() {
		if strings.Contains(e.slack.Text(c)+c.BlocksJSON, "X-Amz-Signature") {
			t.Errorf("a presigned URL reached Slack in %s", c.Method)
		}
	}
	var stopped bool
	for _, c := range ssmSrv.Commands() {
		if strings.Contains(strings.Join(c.Lines, "\n"), "replicated apps") && strings.Contains(strings.Join(c.Lines, "\n"), " stop") {
			stopped = true
		}
	}
	if !stopped {
		t.Error("the app was not stopped before circleci-restore")
	}
	noScratchLeft(t, box)
}

// `--dry-run` shows the plan and requests nothing; a plan that changed
// before the approval (a newer restore point for `latest`) runs nothing.
func TestRestoreDryRunAndStalePlan(t *testing.T) {
	t.Parallel()
	r := newRestoreEnv(t, nil)
	txt := r.answer(r.slash(alice, incident, "restore latest --dry-run"))
	if !strings.Contains(txt, "Dry run") || !strings.Contains(txt, r.backup.ID) || !strings.Contains(txt, r.inst.ServicesBox.PrivateIP) {
		t.Fatalf("dry run: %s", txt)
	}
	if all, _ := r.app.Approvals.Store.All(t.Context()); len(all) != 0 {
		t.Fatalf("a dry run made %d requests", len(all))
	}
	req := r.request(alice, "restore latest")
	r.slash(alice, incident, "backup now")
	r.server.Wait()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if b := r.lastBackup(ops.StateCompleted); b.ID != r.backup.ID {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("second backup did not complete")
		}
	}
	// (With lag, the bot's list of restore points shows the new backup
	// only once its reads caught up.)
	r.settle()
	r.click(bob, "approve "+req, "stale.1")
	r.waitText("refusal", req, "not run", "plan changed")
	r.server.Wait()
	if n := len(r.restored()); n != 0 {
		t.Fatalf("a stale plan launched %d instances", n)
	}
	if st := r.instance(r.inst.ServicesBox.ID).State.Name; st != ec2types.InstanceStateNameRunning {
		t.Errorf("the box is %s after a refused restore", st)
	}
	if l, _ := r.app.Store.Locks(t.Context()); len(l) != 0 {
		t.Errorf("locks left: %+v", l)
	}
}

// An image pending past restore.image_timeout stops the restore before
// the old box is touched; once AWS finishes the image, resume goes on
// with the same image and completes.
func TestRestoreWithAnImagePendingForLongResumes(t *testing.T) {
	t.Parallel()
	r := newRestoreEnv(t, nil)
	ctx := context.Background()
	if err := r.moto.SetImagesPending(ctx, true); err != nil {
		t.Fatal(err)
	}
	r.app.Snapshot.ImageTimeout = 300 * time.Millisecond
	req := r.request(alice, "restore latest --rebuild")
	r.click(bob, "approve "+req, "slow.1")
	r.waitText("stopped", "still pending after", "old box was not touched", "resume")
	r.server.Wait()
	if st := r.instance(r.inst.ServicesBox.ID).State.Name; st != ec2types.InstanceStateNameRunning {
		t.Fatalf("the old box is %s while the image was pending", st)
	}
	op, _ := r.app.Journal.ByRequest(t.Context(), req)
	res, _ := ops.ResultOf[ops.RestoreResult](op)
	image := res.ImageID
	if op.State != journal.Stopped || op.Next() != 1 || image == "" {
		t.Fatalf("op after the timeout: %+v", op)
	}
	if err := r.moto.SetImagesPending(ctx, false); err != nil {
		t.Fatal(err)
	}
	r.slash(alice, incident, "resume "+op.ID)
	r.waitText("summary", "Restored `"+r.backup.ID+"`")
	r.server.Wait()
	nb := r.checkRestored()
	if aws.ToString(nb.ImageId) != image {
		t.Errorf("the new box came from %s, not the image the first attempt made (%s)", aws.ToString(nb.ImageId), image)
	}
}

// A tarball restore sends its commands through SSM: with the box's agent
// offline its request shows the refused row and cannot be approved, and
// no command reaches the box.
func TestTarballRestoreWithTheAgentOfflineCannotBeApproved(t *testing.T) {
	t.Parallel()
	e, box, ssmSrv := tarballEnvSSM(t)
	e.slash(alice, incident, "backup now tarball")
	b := e.lastBackup(ops.StateCompleted)
	e.server.Wait()
	sent := len(ssmSrv.Commands())
	before, err := box.DataTree()
	if err != nil {
		t.Fatal(err)
	}
	box.SetOnline(false)
	req, msg := e.blockedRequest(alice, "restore s3://"+b.Bucket+"/"+b.Key)
	for _, want := range []string{"refused", "`ssm:DescribeInstanceInformation` " + e.inst.ServicesBox.ID, "skipped", "disk space"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the request lacks %q:\n%s", want, msg)
		}
	}
	if ans := e.answer(e.slash(bob, incident, "approve "+req)); !strings.Contains(ans, "cannot be approved") {
		t.Fatalf("approve of a blocked request: %s", ans)
	}
	e.server.Wait()
	if n := len(ssmSrv.Commands()); n != sent {
		t.Errorf("%d commands reached the box after the blocked request", n-sent)
	}
	after, err := box.DataTree()
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(before, after) {
		t.Error("the box's data changed")
	}
}
