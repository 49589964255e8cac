package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/circlebot/circlebot/internal/commands"
	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/store"
)

// backupEC2 is the Services box (two volumes) and the snapshots made of
// it. Calls a test does not expect fall through to the nil interface and
// panic.
type backupEC2 struct {
	ops.BackupEC2
	mu       sync.Mutex
	creates  int
	tags     int
	complete bool              // snapshots report completed
	snaps    map[string]string // snapshot ID -> backup ID tag
}

func (f *backupEC2) DescribeInstances(context.Context, *ec2.DescribeInstancesInput, ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error) {
	in := ec2types.Instance{InstanceId: aws.String("i-box"), InstanceType: "m5.xlarge", PrivateIpAddress: aws.String("10.0.0.5"),
		State: &ec2types.InstanceState{Name: ec2types.InstanceStateNameRunning}, RootDeviceName: aws.String("/dev/sda1"),
		Tags: []ec2types.Tag{{Key: aws.String("Name"), Value: aws.String("circleci_services")}},
		BlockDeviceMappings: []ec2types.InstanceBlockDeviceMapping{
			{DeviceName: aws.String("/dev/sda1"), Ebs: &ec2types.EbsInstanceBlockDevice{VolumeId: aws.String("vol-root")}},
			{DeviceName: aws.String("/dev/sdf"), Ebs: &ec2types.EbsInstanceBlockDevice{VolumeId: aws.String("vol-data")}},
		}}
	return &ec2.DescribeInstancesOutput{Reservations: []ec2types.Reservation{{Instances: []ec2types.Instance{in}}}}, nil
}

// The box's volumes and image as a backup records them (gp3, no tags).
func (f *backupEC2) DescribeVolumes(_ context.Context, in *ec2.DescribeVolumesInput, _ ...func(*ec2.Options)) (*ec2.DescribeVolumesOutput, error) {
	out := &ec2.DescribeVolumesOutput{}
	for _, id := range in.VolumeIds {
		out.Volumes = append(out.Volumes, ec2types.Volume{VolumeId: aws.String(id), VolumeType: ec2types.VolumeTypeGp3, Size: aws.Int32(8)})
	}
	return out, nil
}

func (f *backupEC2) DescribeImages(context.Context, *ec2.DescribeImagesInput, ...func(*ec2.Options)) (*ec2.DescribeImagesOutput, error) {
	return &ec2.DescribeImagesOutput{}, nil
}

func (f *backupEC2) CreateSnapshots(_ context.Context, in *ec2.CreateSnapshotsInput, _ ...func(*ec2.Options)) (*ec2.CreateSnapshotsOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.creates++
	id := ""
	for _, t := range in.TagSpecifications[0].Tags {
		if aws.ToString(t.Key) == ops.TagBackupID {
			id = aws.ToString(t.Value)
		}
	}
	out := &ec2.CreateSnapshotsOutput{}
	for _, v := range []string{"vol-root", "vol-data"} {
		s := fmt.Sprintf("snap-%d-%s", f.creates, v)
		f.snaps[s] = id
		out.Snapshots = append(out.Snapshots, ec2types.SnapshotInfo{SnapshotId: aws.String(s), VolumeId: aws.String(v), VolumeSize: aws.Int32(8), State: ec2types.SnapshotStatePending})
	}
	return out, nil
}

func (f *backupEC2) CreateTags(context.Context, *ec2.CreateTagsInput, ...func(*ec2.Options)) (*ec2.CreateTagsOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tags++
	return &ec2.CreateTagsOutput{}, nil
}

func (f *backupEC2) DescribeSnapshots(_ context.Context, in *ec2.DescribeSnapshotsInput, _ ...func(*ec2.Options)) (*ec2.DescribeSnapshotsOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	state := ec2types.SnapshotStatePending
	if f.complete {
		state = ec2types.SnapshotStateCompleted
	}
	out := &ec2.DescribeSnapshotsOutput{}
	for id, backup := range f.snaps {
		match := len(in.SnapshotIds) == 0
		for _, want := range in.SnapshotIds {
			match = match || want == id
		}
		for _, fl := range in.Filters {
			match = match && aws.ToString(fl.Name) == "tag:"+ops.TagBackupID && fl.Values[0] == backup
		}
		if match {
			vol := id[strings.LastIndex(id, "-vol-")+1:]
			out.Snapshots = append(out.Snapshots, ec2types.Snapshot{SnapshotId: aws.String(id), VolumeId: aws.String(vol), VolumeSize: aws.Int32(8), State: state, Progress: aws.String("50%")})
		}
	}
	return out, nil
}

// kindsEngine is an engine on a bbolt store with the real backup and
// drill kinds (and fakes for the destructive commands).
func kindsEngine(t *testing.T, register func(*Registry, *store.Store)) (*Engine, *store.Store) {
	t.Helper()
	e, st := newEngine(t, &world{})
	register(e.Kinds, st)
	if err := e.Kinds.Check(); err != nil {
		t.Fatal(err)
	}
	return e, st
}

func setup() Setup { return Setup{SlashCommand: "/circleci", NameTag: "circleci_services"} }

// crashed journals op as a dead process left it: running its step
// `at`, the steps before done, with the typed result r.
func crashed(t *testing.T, e *Engine, st *store.Store, op *journal.Op, at int, r any) {
	t.Helper()
	now := time.Now()
	res, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	op.Result, op.State, op.Process, op.Created, op.Updated, op.Channel, op.Requester = res, journal.Running, "dead-process", now, now, "C1", "U0ALICE"
	for i := range op.Steps {
		switch {
		case i < at:
			op.Steps[i].State = journal.StepDone
		case i == at:
			op.Steps[i].State = journal.StepRunning
		}
	}
	if err := e.Journal.Create(context.Background(), op); err != nil {
		t.Fatal(err)
	}
	if _, err := st.TryLock(context.Background(), store.Lock{Key: op.Target, OpID: op.ID, Process: "dead-process"}); err != nil {
		t.Fatal(err)
	}
}

func steps(names []string) []journal.Step {
	out := make([]journal.Step, len(names))
	for i, n := range names {
		out[i] = journal.Step{Name: n, State: journal.StepPending}
	}
	return out
}

func waitDone(t *testing.T, e *Engine, id string) *journal.Op {
	t.Helper()
	e.Wait()
	op, err := e.Journal.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return op
}

// An EBS backup whose process died is continued by recovery on its own,
// from where it stopped, and never makes a second snapshot set: cut off
// while following its snapshots, it follows them again; cut off after
// asking for the set but before the answer was journaled, it finds the
// set by the backup's tag and adopts it.
func TestABackupCutOffIsContinuedWithoutASecondSnapshotSet(t *testing.T) {
	for _, tc := range []struct {
		name string
		at   int  // the step the process died in
		sent bool // the set was asked for and journaled as such
	}{
		{"at the wait step", 3, true},
		{"after asking for the set, before its answer was journaled", 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &backupEC2{snaps: map[string]string{}}
			var recs ops.Records
			e, st := kindsEngine(t, func(r *Registry, st *store.Store) {
				recs = ops.Records{Store: st}
				b := Backups{EBS: &ops.EBSBackup{EC2: f, Records: recs, NameTag: "circleci_services", PollMin: time.Millisecond, PollMax: time.Millisecond}, Records: recs}
				Register(r, BackupEBS(setup(), b))
				Register(r, BackupTarball(setup(), b))
			})
			ctx := context.Background()
			id := ops.NewBackupID(time.Now())
			// What the dead process did: the set exists in AWS.
			if _, err := f.CreateSnapshots(ctx, &ec2.CreateSnapshotsInput{TagSpecifications: []ec2types.TagSpecification{{Tags: []ec2types.Tag{{Key: aws.String(ops.TagBackupID), Value: aws.String(id)}}}}}); err != nil {
				t.Fatal(err)
			}
			rec := ops.Backup{ID: id, Method: ops.MethodEBS, State: ops.StateRunning, Trigger: "manual", Requester: "U0ALICE", Channel: "C1", Started: time.Now(),
				Shape: ops.Shape{InstanceID: "i-box", PrivateIP: "10.0.0.5"}}
			if tc.at > 1 {
				rec.Snapshots = []ops.SnapshotRef{{ID: "snap-1-vol-data", VolumeID: "vol-data", Device: "/dev/sdf", SizeGiB: 8}, {ID: "snap-1-vol-root", VolumeID: "vol-root", Device: "/dev/sda1", SizeGiB: 8}}
			}
			if err := recs.SaveBackup(ctx, &rec); err != nil {
				t.Fatal(err)
			}
			crashed(t, e, st, &journal.Op{ID: id, Kind: KindBackupEBS, Title: "EBS backup", Target: BoxLock("circleci_services"), Plan: `{"method":"ebs"}`, Steps: steps(ops.EBSSteps)},
				tc.at, ops.BackupWork{Record: rec, Sent: tc.sent})
			f.mu.Lock()
			f.complete = true
			f.mu.Unlock()

			o := &out{}
			e.Recover(ctx, func(string) Out { return o })
			op := waitDone(t, e, id)
			e.Recover(ctx, func(string) Out { return o }) // nothing left to do
			e.Wait()
			if op.State != journal.Done {
				t.Fatalf("the backup is %s (%s), want done", op.State, op.Why)
			}
			if f.creates != 1 {
				t.Errorf("CreateSnapshots called %d times in all, want the dead process's 1", f.creates)
			}
			got, err := recs.Backup(ctx, id)
			if err != nil || got.State != ops.StateCompleted || len(got.Snapshots) != 2 {
				t.Fatalf("record: %+v %v", got, err)
			}
			if !o.said("resumed after a bot restart") || !o.said("Restore point `"+id+"`") {
				t.Errorf("said: %q", o.posts)
			}
			if o.said("was interrupted") {
				t.Errorf("a continued backup was announced as interrupted: %q", o.posts)
			}
			if l := locked(t, st); len(l) != 0 {
				t.Errorf("locks left: %v", l)
			}
		})
	}
}

// A backup started through the engine that the bot stops under (a
// shutdown) keeps its record running and frees the box; the next
// recovery follows it to the end.
func TestABackupStoppedByAShutdownIsFollowedAtTheNextStart(t *testing.T) {
	f := &backupEC2{snaps: map[string]string{}}
	var recs ops.Records
	e, st := kindsEngine(t, func(r *Registry, st *store.Store) {
		recs = ops.Records{Store: st}
		b := Backups{EBS: &ops.EBSBackup{EC2: f, Records: recs, NameTag: "circleci_services", PollMin: time.Millisecond, PollMax: 5 * time.Millisecond}, Records: recs}
		Register(r, BackupEBS(setup(), b))
	})
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan string, 1)
	go func() {
		id, _ := e.Start(ctx, commands.Command{Name: commands.BackupNow}, "U0ALICE", "C1", &out{})
		done <- id
	}()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		f.mu.Lock()
		n := f.creates
		f.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no snapshots")
		}
	}
	stop()
	id := <-done
	op, _ := e.Journal.Get(context.Background(), id)
	rec, _ := recs.Backup(context.Background(), id)
	if op.State != journal.Stopped || rec.State != ops.StateRunning || len(locked(t, st)) != 0 {
		t.Fatalf("after the shutdown: op %s, record %s, locks %v", op.State, rec.State, locked(t, st))
	}
	f.mu.Lock()
	f.complete = true
	f.mu.Unlock()
	o := &out{}
	e.Recover(context.Background(), func(string) Out { return o })
	if op := waitDone(t, e, id); op.State != journal.Done {
		t.Fatalf("op %s: %s", op.State, op.Why)
	}
	if rec, _ := recs.Backup(context.Background(), id); rec.State != ops.StateCompleted || f.creates != 1 {
		t.Errorf("record %s after %d CreateSnapshots", rec.State, f.creates)
	}
}

// tarballBox is the SSM and S3 a tarball backup's clean-up talks to.
type tarballBox struct {
	ops.SSM
	ops.S3
	mu        sync.Mutex
	cancelled []string
	aborted   []string
	sent      []string
	status    map[string]ssmtypes.CommandInvocationStatus
}

func (b *tarballBox) GetCommandInvocation(_ context.Context, in *ssm.GetCommandInvocationInput, _ ...func(*ssm.Options)) (*ssm.GetCommandInvocationOutput, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return &ssm.GetCommandInvocationOutput{Status: b.status[aws.ToString(in.CommandId)]}, nil
}

func (b *tarballBox) CancelCommand(_ context.Context, in *ssm.CancelCommandInput, _ ...func(*ssm.Options)) (*ssm.CancelCommandOutput, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cancelled = append(b.cancelled, aws.ToString(in.CommandId))
	b.status[aws.ToString(in.CommandId)] = ssmtypes.CommandInvocationStatusCancelled
	return &ssm.CancelCommandOutput{}, nil
}

func (b *tarballBox) SendCommand(_ context.Context, in *ssm.SendCommandInput, _ ...func(*ssm.Options)) (*ssm.SendCommandOutput, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	id := fmt.Sprintf("cmd-sent-%d", len(b.sent)+1)
	b.sent = append(b.sent, aws.ToString(in.Comment))
	b.status[id] = ssmtypes.CommandInvocationStatusSuccess
	return &ssm.SendCommandOutput{Command: &ssmtypes.Command{CommandId: aws.String(id)}}, nil
}

func (b *tarballBox) AbortMultipartUpload(_ context.Context, in *s3.AbortMultipartUploadInput, _ ...func(*s3.Options)) (*s3.AbortMultipartUploadOutput, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.aborted = append(b.aborted, aws.ToString(in.UploadId))
	return &s3.AbortMultipartUploadOutput{}, nil
}

// A tarball backup whose process died mid-upload is never run again: one
// recovery (of the several that see it, here or on other replicas)
// cancels its command, aborts its upload and removes its scratch
// directory, records it as interrupted, and says so once.
func TestATarballBackupCutOffIsAbandonedWithItsCleanupOnce(t *testing.T) {
	box := &tarballBox{status: map[string]ssmtypes.CommandInvocationStatus{"cmd-upload": ssmtypes.CommandInvocationStatusInProgress}}
	var recs ops.Records
	e, st := kindsEngine(t, func(r *Registry, st *store.Store) {
		recs = ops.Records{Store: st}
		b := Backups{Tarball: &ops.TarballBackup{SSM: box, S3: box, Records: recs, NameTag: "circleci_services", Bucket: "bk", Poll: time.Millisecond}, Records: recs}
		Register(r, BackupTarball(setup(), b))
	})
	ctx := context.Background()
	id := ops.NewBackupID(time.Now())
	rec := ops.Backup{ID: id, Method: ops.MethodTarball, State: ops.StateRunning, Trigger: "manual", Requester: "U0ALICE", Channel: "C1", Started: time.Now(),
		Shape: ops.Shape{InstanceID: "i-box"}, Bucket: "bk", Key: "circleci-backups/" + id + "/x.tar.bz2", UploadID: "up-1", CommandID: "cmd-upload", Size: 10, SHA256: strings.Repeat("a", 64)}
	if err := recs.SaveBackup(ctx, &rec); err != nil {
		t.Fatal(err)
	}
	crashed(t, e, st, &journal.Op{ID: id, Kind: KindBackupTarball, Title: "Tarball backup", Target: BoxLock("circleci_services"), Plan: `{"method":"tarball"}`, Steps: steps(ops.TarballSteps)},
		3, ops.BackupWork{Record: rec, Scratch: true})

	o := &out{}
	for range 3 {
		e.Recover(ctx, func(string) Out { return o })
	}
	e.Wait()
	op, _ := e.Journal.Get(ctx, id)
	if op.State != journal.Failed {
		t.Errorf("op %s, want failed (closed)", op.State)
	}
	if len(box.cancelled) != 1 || len(box.aborted) != 1 || len(box.sent) != 1 || !strings.Contains(box.sent[0], "clean up") {
		t.Errorf("cancelled %v, aborted %v, sent %v: want the command cancelled, the upload aborted and one clean-up, once", box.cancelled, box.aborted, box.sent)
	}
	got, _ := recs.Backup(ctx, id)
	if got.State != ops.StateInterrupted {
		t.Errorf("record %s, want interrupted", got.State)
	}
	n := 0
	for _, p := range o.posts {
		if strings.Contains(p, id) {
			n++
			for _, want := range []string{"cancelled SSM command cmd-upload", "aborted the unfinished upload", "removed /tmp/circlebot-" + id, "not run again"} {
				if !strings.Contains(p, want) {
					t.Errorf("report lacks %q: %s", want, p)
				}
			}
		}
	}
	if n != 1 {
		t.Errorf("reported %d times: %q", n, o.posts)
	}
	if l := locked(t, st); len(l) != 0 {
		t.Errorf("locks left: %v", l)
	}
}

// drillEC2 holds what a dead drill left: its instance and its image.
type drillEC2 struct {
	ops.DrillEC2
	mu           sync.Mutex
	terminated   bool
	deregistered int
	terminations int
}

func (f *drillEC2) DescribeInstances(_ context.Context, in *ec2.DescribeInstancesInput, _ ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	state := ec2types.InstanceStateNameRunning
	if f.terminated {
		state = ec2types.InstanceStateNameTerminated
	}
	inst := ec2types.Instance{InstanceId: aws.String("i-drill"), State: &ec2types.InstanceState{Name: state}}
	return &ec2.DescribeInstancesOutput{Reservations: []ec2types.Reservation{{Instances: []ec2types.Instance{inst}}}}, nil
}

func (f *drillEC2) TerminateInstances(context.Context, *ec2.TerminateInstancesInput, ...func(*ec2.Options)) (*ec2.TerminateInstancesOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.terminated = true
	f.terminations++
	return &ec2.TerminateInstancesOutput{}, nil
}

func (f *drillEC2) DescribeVolumes(context.Context, *ec2.DescribeVolumesInput, ...func(*ec2.Options)) (*ec2.DescribeVolumesOutput, error) {
	return &ec2.DescribeVolumesOutput{}, nil
}

func (f *drillEC2) DescribeImages(context.Context, *ec2.DescribeImagesInput, ...func(*ec2.Options)) (*ec2.DescribeImagesOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.deregistered > 0 {
		return &ec2.DescribeImagesOutput{}, nil
	}
	return &ec2.DescribeImagesOutput{Images: []ec2types.Image{{ImageId: aws.String("ami-drill"), State: ec2types.ImageStateAvailable}}}, nil
}

func (f *drillEC2) DeregisterImage(context.Context, *ec2.DeregisterImageInput, ...func(*ec2.Options)) (*ec2.DeregisterImageOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deregistered++
	return &ec2.DeregisterImageOutput{}, nil
}

// A drill whose replica died is torn down by recovery, once, whichever
// replica finds it; the record says it was interrupted and the channel
// is told what was removed.
func TestADeadReplicasDrillIsTornDownOnce(t *testing.T) {
	f := &drillEC2{}
	var drills ops.Drills
	e, st := kindsEngine(t, func(r *Registry, st *store.Store) {
		drills = ops.Drills{Store: st}
		runner := &ops.DrillRunner{EC2: f, Restore: &ops.SnapshotRestore{EC2: f, NameTag: "circleci_services", Poll: time.Millisecond}, Records: drills,
			Subnet: "subnet-drill", SecurityGroup: "sg-drill", Poll: time.Millisecond}
		Register(r, Drill(setup(), runner, drills))
	})
	ctx := context.Background()
	id := ops.NewDrillID(time.Now())
	d := ops.Drill{ID: id, State: ops.DrillRunning, Trigger: "manual", Requester: "U0ALICE", Channel: "C1", Started: time.Now(), ImageID: "ami-drill", InstanceID: "i-drill", Process: "dead-process"}
	if err := drills.Save(ctx, &d); err != nil {
		t.Fatal(err)
	}
	crashed(t, e, st, &journal.Op{ID: id, Kind: KindDrill, Title: "Restore drill", Target: DrillLock, Plan: `{}`, Steps: steps(ops.DrillSteps)}, 3, ops.DrillWork{Drill: d, IP: "10.9.0.4"})

	o := &out{}
	e.Recover(ctx, func(string) Out { return o })
	e.Recover(ctx, func(string) Out { return o })
	e.Wait()
	if f.terminations != 1 || f.deregistered != 1 {
		t.Errorf("%d terminations, %d deregistrations: want one each", f.terminations, f.deregistered)
	}
	got, _ := drills.Get(ctx, id)
	if got.State != ops.DrillInterrupted {
		t.Errorf("drill record %s, want interrupted", got.State)
	}
	n := 0
	for _, p := range o.posts {
		if strings.Contains(p, "cut off by a bot restart") {
			n++
			if !strings.Contains(p, "terminated i-drill") || !strings.Contains(p, "deregistered ami-drill") {
				t.Errorf("report does not say what was removed: %s", p)
			}
		}
	}
	if n != 1 {
		t.Errorf("reported %d times: %q", n, o.posts)
	}
	if l := locked(t, st); len(l) != 0 {
		t.Errorf("locks left: %v", l)
	}
	// The next drill is not refused by the dead one.
	if err := e.checkFree(ctx, []string{DrillLock}); err != nil {
		t.Errorf("the drill lock is still held: %v", err)
	}
}

// A backup record a version before the engine left running is journaled
// by recovery and followed to the end like any other.
func TestABackupFromBeforeTheEngineIsFollowed(t *testing.T) {
	f := &backupEC2{snaps: map[string]string{}, complete: true}
	var recs ops.Records
	e, st := kindsEngine(t, func(r *Registry, st *store.Store) {
		recs = ops.Records{Store: st}
		b := Backups{EBS: &ops.EBSBackup{EC2: f, Records: recs, NameTag: "circleci_services", PollMin: time.Millisecond, PollMax: time.Millisecond}, Records: recs}
		Register(r, BackupEBS(setup(), b))
	})
	ctx := context.Background()
	id := ops.NewBackupID(time.Now())
	if _, err := f.CreateSnapshots(ctx, &ec2.CreateSnapshotsInput{TagSpecifications: []ec2types.TagSpecification{{Tags: []ec2types.Tag{{Key: aws.String(ops.TagBackupID), Value: aws.String(id)}}}}}); err != nil {
		t.Fatal(err)
	}
	rec := ops.Backup{ID: id, Method: ops.MethodEBS, State: ops.StateRunning, Trigger: "scheduled", Requester: "scheduler", Channel: "C1", Started: time.Now(),
		Shape: ops.Shape{InstanceID: "i-box"}, Snapshots: []ops.SnapshotRef{{ID: "snap-1-vol-data", VolumeID: "vol-data", Device: "/dev/sdf"}, {ID: "snap-1-vol-root", VolumeID: "vol-root", Device: "/dev/sda1"}}}
	if err := recs.SaveBackup(ctx, &rec); err != nil {
		t.Fatal(err)
	}
	// The old version's lock, of its dead process.
	if _, err := st.TryLock(ctx, store.Lock{Key: BoxLock("circleci_services"), OpID: id, Process: "dead-process"}); err != nil {
		t.Fatal(err)
	}
	o := &out{}
	e.Recover(ctx, func(string) Out { return o })
	if op := waitDone(t, e, id); op.State != journal.Done {
		t.Fatalf("op %s (%s)", op.State, op.Why)
	}
	if got, _ := recs.Backup(ctx, id); got.State != ops.StateCompleted || f.creates != 1 {
		t.Errorf("record %s, %d CreateSnapshots", got.State, f.creates)
	}
	if l := locked(t, st); len(l) != 0 {
		t.Errorf("locks left: %v", l)
	}
}

// Recover is the one call for every record a dead process may leave:
// what is not an operation (the schedule's run records) is checked in it
// too, after the operations.
func TestRecoverAlsoChecksWhatIsNotAnOperation(t *testing.T) {
	e, _ := newEngine(t, &world{})
	n := 0
	e.AlsoRecover = []func(context.Context){func(context.Context) { n++ }}
	e.Recover(context.Background(), func(string) Out { return &out{} })
	if n != 1 {
		t.Errorf("AlsoRecover ran %d times, want 1", n)
	}
}
