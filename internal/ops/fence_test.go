package ops

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

const (
	stRunning  = ec2types.InstanceStateNameRunning
	stStopping = ec2types.InstanceStateNameStopping
	stStopped  = ec2types.InstanceStateNameStopped
)

func testFence(f *fakeEC2, rec *recorder) fence {
	return fence{EC2: f, Poll: time.Millisecond, Timeout: 30 * time.Millisecond, Log: rec.Log}
}

// never makes the instance ignore stops: it stays stopping for ever.
func never(f *fakeEC2) func(string, bool) error {
	return func(id string, _ bool) error { f.then(id, stStopping); return nil }
}

func TestFenceStopsAndConfirms(t *testing.T) {
	f, rec := newFakeEC2(), &recorder{}
	f.addInstance("i-1", stRunning, "box")
	r, err := testFence(f, rec).run(context.Background(), "i-1", false, false)
	if err != nil || !r.Confirmed || !r.Sent || r.Forced || r.Already || r.Before != stRunning {
		t.Fatalf("%+v, %v", r, err)
	}
	wantCalls(t, f, "StopInstances i-1")
}

func TestFenceForcesAStopThatDoesNotLand(t *testing.T) {
	f, rec := newFakeEC2(), &recorder{}
	f.addInstance("i-1", stRunning, "box")
	f.onStop = func(id string, force bool) error {
		if force {
			f.then(id, stStopping, stStopped)
		} else {
			f.then(id, stStopping)
		}
		return nil
	}
	r, err := testFence(f, rec).run(context.Background(), "i-1", false, false)
	if err != nil || !r.Confirmed || !r.Forced {
		t.Fatalf("%+v, %v", r, err)
	}
	wantCalls(t, f, "StopInstances i-1", "StopInstances i-1 force")
	if !rec.has("did not stop within") {
		t.Errorf("the forced stop was not said: %q", rec.lines)
	}
}

// An instance that never stops, not even forced: the fence gives up with
// an error; with --force-unknown it reports it unconfirmed (seen, not
// unknown) and lets the caller go on.
func TestFenceGivesUpOnAnInstanceThatNeverStops(t *testing.T) {
	for _, accept := range []bool{false, true} {
		f, rec := newFakeEC2(), &recorder{}
		f.addInstance("i-1", stRunning, "box")
		f.onStop = never(f)
		r, err := testFence(f, rec).run(context.Background(), "i-1", false, accept)
		wantCalls(t, f, "StopInstances i-1", "StopInstances i-1 force")
		if r.Confirmed || !r.Forced || !r.Sent || r.Unknown || r.Why == nil {
			t.Errorf("accept=%v: %+v", accept, r)
		}
		if accept && err != nil {
			t.Errorf("accepted, yet failed: %v", err)
		}
		if !accept && (err == nil || !strings.Contains(err.Error(), "is not stopped even after a forced stop") || !strings.Contains(err.Error(), "still stopping")) {
			t.Errorf("not accepted: %v", err)
		}
	}
}

// DescribeInstances fails with a 5xx (the SDK gave up): the state is
// unknown, not dead. Without --force-unknown nothing is sent and the
// error is transient (the step runs again); with it, a forced stop is
// sent and the result says unknown.
func TestFenceUnknownStateWhenTheInstanceCannotBeRead(t *testing.T) {
	f, rec := newFakeEC2(), &recorder{}
	f.addInstance("i-1", stRunning, "box")
	f.describeErr = func(int, *ec2.DescribeInstancesInput) error { return apiErr("DescribeInstances", "Unavailable") }
	_, err := testFence(f, rec).run(context.Background(), "i-1", false, false)
	if err == nil || !transient(err) || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("unreadable, not accepted: %v", err)
	}
	wantCalls(t, f)

	r, err := testFence(f, rec).run(context.Background(), "i-1", false, true)
	if err != nil || r.Confirmed || !r.Unknown || !r.Forced || !r.Sent {
		t.Fatalf("unreadable, accepted: %+v, %v", r, err)
	}
	wantCalls(t, f, "StopInstances i-1 force")
	if !rec.has("cannot be read") || !strings.Contains(r.Why.Error(), "could not be read") {
		t.Errorf("log %q, why %v", rec.lines, r.Why)
	}
}

// A read refused for a reason that is not an outage (IAM) is an error
// whatever was approved: no reason to go on blind.
func TestFenceDoesNotGoOnBlindWhenReadingIsDenied(t *testing.T) {
	f, rec := newFakeEC2(), &recorder{}
	f.addInstance("i-1", stRunning, "box")
	f.describeErr = func(int, *ec2.DescribeInstancesInput) error {
		return apiErr("DescribeInstances", "UnauthorizedOperation")
	}
	_, err := testFence(f, rec).run(context.Background(), "i-1", false, true)
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("%v", err)
	}
	wantCalls(t, f)
}

// A read that fails for a moment during the wait is a poll that saw
// nothing; the stop is confirmed by the next one.
func TestFenceWaitsThroughAReadThatFailsOnce(t *testing.T) {
	f, rec := newFakeEC2(), &recorder{}
	f.addInstance("i-1", stRunning, "box")
	f.describeErr = func(n int, _ *ec2.DescribeInstancesInput) error {
		if n == 2 {
			return apiErr("DescribeInstances", "RequestLimitExceeded")
		}
		return nil
	}
	r, err := testFence(f, rec).run(context.Background(), "i-1", false, false)
	if err != nil || !r.Confirmed || r.Forced {
		t.Fatalf("%+v, %v", r, err)
	}
}

// The answer to the stop is lost (a 500 after AWS acted): the fence reads
// the state back instead of failing, and confirms the stop.
func TestFenceConfirmsAStopWhoseAnswerWasLost(t *testing.T) {
	f, rec := newFakeEC2(), &recorder{}
	f.addInstance("i-1", stRunning, "box")
	f.onStop = func(id string, _ bool) error {
		f.then(id, stStopping, stStopped)
		return apiErr("StopInstances", "InternalError")
	}
	r, err := testFence(f, rec).run(context.Background(), "i-1", false, false)
	if err != nil || !r.Confirmed || r.Forced || !r.Sent {
		t.Fatalf("%+v, %v", r, err)
	}
	if !rec.has("was lost") {
		t.Errorf("log %q", rec.lines)
	}
}

func TestFenceStopRefusals(t *testing.T) {
	// Refused for its state (already stopping): the wait decides.
	f, rec := newFakeEC2(), &recorder{}
	f.addInstance("i-1", stRunning, "box")
	f.onStop = func(id string, _ bool) error {
		f.then(id, stStopping, stStopped)
		return apiErr("StopInstances", "IncorrectInstanceState")
	}
	if r, err := testFence(f, rec).run(context.Background(), "i-1", false, false); err != nil || !r.Confirmed {
		t.Errorf("incorrect state: %+v, %v", r, err)
	}
	// Refused otherwise: nothing was stopped, the fence fails.
	f = newFakeEC2()
	f.addInstance("i-1", stRunning, "box")
	f.onStop = func(string, bool) error { return apiErr("StopInstances", "UnauthorizedOperation") }
	if _, err := testFence(f, rec).run(context.Background(), "i-1", false, true); !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "stop i-1") {
		t.Errorf("denied: %v", err)
	}
	// Throttled beyond the SDK's retries: not sent; the step runs again.
	f.onStop = func(string, bool) error { return apiErr("StopInstances", "RequestLimitExceeded") }
	if _, err := testFence(f, rec).run(context.Background(), "i-1", false, false); !transient(err) {
		t.Errorf("throttled: %v", err)
	}
	// The forced stop refused, without --force-unknown: an error.
	f = newFakeEC2()
	f.addInstance("i-1", stRunning, "box")
	f.onStop = func(id string, force bool) error {
		if force {
			return apiErr("StopInstances", "UnauthorizedOperation")
		}
		f.then(id, stStopping)
		return nil
	}
	if r, err := testFence(f, rec).run(context.Background(), "i-1", false, false); !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "force-stop i-1") || !r.Forced {
		t.Errorf("force denied: %+v, %v", r, err)
	}
	// With it, the clean stop may still land: the fence waits for it.
	if r, err := testFence(f, rec).run(context.Background(), "i-1", false, true); err != nil || r.Confirmed || !r.Sent || !errors.Is(r.Why, ErrUnauthorized) {
		t.Errorf("force denied, accepted: %+v, %v", r, err)
	}
}

func TestFenceAlreadyStoppedOrGone(t *testing.T) {
	f, rec := newFakeEC2(), &recorder{}
	f.addInstance("i-1", stStopped, "box")
	if r, err := testFence(f, rec).run(context.Background(), "i-1", false, false); err != nil || !r.Already || !r.Confirmed || r.Before != stStopped {
		t.Errorf("stopped: %+v, %v", r, err)
	}
	if r, err := testFence(f, rec).run(context.Background(), "i-gone", false, false); err != nil || !r.Gone || !r.Confirmed {
		t.Errorf("gone: %+v, %v", r, err)
	}
	wantCalls(t, f)
}

// forceFirst: the state could not be read when the failover was planned.
func TestFenceForcesAtOnceAnInstanceLastSeenUnknown(t *testing.T) {
	f, rec := newFakeEC2(), &recorder{}
	f.addInstance("i-1", stRunning, "box")
	r, err := testFence(f, rec).run(context.Background(), "i-1", true, true)
	if err != nil || !r.Confirmed || !r.Forced || r.Unknown {
		t.Fatalf("%+v, %v", r, err)
	}
	wantCalls(t, f, "StopInstances i-1 force")

	// The zone takes no stop at all: nothing landed, nothing to wait for.
	f = newFakeEC2()
	f.addInstance("i-1", stRunning, "box")
	f.onStop = func(string, bool) error { return apiErr("StopInstances", "UnauthorizedOperation") }
	start := time.Now()
	r, err = testFence(f, rec).run(context.Background(), "i-1", true, true)
	if err != nil || r.Confirmed || r.Sent || !r.Unknown || r.Why == nil || f.count("DescribeInstances") != 0 || time.Since(start) > 20*time.Millisecond {
		t.Fatalf("%+v, %v, %q", r, err, f.Calls())
	}
}

func TestFenceStopsWhenTheContextEnds(t *testing.T) {
	f, rec := newFakeEC2(), &recorder{}
	f.addInstance("i-1", stRunning, "box")
	f.onStop = never(f)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	fc := testFence(f, rec)
	fc.Timeout = time.Hour
	if _, err := fc.run(ctx, "i-1", false, true); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%v", err)
	}
	wantCalls(t, f, "StopInstances i-1")
}
