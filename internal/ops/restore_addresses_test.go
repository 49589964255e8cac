package ops

import (
	"context"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// keptPrimaryPlan is a restore of i-old whose primary interface eni-old
// was made on its own: AWS keeps it (and the IP) on termination.
func keptPrimaryPlan() RestorePlan {
	p := restorePlan("i-old")
	p.Old.Interfaces = []InterfaceRef{{ID: "eni-old", DeviceIndex: 0, IPs: []string{restoreIP}}}
	return p
}

// A kept primary interface never frees the IP: freeIP waits for it to be
// detached instead (today's code waited for the IP until the time ran
// out, with the box gone), and says when it stays attached.
func TestRestoreFreeIPWithAKeptPrimaryInterface(t *testing.T) {
	ctx := context.Background()
	rec := &recorder{}
	f := newFakeEC2()
	oldBox(f, stStopped, false)
	f.onTerminate = func(string) error {
		// AWS detaches it and keeps it, with its address.
		n := f.enis["eni-old"]
		n.Attachment, n.Status = nil, ec2types.NetworkInterfaceStatusAvailable
		return nil
	}
	got, err := testRestore(f).freeIP(ctx, keptPrimaryPlan(), rec)
	if err != nil || !strings.Contains(got, "its primary interface `eni-old` with "+restoreIP+" detached") {
		t.Errorf("%q, %v", got, err)
	}
	// Still attached when the time runs out: said, with what to do.
	f = newFakeEC2()
	oldBox(f, stStopped, false)
	f.onTerminate = func(string) error { f.dropENI["eni-old"] = 1 << 20; return nil }
	_, err = testRestore(f).freeIP(ctx, keptPrimaryPlan(), rec)
	if err == nil || !strings.Contains(err.Error(), "the old primary interface `eni-old` (kept on termination) is still attached to `i-old`") {
		t.Errorf("still attached: %v", err)
	}
}

// The new box is launched on the kept interface, without a subnet, IP
// or groups of its own (AWS takes them on one or the other).
func TestRestoreRunOnAKeptPrimaryInterface(t *testing.T) {
	f, rec := newFakeEC2(), &recorder{}
	var got *ec2.RunInstancesInput
	f.onRun = func(in *ec2.RunInstancesInput) error { got = in; return nil }
	plan := keptPrimaryPlan()
	plan.Shape.SecurityGroups = []string{"sg-1"}
	if _, err := testRestore(f).launch(context.Background(), restoreOp(), plan, rec); err != nil {
		t.Fatal(err)
	}
	if len(got.NetworkInterfaces) != 1 || aws.ToString(got.NetworkInterfaces[0].NetworkInterfaceId) != "eni-old" || aws.ToInt32(got.NetworkInterfaces[0].DeviceIndex) != 0 ||
		got.SubnetId != nil || got.PrivateIpAddress != nil || got.SecurityGroupIds != nil {
		t.Errorf("launched with %+v, subnet %v ip %v groups %v", got.NetworkInterfaces, got.SubnetId, got.PrivateIpAddress, got.SecurityGroupIds)
	}
}

// Interfaces of the old box: the primary that AWS keeps, the others.
func TestOldBoxInterfaces(t *testing.T) {
	in := ec2types.Instance{PrivateIpAddress: aws.String("10.0.1.10"), NetworkInterfaces: []ec2types.InstanceNetworkInterface{
		{NetworkInterfaceId: aws.String("eni-svc"), Attachment: &ec2types.InstanceNetworkInterfaceAttachment{DeviceIndex: aws.Int32(1), DeleteOnTermination: aws.Bool(false)},
			PrivateIpAddresses: []ec2types.InstancePrivateIpAddress{{PrivateIpAddress: aws.String("10.0.1.200"), Primary: aws.Bool(true)}}},
		{NetworkInterfaceId: aws.String("eni-prim"), Attachment: &ec2types.InstanceNetworkInterfaceAttachment{DeviceIndex: aws.Int32(0), DeleteOnTermination: aws.Bool(true)},
			PrivateIpAddresses: []ec2types.InstancePrivateIpAddress{{PrivateIpAddress: aws.String("10.0.1.100")}, {PrivateIpAddress: aws.String("10.0.1.10"), Primary: aws.Bool(true)}}},
	}}
	o := &OldBox{Interfaces: interfacesOf(in)}
	if o.Interfaces[0].ID != "eni-prim" || strings.Join(o.Interfaces[0].IPs, ",") != "10.0.1.10,10.0.1.100" {
		t.Errorf("primary first, its own IP first: %+v", o.Interfaces)
	}
	if o.KeptPrimary() != nil {
		t.Error("a primary deleted on termination is not kept")
	}
	if others := o.Others(); len(others) != 1 || others[0].ID != "eni-svc" {
		t.Errorf("others %+v", others)
	}
	o.Interfaces[0].DeleteOnTermination = false
	if kp := o.KeptPrimary(); kp == nil || kp.ID != "eni-prim" {
		t.Errorf("kept primary %+v", kp)
	}
	// Only the primary interface's secondary IPs are the box's shape.
	if s := ShapeOf(in); strings.Join(s.SecondaryIPs, ",") != "10.0.1.100" {
		t.Errorf("shape secondary IPs %v", s.SecondaryIPs)
	}
	var none *OldBox
	if none.KeptPrimary() != nil || none.Others() != nil {
		t.Error("no old box has no interfaces")
	}
}
