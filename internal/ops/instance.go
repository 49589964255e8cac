package ops

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/circlebot/circlebot/internal/journal"
)

// instanceReader is the one call the helpers below make.
type instanceReader interface {
	DescribeInstances(context.Context, *ec2.DescribeInstancesInput, ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error)
}

// describeInstance returns the instance, or ok=false if AWS no longer
// knows it.
func describeInstance(ctx context.Context, api instanceReader, id string) (ec2types.Instance, bool, error) {
	out, err := api.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	if errorCode(err) == "InvalidInstanceID.NotFound" {
		return ec2types.Instance{}, false, nil
	}
	if err != nil {
		return ec2types.Instance{}, false, fmt.Errorf("describe %s: %w", id, err)
	}
	for _, res := range out.Reservations {
		for _, in := range res.Instances {
			return in, true, nil
		}
	}
	return ec2types.Instance{}, false, nil
}

// waitInstanceState polls the instance every poll until its state is one
// of want (an instance AWS no longer knows counts as terminated), or the
// timeout passes.
func waitInstanceState(ctx context.Context, api instanceReader, id string, poll, timeout time.Duration, want ...ec2types.InstanceStateName) (ec2types.InstanceStateName, error) {
	deadline := time.Now().Add(timeout)
	for {
		in, ok, err := describeInstance(ctx, api, id)
		if err != nil && !Transient(err) {
			return "", err
		}
		if err != nil && time.Now().After(deadline) {
			return "", fmt.Errorf("%s could not be read for %s: %w", id, timeout, err)
		}
		if err == nil {
			if !ok {
				return ec2types.InstanceStateNameTerminated, nil
			}
			if slices.Contains(want, in.State.Name) {
				return in.State.Name, nil
			}
			if time.Now().After(deadline) {
				return in.State.Name, fmt.Errorf("%s is still %s after %s", id, in.State.Name, timeout)
			}
		}
		if err := sleep(ctx, poll); err != nil {
			return "", err
		}
	}
}

// startApp runs command on instance id through SSM, waiting (up to
// timeout) for the agent of a new instance to register first. The
// command runs once per operation (runOnce): a step run again follows it,
// and a bot shutting down leaves it running.
func startApp(ctx context.Context, api SSM, id string, op *journal.Op, command string, poll, timeout time.Duration, p journal.Progress) (string, error) {
	sh := &Shell{SSM: api, Instance: id, Poll: poll, KeepOnCancel: true}
	deadline := time.Now().Add(timeout)
	noted := false
	for {
		res, err := runOnce(ctx, op, "app_start_command", sh, "circlebot "+op.ID+": start the app", command, 10*time.Minute)
		if err == nil {
			out := lastLine(res.Stdout)
			if strings.TrimSpace(res.Stdout) == "" {
				out = "exit 0"
			}
			return fmt.Sprintf("`%s`: %s", id, out), nil
		}
		// The agent of a new instance takes a minute to register.
		if res.CommandID != "" || !strings.Contains(err.Error(), "not reachable through SSM") || time.Now().After(deadline) {
			return "", fmt.Errorf("start the app on %s: %w", id, err)
		}
		if !noted {
			p.Log(fmt.Sprintf("Waiting for the SSM agent of `%s` to register.", id))
			noted = true
		}
		if err := sleep(ctx, poll); err != nil {
			return "", err
		}
	}
}

// runOnce runs a script on the box at most once per operation step: its
// command ID is recorded the moment SSM accepts it, and a step run again
// (resume after a crash, a retry) follows that command instead of sending
// another. Only a command that ended without success is sent again (its
// failure stopped the step, visibly, before).
func runOnce(ctx context.Context, op *journal.Op, key string, sh *Shell, comment, script string, timeout time.Duration) (Result, error) {
	if id := op.Data[key]; id != "" {
		inv, err := sh.SSM.GetCommandInvocation(ctx, &ssm.GetCommandInvocationInput{CommandId: aws.String(id), InstanceId: aws.String(sh.Instance)})
		switch {
		case err == nil && (running(inv.Status) || inv.Status == ssmtypes.CommandInvocationStatusSuccess):
			return sh.Follow(ctx, id, comment, timeout)
		case err == nil:
			// It ended without success (cancelled, failed, timed out):
			// run it again, visibly.
		default:
			return Result{CommandID: id}, fmt.Errorf("find the earlier command %s (%s): %w", id, comment, err)
		}
	}
	sh.OnSend = func(id string) {
		op.Data[key] = id
		if op.Record != nil {
			_ = op.Record(key, id) // unsaved, op.Data still has it for the step's end; only a crash before then loses it
		}
	}
	return sh.Run(ctx, comment, script, timeout)
}
