package progress

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/slack-go/slack"

	"github.com/circlebot/circlebot/internal/chat"
)

// clock is the fake time shown in messages; scheduling uses real time with
// a tiny MinInterval instead.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: t0} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// logBuf captures slog output from the background goroutine.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newLog() (*slog.Logger, *logBuf) {
	buf := &logBuf{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// returnsPromptly fails the test if f blocks: the operation's calls must
// never wait on Slack.
func returnsPromptly(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s blocked while the Poster was stuck", what)
	}
}

type fakeCall struct {
	method string
	ref    chat.Ref
	msg    chat.Message
	at     time.Time
	ctxErr error // the call's context when it returned
}

// fakePoster records calls; hook, when set, runs first and may block or
// return an error.
type fakePoster struct {
	mu    sync.Mutex
	calls []fakeCall
	seq   int
	noTS  bool
	hook  func(ctx context.Context, method string, n int) error
}

func (p *fakePoster) do(ctx context.Context, method string, ref chat.Ref, m chat.Message) (chat.Ref, error) {
	p.mu.Lock()
	n := len(p.calls)
	hook := p.hook
	p.mu.Unlock()
	var err error
	if hook != nil {
		err = hook(ctx, method, n)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, fakeCall{method: method, ref: ref, msg: m, at: time.Now(), ctxErr: ctx.Err()})
	if err != nil {
		return chat.Ref{}, err
	}
	p.seq++
	if method == "update" {
		return ref, nil
	}
	if p.noTS && method == "post" {
		return chat.Ref{Channel: "C1"}, nil
	}
	return chat.Ref{Channel: "C1", TS: fmt.Sprintf("1.%06d", p.seq)}, nil
}

func (p *fakePoster) Post(ctx context.Context, m chat.Message) (chat.Ref, error) {
	return p.do(ctx, "post", chat.Ref{}, m)
}

func (p *fakePoster) Update(ctx context.Context, ref chat.Ref, m chat.Message) error {
	_, err := p.do(ctx, "update", ref, m)
	return err
}

func (p *fakePoster) PostThread(ctx context.Context, parent chat.Ref, m chat.Message) (chat.Ref, error) {
	return p.do(ctx, "thread", parent, m)
}

func (p *fakePoster) Calls() []fakeCall {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]fakeCall(nil), p.calls...)
}

func (p *fakePoster) count(method string) int {
	n := 0
	for _, c := range p.Calls() {
		if c.method == method {
			n++
		}
	}
	return n
}

// last is the most recent message Slack accepted for the main message.
func (p *fakePoster) last() string {
	calls := p.Calls()
	for i := len(calls) - 1; i >= 0; i-- {
		if calls[i].method != "thread" {
			return chat.PlainText(calls[i].msg)
		}
	}
	return ""
}

func wait(t *testing.T, s *Stream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := s.Wait(ctx); err != nil {
		t.Fatalf("Wait: %v", err)
	}
}

func opts(log *slog.Logger, c *clock, steps ...string) Options {
	return Options{
		OpID: "op-20261128-031500-7f3a", Title: "EBS backup of i-0abc (circleci_services)", Requester: "U012AB3CD",
		Steps: steps, MinInterval: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
		Log: log, Now: c.Now,
	}
}

// The heart of the package: with the Poster stuck inside a call, every
// method the operation uses still returns at once, and the latest state is
// delivered once the Poster answers.
func TestCallsNeverBlockOnAStuckPoster(t *testing.T) {
	entered := make(chan string, 100)
	release := make(chan struct{})
	p := &fakePoster{hook: func(ctx context.Context, method string, _ int) error {
		entered <- method
		<-release // deliberately ignores ctx, like a hung connection would
		return nil
	}}
	log, _ := newLog()
	c := newClock()
	var s *Stream
	returnsPromptly(t, "Start", func() {
		s = Start(context.Background(), p, opts(log, c, "Snapshot volumes", "Wait", "Upload", "Record"))
	})
	if m := <-entered; m != "post" {
		t.Fatalf("first call is %q, want post", m)
	}

	returnsPromptly(t, "the operation's calls", func() {
		s.Begin(0, "")
		for i := range 100 {
			s.Progress(1, float64(i), "")
		}
		for i := range 1000 {
			s.Log(fmt.Sprintf("line %d", i))
		}
		s.Done(0, "3 snapshots")
		s.Done(1, "")
		s.Fail(2, errors.New("AccessDenied"))
		s.Skip(3, "upload failed")
		s.Finish(Failed, "upload failed")
	})
	short, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := s.Wait(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait while stuck = %v, want the context's deadline", err)
	}
	if _, ok := s.Ref(); ok {
		t.Fatal("Ref reports a message Slack has not accepted")
	}

	close(release)
	wait(t, s)
	if ref, ok := s.Ref(); !ok || ref.TS == "" {
		t.Fatalf("Ref = %+v, %v after delivery", ref, ok)
	}
	final := p.last()
	for _, want := range []string{":x: *EBS backup", ":x: Upload — AccessDenied", ":heavy_minus_sign: Record — skipped: upload failed", "upload failed"} {
		if !strings.Contains(final, want) {
			t.Errorf("final message lacks %q:\n%s", want, final)
		}
	}
	// The Post went out with the state at the time; everything after it
	// was coalesced into one update.
	if n := p.count("update"); n != 1 {
		t.Errorf("%d updates after the stuck post, want 1 (coalesced)", n)
	}
}

// A rate-limited update is retried only after Retry-After, and the caller
// never notices.
func TestRetryAfterIsHonoured(t *testing.T) {
	const retryAfter = 300 * time.Millisecond
	p := &fakePoster{}
	p.hook = func(_ context.Context, method string, n int) error {
		if method == "update" && p.count("update") == 0 {
			return fmt.Errorf("chat.update: %w", &slack.RateLimitedError{RetryAfter: retryAfter})
		}
		return nil
	}
	log, _ := newLog()
	s := Start(context.Background(), p, opts(log, newClock(), "One"))
	eventually(t, 5*time.Second, "the first post", func() bool { _, ok := s.Ref(); return ok })
	s.Begin(0, "")
	eventually(t, 5*time.Second, "the rate-limited update", func() bool { return p.count("update") == 1 })
	start := time.Now()
	returnsPromptly(t, "Done/Finish while rate limited", func() {
		s.Done(0, "")
		s.Finish(Succeeded, "ok")
	})
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("Done+Finish took %s", d)
	}
	wait(t, s)
	var updates []fakeCall
	for _, c := range p.Calls() {
		if c.method == "update" {
			updates = append(updates, c)
		}
	}
	if len(updates) != 2 {
		t.Fatalf("%d updates, want the rate-limited one and the final one", len(updates))
	}
	if gap := updates[1].at.Sub(updates[0].at); gap < retryAfter {
		t.Errorf("retried after %s, before Retry-After %s", gap, retryAfter)
	}
	if !strings.Contains(p.last(), "succeeded") {
		t.Errorf("final state not delivered:\n%s", p.last())
	}
}

// Cancelling the operation's context must not stop it from reporting that
// it was cancelled.
func TestCancelledContextStillDeliversFinal(t *testing.T) {
	p := &fakePoster{}
	log, _ := newLog()
	ctx, cancel := context.WithCancel(context.Background())
	s := Start(ctx, p, opts(log, newClock(), "Stop instance", "Move IP"))
	s.Begin(0, "stopping i-0abc")
	cancel()
	s.Finish(Cancelled, "cancelled by <@U2>")
	wait(t, s)
	final := p.last()
	for _, want := range []string{":no_entry_sign:", "Stop instance — stopped: operation cancelled", "Move IP — not run"} {
		if !strings.Contains(final, want) {
			t.Errorf("final message lacks %q:\n%s", want, final)
		}
	}
	for _, c := range p.Calls() {
		if c.ctxErr != nil {
			t.Errorf("%s ran with a dead context: %v", c.method, c.ctxErr)
		}
	}
}

// A message posted through response_url (no TS) cannot take an edit a
// second: only the final state goes there, and there is no thread.
func TestMessageWithoutTSGetsOnlyTheFinalState(t *testing.T) {
	p := &fakePoster{noTS: true}
	log, logs := newLog()
	s := Start(context.Background(), p, opts(log, newClock(), "One", "Two"))
	eventually(t, 5*time.Second, "the first post", func() bool { _, ok := s.Ref(); return ok })
	for i := range 20 {
		s.Progress(0, float64(i*5), "")
		s.Log(fmt.Sprintf("line %d", i))
	}
	s.Done(0, "")
	s.Done(1, "")
	s.Finish(Succeeded, "all good")
	wait(t, s)
	if n := p.count("update"); n != 1 {
		t.Errorf("%d updates, want only the final one", n)
	}
	if n := p.count("thread"); n != 0 {
		t.Errorf("%d thread posts to a message without a thread", n)
	}
	if !strings.Contains(p.last(), "succeeded") {
		t.Errorf("final state not delivered:\n%s", p.last())
	}
	if !strings.Contains(logs.String(), "no thread") || !strings.Contains(logs.String(), "lines=20") {
		t.Errorf("dropped lines not logged:\n%s", logs)
	}
}

func TestPosterPanicIsRetried(t *testing.T) {
	p := &fakePoster{}
	var panicked sync.Once
	p.hook = func(context.Context, string, int) error {
		panicked.Do(func() { panic("boom") })
		return nil
	}
	log, logs := newLog()
	s := Start(context.Background(), p, opts(log, newClock(), "One"))
	s.Done(0, "")
	s.Finish(Succeeded, "ok")
	wait(t, s)
	// The panicking call never returned, so only the retry is recorded.
	if p.count("post") != 1 || !strings.Contains(p.last(), "succeeded") {
		t.Fatalf("calls %+v", p.Calls())
	}
	if !strings.Contains(logs.String(), "panicked") {
		t.Errorf("panic not logged:\n%s", logs)
	}
}

func TestNilPoster(t *testing.T) {
	log, logs := newLog()
	s := Start(context.Background(), nil, opts(log, newClock(), "One"))
	s.Log("x")
	s.Finish(Succeeded, "nothing to post to")
	wait(t, s)
	if !strings.Contains(logs.String(), "nothing to post to") {
		t.Errorf("summary not logged:\n%s", logs)
	}
}

func TestMisuseIsHarmless(t *testing.T) {
	p := &fakePoster{}
	log, logs := newLog()
	c := newClock()
	s := Start(context.Background(), p, opts(log, c, "One", "Two"))
	s.Begin(-1, "")
	s.Done(2, "")
	s.Progress(7, 10, "")
	s.Begin(0, "")
	c.Advance(2 * time.Second)
	s.Finish(InProgress, "caller passed the zero Outcome")
	s.Finish(Succeeded, "second Finish is ignored")
	s.Done(1, "after Finish")
	s.Log("after Finish")
	wait(t, s)
	if n := strings.Count(logs.String(), "step out of range"); n != 1 {
		t.Errorf("out-of-range steps logged %d times, want once", n)
	}
	snap := s.Snapshot()
	if snap.Outcome != Failed || snap.Summary != "caller passed the zero Outcome" || snap.Steps[1].State != StepPending {
		t.Errorf("final state changed after Finish: %+v", snap)
	}
	if snap.Steps[0].State != StepFailed || snap.Steps[0].Detail != "did not finish" {
		t.Errorf("running step at a failed Finish: %+v", snap.Steps[0])
	}
	if p.count("thread") != 0 {
		t.Errorf("a line logged after Finish was posted")
	}
}

// A long or multi-line error keeps the checklist readable and goes to the
// thread in full; its text is escaped, never taken as Slack markup.
func TestFailWithLongError(t *testing.T) {
	p := &fakePoster{}
	log, _ := newLog()
	s := Start(context.Background(), p, opts(log, newClock(), "Upload"))
	long := "operation error S3: PutObject, <Error> & more\n" + strings.Repeat("x", 2000)
	s.Fail(0, errors.New(long))
	s.Finish(Failed, "upload failed")
	wait(t, s)
	var check string
	for _, b := range Render(s.Snapshot()).Blocks {
		if sb, ok := b.(*slack.SectionBlock); ok && sb.Text != nil && strings.Contains(sb.Text.Text, ":x: Upload") {
			check = sb.Text.Text
		}
	}
	if !strings.Contains(check, "&lt;Error&gt; &amp; more") || !strings.Contains(check, "(full error in thread)") || len(check) > 400 {
		t.Errorf("checklist line: %q", check)
	}
	var thread strings.Builder
	for _, c := range p.Calls() {
		if c.method == "thread" {
			thread.WriteString(sectionTexts(c.msg))
		}
	}
	if !strings.Contains(thread.String(), "Error in Upload:") || !strings.Contains(thread.String(), "&lt;Error&gt;") || !strings.Contains(thread.String(), strings.Repeat("x", 500)) {
		t.Errorf("full error not in thread:\n%.300s", thread.String())
	}
}

// An unchanged live message is re-sent every Refresh so its elapsed times
// stay true while a step runs quietly.
func TestRefreshKeepsElapsedCurrent(t *testing.T) {
	p := &fakePoster{}
	log, _ := newLog()
	c := newClock()
	o := opts(log, c, "Wait")
	o.Refresh = 20 * time.Millisecond
	s := Start(context.Background(), p, o)
	s.Begin(0, "")
	eventually(t, 5*time.Second, "the running step", func() bool {
		return strings.Contains(p.last(), ":hourglass_flowing_sand: Wait")
	})
	c.Advance(5 * time.Minute) // no state change: only a refresh can show this
	eventually(t, 5*time.Second, "a refresh showing the new elapsed time", func() bool {
		return strings.Contains(p.last(), "elapsed 5m00s")
	})
	s.Finish(Succeeded, "")
	wait(t, s)
}

func TestLineBufKeepsHeadAndTail(t *testing.T) {
	var b lineBuf
	for i := range 1000 {
		b.add(fmt.Sprint(i))
	}
	if b.count() != 1000 {
		t.Fatalf("count %d", b.count())
	}
	got := b.take()
	if len(got) != keepHead+keepTail+1 {
		t.Fatalf("%d lines kept", len(got))
	}
	if got[0] != "0" || got[keepHead-1] != "99" || !strings.Contains(got[keepHead], "800 lines skipped") ||
		got[keepHead+1] != "900" || got[len(got)-1] != "999" {
		t.Fatalf("wrong lines kept: %v … %v", got[:3], got[keepHead-1:keepHead+3])
	}
	if !b.empty() || b.count() != 0 {
		t.Fatal("take did not empty the buffer")
	}
}

// A deleted progress message is posted again instead of retrying edits
// that cannot succeed.
func TestDeletedMessageIsPostedAgain(t *testing.T) {
	p := &fakePoster{}
	p.hook = func(_ context.Context, method string, _ int) error {
		if method == "update" && p.count("update") == 0 {
			return fmt.Errorf("chat.update: %w", slack.SlackErrorResponse{Err: "message_not_found"})
		}
		return nil
	}
	log, _ := newLog()
	s := Start(context.Background(), p, opts(log, newClock(), "One"))
	eventually(t, 5*time.Second, "the first post", func() bool { _, ok := s.Ref(); return ok })
	first, _ := s.Ref()
	s.Begin(0, "")
	eventually(t, 5*time.Second, "the failed update", func() bool { return p.count("update") == 1 })
	s.Done(0, "")
	s.Finish(Succeeded, "ok")
	wait(t, s)
	if n := p.count("post"); n != 2 {
		t.Fatalf("%d posts, want the first and a replacement", n)
	}
	if ref, _ := s.Ref(); ref == first {
		t.Errorf("Ref still names the deleted message %+v", ref)
	}
	if !strings.Contains(p.last(), "succeeded") {
		t.Errorf("final state not delivered:\n%s", p.last())
	}
}
