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

// until polls read until it says done; the deadline is generous (the
// machine is shared).
func until(t *testing.T, what string, read func() (bool, string)) {
	t.Helper()
	start := time.Now()
	last := ""
	for deadline := start.Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		ok, seen := read()
		if ok {
			return
		}
		last = seen
	}
	t.Fatalf("%s: not after 30 s (last seen %s)", what, last)
}

// tooEarly is for a change seen done at the first read after it was
// asked (at asked): that is right only if the read came no sooner than the
// model's (scaled) time want, less the clock's resolution.
func tooEarly(t *testing.T, what string, asked time.Time, want time.Duration) {
	t.Helper()
	if got := time.Since(asked); got < want*9/10 {
		t.Fatalf("%s after %s, want at least %s", what, got, want)
	}
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
	launched := time.Now()
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

	// A change seen done at a read right after it was asked is a failure
	// only if the read came sooner than the model's time: a loaded machine
	// may read late, never early. Each time counts from the call that
	// started the change.
	switch st := state(); st {
	case types.InstanceStateNameRunning:
		tooEarly(t, "running", launched, scaled("launch"))
	case types.InstanceStateNamePending:
	default:
		t.Fatalf("just launched: %s, want pending", st)
	}
	if s.AgentOnline(ctx, id) {
		tooEarly(t, "the SSM agent online", launched, scaled("launch")+scaled("agent"))
	}
	until(t, "running", is(types.InstanceStateNameRunning))
	atLeast("running", time.Since(launched), scaled("launch")*8/10)
	if ok, _ := checks(); ok {
		tooEarly(t, "status checks ok", launched, scaled("launch")+scaled("status_checks"))
	}
	until(t, "status checks", checks)
	atLeast("status checks", time.Since(launched), (scaled("launch")+scaled("status_checks"))*8/10)
	if !s.AgentOnline(ctx, id) {
		t.Fatal("the SSM agent is not online after the status checks passed (the model has it earlier)")
	}

	stopped := time.Now()
	if _, err := c.StopInstances(ctx, &ec2.StopInstancesInput{InstanceIds: []string{id}}); err != nil {
		t.Fatal(err)
	}
	switch st := state(); st {
	case types.InstanceStateNameStopped:
		tooEarly(t, "stopped", stopped, scaled("stop"))
	case types.InstanceStateNameStopping:
		_, err = c.StartInstances(ctx, &ec2.StartInstancesInput{InstanceIds: []string{id}})
		switch {
		case err == nil:
			// Sent after the stop ended, on a loaded machine: right,
			// and the box is starting. Stop it again for the rest.
			tooEarly(t, "StartInstances accepted after a stop", stopped, scaled("stop"))
			until(t, "running again", is(types.InstanceStateNameRunning))
			stopped = time.Now()
			if _, err := c.StopInstances(ctx, &ec2.StopInstancesInput{InstanceIds: []string{id}}); err != nil {
				t.Fatal(err)
			}
		case !strings.Contains(err.Error(), "IncorrectInstanceState"):
			t.Fatalf("StartInstances while stopping: %v, want IncorrectInstanceState", err)
		}
	default:
		t.Fatalf("just stopped: %s, want stopping", st)
	}
	until(t, "stopped", is(types.InstanceStateNameStopped))
	atLeast("stopped", time.Since(stopped), scaled("stop")*8/10)

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
	asked := time.Now()
	if _, err := c.AttachVolume(ctx, &ec2.AttachVolumeInput{VolumeId: vol.VolumeId, InstanceId: &id, Device: aws.String("/dev/sdk")}); err != nil {
		t.Fatal(err)
	}
	// The attach is modelled at 50 ms: on a loaded machine the read may
	// come later than that, and then "attached" is right.
	switch a := volState().Attachments; {
	case len(a) == 1 && a[0].State == types.VolumeAttachmentStateAttached:
		tooEarly(t, "attached", asked, scaled("volume_attach"))
	case len(a) != 1 || a[0].State != types.VolumeAttachmentStateAttaching:
		t.Fatalf("just attached: %+v, want attaching", a)
	}
	until(t, "attached", func() (bool, string) {
		a := volState().Attachments
		return len(a) == 1 && a[0].State == types.VolumeAttachmentStateAttached, "attaching"
	})
	asked = time.Now()
	if _, err := c.DetachVolume(ctx, &ec2.DetachVolumeInput{VolumeId: vol.VolumeId, InstanceId: &id}); err != nil {
		t.Fatal(err)
	}
	switch v := volState(); {
	case v.State == types.VolumeStateAvailable:
		tooEarly(t, "detached", asked, scaled("volume_detach"))
	case v.State != types.VolumeStateInUse || len(v.Attachments) != 1 || v.Attachments[0].State != types.VolumeAttachmentStateDetaching:
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
	switch st := state(); st {
	case types.InstanceStateNameTerminated:
		tooEarly(t, "terminated", termStart, scaled("terminate"))
	case types.InstanceStateNameShuttingDown:
	default:
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
		tooEarly(t, "the IP free", termStart, scaled("terminate")+scaled("ip_release"))
	}
	until(t, "IP free", held)
	atLeast("IP free", time.Since(termStart), (scaled("terminate")+scaled("ip_release"))*8/10)
	if st := state(); st != types.InstanceStateNameTerminated {
		t.Fatalf("IP free while %s", st)
	}
}
