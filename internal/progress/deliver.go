package progress

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/slack-go/slack"

	"github.com/circlebot/circlebot/internal/chat"
)

// gate paces sends to one target (the message, or its thread). Slack rate
// limits are per method, so a 429 on chat.update says nothing about thread
// posts and each target waits out its own.
type gate struct {
	next   time.Time // no send before this
	fails  int       // consecutive failures, rate limiting aside, for backoff
	streak int       // consecutive failures of any kind, to log a streak once
}

// sender is the state of the background goroutine; only it touches these
// fields, so they need no lock.
type sender struct {
	s            *Stream
	main, thread gate
	sentVer      int       // the version of the state Slack last accepted
	sentAt       time.Time // when, for Refresh
	outbox       []chat.Message
	deadline     time.Time // zero until Finish (or the caller's ctx ends)
	lastErr      error
	dropped      int // thread lines that had no thread to go to
}

func (s *Stream) run() {
	defer close(s.done)
	d := &sender{s: s, sentVer: -1}
	ctxDone := s.ctx.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		wakeAt, again, done := d.tick()
		if done {
			return
		}
		if again {
			continue
		}
		var fire <-chan time.Time
		if !wakeAt.IsZero() {
			timer.Reset(time.Until(wakeAt))
			fire = timer.C
		}
		select {
		case <-s.wake:
		case <-fire:
		case <-ctxDone:
			// The operation is gone without (yet) calling Finish: keep
			// delivering what it left, but not forever.
			ctxDone = nil
			if d.deadline.IsZero() {
				d.deadline = time.Now().Add(s.o.DeliverFor)
			}
		}
		timer.Stop()
	}
}

// tick makes at most one Poster call. It returns again when it should run
// once more straight away, else when it next has something to do (zero:
// only when nudged), or done when nothing is left.
func (d *sender) tick() (wakeAt time.Time, again, done bool) {
	s := d.s
	o := s.o
	now := time.Now()

	s.mu.Lock()
	snap, ver, finished, posted, ref := s.copyLocked(), s.ver, s.finished, s.posted, s.ref
	threadable := posted && ref.TS != ""
	switch {
	case s.p == nil || (posted && !threadable):
		// No thread to put them in; the lines stay in the bot's log only
		// if the caller logged them, so count them for the record.
		d.dropped += s.lines.count()
		s.lines = lineBuf{}
	case threadable && len(d.outbox) == 0 && !s.lines.empty() && !now.Before(d.thread.next):
		// Lines are taken only when they can be sent, so that everything
		// that arrived in the meantime goes in one batch.
		d.outbox = threadMessages(o.OpID, s.lines.take())
	}
	linesPending := !s.lines.empty()
	s.mu.Unlock()

	if finished && d.deadline.IsZero() {
		d.deadline = now.Add(o.DeliverFor)
	}
	if s.p == nil {
		return d.deadline, false, finished || (!d.deadline.IsZero() && !now.Before(d.deadline))
	}
	if !d.deadline.IsZero() && !now.Before(d.deadline) {
		d.giveUp(snap, ver, finished)
		return time.Time{}, false, true
	}

	refreshDue := !finished && threadable && o.Refresh > 0 && !d.sentAt.IsZero() && now.Sub(d.sentAt) >= o.Refresh
	mainDue := !posted || d.sentVer != ver || refreshDue
	if mainDue && posted && !threadable && !finished {
		// Only the final state goes where edits are scarce (see Poster).
		d.sentVer, mainDue = ver, false
	}
	if mainDue && !now.Before(d.main.next) {
		d.sendMain(snap, ver, posted, ref)
		return time.Time{}, true, false
	}
	threadDue := threadable && (len(d.outbox) > 0 || linesPending)
	if threadDue && len(d.outbox) > 0 && !now.Before(d.thread.next) {
		d.sendThread(ref)
		return time.Time{}, true, false
	}
	if finished && !mainDue && !threadDue {
		d.delivered(snap)
		return time.Time{}, false, true
	}

	earliest := func(t time.Time) {
		if wakeAt.IsZero() || t.Before(wakeAt) {
			wakeAt = t
		}
	}
	if mainDue {
		earliest(d.main.next)
	}
	if threadDue {
		earliest(d.thread.next)
	}
	if !finished && threadable && o.Refresh > 0 && !d.sentAt.IsZero() {
		earliest(d.sentAt.Add(o.Refresh))
	}
	if !d.deadline.IsZero() {
		earliest(d.deadline)
	}
	return wakeAt, false, false
}

func (d *sender) sendMain(snap Snapshot, ver int, posted bool, ref chat.Ref) {
	s := d.s
	msg := Render(snap)
	method := "chat.update"
	var err error
	if !posted {
		method = "chat.postMessage"
		var got chat.Ref
		err = d.call(func(ctx context.Context) error {
			var err error
			got, err = s.p.Post(ctx, msg)
			return err
		})
		if err == nil {
			s.mu.Lock()
			s.ref, s.posted = got, true
			s.mu.Unlock()
		}
	} else {
		err = d.call(func(ctx context.Context) error { return s.p.Update(ctx, ref, msg) })
	}
	now := time.Now()
	if err != nil {
		d.failed(&d.main, method, err, now)
		if posted && slackError(err) == "message_not_found" {
			// Someone deleted the progress message. Post a new one rather
			// than retrying an edit that can never succeed.
			s.log.Warn("progress: the message was deleted; posting it again", "ref", ref)
			s.mu.Lock()
			s.ref, s.posted = chat.Ref{}, false
			s.mu.Unlock()
			d.main.next = now
		}
		return
	}
	d.succeeded(&d.main, method, now)
	d.sentVer, d.sentAt = ver, now
	if !posted {
		// The first post and the thread replies are all chat.postMessage
		// in one channel, which Slack allows about once a second.
		if t := now.Add(s.o.MinInterval); t.After(d.thread.next) {
			d.thread.next = t
		}
	}
}

func (d *sender) sendThread(ref chat.Ref) {
	err := d.call(func(ctx context.Context) error {
		_, err := d.s.p.PostThread(ctx, ref, d.outbox[0])
		return err
	})
	now := time.Now()
	if err != nil {
		d.failed(&d.thread, "chat.postMessage (thread)", err, now)
		return
	}
	d.succeeded(&d.thread, "chat.postMessage (thread)", now)
	d.outbox[0] = chat.Message{} // let the blocks go
	d.outbox = d.outbox[1:]
}

// call runs one Poster call detached from the caller's cancellation (see
// Start) but bounded in time, and turns a Poster's panic into an error:
// a bug in the chat side must not take the bot down mid-operation.
func (d *sender) call(f func(context.Context) error) (err error) {
	ctx, cancel := context.WithTimeout(d.s.base, callTimeout)
	defer cancel()
	if !d.deadline.IsZero() {
		var cancelD context.CancelFunc
		ctx, cancelD = context.WithDeadline(ctx, d.deadline)
		defer cancelD()
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("progress: Poster panicked: %v", r)
		}
	}()
	return f(ctx)
}

// failed schedules the next attempt. Rate limiting is Slack saying exactly
// when to come back, so it is honoured as given; anything else backs off
// exponentially from MinInterval up to MaxBackoff. There is no jitter: a
// bot runs a handful of operations at once, not a herd.
//
// Only the first failure of a streak is logged, so a channel the bot is
// not in (retried for DeliverFor) does not flood the log.
func (d *sender) failed(g *gate, method string, err error, now time.Time) {
	o := d.s.o
	d.lastErr = err
	var wait time.Duration
	var rl *slack.RateLimitedError
	if errors.As(err, &rl) {
		wait = rl.RetryAfter
		if wait <= 0 {
			wait = o.MinInterval
		}
	} else {
		g.fails++
		wait = o.MinInterval
		for i := 1; i < g.fails && wait < o.MaxBackoff; i++ {
			wait *= 2
		}
		wait = min(wait, o.MaxBackoff)
	}
	g.next = now.Add(wait)
	g.streak++
	if g.streak > 1 {
		return
	}
	if notMember(err) {
		d.s.log.Warn("progress: the bot cannot post in this channel; invite it to see progress there. Retrying in the background",
			"method", method, "error", err, "retry_in", wait)
		return
	}
	d.s.log.Warn("progress: Slack did not take the update; retrying in the background, the operation is not affected",
		"method", method, "error", err, "retry_in", wait)
}

func (d *sender) succeeded(g *gate, method string, now time.Time) {
	if g.streak > 0 {
		d.s.log.Info("progress: Slack took the update again", "method", method, "failed_attempts", g.streak)
	}
	g.fails, g.streak = 0, 0
	g.next = now.Add(d.s.o.MinInterval)
}

func (d *sender) delivered(snap Snapshot) {
	if d.dropped > 0 {
		d.s.log.Info("progress: detail lines not posted: the message has no thread", "lines", d.dropped)
	}
	d.s.log.Debug("progress: final state delivered", "outcome", snap.Outcome.String())
}

// giveUp records that Slack never took everything. The final state goes
// to the log in full: it may be the only record the on-call gets.
func (d *sender) giveUp(snap Snapshot, ver int, finished bool) {
	s := d.s
	s.mu.Lock()
	pending := s.lines.count()
	s.mu.Unlock()
	what := "final summary"
	if !finished {
		what = "progress (the operation never called Finish)"
	}
	s.err = fmt.Errorf("%w: %s of %q not delivered within %s: %v", ErrGaveUp, what, s.o.OpID, s.o.DeliverFor, d.lastErr)
	s.log.Error("progress: gave up delivering to Slack; this log entry is the record",
		"what", what, "last_error", d.lastErr, "outcome", snap.Outcome.String(),
		"summary", snap.Summary, "message", chat.PlainText(Render(snap)),
		"message_up_to_date", d.sentVer == ver,
		"thread_messages_undelivered", len(d.outbox), "thread_lines_undelivered", pending)
}

// notMember is Slack refusing the channel rather than the message; worth
// its own log line because only a person inviting the bot fixes it.
func notMember(err error) bool {
	code := slackError(err)
	return code == "not_in_channel" || code == "channel_not_found"
}

// slackError is Slack's error code in err, or "".
func slackError(err error) string {
	var se slack.SlackErrorResponse
	if errors.As(err, &se) {
		return se.Err
	}
	return ""
}
