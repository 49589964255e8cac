// Package progress streams a long operation's progress into Slack: one
// message per operation, updated in place with a step checklist, detail
// lines in its thread, and a final summary.
//
// The operation must never wait on Slack nor fail because of it, so every
// method an operation calls only records state under a mutex and nudges a
// background goroutine; that goroutine alone talks to Slack, sends only the
// latest state (intermediate ones are dropped, not queued), keeps to Slack's
// rate limits and retries the final summary until a deadline.
package progress

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/circlebot/circlebot/internal/chat"
)

// Poster is the chat side a Stream needs; implemented by slackio's Replier
// and the console. Errors may wrap *slack.RateLimitedError, whose RetryAfter
// the Stream honours.
//
// A Ref with an empty TS from Post means the message went somewhere that
// cannot take frequent edits (Slack's response_url, five uses in all): the
// Stream then sends only the final state and keeps the thread lines to the
// log.
type Poster interface {
	Post(ctx context.Context, m chat.Message) (chat.Ref, error)
	Update(ctx context.Context, ref chat.Ref, m chat.Message) error
	PostThread(ctx context.Context, parent chat.Ref, m chat.Message) (chat.Ref, error)
}

// Options describe the operation and how to deliver its progress. Only
// OpID, Title, Requester and Steps need setting; the rest have defaults.
type Options struct {
	OpID      string // e.g. "op-20261128-031500-7f3a", shown in the message
	Title     string // e.g. "EBS backup of i-0abc… (circleci_services)"
	Requester string // Slack user ID or "scheduler"
	Steps     []string

	// MinInterval is the least time between two sends to the same message
	// (and between two thread posts). Default 1s: Slack allows about one
	// post a second per channel and chat.update ~50 a minute.
	MinInterval time.Duration
	// DeliverFor is how long after Finish the Stream keeps trying to
	// deliver to Slack before giving up. Default 30m.
	DeliverFor time.Duration
	// MaxBackoff caps the wait between attempts while Slack fails.
	// Default 30s.
	MaxBackoff time.Duration
	// Refresh re-sends an unchanged live message this often so that its
	// elapsed times do not go stale while a step runs quietly for an hour.
	// Default 30s; negative turns it off.
	Refresh time.Duration

	Log *slog.Logger
	Now func() time.Time // for tests; the times shown in the message
}

const (
	defaultMinInterval = time.Second
	defaultDeliverFor  = 30 * time.Minute
	defaultMaxBackoff  = 30 * time.Second
	defaultRefresh     = 30 * time.Second
	// callTimeout bounds one Poster call. It exceeds slackio's own wait for
	// rate limits (30s) plus its HTTP timeout (15s), so a Poster that is
	// still working is not cut short.
	callTimeout = time.Minute
)

// Stream is one operation's progress message. Its methods are safe for
// concurrent use and never block on Slack.
type Stream struct {
	p    Poster
	o    Options
	log  *slog.Logger
	base context.Context // the caller's values, without its cancellation
	ctx  context.Context // the caller's lifetime

	wake chan struct{} // capacity 1: a pending nudge is enough
	done chan struct{}
	err  error // set before done is closed

	mu       sync.Mutex
	snap     Snapshot
	ver      int // bumped on every change the message shows
	finished bool
	lines    lineBuf
	ref      chat.Ref
	posted   bool
	badStep  bool // an out-of-range step was logged once
}

// ErrGaveUp is wrapped by Wait's error when the Stream stopped trying to
// deliver before everything reached Slack.
var ErrGaveUp = errors.New("progress: gave up delivering to Slack")

// Start creates the Stream and returns at once; the first message is
// posted in the background. Finish must be called eventually: until then,
// or until ctx ends and DeliverFor has passed, the Stream keeps a goroutine.
//
// ctx ending does not stop delivery: an operation that was cancelled must
// still be able to say so in Slack. It only starts the DeliverFor clock in
// case Finish never comes.
func Start(ctx context.Context, p Poster, o Options) *Stream {
	if o.MinInterval <= 0 {
		o.MinInterval = defaultMinInterval
	}
	if o.DeliverFor <= 0 {
		o.DeliverFor = defaultDeliverFor
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = defaultMaxBackoff
	}
	if o.MaxBackoff < o.MinInterval {
		o.MaxBackoff = o.MinInterval
	}
	if o.Refresh == 0 {
		o.Refresh = defaultRefresh
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	now := o.Now()
	s := &Stream{
		p:    p,
		o:    o,
		log:  o.Log.With("op_id", o.OpID),
		base: context.WithoutCancel(ctx),
		ctx:  ctx,
		wake: make(chan struct{}, 1),
		done: make(chan struct{}),
		snap: Snapshot{
			OpID:      o.OpID,
			Title:     o.Title,
			Requester: o.Requester,
			Started:   now,
			Now:       now,
		},
	}
	s.snap.Steps = make([]Step, len(o.Steps))
	for i, name := range o.Steps {
		s.snap.Steps[i] = Step{Name: name}
	}
	go s.run()
	return s
}

// Begin marks step as running.
func (s *Stream) Begin(step int, detail string) {
	s.change(step, func(st *Step, now time.Time) {
		st.State = StepRunning
		if st.Started.IsZero() {
			st.Started = now
		}
		st.Finished = time.Time{}
		st.Detail, st.Pct, st.HasPct = detail, 0, false
	})
}

// Done marks step as completed; detail (may be empty) says what it did.
func (s *Stream) Done(step int, detail string) {
	s.change(step, func(st *Step, now time.Time) {
		if st.Started.IsZero() {
			st.Started = now
		}
		st.State, st.Finished = StepDone, now
		st.Detail, st.Pct, st.HasPct = detail, 0, false
	})
}

// Skip marks step as not needed, saying why.
func (s *Stream) Skip(step int, why string) {
	s.change(step, func(st *Step, now time.Time) {
		st.State, st.Detail, st.Pct, st.HasPct = StepSkipped, why, 0, false
	})
}

// Fail marks step as failed with err's text, which the caller must have
// made safe to show. A long or multi-line error is cut on the checklist and
// given in full in the thread, where it does not push the other steps away.
func (s *Stream) Fail(step int, err error) {
	text := "failed"
	if err != nil {
		text = err.Error()
	}
	const more = " (full error in thread)"
	short := escape(oneLine(text))
	full := ""
	if len(short) > maxDetail || strings.ContainsAny(strings.TrimSpace(text), "\r\n") {
		short = clip(short, maxDetail-len(more)) + more
		full = text
	}
	s.change(step, func(st *Step, now time.Time) {
		if st.Started.IsZero() {
			st.Started = now
		}
		st.State, st.Finished = StepFailed, now
		st.Detail, st.Pct, st.HasPct = short, 0, false
		if full != "" {
			name := st.Name
			s.addLines(escape("Error in "+name+":"), escape(full))
		}
	})
}

// Progress shows pct (0..100) as a bar on step, which becomes running if
// it was not; detail such as "2 of 3 snapshots completed" goes beside it.
func (s *Stream) Progress(step int, pct float64, detail string) {
	s.change(step, func(st *Step, now time.Time) {
		if st.State != StepRunning {
			st.State = StepRunning
			if st.Started.IsZero() {
				st.Started = now
			}
		}
		st.Pct, st.HasPct, st.Detail = pct, true, detail
	})
}

// Log adds a detail line for the thread. Lines are sent in batches; when
// more pile up than Slack can take, the middle ones are dropped and
// counted.
func (s *Stream) Log(line string) {
	line = strings.TrimRight(line, "\r\n")
	if strings.TrimSpace(line) == "" {
		// Slack rejects empty text, and a blank line carries nothing.
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finished {
		return
	}
	s.addLines(line)
	s.nudge()
}

// addLines needs s.mu held.
func (s *Stream) addLines(lines ...string) {
	for _, l := range lines {
		s.lines.add(clip(l, maxLineBytes))
	}
}

// Finish records the final state and returns at once; the summary is
// delivered in the background. Only the first call counts. The summary is
// logged here, before anything is sent, so that it survives a Slack that
// never answers and a process that exits right after.
func (s *Stream) Finish(o Outcome, summary string) {
	s.mu.Lock()
	if s.finished {
		s.mu.Unlock()
		return
	}
	if o == InProgress {
		// A finished operation has some outcome; an unknown one is the
		// honest reading of a caller passing the zero value.
		o = Failed
	}
	now := s.o.Now()
	s.finished = true
	s.snap.Outcome, s.snap.Summary, s.snap.Finished, s.snap.Now = o, summary, now, now
	for i := range s.snap.Steps {
		st := &s.snap.Steps[i]
		if st.State != StepRunning {
			continue
		}
		// A step still running when the operation ends did not complete,
		// unless the operation says it succeeded and the caller just did
		// not mark it.
		st.Finished, st.Pct, st.HasPct = now, 0, false
		switch o {
		case Succeeded:
			st.State = StepDone
		case Cancelled:
			st.State, st.Detail = StepFailed, "stopped: operation cancelled"
		default:
			st.State, st.Detail = StepFailed, "did not finish"
		}
	}
	s.ver++
	snap := s.copyLocked()
	s.nudge()
	s.mu.Unlock()

	s.log.Info("operation finished",
		"title", snap.Title, "outcome", o.String(), "requester", snap.Requester,
		"duration", total(snap).Round(time.Millisecond).String(),
		"summary", summary, "message", chat.PlainText(Render(snap)))
}

// Wait returns once everything, the final summary included, has been
// delivered (nil) or given up on (an error wrapping ErrGaveUp), or when ctx
// ends (ctx's error; delivery goes on in the background).
func (s *Stream) Wait(ctx context.Context) error {
	select {
	case <-s.done:
		return s.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Ref is the message, once Slack has accepted it.
func (s *Stream) Ref() (chat.Ref, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ref, s.posted
}

// Snapshot is the current state, as the message would show it now.
func (s *Stream) Snapshot() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.copyLocked()
}

// copyLocked needs s.mu held.
func (s *Stream) copyLocked() Snapshot {
	snap := s.snap
	snap.Steps = append([]Step(nil), s.snap.Steps...)
	if !s.finished {
		snap.Now = s.o.Now()
	}
	return snap
}

// change applies f to step under the lock. A step out of range is a bug in
// the operation, but one that must not crash it: it is logged once and
// ignored. Changes after Finish are ignored so that the final message
// cannot be overwritten by a straggling goroutine of the operation.
func (s *Stream) change(step int, f func(st *Step, now time.Time)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finished {
		return
	}
	if step < 0 || step >= len(s.snap.Steps) {
		if !s.badStep {
			s.badStep = true
			s.log.Warn("progress: step out of range, ignored", "step", step, "steps", len(s.snap.Steps))
		}
		return
	}
	f(&s.snap.Steps[step], s.o.Now())
	s.ver++
	s.nudge()
}

// nudge wakes the sender without ever blocking: if a nudge is already
// pending, the sender will see this change too.
func (s *Stream) nudge() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}
