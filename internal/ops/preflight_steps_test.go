package ops

import (
	"context"
	"slices"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// dryCalls answers every dry run DryRunOperation and the pre-flights'
// reads with what they need. dryEC2 and dryFailoverEC2 put them over an
// interface one level deeper (which wins), whose other calls panic (nil).
type dryCalls struct{}

type (
	restoreBase  struct{ RestoreEC2 }
	failoverBase struct{ FailoverEC2 }
	dryEC2       struct {
		restoreBase
		dryCalls
	}
	dryFailoverEC2 struct {
		failoverBase
		dryCalls
	}
)

func dryOK(call string) error { return apiErr(call, "DryRunOperation") }

func (dryCalls) RegisterImage(context.Context, *ec2.RegisterImageInput, ...func(*ec2.Options)) (*ec2.RegisterImageOutput, error) {
	return nil, dryOK("RegisterImage")
}
func (dryCalls) ModifyInstanceAttribute(context.Context, *ec2.ModifyInstanceAttributeInput, ...func(*ec2.Options)) (*ec2.ModifyInstanceAttributeOutput, error) {
	return nil, dryOK("ModifyInstanceAttribute")
}
func (dryCalls) CreateTags(context.Context, *ec2.CreateTagsInput, ...func(*ec2.Options)) (*ec2.CreateTagsOutput, error) {
	return nil, dryOK("CreateTags")
}
func (dryCalls) StopInstances(context.Context, *ec2.StopInstancesInput, ...func(*ec2.Options)) (*ec2.StopInstancesOutput, error) {
	return nil, dryOK("StopInstances")
}
func (dryCalls) StartInstances(context.Context, *ec2.StartInstancesInput, ...func(*ec2.Options)) (*ec2.StartInstancesOutput, error) {
	return nil, dryOK("StartInstances")
}
func (dryCalls) TerminateInstances(context.Context, *ec2.TerminateInstancesInput, ...func(*ec2.Options)) (*ec2.TerminateInstancesOutput, error) {
	return nil, dryOK("TerminateInstances")
}
func (dryCalls) RunInstances(context.Context, *ec2.RunInstancesInput, ...func(*ec2.Options)) (*ec2.RunInstancesOutput, error) {
	return nil, dryOK("RunInstances")
}
func (dryCalls) RebootInstances(context.Context, *ec2.RebootInstancesInput, ...func(*ec2.Options)) (*ec2.RebootInstancesOutput, error) {
	return nil, dryOK("RebootInstances")
}
func (dryCalls) CreateVolume(context.Context, *ec2.CreateVolumeInput, ...func(*ec2.Options)) (*ec2.CreateVolumeOutput, error) {
	return nil, dryOK("CreateVolume")
}
func (dryCalls) DescribeImages(context.Context, *ec2.DescribeImagesInput, ...func(*ec2.Options)) (*ec2.DescribeImagesOutput, error) {
	return &ec2.DescribeImagesOutput{Images: []ec2types.Image{{ImageId: ptr("ami-earlier"), CreationDate: ptr("2026-01-01T00:00:00Z")}}}, nil
}
func (dryCalls) DescribeNetworkInterfaces(_ context.Context, in *ec2.DescribeNetworkInterfacesInput, _ ...func(*ec2.Options)) (*ec2.DescribeNetworkInterfacesOutput, error) {
	return &ec2.DescribeNetworkInterfacesOutput{NetworkInterfaces: []ec2types.NetworkInterface{{NetworkInterfaceId: ptr(in.NetworkInterfaceIds[0]), SubnetId: ptr("subnet-2")}}}, nil
}

func ptr(s string) *string { return &s }

// checkSteps fails for a row that names no step, or a step the plan's
// step list does not have: a resume would then hold that row against it
// at every step (engine.blocking), done or not.
func checkSteps(t *testing.T, what string, pf Preflight, steps []string) {
	t.Helper()
	if len(pf.Checks) == 0 {
		t.Fatalf("%s: no rows", what)
	}
	for _, c := range pf.Checks {
		if len(c.Steps) == 0 {
			t.Errorf("%s: row %s on %s names no step", what, c.Call, c.On)
		}
		for _, s := range c.Steps {
			if !slices.Contains(steps, s) {
				t.Errorf("%s: row %s on %s names %q, not a step of %v", what, c.Call, c.On, s, steps)
			}
		}
	}
}

// Every row of each kind's pre-flight names steps of its own plan.
func TestPreflightRowsNameStepsOfTheirPlan(t *testing.T) {
	ctx := context.Background()
	old := &OldBox{InstanceID: "i-old", State: "running", Volumes: []VolumeRef{{ID: "vol-1", Device: "/dev/xvda", DeleteOnTermination: true}},
		Interfaces: []InterfaceRef{{ID: "eni-1", DeviceIndex: 0, IPs: []string{"10.0.1.10"}}}}
	rebuild := launchPlan()
	rebuild.Old = old
	rebuild.Snapshots = []RestoreSnapshot{{ID: "snap-1", Device: "/dev/xvda", SizeGiB: 8}}
	r := &SnapshotRestore{EC2: dryEC2{}}
	checkSteps(t, "rebuild", r.Preflight(ctx, rebuild), StepNames(r.Steps(rebuild)))

	completing := rebuild
	completing.Completing = &Completing{Progress: 40, Pending: []string{"snap-1"}}
	checkSteps(t, "rebuild from a completing point", r.Preflight(ctx, completing), StepNames(r.Steps(completing)))

	inPlace := rebuild
	inPlace.Method, inPlace.InPlace = MethodInPlace, &InPlacePlan{AZ: "a", Volumes: []InPlaceVolume{{Device: "/dev/xvda", SnapshotID: "snap-1", SizeGiB: 8, Type: "gp3"}}}
	checkSteps(t, "in place", r.Preflight(ctx, inPlace), StepNames(r.Steps(inPlace)))

	box := InPlace{ID: "i-box", State: "running"}
	rb := &Reboot{EC2: dryEC2{}}
	checkSteps(t, "reboot", rb.Preflight(ctx, RebootPlan{Box: box}), StepNames(rb.Steps(RebootPlan{Box: box})))
	rs := &Resize{EC2: resizeEC2{dryEC2: dryEC2{}}}
	resize := ResizePlan{Box: box, To: TypeInfo{Name: "m5.4xlarge"}}
	checkSteps(t, "resize", rs.Preflight(ctx, resize), StepNames(rs.Steps(resize)))

	f := &Failover{EC2: dryFailoverEC2{}}
	fo := FailoverPlan{Primary: &Node{ID: "i-old", State: "running"}, Replica: Node{ID: "i-rep", State: "stopped", ENI: "eni-2", Subnet: "subnet-2"},
		Discovery: DiscoverySecondaryIP, ServiceIP: "10.0.1.20", NameTag: "circleci_services"}
	checkSteps(t, "failover", f.Preflight(ctx, fo), StepNames(f.Steps(fo)))
}

// resizeEC2 adds the instance-type reader a resize's client has (unused
// by its pre-flight).
type resizeEC2 struct {
	dryEC2
	InstanceTypes
}
