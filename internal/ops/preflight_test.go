package ops

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
)

// launchEC2 answers RunInstances as the test says and records the calls.
type launchEC2 struct {
	RestoreEC2
	answer func(in *ec2.RunInstancesInput) (*ec2.RunInstancesOutput, error)
	calls  []*ec2.RunInstancesInput
}

func (l *launchEC2) RunInstances(_ context.Context, in *ec2.RunInstancesInput, _ ...func(*ec2.Options)) (*ec2.RunInstancesOutput, error) {
	l.calls = append(l.calls, in)
	return l.answer(in)
}

func launchPlan() RestorePlan {
	return RestorePlan{Source: "bk-1", NameTag: "circleci_services", Fallbacks: []string{"m5.4xlarge"},
		Shape: Shape{Type: "m5.2xlarge", SubnetID: "subnet-1", PrivateIP: "10.0.1.10", SecurityGroups: []string{"sg-1"}, KeyName: "ops", IAMProfile: "circleci-services"}}
}

// An answer without exactly one instance is an error, not a launch.
func TestRunRefusesAnAnswerWithoutOneInstance(t *testing.T) {
	api := &launchEC2{answer: func(*ec2.RunInstancesInput) (*ec2.RunInstancesOutput, error) { return &ec2.RunInstancesOutput{}, nil }}
	r := &SnapshotRestore{EC2: api}
	_, err := r.run(context.Background(), &Work[RestoreResult]{ID: "op-1", Result: &RestoreResult{}}, launchPlan(), "m5.2xlarge")
	if err == nil || !strings.Contains(err.Error(), "0 instances") {
		t.Fatalf("run: %v", err)
	}
}

// The launch's dry run is the launch itself, in every type, with DryRun
// and without the client token; DryRunOperation is a yes, anything else a
// refusal with AWS's reason, and a call that was carried out is refused.
func TestLaunchPreflightTriesTheExactLaunchInEveryType(t *testing.T) {
	api := &launchEC2{answer: func(in *ec2.RunInstancesInput) (*ec2.RunInstancesOutput, error) {
		if in.InstanceType == "m5.4xlarge" {
			return nil, apiErr("RunInstances", "UnauthorizedOperation")
		}
		return nil, apiErr("RunInstances", "DryRunOperation")
	}}
	r := &SnapshotRestore{EC2: api}
	err := r.checkLaunch(context.Background(), launchPlan(), "op-1", "ami-1")
	var pe *PreflightError
	if !errors.As(err, &pe) || len(pe.Refused) != 1 || !strings.Contains(pe.Refused[0].On, "m5.4xlarge") || !pe.Refused[0].Denied {
		t.Fatalf("checkLaunch: %v", err)
	}
	if len(api.calls) != 2 {
		t.Fatalf("%d launches tried, want one per type", len(api.calls))
	}
	for _, in := range api.calls {
		if !aws.ToBool(in.DryRun) || in.ClientToken != nil || aws.ToString(in.ImageId) != "ami-1" || aws.ToString(in.KeyName) != "ops" ||
			aws.ToString(in.IamInstanceProfile.Name) != "circleci-services" || aws.ToString(in.PrivateIpAddress) != "10.0.1.10" {
			t.Errorf("dry run differs from the launch: %+v", in)
		}
	}
	api.answer = func(*ec2.RunInstancesInput) (*ec2.RunInstancesOutput, error) { return &ec2.RunInstancesOutput{}, nil }
	if err := r.checkLaunch(context.Background(), launchPlan(), "op-1", "ami-1"); err == nil || !strings.Contains(err.Error(), "carried the call out") {
		t.Fatalf("a dry run the endpoint carried out: %v", err)
	}
}

// More than 50 tags is refused before AWS is asked.
func TestPreflightCountsTags(t *testing.T) {
	var pf Preflight
	pf.checkTags("the new box", 50)
	pf.checkTags("the new box", 51)
	if r := pf.Refused(); len(r) != 1 || !strings.Contains(r[0].Reason, "51 tags") {
		t.Fatalf("refused: %+v", r)
	}
}
