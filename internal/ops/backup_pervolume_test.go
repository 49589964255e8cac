package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// pvEC2 is an EC2 where CreateSnapshots is not available (it answers
// createSnapshotsErrs in turn), so a backup falls back to one
// CreateSnapshot per volume. It keeps every snapshot it made; a snapshot
// it is asked about by ID is completed from then on.
type pvEC2 struct {
	mu                  sync.Mutex
	box                 ec2types.Instance
	sizes               map[string]int32 // volume -> GiB
	createSnapshotsErrs []error
	createSnapshots     int
	failVolume          map[string]error // CreateSnapshot answers this and makes nothing
	lostVolume          map[string]bool  // CreateSnapshot makes the snapshot, then the answer is lost
	creates             []pvCreate
	snaps               []ec2types.Snapshot
	createTags          int
	volTags             map[string][]ec2types.Tag // each volume's own tags
	taggedAfter         map[string][]ec2types.Tag // CreateTags by resource
}

// pvCreate is one CreateSnapshot call as the fake saw it.
type pvCreate struct {
	Volume, Description string
	Resource            ec2types.ResourceType
	Tags                map[string]string
	RetriesLost         bool // the SDK, as the call set it up, would send it again after a lost answer
}

func newPvEC2() *pvEC2 {
	dev := func(name, vol string) ec2types.InstanceBlockDeviceMapping {
		return ec2types.InstanceBlockDeviceMapping{DeviceName: aws.String(name), Ebs: &ec2types.EbsInstanceBlockDevice{VolumeId: aws.String(vol)}}
	}
	return &pvEC2{
		box: ec2types.Instance{
			InstanceId: aws.String("i-0box"), InstanceType: ec2types.InstanceTypeM5Xlarge, PrivateIpAddress: aws.String("10.0.1.100"),
			SubnetId: aws.String("subnet-1"), ImageId: aws.String("ami-1"), RootDeviceName: aws.String("/dev/sda1"),
			State: &ec2types.InstanceState{Name: ec2types.InstanceStateNameRunning},
			Tags:  []ec2types.Tag{{Key: aws.String("Name"), Value: aws.String("circleci_services")}},
			// Device order is not volume order.
			BlockDeviceMappings: []ec2types.InstanceBlockDeviceMapping{dev("/dev/sdb", "vol-0a"), dev("/dev/sda1", "vol-0b"), dev("/dev/sdc", "vol-0c"), {DeviceName: aws.String("/dev/sdd")}},
		},
		sizes:               map[string]int32{"vol-0a": 100, "vol-0b": 50, "vol-0c": 200},
		createSnapshotsErrs: []error{groupErr("UnsupportedOperation")},
		failVolume:          map[string]error{},
		lostVolume:          map[string]bool{},
	}
}

func (f *pvEC2) DescribeInstances(_ context.Context, in *ec2.DescribeInstancesInput, _ ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error) {
	return &ec2.DescribeInstancesOutput{Reservations: []ec2types.Reservation{{Instances: []ec2types.Instance{f.box}}}}, nil
}

func (f *pvEC2) DescribeInstanceStatus(context.Context, *ec2.DescribeInstanceStatusInput, ...func(*ec2.Options)) (*ec2.DescribeInstanceStatusOutput, error) {
	return nil, errors.New("pvEC2: DescribeInstanceStatus is not used by a backup")
}

func (f *pvEC2) DescribeVolumes(_ context.Context, in *ec2.DescribeVolumesInput, _ ...func(*ec2.Options)) (*ec2.DescribeVolumesOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []ec2types.Volume
	for _, id := range in.VolumeIds {
		if size, ok := f.sizes[id]; ok {
			out = append(out, ec2types.Volume{VolumeId: aws.String(id), Size: aws.Int32(size), VolumeType: ec2types.VolumeTypeGp3,
				Iops: aws.Int32(3000), Throughput: aws.Int32(125), Encrypted: aws.Bool(false), Tags: f.volTags[id]})
		}
	}
	return &ec2.DescribeVolumesOutput{Volumes: out}, nil
}

func (f *pvEC2) DescribeSnapshots(_ context.Context, in *ec2.DescribeSnapshotsInput, _ ...func(*ec2.Options)) (*ec2.DescribeSnapshotsOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []ec2types.Snapshot
	for i := range f.snaps {
		if len(in.SnapshotIds) > 0 {
			if !slices.Contains(in.SnapshotIds, aws.ToString(f.snaps[i].SnapshotId)) {
				continue
			}
			f.snaps[i].State, f.snaps[i].Progress = ec2types.SnapshotStateCompleted, aws.String("100%")
		}
		s := f.snaps[i]
		match := true
		for _, flt := range in.Filters {
			var v string
			switch name := aws.ToString(flt.Name); {
			case name == "description":
				v = aws.ToString(s.Description)
			case strings.HasPrefix(name, "tag:"):
				v = tag(s.Tags, strings.TrimPrefix(name, "tag:"))
			default:
				return nil, fmt.Errorf("pvEC2: filter %s", name)
			}
			match = match && slices.ContainsFunc(flt.Values, func(want string) bool {
				if p, ok := strings.CutSuffix(want, "*"); ok {
					return strings.HasPrefix(v, p)
				}
				return v == want
			})
		}
		if match {
			out = append(out, s)
		}
	}
	return &ec2.DescribeSnapshotsOutput{Snapshots: out}, nil
}

func (f *pvEC2) CreateSnapshots(context.Context, *ec2.CreateSnapshotsInput, ...func(*ec2.Options)) (*ec2.CreateSnapshotsOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.createSnapshots++
	err := errors.New("pvEC2: CreateSnapshots answered more often than the test planned")
	if len(f.createSnapshotsErrs) > 0 {
		err, f.createSnapshotsErrs = f.createSnapshotsErrs[0], f.createSnapshotsErrs[1:]
	}
	return nil, err
}

func (f *pvEC2) CreateSnapshot(_ context.Context, in *ec2.CreateSnapshotInput, opts ...func(*ec2.Options)) (*ec2.CreateSnapshotOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	o := ec2.Options{RetryMaxAttempts: 3, Retryer: retry.NewStandard()}
	for _, fn := range opts {
		fn(&o)
	}
	vol := aws.ToString(in.VolumeId)
	lost := &smithy.OperationError{ServiceID: "EC2", OperationName: "CreateSnapshot", Err: &smithyhttp.RequestSendError{Err: errors.New("connection reset by peer")}}
	c := pvCreate{Volume: vol, Description: aws.ToString(in.Description), Tags: map[string]string{}, RetriesLost: o.Retryer.IsErrorRetryable(lost)}
	var tags []ec2types.Tag
	for _, ts := range in.TagSpecifications {
		c.Resource = ts.ResourceType
		tags = append(tags, ts.Tags...)
		for _, t := range ts.Tags {
			c.Tags[aws.ToString(t.Key)] = aws.ToString(t.Value)
		}
	}
	f.creates = append(f.creates, c)
	if err := f.failVolume[vol]; err != nil {
		return nil, &smithy.OperationError{ServiceID: "EC2", OperationName: "CreateSnapshot", Err: err}
	}
	s := ec2types.Snapshot{
		SnapshotId: aws.String(fmt.Sprintf("snap-%02d", len(f.snaps)+1)), VolumeId: in.VolumeId, VolumeSize: aws.Int32(f.sizes[vol]),
		State: ec2types.SnapshotStatePending, Progress: aws.String("0%"), Description: in.Description, Tags: tags,
		StartTime: aws.Time(time.Date(2025, 3, 1, 4, 0, 0, 0, time.UTC)),
	}
	f.snaps = append(f.snaps, s)
	if f.lostVolume[vol] {
		return nil, errors.New("https response error: read tcp 10.0.0.5:443: connection reset by peer")
	}
	return &ec2.CreateSnapshotOutput{SnapshotId: s.SnapshotId, VolumeId: s.VolumeId, VolumeSize: s.VolumeSize, State: s.State, Progress: s.Progress}, nil
}

func (f *pvEC2) CreateTags(_ context.Context, in *ec2.CreateTagsInput, _ ...func(*ec2.Options)) (*ec2.CreateTagsOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.createTags++
	if f.taggedAfter == nil {
		f.taggedAfter = map[string][]ec2types.Tag{}
	}
	for _, r := range in.Resources {
		f.taggedAfter[r] = append(f.taggedAfter[r], in.Tags...)
	}
	return &ec2.CreateTagsOutput{}, nil
}

// snapsOf are the snapshots the fake made of each volume.
func (f *pvEC2) snapsOf() map[string][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := map[string][]string{}
	for _, s := range f.snaps {
		m[aws.ToString(s.VolumeId)] = append(m[aws.ToString(s.VolumeId)], aws.ToString(s.SnapshotId))
	}
	return m
}

// pvRecords keeps a copy of every record saved.
type pvRecords struct {
	mu    sync.Mutex
	saved []Backup
}

func (r *pvRecords) SaveBackup(_ context.Context, b *Backup) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	raw, err := json.Marshal(b)
	if err != nil {
		return err
	}
	var c Backup
	if err := json.Unmarshal(raw, &c); err != nil {
		return err
	}
	r.saved = append(r.saved, c)
	return nil
}

func (r *pvRecords) last(t *testing.T) Backup {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.saved) == 0 {
		t.Fatal("no record was saved")
	}
	return r.saved[len(r.saved)-1]
}

var pvStarted = time.Date(2025, 3, 1, 4, 0, 0, 0, time.UTC)

// runPerVolume takes a backup with f; Attempts lets the create loop try
// again, which it must not do for snapshots already made.
func runPerVolume(t *testing.T, f *pvEC2) (*pvRecords, Backup, error) {
	t.Helper()
	recs := &pvRecords{}
	e := &EBSBackup{EC2: f, Records: recs, NameTag: "circleci_services", Version: "v-test", PollMin: time.Millisecond, PollMax: time.Millisecond,
		Retry: time.Millisecond, Attempts: 3, Now: func() time.Time { return pvStarted }}
	b := &Backup{ID: "bk-20250301-040000-beef", Trigger: "manual", Requester: "U0ALICE"}
	err := e.Run(context.Background(), b, &quietProgress{})
	return recs, recs.last(t), err
}

func snapRefIDs(refs []SnapshotRef) []string {
	var ids []string
	for _, r := range refs {
		ids = append(ids, r.ID)
	}
	return ids
}

// wantNoSecondSnapshot: no CreateSnapshot lets the SDK send it again after
// a lost answer (that would make a second snapshot), and no volume
// was snapshotted twice.
func wantNoSecondSnapshot(t *testing.T, f *pvEC2) {
	t.Helper()
	seen := map[string]bool{}
	for _, c := range f.creates {
		if c.RetriesLost {
			t.Errorf("CreateSnapshot of %s lets the SDK send it again after a lost answer", c.Volume)
		}
		if seen[c.Volume] {
			t.Errorf("CreateSnapshot of %s called twice", c.Volume)
		}
		seen[c.Volume] = true
	}
	for vol, ids := range f.snapsOf() {
		if len(ids) > 1 {
			t.Errorf("volume %s has %d snapshots: %v", vol, len(ids), ids)
		}
	}
}

// Without CreateSnapshots, every EBS volume gets its own snapshot, with
// the backup's tags, its volume and device, and the runbook's
// description; the set is one restore point under the backup's ID.
func TestPerVolumeSnapshotsEveryVolumeWithTheBackupsTags(t *testing.T) {
	for _, tc := range []struct {
		name string
		errs []error
	}{
		{"CreateSnapshots unsupported", []error{groupErr("UnsupportedOperation")}},
		// The first CreateSnapshots got no answer: the next attempt looks
		// for its snapshots (none), then falls back.
		{"after a CreateSnapshots without an answer", []error{&smithy.OperationError{ServiceID: "EC2", OperationName: "CreateSnapshots", Err: &smithyhttp.RequestSendError{Err: errors.New("connection reset by peer")}}, groupErr("UnsupportedOperation")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newPvEC2()
			f.createSnapshotsErrs = tc.errs
			_, rec, err := runPerVolume(t, f)
			if err != nil {
				t.Fatal(err)
			}
			if f.createSnapshots != len(tc.errs) {
				t.Errorf("CreateSnapshots called %d times", f.createSnapshots)
			}
			wantNoSecondSnapshot(t, f)
			devices := map[string]string{"vol-0a": "/dev/sdb", "vol-0b": "/dev/sda1", "vol-0c": "/dev/sdc"}
			if len(f.creates) != 3 {
				t.Fatalf("%d CreateSnapshot calls for 3 EBS volumes", len(f.creates))
			}
			for _, c := range f.creates {
				want := map[string]string{
					"Name": "circlebot " + rec.ID, TagBackupID: rec.ID, TagInstance: "i-0box", TagPrivateIP: "10.0.1.100", TagType: "m5.xlarge",
					TagRequester: "U0ALICE", TagTrigger: "manual", TagVersion: "v-test", TagVolume: c.Volume, TagDevice: devices[c.Volume],
				}
				if fmt.Sprint(c.Tags) != fmt.Sprint(want) {
					t.Errorf("tags of %s:\n  %v\nwant\n  %v", c.Volume, c.Tags, want)
				}
				if c.Resource != ec2types.ResourceTypeSnapshot || c.Description != BackupDescription(pvStarted) {
					t.Errorf("snapshot of %s: resource %q, description %q", c.Volume, c.Resource, c.Description)
				}
			}
			if f.createTags != 0 {
				t.Errorf("%d CreateTags calls: the volume and device tags belong in the create call", f.createTags)
			}
			if rec.State != StateCompleted || rec.Method != "ebs" || len(rec.Notes) != 1 || !strings.Contains(rec.Notes[0], "crash-consistent") {
				t.Errorf("record: state %s, method %s, notes %q; want completed, ebs, noted as not crash-consistent", rec.State, rec.Method, rec.Notes)
			}
			made := f.snapsOf()
			if len(rec.Snapshots) != 3 {
				t.Fatalf("record has %d snapshots", len(rec.Snapshots))
			}
			for _, s := range rec.Snapshots {
				if ids := made[s.VolumeID]; len(ids) != 1 || s.ID != ids[0] || s.Device != devices[s.VolumeID] || s.SizeGiB != f.sizes[s.VolumeID] || s.State != "completed" {
					t.Errorf("recorded %+v; AWS has %v for %s", s, ids, s.VolumeID)
				}
			}
			pts, err := RestorePoints(context.Background(), f, []*Backup{&rec})
			if err != nil {
				t.Fatal(err)
			}
			if len(pts) != 1 || pts[0].ID != rec.ID || !pts[0].Usable() || len(pts[0].Snapshots) != 3 || pts[0].SizeGiB != 350 {
				t.Errorf("restore points %+v; want %s, usable, 3 snapshots, 350 GiB", pts, rec.ID)
			}
		})
	}
}

// The second volume's snapshot fails: the backup fails, says which
// volume, and its record keeps the snapshot already made (it is not lost,
// and a restart does not follow it as if it were the set). It is not a
// restore point, and nothing is created twice although the create loop
// may try again.
func TestPerVolumeFailureKeepsTheSnapshotsMadeAndIsNoRestorePoint(t *testing.T) {
	f := newPvEC2()
	f.failVolume["vol-0b"] = groupErr("IncorrectState")
	recs, rec, err := runPerVolume(t, f)
	if errorCodeOf(err) != "IncorrectState" {
		t.Fatalf("err %v; want AWS's IncorrectState", err)
	}
	wantNoSecondSnapshot(t, f)
	if f.createSnapshots != 1 {
		t.Errorf("CreateSnapshots called %d times", f.createSnapshots)
	}
	var made []string
	for _, ids := range f.snapsOf() {
		made = append(made, ids...)
	}
	if len(made) == 0 || !slices.Contains(made, "snap-01") {
		t.Fatalf("the first volume was not snapshotted: %v", made)
	}
	slices.Sort(made)
	if got := slices.Sorted(slices.Values(snapRefIDs(rec.Snapshots))); !slices.Equal(got, made) {
		t.Errorf("record names %v; AWS has %v", got, made)
	}
	if s := rec.Snapshots[0]; s.VolumeID != "vol-0a" || s.Device != "/dev/sdb" || s.SizeGiB != 100 {
		t.Errorf("recorded %+v", s)
	}
	if rec.State != StateFailed || !strings.Contains(rec.Error, "vol-0b") || rec.Finished.IsZero() {
		t.Errorf("record: state %s, error %q, finished %v; want failed, naming vol-0b", rec.State, rec.Error, rec.Finished)
	}
	for _, r := range recs.saved {
		if r.State == StateCompleted || (r.State == StateRunning && len(r.Snapshots) > 0) {
			t.Errorf("a record was saved %s with snapshots %v: a restart would follow a partial set to completion", r.State, snapRefIDs(r.Snapshots))
		}
	}
	pts, err := RestorePoints(context.Background(), f, []*Backup{&rec})
	if err != nil {
		t.Fatal(err)
	}
	if len(pts) != 1 || pts[0].ID != rec.ID || pts[0].Usable() {
		t.Errorf("restore points %+v; want %s, not usable", pts, rec.ID)
	}
	if p, ok := Newest(pts); ok {
		t.Errorf("the newest restore point is %s, a partial set", p.ID)
	}
}

// The answer to the second volume's CreateSnapshot is lost although the
// snapshot was made: it is not asked for again (by the SDK or the bot),
// and the backup fails. The snapshot it cannot name still carries the
// backup's ID, so it shows under the failed backup, not as a restore
// point of its own.
func TestPerVolumeLostAnswerIsNotAskedAgain(t *testing.T) {
	f := newPvEC2()
	f.lostVolume["vol-0b"] = true
	_, rec, err := runPerVolume(t, f)
	if err == nil {
		t.Fatal("the backup succeeded without the answer for vol-0b")
	}
	wantNoSecondSnapshot(t, f)
	made := f.snapsOf()
	if len(made["vol-0a"]) != 1 || len(made["vol-0b"]) != 1 {
		t.Fatalf("snapshots made: %v", made)
	}
	if got := snapRefIDs(rec.Snapshots); !slices.Contains(got, made["vol-0a"][0]) || slices.Contains(got, made["vol-0b"][0]) {
		t.Errorf("record names %v; want vol-0a's %s and not the unanswered %s", got, made["vol-0a"][0], made["vol-0b"][0])
	}
	if rec.State != StateFailed {
		t.Errorf("record state %s", rec.State)
	}
	pts, err := RestorePoints(context.Background(), f, []*Backup{&rec})
	if err != nil {
		t.Fatal(err)
	}
	if len(pts) != 1 || pts[0].ID != rec.ID || pts[0].Usable() || !slices.Contains(pts[0].Snapshots, made["vol-0b"][0]) {
		t.Errorf("restore points %+v; want only %s, not usable, listing %s", pts, rec.ID, made["vol-0b"][0])
	}
}
