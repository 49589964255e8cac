package app_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/circlebot/circlebot/internal/ops"
)

// addressesOf lists an interface's private IPs.
func (e *env) addressesOf(eni string) (ips []string, attachedTo string, index int32) {
	e.t.Helper()
	out, err := ec2.NewFromConfig(e.aws).DescribeNetworkInterfaces(context.Background(), &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{eni}})
	if err != nil || len(out.NetworkInterfaces) != 1 {
		e.t.Fatalf("describe %s: %v", eni, err)
	}
	n := out.NetworkInterfaces[0]
	for _, a := range n.PrivateIpAddresses {
		ips = append(ips, aws.ToString(a.PrivateIpAddress))
	}
	if n.Attachment != nil {
		attachedTo, index = aws.ToString(n.Attachment.InstanceId), aws.ToInt32(n.Attachment.DeviceIndex)
	}
	slices.Sort(ips)
	return ips, attachedTo, index
}

// After an `eni` failover the Services box has a second interface, made
// on its own, that owns the service address. A restore gives the new
// primary interface only the old primary's own addresses (AWS refuses an
// address another interface holds: the launcher does too) and attaches
// the second interface, freed by the old box's termination, to the new
// box at its device index.
func TestRestoreKeepsEachInterfaceWithItsOwnAddresses(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := newRestoreEnv(t, nil)
	api := ec2.NewFromConfig(r.aws)
	box := r.inst.ServicesBox
	n, err := api.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(box.SubnetID), PrivateIpAddress: aws.String("10.0.1.200"), Groups: []string{r.inst.SecurityGroupID}})
	if err != nil {
		t.Fatal(err)
	}
	eni := aws.ToString(n.NetworkInterface.NetworkInterfaceId)
	if _, err := api.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: &eni, InstanceId: aws.String(box.ID), DeviceIndex: aws.Int32(1)}); err != nil {
		t.Fatal(err)
	}
	r.settle()
	r.slash(alice, incident, "backup now")
	r.server.Wait()
	b := r.lastBackup(ops.StateCompleted)
	r.settle()
	if b.ID == r.backup.ID {
		t.Fatal("no new backup")
	}
	r.backup = b

	req := r.request(alice, "restore latest --rebuild")
	plan := r.waitText("plan", req, "Approval needed")
	for _, want := range []string{"reattach interface `" + eni + "` (10.0.1.200) to the new box at device 1"} {
		if !strings.Contains(plan, want) {
			t.Errorf("the plan does not say %q:\n%s", want, plan)
		}
	}
	r.click(bob, "approve "+req, "nic.1")
	sum := r.waitText("summary", "Restored `"+b.ID+"`")
	r.server.Wait()
	nb := r.checkRestored()
	id := aws.ToString(nb.InstanceId)
	for _, ni := range nb.NetworkInterfaces {
		if aws.ToInt32(ni.Attachment.DeviceIndex) != 0 {
			continue
		}
		var ips []string
		for _, a := range ni.PrivateIpAddresses {
			ips = append(ips, aws.ToString(a.PrivateIpAddress))
		}
		slices.Sort(ips)
		if want := []string{box.PrivateIP, box.SecondaryIP}; !slices.Equal(ips, want) {
			t.Errorf("new primary interface holds %v, want %v", ips, want)
		}
	}
	ips, on, idx := r.addressesOf(eni)
	if on != id || idx != 1 || !slices.Equal(ips, []string{"10.0.1.200"}) {
		t.Errorf("%s holds %v on %q at device %d; want 10.0.1.200 on the new box %s at device 1", eni, ips, on, idx, id)
	}
	if got := r.holdersOf("10.0.1.200"); !slices.Equal(got, []string{id}) {
		t.Errorf("10.0.1.200 held by %v", got)
	}
	if !strings.Contains(sum, "`"+eni+"` (device 1, 10.0.1.200) attached") {
		t.Errorf("summary does not say the interface was reattached:\n%s", sum)
	}
}

// A Services box launched on an interface made on its own has a primary
// interface AWS keeps on termination (DeleteOnTermination false): it
// keeps the private IP, so waiting for the IP to be free never ends. The
// plan finds it and the restore launches the new box on that interface.
func TestRestoreLaunchesOnAKeptPrimaryInterface(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := newRestoreEnv(t, nil)
	api := ec2.NewFromConfig(r.aws)
	box := r.inst.ServicesBox
	// Replace the seeded box by one launched on its own interface.
	if _, err := api.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{box.ID}, Tags: []ec2types.Tag{{Key: aws.String("Name"), Value: aws.String("retired")}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := api.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{box.ID}}); err != nil {
		t.Fatal(err)
	}
	n, err := api.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(box.SubnetID), PrivateIpAddress: aws.String(box.PrivateIP), Groups: []string{r.inst.SecurityGroupID}})
	if err != nil {
		t.Fatal(err)
	}
	eni := aws.ToString(n.NetworkInterface.NetworkInterfaceId)
	if _, err := api.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: &eni, PrivateIpAddresses: []string{box.SecondaryIP}}); err != nil {
		t.Fatal(err)
	}
	run, err := api.RunInstances(ctx, &ec2.RunInstancesInput{
		ImageId: aws.String(r.inst.ImageID), InstanceType: ec2types.InstanceType(box.Type), MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
		NetworkInterfaces: []ec2types.InstanceNetworkInterfaceSpecification{{DeviceIndex: aws.Int32(0), NetworkInterfaceId: &eni}},
		TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance, Tags: []ec2types.Tag{{Key: aws.String("Name"), Value: aws.String(r.app.Config.ServicesBox.NameTag)}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	old := aws.ToString(run.Instances[0].InstanceId)
	r.ssm.AddBox(old)
	r.settle()
	r.slash(alice, incident, "backup now")
	r.server.Wait()
	b := r.lastBackup(ops.StateCompleted)
	r.settle()
	if b.Shape.InstanceID != old {
		t.Fatalf("backup of %s, want of %s", b.Shape.InstanceID, old)
	}

	req := r.request(alice, "restore latest --rebuild")
	plan := r.waitText("plan", req, "Approval needed")
	if want := "launch it on the old box's primary interface `" + eni + "`"; !strings.Contains(plan, want) {
		t.Errorf("the plan does not say %q:\n%s", want, plan)
	}
	r.click(bob, "approve "+req, "kept.1")
	r.waitText("summary", "Restored `"+b.ID+"`")
	r.server.Wait()
	got := r.restored()
	if len(got) != 1 {
		t.Fatalf("%d restored instances", len(got))
	}
	id := aws.ToString(got[0].InstanceId)
	ips, on, idx := r.addressesOf(eni)
	if on != id || idx != 0 || !slices.Equal(ips, []string{box.PrivateIP, box.SecondaryIP}) {
		t.Errorf("%s holds %v on %q at device %d; want %s and %s on the new box %s at device 0", eni, ips, on, idx, box.PrivateIP, box.SecondaryIP, id)
	}
	if st := r.instance(old).State.Name; st != ec2types.InstanceStateNameTerminated {
		t.Errorf("old box is %s", st)
	}
	if b := r.ssm.Box(id); b == nil {
		t.Error("the new box never reached SSM")
	}
}
