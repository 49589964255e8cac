package app_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/circlebot/circlebot/internal/approvals"
	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/testenv/motoserver"
)

// pendingPoint makes a restore point of the Services box as the bot's
// EBS backup makes it (one CreateSnapshots of every volume, tagged with
// the backup's ID and described as the bot describes it, then each
// snapshot tagged with its device) and leaves its
// snapshots pending, as `backup now` does until AWS has copied them. It
// returns the backup's ID and makes it r.backup, for the end checks.
func (r *restoreEnv) pendingPoint() (string, []string) {
	t := r.t
	t.Helper()
	ctx := context.Background()
	if err := r.moto.AutoCompleteSnapshots(ctx, 0); err != nil {
		t.Fatal(err)
	}
	id := ops.NewBackupID(time.Now())
	api := ec2.NewFromConfig(r.aws)
	out, err := api.CreateSnapshots(ctx, &ec2.CreateSnapshotsInput{
		InstanceSpecification: &ec2types.InstanceSpecification{InstanceId: aws.String(r.inst.ServicesBox.ID)},
		Description:           aws.String(ops.BackupDescription(time.Now())),
		TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeSnapshot, Tags: []ec2types.Tag{
			{Key: aws.String(ops.TagBackupID), Value: aws.String(id)}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	box := r.instance(r.inst.ServicesBox.ID)
	devices := map[string]string{}
	for _, m := range box.BlockDeviceMappings {
		devices[aws.ToString(m.Ebs.VolumeId)] = aws.ToString(m.DeviceName)
	}
	b := &ops.Backup{ID: id, Shape: r.backup.Shape}
	var ids []string
	for _, s := range out.Snapshots {
		if s.State != ec2types.SnapshotStatePending {
			t.Fatalf("snapshot %s is %s, want pending", aws.ToString(s.SnapshotId), s.State)
		}
		ids = append(ids, aws.ToString(s.SnapshotId))
		dev := devices[aws.ToString(s.VolumeId)]
		b.Snapshots = append(b.Snapshots, ops.SnapshotRef{ID: aws.ToString(s.SnapshotId), Device: dev})
		// As the backup's next step does: each snapshot's device.
		if _, err := api.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{aws.ToString(s.SnapshotId)}, Tags: []ec2types.Tag{
			{Key: aws.String(ops.TagDevice), Value: aws.String(dev)}}}); err != nil {
			t.Fatal(err)
		}
	}
	r.backup = b
	return id, ids
}

func (r *restoreEnv) progress(ids []string, pct string, ago time.Duration) {
	r.t.Helper()
	for _, id := range ids {
		if err := r.moto.SetSnapshotProgress(context.Background(), id, pct, ago); err != nil {
			r.t.Fatal(err)
		}
	}
}

func (r *restoreEnv) snapshotsPending(ids []string) bool {
	r.t.Helper()
	out, err := ec2.NewFromConfig(r.aws).DescribeSnapshots(context.Background(), &ec2.DescribeSnapshotsInput{SnapshotIds: ids})
	if err != nil {
		r.t.Fatal(err)
	}
	for _, s := range out.Snapshots {
		if s.State != ec2types.SnapshotStatePending {
			return false
		}
	}
	return len(out.Snapshots) == len(ids)
}

// waitStopped waits for the Services box to be stopped (when says by
// what, for the failure).
func (r *restoreEnv) waitStopped(when string) {
	r.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for r.instance(r.inst.ServicesBox.ID).State.Name != ec2types.InstanceStateNameStopped {
		if time.Now().After(deadline) {
			r.t.Fatalf("the box was not stopped %s", when)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// complete makes the snapshots completed, as AWS does once it has copied
// them.
func (r *restoreEnv) complete(ids []string) {
	r.t.Helper()
	for _, id := range ids {
		if err := r.moto.SetSnapshotState(r.t.Context(), id, motoserver.SnapshotCompleted, ""); err != nil {
			r.t.Fatal(err)
		}
	}
}

// stepState is the state of the operation's step named so.
func stepState(op *journal.Op, name string) journal.StepState {
	for _, s := range op.Steps {
		if s.Name == name {
			return s.State
		}
	}
	return ""
}

// A restore naming a backup still completing is planned with its
// progress and ETA (and the ETA in the predicted time), keeps the box
// serving while the snapshots need more than a stop takes, stops it
// before they complete (the stop overlaps their tail), makes the volumes
// once they complete, and ends restored in place.
func TestRestoreFromABackupStillCompletingOverlapsTheStopWithItsTail(t *testing.T) {
	t.Parallel()
	r := newRestoreEnv(t, nil)
	bk, ids := r.pendingPoint()
	// 10% in 10 minutes: about 1h30m to go.
	r.progress(ids, "10%", 10*time.Minute)
	req := r.request(alice, "restore "+bk)
	plan := r.waitText("the plan", req, "restore point `"+bk+"` is still completing: 10%")
	for _, want := range []string{"expected to complete in about 1h30m more", "in place: the Services box",
		// The wait until the stop (1h30m less the stop it overlaps), then
		// the in-place path's model default.
		"predicted time to the app starting: about 91–92 min (of which about 1h29m waiting for the restore point to complete",
		"ec2:CreateVolume", "checked when the snapshots complete"} {
		if !strings.Contains(plan, want) {
			t.Errorf("plan lacks %q:\n%s", want, plan)
		}
	}
	stops := realCount(r.proxy, "StopInstances")
	r.click(bob, "approve "+req, "pending.1")
	// The follow reports the progress; the box keeps serving.
	r.waitText("progress", "Restore point `"+bk+"`: 10%, complete in about 1h30m more")
	op, err := r.app.Journal.ByRequest(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if op.Steps[0].Name != "Follow the restore point's snapshots" || op.Steps[0].State != journal.StepRunning {
		t.Fatalf("steps: %+v", op.Steps)
	}
	if st := r.instance(r.inst.ServicesBox.ID).State.Name; st != ec2types.InstanceStateNameRunning || realCount(r.proxy, "StopInstances") != stops {
		t.Fatalf("the box is %s (stops sent: %d) while the snapshots need about 1h30m more", st, realCount(r.proxy, "StopInstances")-stops)
	}
	// 99% in 10 minutes: about 6 s to go, less than a stop (60 s).
	r.progress(ids, "99%", 10*time.Minute)
	r.waitStopped("once the snapshots neared completion")
	// Stopped while the snapshots are still pending: no volume yet.
	if !r.snapshotsPending(ids) {
		t.Fatal("the snapshots completed before the stop: the test shows nothing")
	}
	if n := len(r.restoreVolumes()); n != 0 {
		t.Errorf("%d volumes made from pending snapshots", n)
	}
	r.complete(ids)
	r.waitText("summary", "Restored `"+bk+"` in place onto `"+r.inst.ServicesBox.ID+"`")
	r.server.Wait()
	r.checkRestoredInPlace()
	done, _ := r.app.Journal.Get(t.Context(), op.ID)
	var names []string
	for _, s := range done.Steps {
		names = append(names, s.Name)
	}
	want := "Follow the restore point's snapshots,Protect the old volumes,Stop the Services box,Create the new volumes,Swap the volumes"
	if !strings.HasPrefix(strings.Join(names, ","), want) {
		t.Errorf("steps %v, want them to begin %s", names, want)
	}
}

// A snapshot of the followed restore point goes to error before the
// stop: the box is not touched (not stopped, its volumes not marked),
// no volume is made, and the message names the snapshot and says to
// pick another restore point.
func TestRestoreFromABackupStillCompletingThatFailsLeavesTheBoxServing(t *testing.T) {
	t.Parallel()
	r := newRestoreEnv(t, nil)
	bk, ids := r.pendingPoint()
	req := r.request(alice, "restore "+bk)
	plan := r.waitText("the plan", req, "restore point `"+bk+"` is still completing: 0%")
	if !strings.Contains(plan, "expected to complete in unknown") {
		t.Errorf("plan with no progress yet does not say the ETA is unknown:\n%s", plan)
	}
	r.click(bob, "approve "+req, "pending.err")
	r.waitText("progress", "Restore point `"+bk+"`: 0%, complete in unknown")
	if err := r.moto.SetSnapshotState(t.Context(), ids[0], motoserver.SnapshotError, ""); err != nil {
		t.Fatal(err)
	}
	r.waitText("failure", "snapshot `"+ids[0]+"` of restore point `"+bk+"` failed", "Nothing was changed", "pick another restore point")
	r.server.Wait()
	if st := r.instance(r.inst.ServicesBox.ID).State.Name; st != ec2types.InstanceStateNameRunning {
		t.Errorf("the box is %s, want running (untouched)", st)
	}
	for _, a := range []string{"StopInstances", "ModifyInstanceAttribute", "CreateVolume", "DetachVolume"} {
		if n := realCount(r.proxy, a); n != 0 {
			t.Errorf("%d %s calls", n, a)
		}
	}
	old, err := ec2.NewFromConfig(r.aws).DescribeVolumes(t.Context(), &ec2.DescribeVolumesInput{VolumeIds: r.inst.ServicesBox.Volumes})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range old.Volumes {
		if tagOf(v.Tags, ops.TagKeptBy) != "" || len(v.Attachments) != 1 {
			t.Errorf("old volume %s touched: %+v %+v", aws.ToString(v.VolumeId), v.Tags, v.Attachments)
		}
	}
	op, _ := r.app.Journal.ByRequest(t.Context(), req)
	if stepState(op, "Protect the old volumes") != journal.StepPending {
		t.Errorf("journal: %+v", op.Steps)
	}
}

// `restore latest` with a newer restore point still completing restores
// the newest completed one, and its plan names the newer one, its
// progress and how to restore from it instead.
func TestRestoreLatestMentionsANewerBackupStillCompleting(t *testing.T) {
	t.Parallel()
	r := newRestoreEnv(t, nil)
	older := r.backup
	bk, ids := r.pendingPoint()
	r.progress(ids, "40%", 0)
	req := r.request(alice, "restore latest")
	plan := r.waitText("the plan", req, "source: `"+older.ID+"`")
	for _, want := range []string{"a newer restore point, `" + bk + "`", "is still completing (40%)", "`restore " + bk + "`"} {
		if !strings.Contains(plan, want) {
			t.Errorf("plan lacks %q:\n%s", want, plan)
		}
	}
	r.click(bob, "approve "+req, "latest.newer")
	r.waitText("summary", "Restored `"+older.ID+"` in place")
	r.server.Wait()
	r.backup = older
	r.checkRestoredInPlace()
	if !r.snapshotsPending(ids) {
		t.Error("the newer restore point's snapshots are no longer pending")
	}
}

// The bot dies while following a restore point still completing; a new
// process announces it, and the resume follows again, stops the box for
// the snapshots' tail and ends restored with one volume set.
func TestRestoreFromABackupStillCompletingResumesTheFollowAfterACrash(t *testing.T) {
	t.Parallel()
	r := newRestoreEnv(t, nil)
	bk, ids := r.pendingPoint()
	r.progress(ids, "10%", 10*time.Minute)
	req := r.request(alice, "restore "+bk)
	ctx, stop := context.WithCancel(context.Background())
	web := r.web()
	handled := make(chan struct{})
	go func() {
		defer close(handled)
		r.app.Bot.Handle(ctx, chat.Request{ID: "t1", UserID: bob, ChannelID: incident, Text: "approve " + req, Source: "test"},
			web.For(chat.Request{ChannelID: incident, UserID: bob}))
	}()
	r.waitText("progress", "Restore point `"+bk+"`: 10%")
	stop()
	<-handled
	op, err := r.app.Journal.ByRequest(t.Context(), req)
	if err != nil || op.State != journal.Stopped || op.Next() != 0 {
		t.Fatalf("after the stop: %v, state %s, next step %d (%s)", err, op.State, op.Next()+1, op.Why)
	}
	if st := r.instance(r.inst.ServicesBox.ID).State.Name; st != ec2types.InstanceStateNameRunning {
		t.Fatalf("the box is %s after a cut-off follow", st)
	}
	if _, err := r.app.Journal.Update(t.Context(), op.ID, func(o *journal.Op) error {
		o.State, o.Process, o.Why = journal.Running, "dead-process", ""
		o.Steps[0].State = journal.StepRunning
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	r.restart()
	r.waitText("announcement", op.ID, "was interrupted during step 1 (Follow the restore point's snapshots)", "resume "+op.ID)
	r.progress(ids, "99%", 10*time.Minute)
	r.slash(alice, incident, "resume "+op.ID)
	r.waitStopped("by the resumed restore")
	r.complete(ids)
	r.waitText("summary", "Restored `"+bk+"` in place")
	r.server.Wait()
	r.checkRestoredInPlace()
	if n := realCount(r.proxy, "CreateVolume"); n != len(ids) {
		t.Errorf("%d volumes created, want one set of %d", n, len(ids))
	}
}

// `backup now`, then a restore of that very backup while it still
// follows its snapshots: the backup has freed the Services box once its
// snapshots were requested and tagged, so the restore is offered, not
// refused as busy; a second backup is still refused while the first
// runs (one backup at a time). Both end: the backup a restore point, the
// restore done in place from it.
func TestRestoreOfABackupNowStillRunning(t *testing.T) {
	t.Parallel()
	r := newRestoreEnv(t, nil)
	ctx := t.Context()
	if err := r.moto.AutoCompleteSnapshots(ctx, 0); err != nil {
		t.Fatal(err)
	}
	// A failing test still ends: the backup's handler finishes once its
	// snapshots complete (cleanups run last first: before the server's).
	t.Cleanup(func() { _ = r.moto.AutoCompleteSnapshots(context.Background(), 1) })
	r.slash(alice, incident, "backup now")
	var bk string
	deadline := time.Now().Add(60 * time.Second)
	for bk == "" {
		if time.Now().After(deadline) {
			t.Fatal("the backup did not reach its wait for the snapshots")
		}
		all, err := r.app.Journal.All(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, op := range all {
			if op.Kind == "backup-ebs" && op.ID != r.backup.ID && stepState(op, ops.EBSSteps[3]) == journal.StepRunning {
				bk = op.ID
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if ans := r.answer(r.slash(alice, incident, "backup now")); !strings.Contains(ans, bk) {
		t.Errorf("a second backup while %s runs: %s", bk, ans)
	}
	// (Not r.request: it waits for every handler, and the backup's is
	// still following its snapshots.)
	r.slash(alice, incident, "restore "+bk)
	c := r.waitPost(incident, "the restore's request", func(s string) bool {
		return strings.Contains(s, "Approval needed") && strings.Contains(s, "restore point `"+bk+"` is still completing")
	})
	req := reqIDRE.FindStringSubmatch(r.slack.Text(c))[1]
	// Clicked once the request is recorded as posted (its full plan goes
	// to the thread first), as a person's click comes.
	for r.requestState(req) != approvals.Pending {
		if time.Now().After(deadline.Add(time.Minute)) {
			t.Fatalf("request %s is %s", req, r.requestState(req))
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.click(bob, "approve "+req, "bknow.1")
	r.waitText("the follow", "Restore point `"+bk+"`")
	op, err := r.app.Journal.ByRequest(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	// Stop the box for the tail, then let the snapshots complete.
	var ids []string
	for _, s := range r.snapshotsOf(bk) {
		ids = append(ids, aws.ToString(s.SnapshotId))
	}
	r.progress(ids, "99%", 10*time.Minute)
	for _, id := range ids {
		if err := r.moto.SetSnapshotState(ctx, id, motoserver.SnapshotCompleted, ""); err != nil {
			t.Fatal(err)
		}
	}
	r.waitText("summary", "Restored `"+bk+"` in place onto `"+r.inst.ServicesBox.ID+"`")
	r.waitText("the backup's summary", bk, "restore point")
	r.server.Wait()
	done, err := r.app.Journal.Get(ctx, op.ID)
	if err != nil || done.State != journal.Done {
		t.Fatalf("restore %s: %v %v", op.ID, done, err)
	}
	rec, err := r.app.Backups.Records.Backup(ctx, bk)
	if err != nil || rec.State != ops.StateCompleted {
		t.Fatalf("backup %s: %+v %v", bk, rec, err)
	}
}

// `--rebuild` from a backup still completing: the same follow keeps the
// box serving and stops it before the snapshots complete; the image is
// registered only once they have, and the restore ends on a new box with
// the recorded addresses.
func TestRebuildFromABackupStillCompletingRegistersTheImageOnceItCompletes(t *testing.T) {
	t.Parallel()
	r := newRestoreEnv(t, nil)
	bk, ids := r.pendingPoint()
	r.progress(ids, "10%", 10*time.Minute)
	req := r.request(alice, "restore "+bk+" --rebuild")
	plan := r.waitText("the plan", req, "restore point `"+bk+"` is still completing: 10%")
	for _, want := range []string{"ec2:RegisterImage", "checked when the snapshots complete"} {
		if !strings.Contains(plan, want) {
			t.Errorf("plan lacks %q:\n%s", want, plan)
		}
	}
	if strings.Contains(plan, "in place: the Services box") {
		t.Errorf("--rebuild planned in place:\n%s", plan)
	}
	r.click(bob, "approve "+req, "pending.rebuild")
	r.waitText("progress", "Restore point `"+bk+"`: 10%")
	if st := r.instance(r.inst.ServicesBox.ID).State.Name; st != ec2types.InstanceStateNameRunning {
		t.Fatalf("the box is %s while the snapshots need about 1h30m more", st)
	}
	r.progress(ids, "99%", 10*time.Minute)
	r.waitStopped("once the snapshots neared completion")
	if !r.snapshotsPending(ids) {
		t.Fatal("the snapshots completed before the stop: the test shows nothing")
	}
	if n := realCount(r.proxy, "RegisterImage"); n != 0 {
		t.Errorf("%d RegisterImage calls on pending snapshots", n)
	}
	if n := len(r.restored()); n != 0 {
		t.Errorf("%d instances launched before the snapshots completed", n)
	}
	r.complete(ids)
	r.waitText("summary", "Restored `"+bk+"` onto `")
	r.server.Wait()
	r.checkRestored()
	op, err := r.app.Journal.ByRequest(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range op.Steps {
		names = append(names, s.Name)
	}
	want := "Follow the restore point's snapshots,Protect the old volumes,Stop the old instance,Make an image of the restore point,Free the private IP,Launch the new Services box"
	if !strings.HasPrefix(strings.Join(names, ","), want) {
		t.Errorf("steps %v, want them to begin %s", names, want)
	}
}
