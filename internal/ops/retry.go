package ops

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/circlebot/circlebot/internal/journal"
)

// How the bot tries again (doc.go tells the whole story):
//
//  1. The SDK retries one call: internal/awsclient gives every client the
//     same standard retryer. Nothing here retries a call the SDK already
//     retried.
//  2. A wait (waitFor) polls until its deadline; a poll whose read failed
//     transiently saw nothing, and the next poll comes at its usual time.
//  3. A step whose call still failed transiently is run again from the top
//     after a pause (again: retrying for journal steps, RetryRead for
//     plans), a few times. Steps find what an earlier attempt made, so
//     running one again is safe.
//
// Calls that must not run twice (once*) let the SDK retry only the
// attempts AWS throttled, which it refused without running them.

// stepAttempts bounds how often a step (or a plan's read) is tried in all
// when AWS fails it with a transient error after the SDK's own retries.
const stepAttempts = 3

// maxStepPause caps the pause between attempts of a step.
const maxStepPause = 30 * time.Second

// transient reports a failure a later identical call may not get: AWS
// throttled it, failed it on its side, or did not answer. (The SDK has
// already retried it by then.)
func transient(err error) bool {
	return errors.Is(err, ErrThrottled) || errors.Is(err, ErrUnavailable) || errors.Is(err, ErrNoAnswer)
}

// policy is how often and how patiently something is tried again.
type policy struct {
	Attempts int           // in all, the first included
	Pause    time.Duration // before the second attempt; doubles up to MaxPause
	MaxPause time.Duration
}

func stepPolicy(pause time.Duration) policy {
	return policy{Attempts: stepAttempts, Pause: pause, MaxPause: maxStepPause}
}

// again is the one retry loop. It runs f until f succeeds, fails with an
// error retryIf does not accept, ctx ends, or the attempts run out, and
// returns f's last error. onRetry, if set, hears each error that is tried
// again, with the number of the attempt about to start and the pause
// before it.
func again(ctx context.Context, p policy, retryIf func(error) bool, f func(attempt int) error, onRetry func(err error, next int, pause time.Duration)) error {
	pause := p.Pause
	for attempt := 1; ; attempt++ {
		err := f(attempt)
		if err == nil || attempt >= p.Attempts || !retryIf(err) || ctx.Err() != nil {
			return err
		}
		if onRetry != nil {
			onRetry(err, attempt+1, pause)
		}
		if serr := sleep(ctx, pause); serr != nil {
			return serr
		}
		pause = min(2*pause, max(p.MaxPause, p.Pause))
	}
}

// retrying runs an idempotent step again when AWS failed one of its calls
// with a transient error after the SDK's retries: every step finds what
// an earlier attempt made, so trying again is safe, and a restore should
// not stop at 3 a.m. for one 500 too many.
func retrying(f journal.StepFunc, wait time.Duration) journal.StepFunc {
	return func(ctx context.Context, op *journal.Op, p journal.Progress) (string, error) {
		var detail string
		err := again(ctx, stepPolicy(wait), transient, func(int) error {
			var err error
			detail, err = f(ctx, op, p)
			return err
		}, func(err error, next int, _ time.Duration) {
			p.Log(fmt.Sprintf("AWS failed a call (%s); trying the step again (%d of %d).", failure(err), next, stepAttempts))
		})
		return detail, explained(err)
	}
}

// RetryRead calls a read-only f again while AWS fails it with a transient
// error (after the SDK's own retries), as retrying does for steps: a plan
// derived for an approval should not be refused for one 500.
func RetryRead[T any](ctx context.Context, wait time.Duration, f func() (T, error)) (T, error) {
	var v T
	err := again(ctx, stepPolicy(wait), transient, func(int) error {
		var err error
		v, err = f()
		return err
	}, nil)
	return v, err
}

// failure names a failure for a log line: its AWS code, or what happened
// when there was none.
func failure(err error) string {
	if c := awsCode(err); c != "" {
		return c
	}
	if errors.Is(err, ErrNoAnswer) {
		return "no answer"
	}
	return firstLine(err)
}

// waitTimeout ends a wait whose deadline passed. It carries the last
// read's failure when the last poll failed, for the message, but does not
// unwrap to it: a step that already waited its full time is not run again
// for a transient error.
type waitTimeout struct{ last error }

func (e *waitTimeout) Error() string {
	if e.last == nil {
		return "timed out"
	}
	return "the last read failed: " + strings.TrimSuffix(Explain(e.last), ".")
}

// waitFor calls check every `every` until it reports done, fails with an
// error that is not transient, ctx ends, or the deadline passes (then a
// *waitTimeout). A check that fails transiently is a poll that saw
// nothing: the SDK has retried that read already, and the next poll comes
// at its usual time, not sooner.
func waitFor(ctx context.Context, every time.Duration, deadline time.Time, check func() (bool, error)) error {
	start := time.Now()
	for {
		done, err := check()
		switch {
		case err == nil && done:
			return nil
		case err != nil && (ctx.Err() != nil || !transient(err)):
			return err
		}
		if time.Now().After(deadline) {
			return &waitTimeout{last: err}
		}
		wait := pace(every, time.Since(start))
		if err != nil {
			wait = every // a read that failed (throttled, 5xx) is not hurried
		}
		if err := sleep(ctx, wait); err != nil {
			return err
		}
	}
}

// pace is the wait before the next read of a state AWS is changing, when
// the caller's poll is every and it has waited so far. The time from the
// change to the read that sees it is downtime in a recovery (half a poll
// on average, per wait, and a recovery is a chain of waits), so the first
// reads come at a quarter of the poll; the pace then grows with the time
// waited (a 120th of it: at most ~1% added to a long wait) back to every,
// so a wait of many minutes costs no more reads than before. Waits of
// seconds to a minute — stop, start, attach, the agent registering — are
// most of a recovery: with the 2 s default they read every 0.5 s (EC2's
// Describe* and SSM's calls are throttled per account at many per
// second; one wait adds two a second). The floor keeps tests'
// millisecond polls from spinning.
func pace(every, waited time.Duration) time.Duration {
	return min(every, max(every/4, 20*time.Millisecond, waited/120))
}

// onceEC2 and onceSSM are for calls that must not run twice: a second
// CreateSnapshots makes a second set, a second SendCommand a second
// circleci-backup next to the first. The SDK retries only an attempt AWS
// throttled (refused without running it); a 5xx or a lost answer comes
// back to the caller, which looks for what the call may have made before
// it calls again.
func onceEC2(o *ec2.Options) { o.Retryer = throttledOnly(o.Retryer) }
func onceSSM(o *ssm.Options) { o.Retryer = throttledOnly(o.Retryer) }

// throttledOnly narrows r (its attempts, backoff and retry quota are
// kept) to throttled attempts.
func throttledOnly(r aws.Retryer) aws.Retryer {
	if r == nil {
		r = retry.NewStandard()
	}
	v2, ok := r.(aws.RetryerV2)
	if !ok {
		v2 = retryerV1{r}
	}
	return throttles{v2}
}

type throttles struct{ aws.RetryerV2 }

func (t throttles) IsErrorRetryable(err error) bool {
	return t.RetryerV2.IsErrorRetryable(err) && retry.IsErrorThrottles(retry.DefaultThrottles).IsErrorThrottle(err).Bool()
}

// retryerV1 lets an old-style Retryer stand where a RetryerV2 is needed.
type retryerV1 struct{ aws.Retryer }

func (r retryerV1) GetAttemptToken(context.Context) (func(error) error, error) {
	return r.GetInitialToken(), nil
}

// Names lists the steps' names, for a journal entry.
func Names(defs []journal.Def) []string {
	out := make([]string, len(defs))
	for i, d := range defs {
		out[i] = d.Name
	}
	return out
}

// sleep waits d, or less if ctx ends first (then it returns ctx's error).
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// cmpOr is d when set, else the default.
func cmpOr(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

func since(t time.Time) string { return time.Since(t).Round(time.Second).String() }

// ErrNotConverged is a read-back that never showed what a mutation
// changed, within its time.
var ErrNotConverged = errors.New("AWS did not show the change")

// lookLag is the least time a look for what a call may have made (after
// its answer was lost) keeps looking: EC2's reads lag its writes by
// seconds.
const lookLag = 10 * time.Second

// maxReadBackPause caps the pause between the reads of a read-back.
const maxReadBackPause = 10 * time.Second

// defaultReadBack is how long a read-back waits for AWS to show a change
// unless told otherwise. EC2 documents its API as eventually consistent
// ("remapping an IP address is an asynchronous operation"); seconds are
// usual, minutes are not.
const defaultReadBack = 2 * time.Minute

// notConverged says what a read-back waited for and what AWS still
// showed. It does not unwrap to the last read's failure: a step that
// waited its full time is not run again for a transient error.
type notConverged struct {
	want, seen string
	after      time.Duration
	reads      int
	last       error
}

func (e *notConverged) Error() string {
	s := fmt.Sprintf("AWS did not show %s within %s (%d reads; its reads lag its writes, but not this long)", e.want, e.after.Round(time.Millisecond), e.reads)
	if e.seen != "" {
		s += ": it still shows " + e.seen
	}
	if e.last != nil {
		s += "; the last read failed: " + strings.TrimSuffix(Explain(e.last), ".")
	}
	return s
}

func (e *notConverged) Unwrap() error { return ErrNotConverged }

// readBack reads after a mutation until AWS shows it: EC2, Elastic Load
// Balancing and Auto Scaling answer reads from a state that may not have
// the change yet. read reports whether the change shows and, if not, what
// it saw instead. The pause between reads starts at pause and doubles up
// to maxReadBackPause (bounded backoff); a read that fails transiently
// saw nothing. After timeout it gives up with a *notConverged that says
// what was awaited and what AWS still showed.
func readBack(ctx context.Context, pause, timeout time.Duration, want string, read func() (done bool, seen string, err error)) error {
	timeout = cmpOr(timeout, defaultReadBack)
	pause = cmpOr(pause, 500*time.Millisecond)
	start := time.Now()
	e := &notConverged{want: want}
	for {
		e.reads++
		done, seen, err := read()
		switch {
		case err == nil && done:
			return nil
		case err != nil && (ctx.Err() != nil || !transient(err)):
			return err
		case err == nil:
			e.seen, e.last = seen, nil
		default:
			e.last = err
		}
		left := timeout - time.Since(start)
		if left <= 0 {
			e.after = time.Since(start)
			return e
		}
		if err := sleep(ctx, min(pause, left)); err != nil {
			return err
		}
		pause = min(2*pause, max(maxReadBackPause, pause))
	}
}
