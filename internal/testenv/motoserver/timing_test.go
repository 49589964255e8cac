package motoserver

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// timingScale makes a model minute 0.6 s: long enough to tell the states
// apart on a loaded machine, short enough for a test.
const timingScale = 1.0 / 100

func scaled(key string) time.Duration {
	return time.Duration(float64(ModelDuration(key)) * timingScale)
}

// until polls read until it says done, and returns how long that took;
// the deadline is generous (the machine is shared).
func until(t *testing.T, what string, read func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	last := ""
	for deadline := start.Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		ok, seen := read()
		if ok {
			return time.Since(start)
		}
		last = seen
	}
	t.Fatalf("%s: not after 30 s (last seen %s)", what, last)
	return 0
}

// TestTimingModel: each state change takes the model's (scaled) time, and
// AWS's refusals while a change is under way hold.
func TestTimingModel(t *testing.T) {
	s := ForTest(t, WithTiming(timingScale))
	c := ec2.NewFromConfig(AWSConfig(s.URL))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	imgs, err := c.DescribeImages(ctx, &ec2.DescribeImagesInput{})
	if err != nil || len(imgs.Images) == 0 {
		t.Fatalf("DescribeImages: %v", err)
	}
	vpc, err := c.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{})
	if err != nil || len(vpc.Subnets) == 0 {
		t.Fatalf("DescribeSubnets: %v", err)
	}
	subnet := vpc.Subnets[0]
	run, err := c.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: imgs.Images[0].ImageId, InstanceType: types.InstanceTypeM5Xlarge,
		MinCount: aws.Int32(1), MaxCount: aws.Int32(1), SubnetId: subnet.SubnetId})
	if err != nil {
		t.Fatal(err)
	}
	id := aws.ToString(run.Instances[0].InstanceId)
	ip := aws.ToString(run.Instances[0].PrivateIpAddress)
	state := func() types.InstanceStateName {
		out, err := c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
		if err != nil {
			t.Fatal(err)
		}
		return out.Reservations[0].Instances[0].State.Name
	}
	is := func(want types.InstanceStateName) func() (bool, string) {
		return func() (bool, string) { st := state(); return st == want, string(st) }
	}
	checks := func() (bool, string) {
		out, err := c.DescribeInstanceStatus(ctx, &ec2.DescribeInstanceStatusInput{InstanceIds: []string{id}, IncludeAllInstances: aws.Bool(true)})
		if err != nil || len(out.InstanceStatuses) == 0 {
			return false, "no status"
		}
		st := out.InstanceStatuses[0]
		return st.InstanceStatus.Status == types.SummaryStatusOk && st.SystemStatus.Status == types.SummaryStatusOk, string(st.InstanceStatus.Status)
	}
	atLeast := func(what string, got, want time.Duration) {
		t.Helper()
		// A poll can see a change a little early only by the clock's
		// resolution; allow 10 %.
		if got < want*9/10 {
			t.Errorf("%s after %s, want at least %s", what, got, want)
		}
	}

	if st := state(); st != types.InstanceStateNamePending {
		t.Fatalf("just launched: %s, want pending", st)
	}
	if s.AgentOnline(ctx, id) {
		t.Fatal("the SSM agent answers on a pending box")
	}
	atLeast("running", until(t, "running", is(types.InstanceStateNameRunning)), scaled("launch")*8/10)
	if ok, _ := checks(); ok {
		t.Fatal("status checks ok the moment the box runs")
	}
	atLeast("status checks", until(t, "status checks", checks), scaled("status_checks")*8/10)
	if !s.AgentOnline(ctx, id) {
		t.Fatal("the SSM agent is not online after the status checks passed (the model has it earlier)")
	}

	if _, err := c.StopInstances(ctx, &ec2.StopInstancesInput{InstanceIds: []string{id}}); err != nil {
		t.Fatal(err)
	}
	if st := state(); st != types.InstanceStateNameStopping {
		t.Fatalf("just stopped: %s, want stopping", st)
	}
	_, err = c.StartInstances(ctx, &ec2.StartInstancesInput{InstanceIds: []string{id}})
	if err == nil || !strings.Contains(err.Error(), "IncorrectInstanceState") {
		t.Fatalf("StartInstances while stopping: %v, want IncorrectInstanceState", err)
	}
	atLeast("stopped", until(t, "stopped", is(types.InstanceStateNameStopped)), scaled("stop")*8/10)

	// Volumes: creating, then attachable; attaching, then attached.
	vol, err := c.CreateVolume(ctx, &ec2.CreateVolumeInput{AvailabilityZone: subnet.AvailabilityZone, Size: aws.Int32(8)})
	if err != nil {
		t.Fatal(err)
	}
	if vol.State != types.VolumeStateCreating {
		t.Errorf("CreateVolume answered %s, want creating", vol.State)
	}
	_, err = c.AttachVolume(ctx, &ec2.AttachVolumeInput{VolumeId: vol.VolumeId, InstanceId: &id, Device: aws.String("/dev/sdk")})
	if err == nil || !strings.Contains(err.Error(), "IncorrectState") {
		t.Fatalf("AttachVolume of a creating volume: %v, want IncorrectState", err)
	}
	volState := func() types.Volume {
		out, err := c.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{aws.ToString(vol.VolumeId)}})
		if err != nil {
			t.Fatal(err)
		}
		return out.Volumes[0]
	}
	until(t, "volume available", func() (bool, string) { v := volState(); return v.State == types.VolumeStateAvailable, string(v.State) })
	if _, err := c.AttachVolume(ctx, &ec2.AttachVolumeInput{VolumeId: vol.VolumeId, InstanceId: &id, Device: aws.String("/dev/sdk")}); err != nil {
		t.Fatal(err)
	}
	if a := volState().Attachments; len(a) != 1 || a[0].State != types.VolumeAttachmentStateAttaching {
		t.Fatalf("just attached: %+v, want attaching", a)
	}
	until(t, "attached", func() (bool, string) {
		a := volState().Attachments
		return len(a) == 1 && a[0].State == types.VolumeAttachmentStateAttached, "attaching"
	})
	if _, err := c.DetachVolume(ctx, &ec2.DetachVolumeInput{VolumeId: vol.VolumeId, InstanceId: &id}); err != nil {
		t.Fatal(err)
	}
	if v := volState(); v.State != types.VolumeStateInUse || len(v.Attachments) != 1 || v.Attachments[0].State != types.VolumeAttachmentStateDetaching {
		t.Fatalf("just detached: %s %+v, want in-use, detaching", v.State, v.Attachments)
	}
	until(t, "detached", func() (bool, string) { v := volState(); return v.State == types.VolumeStateAvailable, string(v.State) })

	// A snapshot completes after its modelled time, its progress climbing.
	snap, err := c.CreateSnapshot(ctx, &ec2.CreateSnapshotInput{VolumeId: vol.VolumeId})
	if err != nil {
		t.Fatal(err)
	}
	until(t, "snapshot completed", func() (bool, string) {
		out, err := c.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: []string{aws.ToString(snap.SnapshotId)}})
		if err != nil {
			t.Fatal(err)
		}
		return out.Snapshots[0].State == types.SnapshotStateCompleted, aws.ToString(out.Snapshots[0].Progress)
	})

	// Terminate: shutting-down, then terminated; the IP is taken until
	// the interface goes after it.
	termStart := time.Now()
	if _, err := c.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{id}}); err != nil {
		t.Fatal(err)
	}
	if st := state(); st != types.InstanceStateNameShuttingDown {
		t.Fatalf("just terminated: %s, want shutting-down", st)
	}
	held := func() (bool, string) {
		out, err := c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{Filters: []types.Filter{{Name: aws.String("private-ip-address"), Values: []string{ip}}}})
		if err != nil {
			t.Fatal(err)
		}
		return len(out.NetworkInterfaces) == 0, "held"
	}
	if free, _ := held(); free {
		t.Fatal("the IP was free while the box was shutting down")
	}
	until(t, "IP free", held)
	atLeast("IP free", time.Since(termStart), (scaled("terminate")+scaled("ip_release"))*8/10)
	if st := state(); st != types.InstanceStateNameTerminated {
		t.Fatalf("IP free while %s", st)
	}
}
