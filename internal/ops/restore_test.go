package ops

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// The restore's safety paths, on a fake EC2: the old box is stopped
// (forced if need be) and terminated only once stopped and protected;
// the new one is launched once, on a fallback type when AWS has no
// capacity, and an IP in use names its holder.

const restoreIP = "10.0.1.10"

func testRestore(f *fakeEC2) *SnapshotRestore {
	return &SnapshotRestore{EC2: f, NameTag: "circleci_services", Poll: time.Millisecond, StopTimeout: 30 * time.Millisecond, ReadBack: 30 * time.Millisecond}
}

func restorePlan(old string) RestorePlan {
	p := RestorePlan{Source: "bk-1", NameTag: "circleci_services", Fallbacks: []string{"m5.2xlarge", "m4.xlarge"},
		Shape: Shape{Type: "m5.xlarge", PrivateIP: restoreIP, SubnetID: "subnet-a", AZ: "us-east-1a"}}
	if old != "" {
		p.Old = &OldBox{InstanceID: old}
	}
	return p
}

// oldBox is the box a restore replaces: its volumes (protected or not)
// and its interface holding the restore's IP.
func oldBox(f *fakeEC2, state ec2types.InstanceStateName, deleteOnTermination bool) {
	in := f.addInstance("i-old", state, "circleci_services")
	in.BlockDeviceMappings = []ec2types.InstanceBlockDeviceMapping{
		{DeviceName: aws.String("/dev/sda1"), Ebs: &ec2types.EbsInstanceBlockDevice{VolumeId: aws.String("vol-root"), DeleteOnTermination: aws.Bool(false)}},
		{DeviceName: aws.String("/dev/sdf"), Ebs: &ec2types.EbsInstanceBlockDevice{VolumeId: aws.String("vol-data"), DeleteOnTermination: aws.Bool(deleteOnTermination)}},
	}
	f.addENI("eni-old", "subnet-a", "vpc-1", "i-old", restoreIP)
}

func TestRestoreStopOld(t *testing.T) {
	for _, tc := range []struct {
		name   string
		state  ec2types.InstanceStateName
		onStop func(f *fakeEC2) func(string, bool) error
		want   string
		calls  []string
	}{
		{"stops", stRunning, nil, "`i-old` stopped in", []string{"StopInstances i-old"}},
		{"forces", stRunning, func(f *fakeEC2) func(string, bool) error {
			return func(id string, force bool) error {
				if force {
					f.then(id, stStopped)
				} else {
					f.then(id, stStopping)
				}
				return nil
			}
		}, "`i-old` force-stopped in", []string{"StopInstances i-old", "StopInstances i-old force"}},
		{"already stopped", stStopped, nil, "`i-old` was already stopped", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, rec := newFakeEC2(), &recorder{}
			oldBox(f, tc.state, false)
			if tc.onStop != nil {
				f.onStop = tc.onStop(f)
			}
			got, err := testRestore(f).stopOld(context.Background(), restorePlan("i-old"), rec)
			if err != nil || !strings.HasPrefix(got, tc.want) {
				t.Fatalf("%q, %v; want %q…", got, err, tc.want)
			}
			wantCalls(t, f, tc.calls...)
		})
	}
	f, rec := newFakeEC2(), &recorder{}
	r := testRestore(f)
	if got, err := r.stopOld(context.Background(), restorePlan(""), rec); got != "no old instance" || err != nil {
		t.Errorf("no old box: %q, %v", got, err)
	}
	if got, err := r.stopOld(context.Background(), restorePlan("i-gone"), rec); !strings.Contains(got, "is gone") || err != nil {
		t.Errorf("gone: %q, %v", got, err)
	}
	// Never stops: the step fails, and the IP is never freed.
	oldBox(f, stRunning, false)
	f.onStop = never(f)
	if _, err := r.stopOld(context.Background(), restorePlan("i-old"), rec); err == nil || !strings.Contains(err.Error(), "is not stopped even after a forced stop") {
		t.Errorf("never stops: %v", err)
	}
	// Cannot be read: an error the step runs again for, nothing sent.
	f = newFakeEC2()
	oldBox(f, stRunning, false)
	f.describeErr = func(int, *ec2.DescribeInstancesInput) error {
		return apiErr("DescribeInstances", "RequestLimitExceeded")
	}
	if _, err := testRestore(f).stopOld(context.Background(), restorePlan("i-old"), rec); !transient(err) {
		t.Errorf("unreadable: %v", err)
	}
	wantCalls(t, f)
}

// The old box is terminated only once it is stopped and every volume is
// kept on termination; then its IP is free once its interface is gone.
func TestRestoreFreeIPTerminatesOnlyAStoppedProtectedBox(t *testing.T) {
	ctx := context.Background()
	f, rec := newFakeEC2(), &recorder{}
	oldBox(f, stStopped, false)
	got, err := testRestore(f).freeIP(ctx, restorePlan("i-old"), rec)
	if err != nil || !strings.Contains(got, "`i-old` terminated (volumes kept); "+restoreIP+" free") {
		t.Fatalf("%q, %v", got, err)
	}
	wantCalls(t, f, "TerminateInstances i-old")
	if f.state("i-old") != ec2types.InstanceStateNameTerminated {
		t.Errorf("old box %s", f.state("i-old"))
	}

	for _, tc := range []struct {
		name  string
		state ec2types.InstanceStateName
		del   bool
		want  string
	}{
		{"running", stRunning, false, "is running, not stopped; it is not terminated while it may be serving"},
		{"stopping", stStopping, false, "is stopping, not stopped"},
		{"unprotected volume", stStopped, true, "volume vol-data (/dev/sdf) of i-old is still set to be deleted on termination"},
	} {
		f := newFakeEC2()
		oldBox(f, tc.state, tc.del)
		if _, err := testRestore(f).freeIP(ctx, restorePlan("i-old"), rec); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v", tc.name, err)
		}
		wantCalls(t, f)
	}
}

func TestRestoreFreeIPWaitsForTheInterface(t *testing.T) {
	ctx := context.Background()
	rec := &recorder{}
	// Something else holds the IP for good: the step fails naming it.
	f := newFakeEC2()
	f.addInstance("i-other", stRunning, "ci-other")
	f.addENI("eni-x", "subnet-a", "vpc-1", "i-other", restoreIP)
	_, err := testRestore(f).freeIP(ctx, restorePlan(""), rec)
	if err == nil || !strings.Contains(err.Error(), restoreIP+" is still held by network interface `eni-x` of instance `i-other` (Name=ci-other)") {
		t.Errorf("held: %v", err)
	}
	// No old box, nothing holds it.
	f = newFakeEC2()
	if got, err := testRestore(f).freeIP(ctx, restorePlan(""), rec); got != restoreIP+" is free" || err != nil {
		t.Errorf("free: %q, %v", got, err)
	}
	// Terminated already (a resume): not terminated again.
	f = newFakeEC2()
	oldBox(f, ec2types.InstanceStateNameTerminated, false)
	f.dropENI["eni-old"] = 1
	if _, err := testRestore(f).freeIP(ctx, restorePlan("i-old"), rec); err != nil {
		t.Errorf("terminated already: %v", err)
	}
	wantCalls(t, f)
	// Gone by the time it is terminated: that is what was wanted.
	f = newFakeEC2()
	oldBox(f, stStopped, false)
	f.onTerminate = func(id string) error {
		delete(f.insts, id)
		f.dropENI["eni-old"] = 0
		return apiErr("TerminateInstances", "InvalidInstanceID.NotFound")
	}
	if _, err := testRestore(f).freeIP(ctx, restorePlan("i-old"), rec); err != nil {
		t.Errorf("gone meanwhile: %v", err)
	}
	// Refused: the step fails with AWS's reason.
	f = newFakeEC2()
	oldBox(f, stStopped, false)
	f.onTerminate = func(string) error { return apiErr("TerminateInstances", "UnauthorizedOperation") }
	if _, err := testRestore(f).freeIP(ctx, restorePlan("i-old"), rec); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("denied: %v", err)
	}
	// Reading the interfaces fails: a transient failure is waited out, a
	// denial is not.
	for code, ok := range map[string]bool{"RequestLimitExceeded": true, "UnauthorizedOperation": false} {
		f = newFakeEC2()
		f.describeENIs = func(n int) error {
			if n == 1 || !ok {
				return apiErr("DescribeNetworkInterfaces", code)
			}
			return nil
		}
		if _, err := testRestore(f).freeIP(ctx, restorePlan(""), rec); (err == nil) != ok {
			t.Errorf("%s: %v", code, err)
		}
	}
	// Unreadable until the time runs out.
	f = newFakeEC2()
	f.describeENIs = func(int) error { return apiErr("DescribeNetworkInterfaces", "InternalError") }
	if _, err := testRestore(f).freeIP(ctx, restorePlan(""), rec); err == nil || !strings.Contains(err.Error(), "could not be read") {
		t.Errorf("unreadable: %v", err)
	}
}

func restoreOp() *Work[RestoreResult] {
	return &Work[RestoreResult]{ID: "op-1", Result: &RestoreResult{ImageID: "ami-1"}}
}

// No capacity of the recorded type: the next fallback type is tried,
// each with its own client token; none left: an error that says what to
// do.
func TestRestoreLaunchFallsBackWhenAWSHasNoCapacity(t *testing.T) {
	f, rec := newFakeEC2(), &recorder{}
	f.onRun = func(in *ec2.RunInstancesInput) error {
		switch in.InstanceType {
		case "m5.xlarge":
			return apiErr("RunInstances", "InsufficientInstanceCapacity")
		case "m5.2xlarge":
			return apiErr("RunInstances", "InstanceLimitExceeded")
		}
		return nil
	}
	op := restoreOp()
	got, err := testRestore(f).launch(context.Background(), op, restorePlan(""), rec)
	if err != nil || !strings.Contains(got, "(m4.xlarge) at "+restoreIP) || op.Result.InstanceType != "m4.xlarge" || op.Result.InstanceID == "" {
		t.Fatalf("%q, %v, %+v", got, err, op.Result)
	}
	wantCalls(t, f, "RunInstances m5.xlarge op-1/m5.xlarge", "RunInstances m5.2xlarge op-1/m5.2xlarge", "RunInstances m4.xlarge op-1/m4.xlarge")
	if !rec.has("AWS has no m5.xlarge capacity in us-east-1a (InsufficientInstanceCapacity); trying m5.2xlarge.") {
		t.Errorf("log %q", rec.lines)
	}

	f = newFakeEC2()
	f.onRun = func(*ec2.RunInstancesInput) error { return apiErr("RunInstances", "Unsupported") }
	_, err = testRestore(f).launch(context.Background(), restoreOp(), restorePlan(""), rec)
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "no capacity for m5.xlarge, m5.2xlarge, m4.xlarge in us-east-1a; add types to restore.fallback_instance_types") {
		t.Errorf("no type left: %v", err)
	}
}

// The IP is in use: the error names what holds it, and no other type is
// tried (another type would not free the IP).
func TestRestoreLaunchNamesTheHolderOfTheIP(t *testing.T) {
	f, rec := newFakeEC2(), &recorder{}
	f.addInstance("i-other", stRunning, "ci-other")
	f.addENI("eni-x", "subnet-a", "vpc-1", "i-other", restoreIP)
	f.onRun = func(*ec2.RunInstancesInput) error { return apiErr("RunInstances", "InvalidIPAddress.InUse") }
	_, err := testRestore(f).launch(context.Background(), restoreOp(), restorePlan(""), rec)
	if err == nil || !strings.Contains(err.Error(), restoreIP+" is in use by network interface `eni-x` of instance `i-other` (Name=ci-other); free it") || !strings.Contains(err.Error(), "resume this restore (op-1)") {
		t.Errorf("%v", err)
	}
	wantCalls(t, f, "RunInstances m5.xlarge op-1/m5.xlarge")

	// Held, but the holder is gone by the time it is looked up.
	f = newFakeEC2()
	f.onRun = func(*ec2.RunInstancesInput) error { return apiErr("RunInstances", "InvalidIPAddress.InUse") }
	if _, err := testRestore(f).launch(context.Background(), restoreOp(), restorePlan(""), rec); err == nil || !strings.Contains(err.Error(), "in use by something else") {
		t.Errorf("%v", err)
	}
}

func TestRestoreLaunchOnce(t *testing.T) {
	ctx := context.Background()
	rec := &recorder{}
	// Launched by this restore before (a resume): used, not launched again.
	f := newFakeEC2()
	in := f.addInstance("i-mine", stRunning, "circleci_services")
	in.Tags = append(in.Tags, ec2types.Tag{Key: aws.String(TagRestoreOp), Value: aws.String("op-1")})
	in.PrivateIpAddress, in.InstanceType = aws.String(restoreIP), "m5.xlarge"
	op := restoreOp()
	if got, err := testRestore(f).launch(ctx, op, restorePlan(""), rec); err != nil || !strings.HasPrefix(got, "`i-mine`") || op.Result.InstanceID != "i-mine" {
		t.Errorf("%q, %v", got, err)
	}
	wantCalls(t, f)
	// Refused for another reason: said, not retried on another type.
	f = newFakeEC2()
	f.onRun = func(*ec2.RunInstancesInput) error { return apiErr("RunInstances", "UnauthorizedOperation") }
	if _, err := testRestore(f).launch(ctx, restoreOp(), restorePlan(""), rec); !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "launch the new box (m5.xlarge)") {
		t.Errorf("%v", err)
	}
	wantCalls(t, f, "RunInstances m5.xlarge op-1/m5.xlarge")
	// The look for an earlier launch fails: nothing is launched.
	f = newFakeEC2()
	f.describeErr = func(int, *ec2.DescribeInstancesInput) error { return apiErr("DescribeInstances", "InternalError") }
	if _, err := testRestore(f).launch(ctx, restoreOp(), restorePlan(""), rec); !transient(err) {
		t.Errorf("%v", err)
	}
	wantCalls(t, f)
	// The recorded secondary IPs go on the new box's interface.
	f = newFakeEC2()
	plan := restorePlan("")
	plan.Shape.SecondaryIPs = []string{"10.0.1.100"}
	if got, err := testRestore(f).launch(ctx, restoreOp(), plan, rec); err != nil || !strings.HasSuffix(got, "+ 10.0.1.100") {
		t.Errorf("%q, %v", got, err)
	}
	wantCalls(t, f, "RunInstances m5.xlarge op-1/m5.xlarge", "AssignPrivateIpAddresses eni-i-new0 10.0.1.100 reassign=false")
	f = newFakeEC2()
	f.onAssign = func(string) error { return apiErr("AssignPrivateIpAddresses", "PrivateIpAddressLimitExceeded") }
	if _, err := testRestore(f).launch(ctx, restoreOp(), plan, rec); err == nil || !strings.Contains(err.Error(), "give the new box its secondary IPs 10.0.1.100") {
		t.Errorf("%v", err)
	}
}

// The launch keeps the recorded shape: the box's own tags (not AWS's or
// the bot's old ones), its key, its instance profile by ARN or name.
func TestRestoreRunKeepsTheShape(t *testing.T) {
	for _, profile := range []string{"arn:aws:iam::1:instance-profile/circleci", "circleci"} {
		f, rec := newFakeEC2(), &recorder{}
		var got *ec2.RunInstancesInput
		f.onRun = func(in *ec2.RunInstancesInput) error { got = in; return nil }
		plan := restorePlan("")
		plan.Shape.KeyName, plan.Shape.IAMProfile = "ops", profile
		plan.Shape.Tags = map[string]string{"team": "ci", "aws:cloudformation:stack-name": "x", TagRestoreOp: "op-0"}
		if _, err := testRestore(f).launch(context.Background(), restoreOp(), plan, rec); err != nil {
			t.Fatal(err)
		}
		var tags []string
		for _, tg := range got.TagSpecifications[0].Tags {
			tags = append(tags, aws.ToString(tg.Key)+"="+aws.ToString(tg.Value))
		}
		want := []string{"Name=circleci_services", "circlebot:restore-op=op-1", "circlebot:restored-from=bk-1", "team=ci"}
		if strings.Join(tags, " ") != strings.Join(want, " ") || aws.ToString(got.KeyName) != "ops" || aws.ToString(got.ImageId) != "ami-1" || aws.ToString(got.PrivateIpAddress) != restoreIP {
			t.Errorf("tags %q key %q image %q ip %q", tags, aws.ToString(got.KeyName), aws.ToString(got.ImageId), aws.ToString(got.PrivateIpAddress))
		}
		if p := got.IamInstanceProfile; p == nil || aws.ToString(p.Arn)+aws.ToString(p.Name) != profile {
			t.Errorf("profile %+v, want %s", p, profile)
		}
	}
}
