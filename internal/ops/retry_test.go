package ops

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/circlebot/circlebot/internal/journal"
)

// A step is tried again only for a transient error, a bounded number of
// times, and says so; anything else ends it at once.
func TestRetryingRunsAStepAgainOnlyForTransientErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		errs  []error
		calls int
		ok    bool
	}{
		{"throttled once", []error{apiErr("DescribeInstances", "RequestLimitExceeded")}, 2, true},
		{"no answer twice", []error{apiErr("RunInstances", "InternalError"), translate(context.DeadlineExceeded)}, 3, true},
		{"transient every time", []error{apiErr("X", "InternalError"), apiErr("X", "InternalError"), apiErr("X", "InternalError"), nil}, stepAttempts, false},
		{"denied", []error{apiErr("X", "UnauthorizedOperation")}, 1, false},
		{"refused", []error{refusef("no")}, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls, rec := 0, &recorder{}
			step := retrying(func(context.Context, *journal.Op, journal.Progress) (string, error) {
				calls++
				if calls <= len(tc.errs) && tc.errs[calls-1] != nil {
					return "", translate(tc.errs[calls-1])
				}
				return "done", nil
			}, time.Millisecond)
			got, err := step(context.Background(), &journal.Op{}, rec)
			if calls != tc.calls || (err == nil) != tc.ok || (tc.ok && got != "done") {
				t.Fatalf("%d calls, %q, %v", calls, got, err)
			}
			if tc.calls > 1 && !rec.has("trying the step again (2 of 3)") {
				t.Errorf("log %q", rec.lines)
			}
			if err != nil && strings.Contains(err.Error(), "StatusCode") {
				t.Errorf("not explained: %v", err)
			}
		})
	}
}

func TestRetryReadAndItsContext(t *testing.T) {
	calls := 0
	v, err := RetryRead(context.Background(), time.Millisecond, func() (int, error) {
		calls++
		if calls < 3 {
			return 0, translate(apiErr("DescribeInstances", "Throttling"))
		}
		return 7, nil
	})
	if v != 7 || err != nil || calls != 3 {
		t.Errorf("%d, %v after %d calls", v, err, calls)
	}
	// The context ends during the pause: its error, no further call.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
	defer cancel()
	calls = 0
	_, err = RetryRead(ctx, time.Hour, func() (int, error) {
		calls++
		return 0, translate(apiErr("DescribeInstances", "InternalError"))
	})
	if !errors.Is(err, context.DeadlineExceeded) || calls != 1 {
		t.Errorf("%v after %d calls", err, calls)
	}
}

// A wait counts a transient read as a poll that saw nothing, fails at
// once on any other error, and runs out with the last failure in words.
func TestWaitFor(t *testing.T) {
	ctx := context.Background()
	n := 0
	err := waitFor(ctx, time.Millisecond, time.Now().Add(time.Second), func() (bool, error) {
		n++
		if n < 3 {
			return false, translate(apiErr("DescribeImages", "RequestLimitExceeded"))
		}
		return true, nil
	})
	if err != nil || n != 3 {
		t.Errorf("%v after %d polls", err, n)
	}
	err = waitFor(ctx, time.Millisecond, time.Now().Add(time.Second), func() (bool, error) {
		return false, translate(apiErr("DescribeImages", "UnauthorizedOperation"))
	})
	if !errors.Is(err, ErrUnauthorized) {
		t.Errorf("denied: %v", err)
	}
	err = waitFor(ctx, time.Millisecond, time.Now().Add(5*time.Millisecond), func() (bool, error) {
		return false, translate(apiErr("DescribeImages", "InternalError"))
	})
	var to *waitTimeout
	if !errors.As(err, &to) || transient(err) || !strings.Contains(err.Error(), "the last read failed: EC2 DescribeImages: AWS said InternalError") {
		t.Errorf("ran out: %v", err)
	}
}

// readBack reads again, with growing pauses, until AWS shows the change;
// a transient failure is a read that saw nothing; past its time it says
// what it waited for and what AWS still showed.
func TestReadBackConvergesOrSaysWhatItSaw(t *testing.T) {
	ctx := context.Background()
	n := 0
	err := readBack(ctx, time.Millisecond, time.Second, "the change", func() (bool, string, error) {
		n++
		switch n {
		case 1, 2:
			return false, "the old state", nil
		case 3:
			return false, "", translate(apiErr("DescribeInstances", "RequestLimitExceeded"))
		}
		return true, "", nil
	})
	if err != nil || n != 4 {
		t.Errorf("%v after %d reads", err, n)
	}
	err = readBack(ctx, time.Millisecond, 20*time.Millisecond, "vol-1 kept", func() (bool, string, error) { return false, "vol-1 deleted on termination", nil })
	if !errors.Is(err, ErrNotConverged) || !strings.Contains(err.Error(), "AWS did not show vol-1 kept within") || !strings.Contains(err.Error(), "it still shows vol-1 deleted on termination") {
		t.Errorf("not converged: %v", err)
	}
	denied := translate(apiErr("DescribeInstances", "UnauthorizedOperation"))
	if err := readBack(ctx, time.Millisecond, time.Second, "x", func() (bool, string, error) { return false, "", denied }); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("a denial is not waited out: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := readBack(cctx, time.Hour, time.Hour, "x", func() (bool, string, error) { return false, "", nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}
