package ops

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// Before a restore stops the old box, every volume of it is kept on
// termination, tagged, and read back so: the old data survives whatever
// comes after.

// unprotectedBox is the old box as launched: every EBS volume deleted on
// termination, and an instance-store device (no EBS) too.
func unprotectedBox(f *fakeEC2) {
	oldBox(f, stRunning, true)
	in := f.insts["i-old"]
	in.BlockDeviceMappings[0].Ebs.DeleteOnTermination = aws.Bool(true)
	in.BlockDeviceMappings = append(in.BlockDeviceMappings, ec2types.InstanceBlockDeviceMapping{DeviceName: aws.String("/dev/sdb")})
}

// deletedOnTermination lists the old box's volumes still deleted with it.
func deletedOnTermination(f *fakeEC2) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var vols []string
	for _, m := range f.insts["i-old"].BlockDeviceMappings {
		if m.Ebs != nil && aws.ToBool(m.Ebs.DeleteOnTermination) {
			vols = append(vols, aws.ToString(m.Ebs.VolumeId))
		}
	}
	return vols
}

func TestRestoreProtectKeepsEveryVolumeAndReadsItBack(t *testing.T) {
	ctx := context.Background()
	f := newFakeEC2()
	unprotectedBox(f)
	var tags *ec2.CreateTagsInput
	f.onTags = func(in *ec2.CreateTagsInput) error { tags = in; return nil }
	op := restoreOp()
	got, err := testRestore(f).protect(ctx, op, restorePlan("i-old"))
	if err != nil || got != "2 volumes of `i-old` kept on termination and tagged circlebot:kept-by=op-1: vol-root, vol-data" {
		t.Fatalf("%q, %v", got, err)
	}
	wantCalls(t, f, "ModifyInstanceAttribute i-old /dev/sda1 DeleteOnTermination=false", "ModifyInstanceAttribute i-old /dev/sdf DeleteOnTermination=false", "CreateTags vol-root,vol-data")
	if v := deletedOnTermination(f); len(v) != 0 {
		t.Errorf("still deleted on termination: %q", v)
	}
	// Read back after the writes, before the step says done.
	if calls := f.Calls(); calls[len(calls)-1] != "DescribeInstances i-old" {
		t.Errorf("not read back last: %q", calls)
	}
	var kv []string
	for _, tg := range tags.Tags {
		kv = append(kv, aws.ToString(tg.Key)+"="+aws.ToString(tg.Value))
	}
	if !slices.Equal(kv, []string{TagKeptBy + "=op-1", TagKeptFrom + "=i-old"}) {
		t.Errorf("tags %q", kv)
	}
	if !slices.Equal(op.Result.KeptVolumes, []string{"vol-root", "vol-data"}) {
		t.Errorf("kept volumes %q", op.Result.KeptVolumes)
	}

	// Run again (a resume): what is kept already is not changed again,
	// the tags are put again (the same).
	f.calls = nil
	if _, err := testRestore(f).protect(ctx, restoreOp(), restorePlan("i-old")); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, f, "CreateTags vol-root,vol-data")

	// A volume kept already (the root here) is left alone.
	f = newFakeEC2()
	oldBox(f, stStopped, true)
	if _, err := testRestore(f).protect(ctx, restoreOp(), restorePlan("i-old")); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, f, "ModifyInstanceAttribute i-old /dev/sdf DeleteOnTermination=false", "CreateTags vol-root,vol-data")

	// No EBS volume: nothing to change, tag or keep.
	f = newFakeEC2()
	f.addInstance("i-old", stRunning, "circleci_services").BlockDeviceMappings = []ec2types.InstanceBlockDeviceMapping{{DeviceName: aws.String("/dev/sdb")}}
	op = restoreOp()
	if got, err := testRestore(f).protect(ctx, op, restorePlan("i-old")); err != nil || !strings.HasPrefix(got, "0 volumes of `i-old`") || len(op.Result.KeptVolumes) != 0 {
		t.Errorf("%q, %v", got, err)
	}
	wantCalls(t, f)

	// No old box: nothing to protect, nothing read.
	f = newFakeEC2()
	if got, err := testRestore(f).protect(ctx, restoreOp(), restorePlan("")); err != nil || got != "no old instance: nothing to protect" || len(f.Calls()) != 0 {
		t.Errorf("%q, %v, %q", got, err, f.Calls())
	}
}

// Anything short of every volume read back as kept fails the step, and
// the restore goes no further: the old box is not stopped, let alone
// terminated.
func TestRestoreProtectFailsClosed(t *testing.T) {
	ctx := context.Background()
	modifyData := "ModifyInstanceAttribute i-old /dev/sdf DeleteOnTermination=false"
	for _, tc := range []struct {
		name  string
		setup func(f *fakeEC2)
		want  string
		is    error
		calls []string
	}{
		// AWS took the change but the read-back does not show it.
		{"not read back protected", func(f *fakeEC2) { f.ignoreModify = true },
			"volume vol-data (/dev/sdf) of i-old is still set to be deleted on termination; not going further", nil, []string{modifyData, "CreateTags vol-root,vol-data"}},
		{"change refused", func(f *fakeEC2) {
			f.onModify = func(*ec2.ModifyInstanceAttributeInput) error {
				return apiErr("ModifyInstanceAttribute", "UnauthorizedOperation")
			}
		}, "turn off DeleteOnTermination of vol-data (/dev/sdf)", ErrUnauthorized, []string{modifyData}},
		{"tags refused", func(f *fakeEC2) {
			f.onTags = func(*ec2.CreateTagsInput) error { return apiErr("CreateTags", "UnauthorizedOperation") }
		}, "tag the old volumes", ErrUnauthorized, []string{modifyData, "CreateTags vol-root,vol-data"}},
		{"unreadable", func(f *fakeEC2) {
			f.describeErr = func(int, *ec2.DescribeInstancesInput) error {
				return apiErr("DescribeInstances", "UnauthorizedOperation")
			}
		}, "describe i-old", ErrUnauthorized, nil},
		{"unreadable on the read-back", func(f *fakeEC2) {
			f.describeErr = func(n int, _ *ec2.DescribeInstancesInput) error {
				if n > 1 {
					return apiErr("DescribeInstances", "InternalError")
				}
				return nil
			}
		}, "the last read failed: describe i-old: AWS said InternalError", ErrNotConverged, []string{modifyData, "CreateTags vol-root,vol-data"}},
		// Terminated by someone else before its volumes were kept: said,
		// with the volumes to check by hand.
		{"terminated", func(f *fakeEC2) { f.insts["i-old"].State.Name = ec2types.InstanceStateNameTerminated },
			"the old instance i-old is gone (terminated outside this restore) before its volumes were protected; check vol vol-root, vol-data by hand", nil, nil},
		{"gone", func(f *fakeEC2) { delete(f.insts, "i-old") }, "the old instance i-old is gone", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeEC2()
			oldBox(f, stRunning, true)
			tc.setup(f)
			plan := restorePlan("i-old")
			plan.Old.Volumes = []VolumeRef{{ID: "vol-root", Device: "/dev/sda1"}, {ID: "vol-data", Device: "/dev/sdf", DeleteOnTermination: true}}
			op := restoreOp()
			_, err := testRestore(f).protect(ctx, op, plan)
			if err == nil || !strings.Contains(err.Error(), tc.want) || (tc.is != nil && !errors.Is(err, tc.is)) {
				t.Errorf("%v; want %q (%v)", err, tc.want, tc.is)
			}
			wantCalls(t, f, tc.calls...)
			if len(op.Result.KeptVolumes) != 0 {
				t.Errorf("kept volumes recorded: %q", op.Result.KeptVolumes)
			}
		})
	}
}

// checkProtected is also what freeIP asks before it terminates.
func TestRestoreCheckProtected(t *testing.T) {
	ctx := context.Background()
	f := newFakeEC2()
	oldBox(f, stStopped, false)
	r := testRestore(f)
	if err := r.checkProtected(ctx, "i-old"); err != nil {
		t.Errorf("protected: %v", err)
	}
	f.insts["i-old"].BlockDeviceMappings[0].Ebs.DeleteOnTermination = aws.Bool(true)
	if err := r.checkProtected(ctx, "i-old"); err == nil || !strings.Contains(err.Error(), "volume vol-root (/dev/sda1) of i-old is still set to be deleted on termination") {
		t.Errorf("root unprotected: %v", err)
	}
	// Gone: nothing left to be deleted with it.
	if err := r.checkProtected(ctx, "i-gone"); err != nil {
		t.Errorf("gone: %v", err)
	}
	f.describeErr = func(int, *ec2.DescribeInstancesInput) error {
		return apiErr("DescribeInstances", "UnauthorizedOperation")
	}
	if err := r.checkProtected(ctx, "i-old"); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("unreadable: %v", err)
	}
	wantCalls(t, f)
}

// The steps' order is the promise: the old volumes are protected before
// the old box is stopped, and it is stopped before it is terminated to
// free its IP; in a failover, the fence comes before the address moves.
func TestStepsProtectAndFenceFirst(t *testing.T) {
	names := func(n int, get func(int) string) []string {
		var s []string
		for i := range n {
			s = append(s, get(i))
		}
		return s
	}
	rs := testRestore(newFakeEC2()).Steps(restorePlan("i-old"))
	got := names(len(rs), func(i int) string { return rs[i].Name })
	want := []string{"Make an image of the restore point", "Protect the old volumes", "Stop the old instance", "Free the private IP", "Launch the new Services box"}
	if i := slices.Index(got, want[0]); i < 0 || len(got) < i+len(want) || !slices.Equal(got[i:i+len(want)], want) {
		t.Errorf("restore steps %q", got)
	}
	_, fo := failoverEnv()
	fs := fo.Steps(primaryPlan())
	got = names(len(fs), func(i int) string { return fs[i].Name })
	if len(got) < 3 || got[0] != "Fence the old primary" || got[2] != "Move the service address" {
		t.Errorf("failover steps %q", got)
	}
}
