package app_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/testenv/faultproxy"
	"github.com/circlebot/circlebot/internal/testenv/ssmbox"
)

// restoreVolumes lists the volumes restores made (tag restore-op).
func (r *restoreEnv) restoreVolumes() []ec2types.Volume {
	r.t.Helper()
	out, err := ec2.NewFromConfig(r.aws).DescribeVolumes(context.Background(), &ec2.DescribeVolumesInput{Filters: []ec2types.Filter{
		{Name: aws.String("tag-key"), Values: []string{ops.TagRestoreOp}}}})
	if err != nil {
		r.t.Fatal(err)
	}
	return out.Volumes
}

// checkRestoredInPlace asserts the end state of an in-place restore: the
// same instance running at the same IP, one volume set made from the
// backup's snapshots on the recorded devices (root included), the old
// volumes detached and kept, no instance launched, no image made, and
// the app started.
func (r *restoreEnv) checkRestoredInPlace() {
	t := r.t
	t.Helper()
	if n := len(r.restored()); n != 0 {
		t.Errorf("an in-place restore launched %d instances", n)
	}
	box := r.instance(r.inst.ServicesBox.ID)
	if box.State.Name != ec2types.InstanceStateNameRunning || aws.ToString(box.PrivateIpAddress) != r.inst.ServicesBox.PrivateIP {
		t.Errorf("the box is %s at %s, want running at %s", box.State.Name, aws.ToString(box.PrivateIpAddress), r.inst.ServicesBox.PrivateIP)
	}
	vols := r.restoreVolumes()
	if len(vols) != len(r.backup.Snapshots) {
		t.Fatalf("%d restored volumes, want exactly %d (one set)", len(vols), len(r.backup.Snapshots))
	}
	bySnap := map[string]string{}
	for _, s := range r.backup.Snapshots {
		bySnap[s.ID] = s.Device
	}
	attached := map[string]string{}
	for _, m := range box.BlockDeviceMappings {
		attached[aws.ToString(m.DeviceName)] = aws.ToString(m.Ebs.VolumeId)
	}
	for _, v := range vols {
		dev := bySnap[aws.ToString(v.SnapshotId)]
		if dev == "" || attached[dev] != aws.ToString(v.VolumeId) {
			t.Errorf("restored volume %s (from %s) is not on its device %q (%v)", aws.ToString(v.VolumeId), aws.ToString(v.SnapshotId), dev, attached)
		}
		if aws.ToString(v.AvailabilityZone) != aws.ToString(box.Placement.AvailabilityZone) {
			t.Errorf("restored volume %s in %s, the box in %s", aws.ToString(v.VolumeId), aws.ToString(v.AvailabilityZone), aws.ToString(box.Placement.AvailabilityZone))
		}
	}
	if _, ok := attached[r.backup.Shape.RootDevice]; !ok {
		t.Errorf("no root device %s on the box", r.backup.Shape.RootDevice)
	}
	old, err := ec2.NewFromConfig(r.aws).DescribeVolumes(context.Background(), &ec2.DescribeVolumesInput{VolumeIds: r.inst.ServicesBox.Volumes})
	if err != nil || len(old.Volumes) != len(r.inst.ServicesBox.Volumes) {
		t.Fatalf("old volumes: %v", err)
	}
	for _, v := range old.Volumes {
		if len(v.Attachments) != 0 || !strings.HasPrefix(tagOf(v.Tags, ops.TagReplacedBy), "op-") || tagOf(v.Tags, ops.TagKeptFrom) != r.inst.ServicesBox.ID {
			t.Errorf("old volume %s: attachments %+v, tags %+v; want detached and tagged", aws.ToString(v.VolumeId), v.Attachments, v.Tags)
		}
	}
	imgs, err := ec2.NewFromConfig(r.aws).DescribeImages(context.Background(), &ec2.DescribeImagesInput{Owners: []string{"self"}, Filters: []ec2types.Filter{{Name: aws.String("tag-key"), Values: []string{ops.TagRestoreOp}}}})
	if err != nil || len(imgs.Images) != 0 {
		t.Errorf("images of an in-place restore: %v, %d", err, len(imgs.Images))
	}
	if r.oldBox.AppState() != ssmbox.AppStarted {
		t.Errorf("the app was not started again on the box")
	}
}

// The plan restores in place while the box is there, says why, and the
// restore swaps the volumes on the same instance.
func TestRestoreInPlaceKeepsTheInstanceAndItsIP(t *testing.T) {
	t.Parallel()
	r := newRestoreEnv(t, nil)
	r.oldBox.SetAppState(ssmbox.AppStopped) // a start after the swap must start it
	req := r.request(alice, "restore latest")
	plan := r.waitText("the plan", req, "in place: the Services box `"+r.inst.ServicesBox.ID+"` is running")
	for _, want := range []string{"create volumes in", "root included", ops.TagReplacedBy, "`--rebuild`",
		"predicted time to the app starting: about 2–3 min — the AWS timing model's default"} {
		if !strings.Contains(plan, want) {
			t.Errorf("plan lacks %q:\n%s", want, plan)
		}
	}
	r.click(bob, "approve "+req, "inplace.1")
	r.waitText("summary", "Restored `"+r.backup.ID+"` in place onto `"+r.inst.ServicesBox.ID+"`", "The app started", "(predicted 2m20s)")
	r.server.Wait()
	r.checkRestoredInPlace()
	// The next plan predicts from this one's measured steps.
	op, _ := r.app.Journal.ByRequest(t.Context(), req)
	if txt := r.answer(r.slash(alice, incident, "restore latest --dry-run")); !strings.Contains(txt, "measured over the last in-place restore ("+op.ID+")") {
		t.Errorf("the second plan does not predict from the first restore: %s", txt)
	}
}

// The bot dies in the middle of the swap (the first volume detached, its
// new one not yet attached); a new process resumes it, and it finishes
// with one volume set and without creating any volume again.
func TestRestoreInPlaceInterruptedMidSwapResumesWithoutASecondVolumeSet(t *testing.T) {
	t.Parallel()
	r := newRestoreEnv(t, nil)
	req := r.request(alice, "restore latest")
	ctx, stop := context.WithCancel(context.Background())
	var once sync.Once
	r.proxy.SetFaults(faultproxy.Faults{Match: func(c faultproxy.Call) bool {
		if c.Action == "AttachVolume" && !isDryRun(c) {
			once.Do(stop)
		}
		return false
	}})
	web := r.web()
	r.app.Bot.Handle(ctx, chat.Request{ID: "t1", UserID: bob, ChannelID: incident, Text: "approve " + req, Source: "test"},
		web.For(chat.Request{ChannelID: incident, UserID: bob}))
	r.proxy.SetFaults(faultproxy.Faults{})
	op, err := r.app.Journal.ByRequest(t.Context(), req)
	if err != nil || op.State != journal.Stopped || op.Next() != 4 {
		t.Fatalf("after the stop: %v, state %s, next step %d (%s)", err, op.State, op.Next()+1, op.Why)
	}
	if _, err := r.app.Journal.Update(t.Context(), op.ID, func(o *journal.Op) error {
		o.State, o.Process, o.Why = journal.Running, "dead-process", ""
		o.Steps[4].State = journal.StepRunning
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	r.restart()
	r.waitText("announcement", op.ID, "was interrupted during step 5 (Swap the volumes)", "resume "+op.ID)
	created := realCount(r.proxy, "CreateVolume")
	r.slash(alice, incident, "resume "+op.ID)
	r.waitText("summary", "Restored `"+r.backup.ID+"` in place")
	r.server.Wait()
	r.checkRestoredInPlace()
	if n := realCount(r.proxy, "CreateVolume") - created; n != 0 {
		t.Errorf("the resume created %d volumes; the set existed", n)
	}
	done, _ := r.app.Journal.Get(t.Context(), op.ID)
	if done.State != journal.Done || done.Steps[1].Attempts != 1 {
		t.Errorf("journal after resume: %+v", done)
	}
}

// The answers of the first CreateVolume, StopInstances, DetachVolume,
// AttachVolume and StartInstances are lost after AWS acted on them: the
// restore still makes one volume set and ends restored.
func TestRestoreInPlaceSurvivesLostAnswers(t *testing.T) {
	t.Parallel()
	r := newRestoreEnv(t, nil)
	req := r.request(alice, "restore latest")
	var mu sync.Mutex
	seen := map[string]bool{}
	lose := []string{"CreateVolume", "StopInstances", "DetachVolume", "AttachVolume", "StartInstances"}
	r.proxy.SetFaults(faultproxy.Faults{LostAnswerRate: 1, Match: func(c faultproxy.Call) bool {
		for _, a := range lose {
			if c.Action == a && !isDryRun(c) {
				mu.Lock()
				defer mu.Unlock()
				first := !seen[a]
				seen[a] = true
				return first
			}
		}
		return false
	}})
	r.click(bob, "approve "+req, "lost.inplace")
	r.waitText("summary", "Restored `"+r.backup.ID+"` in place")
	r.server.Wait()
	r.proxy.SetFaults(faultproxy.Faults{})
	r.checkRestoredInPlace()
	lost := 0
	for _, c := range r.proxy.Calls() {
		if c.Fault == faultproxy.FaultLostAnswer {
			lost++
		}
	}
	if lost != len(lose) {
		t.Fatalf("%d answers lost, want %d", lost, len(lose))
	}
}

// With a fifth of EC2 calls throttled or failing, the in-place restore
// completes, once.
func TestRestoreInPlaceCompletesOnceUnderAWSFaults(t *testing.T) {
	t.Parallel()
	r := newRestoreEnv(t, nil)
	req := r.request(alice, "restore latest")
	r.proxy.SetFaults(faultproxy.Faults{ThrottleRate: 0.1, ServerErrorRate: 0.1, Seed: 11,
		Match: func(c faultproxy.Call) bool { return c.Service == "ec2" }})
	r.click(bob, "approve "+req, "faults.inplace")
	r.waitText("summary", "Restored `"+r.backup.ID+"` in place")
	r.server.Wait()
	r.proxy.SetFaults(faultproxy.Faults{})
	r.checkRestoredInPlace()
	faulted := 0
	for _, c := range r.proxy.Calls() {
		if c.Fault != faultproxy.FaultNone {
			faulted++
		}
	}
	if faulted == 0 {
		t.Fatal("no call was faulted; the test proves nothing")
	}
}

// A cancel while the volumes are being created stops before the box is
// touched; giving it up names the volumes it made.
func TestRestoreInPlaceCancelBeforeTheStopLeavesTheBoxServing(t *testing.T) {
	t.Parallel()
	r := newRestoreEnv(t, nil)
	req := r.request(alice, "restore latest")
	var once sync.Once
	r.proxy.SetFaults(faultproxy.Faults{Match: func(c faultproxy.Call) bool {
		if c.Action == "CreateVolume" && !isDryRun(c) {
			once.Do(func() {
				// The restore's operation (the env's backup is journaled too).
				op, _ := r.app.Journal.ByRequest(t.Context(), req)
				ops_ := []*journal.Op{op}
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
	r.click(bob, "approve "+req, "cancel.inplace")
	r.waitText("stopped", "Stopped by <@"+alice+">", "before step 3", "is running")
	r.server.Wait()
	r.proxy.SetFaults(faultproxy.Faults{})
	if st := r.instance(r.inst.ServicesBox.ID).State.Name; st != ec2types.InstanceStateNameRunning {
		t.Errorf("the box is %s after a cancel before the stop", st)
	}
	op, _ := r.app.Journal.ByRequest(t.Context(), req)
	r.slash(alice, incident, "cancel "+op.ID)
	txt := r.waitText("given up", "gave up `"+op.ID+"`")
	for _, v := range r.restoreVolumes() {
		if !strings.Contains(txt, aws.ToString(v.VolumeId)) {
			t.Errorf("give-up message does not name %s: %s", aws.ToString(v.VolumeId), txt)
		}
	}
}
