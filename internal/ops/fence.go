package ops

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// fenceEC2 is what a fence calls.
type fenceEC2 interface {
	instanceReader
	StopInstances(context.Context, *ec2.StopInstancesInput, ...func(*ec2.Options)) (*ec2.StopInstancesOutput, error)
}

// fence stops an instance and confirms from AWS that it stopped, before
// anything that would make it a second Services box goes ahead: a restored
// box taking its IP, a replica taking its address (design.md: "fence
// before you move"). Restore and failover both fence with it.
//
// The sequence: read the state (stopped, terminated or gone: done); stop
// it; wait up to Timeout for stopped; force the stop; wait up to Timeout
// again. A state that cannot be read because AWS fails or does not answer
// (a zone in trouble) is unknown, never dead.
type fence struct {
	EC2     fenceEC2
	Poll    time.Duration
	Timeout time.Duration // for the stop, and again for the forced stop
	Log     func(string)
}

// fenced is what a fence did and what it could confirm.
type fenced struct {
	Before    ec2types.InstanceStateName // the state first read; "" when it was not read
	Gone      bool                       // AWS no longer knows the instance
	Already   bool                       // stopped, terminated or gone before the fence sent anything
	Sent      bool                       // a stop was accepted, or may have landed (its answer was lost)
	Forced    bool                       // a forced stop was tried
	Confirmed bool                       // read back as stopped or terminated (or gone)
	// Unknown: not confirmed because the state could not be read, not
	// because the instance was seen still running.
	Unknown bool
	Why     error // why it is not confirmed
	Took    time.Duration
}

// run fences id. forceFirst skips the read and the clean stop (the state
// could not be read when the operation was planned): a forced stop is
// sent at once. accept is the approver's --force-unknown: a state that
// cannot be read, a forced stop AWS refuses and a stop that is not
// confirmed in time are reported in the result (Confirmed false, Why)
// instead of failing. Without it, anything short of a confirmed stop is
// an error, and the result says how far the fence got.
func (f fence) run(ctx context.Context, id string, forceFirst, accept bool) (r fenced, err error) {
	start := time.Now()
	defer func() { r.Took = time.Since(start) }()
	r.Unknown = forceFirst
	if !forceFirst {
		in, ok, err := describeInstance(ctx, f.EC2, id)
		switch {
		case err != nil && (ctx.Err() != nil || !transient(err)):
			// Denied, or the like: not an outage, and no reason to go on blind.
			return r, err
		case err != nil && !accept:
			return r, fmt.Errorf("the state of %s cannot be read, so it cannot be fenced: %w", id, err)
		case err != nil:
			r.Unknown, r.Why = true, err
			f.log(fmt.Sprintf("`%s` cannot be read (%s); forcing the stop as approved with --force-unknown.", id, Explain(err)))
		case !ok:
			r.Gone, r.Already, r.Confirmed = true, true, true
			return r, nil
		default:
			r.Before = in.State.Name
			if stoppedOrGone(in.State.Name) {
				r.Already, r.Confirmed = true, true
				return r, nil
			}
			if err := f.stop(ctx, id, false); err != nil {
				return r, fmt.Errorf("stop %s: %w", id, err)
			}
			r.Sent = true
			werr := f.wait(ctx, id)
			if werr == nil {
				r.Confirmed = true
				return r, nil
			}
			if ctx.Err() != nil {
				return r, werr
			}
			r.Unknown, r.Why = unread(werr), werr
			f.log(fmt.Sprintf("`%s` did not stop within %s; forcing the stop.", id, f.Timeout))
		}
	}
	r.Forced = true
	if err := f.stop(ctx, id, true); err != nil {
		err = fmt.Errorf("force-stop %s: %w", id, err)
		if !accept {
			return r, err
		}
		r.Why = err
		if !r.Sent {
			return r, nil // nothing that could land was sent: there is nothing to wait for
		}
	} else {
		r.Sent = true
	}
	werr := f.wait(ctx, id)
	switch {
	case werr == nil:
		r.Confirmed, r.Unknown, r.Why = true, false, nil
		return r, nil
	case ctx.Err() != nil:
		return r, werr
	}
	r.Unknown, r.Why = unread(werr), errors.Join(r.Why, werr)
	if accept {
		return r, nil
	}
	return r, fmt.Errorf("%s is not stopped even after a forced stop: %w", id, werr)
}

// stop sends a stop (forced or not). A stop AWS refuses for the
// instance's state (already stopping, terminated) or whose answer was
// lost (it may have landed) is not an error here: what the instance does
// next is read back either way. A throttled stop did not land.
func (f fence) stop(ctx context.Context, id string, force bool) error {
	in := &ec2.StopInstancesInput{InstanceIds: []string{id}}
	if force {
		in.Force = aws.Bool(true)
	}
	_, err := f.EC2.StopInstances(ctx, in)
	switch err = translate(err); {
	case err == nil, errors.Is(err, ErrIncorrectState):
		return nil
	case errors.Is(err, ErrUnavailable), errors.Is(err, ErrNoAnswer):
		if ctx.Err() != nil {
			return err
		}
		f.log(fmt.Sprintf("The answer to the stop of `%s` was lost (%s); reading its state to see whether it landed.", id, failure(err)))
		return nil
	}
	return err
}

// wait waits up to Timeout for id to be stopped or terminated.
func (f fence) wait(ctx context.Context, id string) error {
	_, err := waitInstanceState(ctx, f.EC2, id, cmpOr(f.Poll, 2*time.Second), f.Timeout, ec2types.InstanceStateNameStopped, ec2types.InstanceStateNameTerminated)
	return err
}

func (f fence) log(s string) {
	if f.Log != nil {
		f.Log(s)
	}
}

// unread reports a wait that ended because the state could not be read,
// rather than with the instance seen in another state.
func unread(err error) bool {
	var st *stateTimeout
	return !errors.As(err, &st) || st.last != nil
}

// stoppedOrGone is a state in which an instance serves nothing.
func stoppedOrGone(s ec2types.InstanceStateName) bool {
	return s == ec2types.InstanceStateNameStopped || s == ec2types.InstanceStateNameTerminated
}
