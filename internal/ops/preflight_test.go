package ops

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
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

// agentSSM is an SSM client whose DescribeInstanceInformation answers err
// or, without one, the agent with ping.
type agentSSM struct {
	SSM
	err  error
	ping ssmtypes.PingStatus
}

func (a agentSSM) DescribeInstanceInformation(_ context.Context, in *ssm.DescribeInstanceInformationInput, _ ...func(*ssm.Options)) (*ssm.DescribeInstanceInformationOutput, error) {
	if a.err != nil {
		return nil, a.err
	}
	id := in.Filters[0].Values[0]
	return &ssm.DescribeInstanceInformationOutput{InstanceInformationList: []ssmtypes.InstanceInformation{{InstanceId: aws.String(id), PingStatus: a.ping, LastPingDateTime: aws.Time(time.Unix(0, 0))}}}, nil
}

// The agent row: online is ok, offline refused; SSM failing to answer
// (a 5xx, throttling) says nothing of the agent and is skipped, not a
// refusal that would block a failover on an SSM hiccup.
func TestCheckAgentSkipsWhenSSMDoesNotAnswer(t *testing.T) {
	html := &smithy.OperationError{ServiceID: "SSM", OperationName: "DescribeInstanceInformation",
		Err: &smithyhttp.ResponseError{Response: &smithyhttp.Response{Response: &http.Response{StatusCode: 503}}, Err: &smithy.DeserializationError{Err: errors.New("invalid character '<'")}}}
	for _, c := range []struct {
		name string
		api  agentSSM
		want string
	}{
		{"online", agentSSM{ping: ssmtypes.PingStatusOnline}, CheckOK},
		{"offline", agentSSM{ping: ssmtypes.PingStatusConnectionLost}, CheckRefused},
		{"SSM answers 503", agentSSM{err: html}, CheckSkipped},
		{"SSM throttles", agentSSM{err: &smithy.OperationError{ServiceID: "SSM", OperationName: "DescribeInstanceInformation", Err: &smithy.GenericAPIError{Code: "ThrottlingException"}}}, CheckSkipped},
	} {
		var pf Preflight
		pf.checkAgent(context.Background(), c.api, "i-0123456789abcdef0", "the box")
		if len(pf.Checks) != 1 || pf.Checks[0].Status != c.want {
			t.Errorf("%s: %+v, want one row %s", c.name, pf.Checks, c.want)
		}
	}
}
