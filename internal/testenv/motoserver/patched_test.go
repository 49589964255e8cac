package motoserver

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// patchedServer is a launcher process of the test's own from the pool
// (reset for it), since a moto start costs about a second.
func patchedServer(t *testing.T) (*Server, *ec2.Client) {
	t.Helper()
	s := ForTest(t, WithPatchedSnapshots())
	return s, ec2.NewFromConfig(AWSConfig(s.URL))
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func createVolume(t *testing.T, c *ec2.Client) string {
	t.Helper()
	out, err := c.CreateVolume(ctxT(t), &ec2.CreateVolumeInput{AvailabilityZone: aws.String(Region + "a"), Size: aws.Int32(8)})
	if err != nil {
		t.Fatalf("CreateVolume: %v", err)
	}
	return aws.ToString(out.VolumeId)
}

func describeSnapshot(t *testing.T, c *ec2.Client, id string) types.Snapshot {
	t.Helper()
	out, err := c.DescribeSnapshots(ctxT(t), &ec2.DescribeSnapshotsInput{SnapshotIds: []string{id}})
	if err != nil {
		t.Fatalf("DescribeSnapshots %s: %v", id, err)
	}
	if len(out.Snapshots) != 1 {
		t.Fatalf("DescribeSnapshots %s: %d snapshots", id, len(out.Snapshots))
	}
	return out.Snapshots[0]
}

func wantSnapshot(t *testing.T, got types.Snapshot, state types.SnapshotState, progress string) {
	t.Helper()
	if got.State != state || aws.ToString(got.Progress) != progress {
		t.Fatalf("snapshot %s: state %q progress %q, want %q %q", aws.ToString(got.SnapshotId), got.State, aws.ToString(got.Progress), state, progress)
	}
}

func TestPatchedSnapshots(t *testing.T) {
	t.Parallel()
	s, c := patchedServer(t)
	ctx := ctxT(t)

	t.Run("CreateSnapshotPendingThenMoved", func(t *testing.T) {
		vol := createVolume(t, c)
		created, err := c.CreateSnapshot(ctx, &ec2.CreateSnapshotInput{VolumeId: aws.String(vol), Description: aws.String("CircleCI Services box Backup")})
		if err != nil {
			t.Fatalf("CreateSnapshot: %v", err)
		}
		if created.State != types.SnapshotStatePending {
			t.Fatalf("CreateSnapshot answered state %q, want pending", created.State)
		}
		id := aws.ToString(created.SnapshotId)
		wantSnapshot(t, describeSnapshot(t, c, id), types.SnapshotStatePending, "0%")

		// The status filter sees the patched state too.
		out, err := c.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{Filters: []types.Filter{{Name: aws.String("status"), Values: []string{"pending"}}}})
		if err != nil || len(out.Snapshots) != 1 {
			t.Fatalf("DescribeSnapshots status=pending: %d snapshots, %v", len(out.Snapshots), err)
		}

		if err := s.SetSnapshotState(ctx, id, SnapshotPending, "45%"); err != nil {
			t.Fatal(err)
		}
		wantSnapshot(t, describeSnapshot(t, c, id), types.SnapshotStatePending, "45%")

		if err := s.SetSnapshotState(ctx, id, SnapshotCompleted, ""); err != nil {
			t.Fatal(err)
		}
		wantSnapshot(t, describeSnapshot(t, c, id), types.SnapshotStateCompleted, "100%")

		// The SDK's own waiter accepts it.
		w := ec2.NewSnapshotCompletedWaiter(c)
		if err := w.Wait(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: []string{id}}, 10*time.Second); err != nil {
			t.Fatalf("SnapshotCompleted waiter: %v", err)
		}
	})

	t.Run("Error", func(t *testing.T) {
		vol := createVolume(t, c)
		created, err := c.CreateSnapshot(ctx, &ec2.CreateSnapshotInput{VolumeId: aws.String(vol)})
		if err != nil {
			t.Fatalf("CreateSnapshot: %v", err)
		}
		id := aws.ToString(created.SnapshotId)
		if err := s.SetSnapshotState(ctx, id, SnapshotError, "12%"); err != nil {
			t.Fatal(err)
		}
		got := describeSnapshot(t, c, id)
		wantSnapshot(t, got, types.SnapshotStateError, "12%")
		if aws.ToString(got.StateMessage) == "" {
			t.Errorf("error snapshot has no StateMessage")
		}
	})

	t.Run("ControlErrors", func(t *testing.T) {
		err := s.SetSnapshotState(ctx, "snap-00000000000000000", SnapshotCompleted, "")
		if err == nil || !strings.Contains(err.Error(), "not found") {
			t.Fatalf("unknown snapshot: err = %v, want not found", err)
		}
		if err := s.SetSnapshotState(ctx, "snap-1", "done", ""); err == nil || !strings.Contains(err.Error(), "state must be one of") {
			t.Fatalf("bad state: err = %v", err)
		}
		if err := s.AutoCompleteSnapshots(ctx, -1); err == nil {
			t.Fatal("AutoCompleteSnapshots(-1) succeeded")
		}
	})

	t.Run("CreateSnapshotsMultiVolume", func(t *testing.T) {
		images, err := c.DescribeImages(ctx, &ec2.DescribeImagesInput{})
		if err != nil || len(images.Images) == 0 {
			t.Fatalf("DescribeImages: %d images, %v", len(images.Images), err)
		}
		run, err := c.RunInstances(ctx, &ec2.RunInstancesInput{
			ImageId: images.Images[0].ImageId, MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
			InstanceType: types.InstanceTypeT3Micro,
			BlockDeviceMappings: []types.BlockDeviceMapping{
				{DeviceName: aws.String("/dev/sda1"), Ebs: &types.EbsBlockDevice{VolumeSize: aws.Int32(8)}},
				{DeviceName: aws.String("/dev/sdf"), Ebs: &types.EbsBlockDevice{VolumeSize: aws.Int32(20)}},
			},
		})
		if err != nil {
			t.Fatalf("RunInstances: %v", err)
		}
		out, err := c.CreateSnapshots(ctx, &ec2.CreateSnapshotsInput{
			InstanceSpecification: &types.InstanceSpecification{InstanceId: run.Instances[0].InstanceId},
			Description:           aws.String("multi-volume set"),
		})
		if err != nil {
			t.Fatalf("CreateSnapshots: %v", err)
		}
		if len(out.Snapshots) < 2 {
			t.Fatalf("CreateSnapshots made %d snapshots, want >= 2", len(out.Snapshots))
		}
		for _, si := range out.Snapshots {
			if si.State != types.SnapshotStatePending {
				t.Errorf("CreateSnapshots answer: %s state %q, want pending", aws.ToString(si.SnapshotId), si.State)
			}
			wantSnapshot(t, describeSnapshot(t, c, aws.ToString(si.SnapshotId)), types.SnapshotStatePending, "0%")
		}
		first := aws.ToString(out.Snapshots[0].SnapshotId)
		if err := s.SetSnapshotState(ctx, first, SnapshotCompleted, ""); err != nil {
			t.Fatal(err)
		}
		wantSnapshot(t, describeSnapshot(t, c, first), types.SnapshotStateCompleted, "100%")
		wantSnapshot(t, describeSnapshot(t, c, aws.ToString(out.Snapshots[1].SnapshotId)), types.SnapshotStatePending, "0%")

		states, err := s.SnapshotStates(ctx)
		if err != nil {
			t.Fatal(err)
		}
		byID := map[string]SnapshotStatus{}
		for _, st := range states {
			byID[st.SnapshotID] = st
		}
		if st := byID[first]; st.State != SnapshotCompleted || st.Progress != "100%" || st.Region != Region {
			t.Errorf("SnapshotStates[%s] = %+v", first, st)
		}
	})

	t.Run("AMISnapshotsStayCompleted", func(t *testing.T) {
		images, err := c.DescribeImages(ctx, &ec2.DescribeImagesInput{})
		if err != nil || len(images.Images) == 0 {
			t.Fatalf("DescribeImages: %v", err)
		}
		// moto's built-in AMIs own snapshots made behind the scenes: the
		// patch must not leave those pending.
		out, err := c.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{Filters: []types.Filter{{Name: aws.String("description"), Values: []string{"Auto-created snapshot for AMI*"}}}})
		if err != nil {
			t.Fatalf("DescribeSnapshots: %v", err)
		}
		for _, sn := range out.Snapshots {
			if sn.State != types.SnapshotStateCompleted {
				t.Fatalf("AMI snapshot %s is %q", aws.ToString(sn.SnapshotId), sn.State)
			}
		}
	})
}

func TestPatchedSnapshotsAutoCompleteAndReset(t *testing.T) {
	t.Parallel()
	s, c := patchedServer(t)
	ctx := ctxT(t)
	vol := createVolume(t, c)
	created, err := c.CreateSnapshot(ctx, &ec2.CreateSnapshotInput{VolumeId: aws.String(vol)})
	if err != nil {
		t.Fatalf("CreateSnapshot: %v", err)
	}
	id := aws.ToString(created.SnapshotId)
	// Describes before auto mode do not count.
	describeSnapshot(t, c, id)
	describeSnapshot(t, c, id)
	if err := s.AutoCompleteSnapshots(ctx, 2); err != nil {
		t.Fatal(err)
	}
	wantSnapshot(t, describeSnapshot(t, c, id), types.SnapshotStatePending, "0%")
	wantSnapshot(t, describeSnapshot(t, c, id), types.SnapshotStatePending, "0%")
	wantSnapshot(t, describeSnapshot(t, c, id), types.SnapshotStateCompleted, "100%")

	// The SDK waiter finishes against auto mode (its first poll is immediate).
	second, err := c.CreateSnapshot(ctx, &ec2.CreateSnapshotInput{VolumeId: aws.String(vol)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AutoCompleteSnapshots(ctx, 1); err != nil {
		t.Fatal(err)
	}
	w := ec2.NewSnapshotCompletedWaiter(c, func(o *ec2.SnapshotCompletedWaiterOptions) {
		o.MinDelay = 10 * time.Millisecond
		o.MaxDelay = 50 * time.Millisecond
	})
	if err := w.Wait(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: []string{aws.ToString(second.SnapshotId)}}, 30*time.Second); err != nil {
		t.Fatalf("SnapshotCompleted waiter with auto mode: %v", err)
	}

	// Reset drops snapshots and turns auto mode off.
	if err := s.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	if states, err := s.SnapshotStates(ctx); err != nil || len(states) != 0 {
		t.Fatalf("after reset: %d snapshots, %v", len(states), err)
	}
	vol = createVolume(t, c)
	third, err := c.CreateSnapshot(ctx, &ec2.CreateSnapshotInput{VolumeId: aws.String(vol)})
	if err != nil {
		t.Fatal(err)
	}
	for range 4 {
		wantSnapshot(t, describeSnapshot(t, c, aws.ToString(third.SnapshotId)), types.SnapshotStatePending, "0%")
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+"/_circlebot/snapshots", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get(launcherHeader) != "moto_patched" {
		t.Errorf("GET /_circlebot/snapshots: header %q", resp.Header.Get(launcherHeader))
	}
}

func TestSnapshotControlNeedsPatchedLauncher(t *testing.T) {
	t.Parallel()
	s := ForTest(t)
	err := s.SetSnapshotState(ctxT(t), "snap-1", SnapshotCompleted, "")
	if err == nil || !strings.Contains(err.Error(), "WithPatchedSnapshots") {
		t.Fatalf("SetSnapshotState on plain moto: err = %v, want a hint to use WithPatchedSnapshots", err)
	}
}

// What a resize relies on, made as AWS does it: the type of an instance
// changes only while it is stopped, to a type that exists, and a start of
// a type without capacity is refused with the instance left stopped.
func TestPatchedInstanceTypeChangesAndCapacity(t *testing.T) {
	s, c := patchedServer(t)
	ctx := ctxT(t)
	imgs, err := c.DescribeImages(ctx, &ec2.DescribeImagesInput{})
	if err != nil || len(imgs.Images) == 0 {
		t.Fatalf("DescribeImages: %v (%d)", err, len(imgs.Images))
	}
	run, err := c.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: imgs.Images[0].ImageId, InstanceType: types.InstanceTypeM5Xlarge, MinCount: aws.Int32(1), MaxCount: aws.Int32(1)})
	if err != nil {
		t.Fatal(err)
	}
	id := aws.ToString(run.Instances[0].InstanceId)
	setType := func(typ string) error {
		_, err := c.ModifyInstanceAttribute(ctx, &ec2.ModifyInstanceAttributeInput{InstanceId: &id, InstanceType: &types.AttributeValue{Value: aws.String(typ)}})
		return err
	}
	read := func() types.Instance {
		out, err := c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
		if err != nil {
			t.Fatal(err)
		}
		return out.Reservations[0].Instances[0]
	}
	if err := setType("m5.2xlarge"); err == nil || !strings.Contains(err.Error(), "IncorrectInstanceState") {
		t.Fatalf("type change of a running instance: %v, want IncorrectInstanceState", err)
	}
	if _, err := c.StopInstances(ctx, &ec2.StopInstancesInput{InstanceIds: []string{id}}); err != nil {
		t.Fatal(err)
	}
	if err := setType("zz9.bogus"); err == nil || !strings.Contains(err.Error(), "InvalidParameterValue") {
		t.Fatalf("type change to an unknown type: %v, want InvalidParameterValue", err)
	}
	if err := setType("m5.2xlarge"); err != nil {
		t.Fatalf("type change of a stopped instance: %v", err)
	}
	if got := read().InstanceType; got != types.InstanceTypeM52xlarge {
		t.Fatalf("type after the change: %s", got)
	}
	if err := s.SetUnavailableTypes(ctx, "m5.2xlarge"); err != nil {
		t.Fatal(err)
	}
	_, err = c.StartInstances(ctx, &ec2.StartInstancesInput{InstanceIds: []string{id}})
	if err == nil || !strings.Contains(err.Error(), "InsufficientInstanceCapacity") {
		t.Fatalf("start without capacity: %v, want InsufficientInstanceCapacity", err)
	}
	if st := read().State.Name; st != types.InstanceStateNameStopped {
		t.Fatalf("after a refused start the instance is %s", st)
	}
	if err := s.SetUnavailableTypes(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartInstances(ctx, &ec2.StartInstancesInput{InstanceIds: []string{id}}); err != nil {
		t.Fatalf("start once there is capacity: %v", err)
	}
	if st := read().State.Name; st != types.InstanceStateNameRunning {
		t.Fatalf("after the start the instance is %s", st)
	}
}

// A RunInstances dry run answers DryRunOperation only for a launch AWS
// would accept: a missing key pair, security group or image, an unknown
// type, a type of another architecture than the image, or more than 50
// tags are refused as AWS refuses them, and nothing is launched.
func TestPatchedRunInstancesDryRunValidates(t *testing.T) {
	_, c := patchedServer(t)
	ctx := ctxT(t)
	imgs, err := c.DescribeImages(ctx, &ec2.DescribeImagesInput{Filters: []types.Filter{{Name: aws.String("architecture"), Values: []string{"x86_64"}}}})
	if err != nil || len(imgs.Images) == 0 {
		t.Fatalf("DescribeImages: %v", err)
	}
	img := imgs.Images[0].ImageId
	launch := func(edit func(*ec2.RunInstancesInput)) error {
		in := &ec2.RunInstancesInput{DryRun: aws.Bool(true), ImageId: img, InstanceType: types.InstanceTypeM5Xlarge, MinCount: aws.Int32(1), MaxCount: aws.Int32(1)}
		if edit != nil {
			edit(in)
		}
		_, err := c.RunInstances(ctx, in)
		return err
	}
	many := make([]types.Tag, 51)
	for i := range many {
		many[i] = types.Tag{Key: aws.String(strings.Repeat("k", i+1)), Value: aws.String("v")}
	}
	for _, tc := range []struct {
		name string
		edit func(*ec2.RunInstancesInput)
		want string
	}{
		{"accepted", nil, "DryRunOperation"},
		{"missing key pair", func(in *ec2.RunInstancesInput) { in.KeyName = aws.String("gone") }, "InvalidKeyPair.NotFound"},
		{"missing security group", func(in *ec2.RunInstancesInput) { in.SecurityGroupIds = []string{"sg-12345678"} }, "InvalidGroup.NotFound"},
		{"missing image", func(in *ec2.RunInstancesInput) { in.ImageId = aws.String("ami-12345678") }, "InvalidAMIID.NotFound"},
		{"unknown type", func(in *ec2.RunInstancesInput) { in.InstanceType = "zz9.bogus" }, "InvalidParameterValue"},
		{"arm type for an x86 image", func(in *ec2.RunInstancesInput) { in.InstanceType = types.InstanceTypeM6gXlarge }, "architecture"},
		{"51 tags", func(in *ec2.RunInstancesInput) {
			in.TagSpecifications = []types.TagSpecification{{ResourceType: types.ResourceTypeInstance, Tags: many}}
		}, "TagLimitExceeded"},
	} {
		if err := launch(tc.edit); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.want)
		}
	}
	out, err := c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Reservations) != 0 {
		t.Fatalf("dry runs launched %d reservations", len(out.Reservations))
	}
}

// SetSnapshotProgress holds a snapshot pending at a progress with its
// StartTime in the past: a rate to estimate the time still needed from.
func TestPatchedSnapshotProgressWithAStartInThePast(t *testing.T) {
	t.Parallel()
	s, c := patchedServer(t)
	ctx := ctxT(t)
	created, err := c.CreateSnapshot(ctx, &ec2.CreateSnapshotInput{VolumeId: aws.String(createVolume(t, c))})
	if err != nil {
		t.Fatalf("CreateSnapshot: %v", err)
	}
	id := aws.ToString(created.SnapshotId)
	if err := s.SetSnapshotProgress(ctx, id, "40%", 10*time.Minute); err != nil {
		t.Fatal(err)
	}
	got := describeSnapshot(t, c, id)
	wantSnapshot(t, got, types.SnapshotStatePending, "40%")
	if ago := time.Since(aws.ToTime(got.StartTime)); ago < 9*time.Minute || ago > 11*time.Minute {
		t.Errorf("StartTime %s ago, want about 10m", ago)
	}
}
