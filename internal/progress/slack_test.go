package progress

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/slack-go/slack"

	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/testenv/slackfake"
)

const channel = "C0OPS"

// slackPoster is a Poster over the real slack-go client, so that these
// tests exercise Slack's encoding and the fake's limits end to end. gate,
// when set, holds the first Post until it is closed.
type slackPoster struct {
	api  *slack.Client
	gate chan struct{}
}

func (p *slackPoster) Post(ctx context.Context, m chat.Message) (chat.Ref, error) {
	if p.gate != nil {
		select {
		case <-p.gate:
		case <-ctx.Done():
			return chat.Ref{}, ctx.Err()
		}
	}
	ch, ts, err := p.api.PostMessageContext(ctx, channel, slack.MsgOptionText(m.Text, false), slack.MsgOptionBlocks(m.Blocks...))
	if err != nil {
		return chat.Ref{}, err
	}
	return chat.Ref{Channel: ch, TS: ts}, nil
}

func (p *slackPoster) Update(ctx context.Context, ref chat.Ref, m chat.Message) error {
	_, _, _, err := p.api.UpdateMessageContext(ctx, ref.Channel, ref.TS, slack.MsgOptionText(m.Text, false), slack.MsgOptionBlocks(m.Blocks...))
	return err
}

func (p *slackPoster) PostThread(ctx context.Context, parent chat.Ref, m chat.Message) (chat.Ref, error) {
	ch, ts, err := p.api.PostMessageContext(ctx, parent.Channel, slack.MsgOptionText(m.Text, false), slack.MsgOptionBlocks(m.Blocks...), slack.MsgOptionTS(parent.TS))
	if err != nil {
		return chat.Ref{}, err
	}
	return chat.Ref{Channel: ch, TS: ts}, nil
}

func setupSlack(t *testing.T) (*slackfake.Server, *slackPoster) {
	t.Helper()
	fake := slackfake.New()
	t.Cleanup(fake.Close)
	return fake, &slackPoster{api: slack.New("xoxb-test", slack.OptionAPIURL(fake.APIURL()))}
}

func isMainPost(c slackfake.Call) bool { return c.Method == "chat.postMessage" && c.ThreadTS == "" }

func isThreadPost(c slackfake.Call) bool { return c.Method == "chat.postMessage" && c.ThreadTS != "" }

func filter(calls []slackfake.Call, keep func(slackfake.Call) bool) []slackfake.Call {
	var out []slackfake.Call
	for _, c := range calls {
		if keep(c) {
			out = append(out, c)
		}
	}
	return out
}

// mainMessage is the operation's message as Slack now shows it.
func mainMessage(t *testing.T, fake *slackfake.Server) slackfake.Message {
	t.Helper()
	var out []slackfake.Message
	for _, m := range fake.Messages(channel) {
		if m.ThreadTS == "" {
			out = append(out, m)
		}
	}
	if len(out) != 1 {
		t.Fatalf("%d top-level messages in %s, want exactly 1: %+v", len(out), channel, out)
	}
	return out[0]
}

// waitShown waits for a main-message send that carries want.
func waitShown(t *testing.T, fake *slackfake.Server, want string) {
	t.Helper()
	fake.WaitFor(t, 10*time.Second, fmt.Sprintf("a message showing %q", want), func(c slackfake.Call) bool {
		return (isMainPost(c) || c.Method == "chat.update") && c.Status == http.StatusOK && strings.Contains(fake.Text(c), want)
	})
}

func TestSlackRunToCompletion(t *testing.T) {
	fake, p := setupSlack(t)
	log, logs := newLog()
	c := newClock()
	o := opts(log, c, "Snapshot volumes", "Wait for completion", "Record restore point")
	o.MinInterval = 20 * time.Millisecond
	s := Start(context.Background(), p, o)

	s.Begin(0, "")
	waitShown(t, fake, ":hourglass_flowing_sand: Snapshot volumes")
	c.Advance(12 * time.Second)
	s.Log("created snap-0001 for vol-0001 (8 GiB)")
	s.Done(0, "3 snapshots")
	s.Begin(1, "")
	s.Progress(1, 52, "2 of 3 snapshots completed")
	waitShown(t, fake, ":hourglass_flowing_sand: Wait for completion — ▓▓▓▓▓░░░░░ 52% (2 of 3 snapshots completed)")
	c.Advance(65 * time.Second)
	s.Done(1, "")
	s.Begin(2, "")
	c.Advance(time.Second)
	s.Done(2, "rp-7")
	s.Log("restore point rp-7 recorded")
	s.Finish(Succeeded, "3 snapshots of i-0abc; restore point rp-7")
	wait(t, s)

	ref, ok := s.Ref()
	if !ok {
		t.Fatal("no Ref after delivery")
	}
	calls := fake.Calls()
	if n := len(filter(calls, isMainPost)); n != 1 {
		t.Errorf("%d chat.postMessage for the main message, want exactly 1", n)
	}
	updates := filter(calls, func(c slackfake.Call) bool { return c.Method == "chat.update" })
	msg := mainMessage(t, fake)
	if len(updates) < 2 || msg.Updates != len(updates) {
		t.Errorf("%d chat.update calls, message updated %d times; want ≥2 and equal", len(updates), msg.Updates)
	}
	for _, u := range updates {
		if u.TS != ref.TS || u.Channel != ref.Channel {
			t.Errorf("update of %s/%s, want the operation's message %+v", u.Channel, u.TS, ref)
		}
	}
	// Never faster than MinInterval: each send starts after the previous
	// one was answered plus the interval.
	sends := filter(calls, func(c slackfake.Call) bool { return isMainPost(c) || c.Method == "chat.update" })
	for i := 1; i < len(sends); i++ {
		if gap := sends[i].At.Sub(sends[i-1].At); gap < o.MinInterval {
			t.Errorf("sends %d and %d only %s apart", i-1, i, gap)
		}
	}

	final := msg.AllText()
	for _, want := range []string{
		":white_check_mark: *EBS backup of i-0abc (circleci_services)* — succeeded in 1m18s",
		"`op-20261128-031500-7f3a` · requested by <@U012AB3CD> · took 1m18s",
		":white_check_mark: Snapshot volumes — 12s · 3 snapshots",
		":white_check_mark: Wait for completion — 1m05s",
		":white_check_mark: Record restore point — 1s · rp-7",
		"3 snapshots of i-0abc; restore point rp-7",
		"*Total:* 1m18s · *Outcome:* succeeded · `op-20261128-031500-7f3a`",
	} {
		if !strings.Contains(final, want) {
			t.Errorf("final message lacks %q:\n%s", want, final)
		}
	}
	if want := "EBS backup of i-0abc (circleci_services): succeeded in 1m18s (op-20261128-031500-7f3a)"; msg.Text != want {
		t.Errorf("notification text %q, want %q", msg.Text, want)
	}

	var thread strings.Builder
	for _, m := range fake.Messages(channel) {
		if m.ThreadTS == ref.TS {
			thread.WriteString(m.AllText() + "\n")
		}
	}
	for _, want := range []string{"created snap-0001 for vol-0001 (8 GiB)", "restore point rp-7 recorded"} {
		if !strings.Contains(thread.String(), want) {
			t.Errorf("thread lacks %q:\n%s", want, thread.String())
		}
	}
	if !strings.Contains(logs.String(), "3 snapshots of i-0abc; restore point rp-7") {
		t.Errorf("summary not logged:\n%s", logs)
	}
}

// 100 changes inside one interval are one update, carrying the last state.
func TestSlackCoalescesRapidProgress(t *testing.T) {
	fake, p := setupSlack(t)
	log, _ := newLog()
	o := opts(log, newClock(), "Wait for completion")
	o.MinInterval = 300 * time.Millisecond
	s := Start(context.Background(), p, o)
	s.Begin(0, "")
	fake.WaitFor(t, 10*time.Second, "the first post", isMainPost)

	for i := 1; i <= 100; i++ {
		s.Progress(0, float64(i), fmt.Sprintf("%d of 100", i))
	}
	waitShown(t, fake, "(100 of 100)")
	if got := mainMessage(t, fake).AllText(); !strings.Contains(got, "▓▓▓▓▓▓▓▓▓▓ 100% (100 of 100)") {
		t.Errorf("Slack does not show the last state:\n%s", got)
	}
	if n := len(filter(fake.Calls(), func(c slackfake.Call) bool { return c.Method == "chat.update" })); n > 3 {
		t.Errorf("%d updates for 100 changes within one interval, want at most a few", n)
	}
	s.Finish(Succeeded, "")
	wait(t, s)
}

// Slack's 429 on chat.update: nothing is sent to that message before
// Retry-After, and the final state gets there afterwards.
func TestSlackRateLimitedUpdate(t *testing.T) {
	fake, p := setupSlack(t)
	log, _ := newLog()
	s := Start(context.Background(), p, opts(log, newClock(), "Snapshot volumes"))
	fake.WaitFor(t, 10*time.Second, "the first post", isMainPost)
	fake.FailNext("chat.update", 1, http.StatusTooManyRequests, 1, "")
	s.Begin(0, "")
	limited := fake.WaitFor(t, 10*time.Second, "the rate-limited update", func(c slackfake.Call) bool {
		return c.Method == "chat.update" && c.Status == http.StatusTooManyRequests
	})
	s.Done(0, "")
	s.Finish(Succeeded, "all snapshots completed")
	wait(t, s)

	var after []slackfake.Call
	for _, c := range fake.Calls() {
		if c.Method == "chat.update" && c.At.After(limited.At) {
			after = append(after, c)
		}
	}
	if len(after) != 1 {
		t.Fatalf("%d updates after the 429, want the final one only", len(after))
	}
	if gap := after[0].At.Sub(limited.At); gap < time.Second {
		t.Errorf("update %s after a 429 with Retry-After: 1", gap)
	}
	if got := mainMessage(t, fake).AllText(); !strings.Contains(got, "succeeded") || !strings.Contains(got, "all snapshots completed") {
		t.Errorf("final state not delivered:\n%s", got)
	}
}

// Slack failing with 5xx for a while: the operation finishes regardless,
// the final summary arrives once Slack is back, and the outage is logged
// once rather than per attempt.
func TestSlackDownThenUp(t *testing.T) {
	fake, p := setupSlack(t)
	log, logs := newLog()
	fake.FailNext("chat.postMessage", 6, http.StatusServiceUnavailable, 0, "")
	s := Start(context.Background(), p, opts(log, newClock(), "Snapshot volumes", "Upload"))
	s.Begin(0, "")
	s.Done(0, "")
	s.Begin(1, "")
	s.Fail(1, errors.New("AccessDenied: s3:PutObject"))
	s.Finish(Failed, "upload to s3://backups failed")
	wait(t, s)

	posts := filter(fake.Calls(), isMainPost)
	if len(posts) != 7 || posts[6].Status != http.StatusOK {
		t.Fatalf("%d posts, want 6 failures then a success: %v", len(posts), posts)
	}
	// Backoff grows: the last gap is longer than the first.
	if first, last := posts[1].At.Sub(posts[0].At), posts[6].At.Sub(posts[5].At); last <= first {
		t.Errorf("no backoff: first gap %s, last gap %s", first, last)
	}
	got := mainMessage(t, fake).AllText()
	for _, want := range []string{":x: *EBS backup", ":x: Upload — AccessDenied: s3:PutObject", "upload to s3://backups failed"} {
		if !strings.Contains(got, want) {
			t.Errorf("final message lacks %q:\n%s", want, got)
		}
	}
	out := logs.String()
	if n := strings.Count(out, "Slack did not take the update"); n != 1 {
		t.Errorf("outage logged %d times, want once:\n%s", n, out)
	}
	if !strings.Contains(out, "upload to s3://backups failed") || !strings.Contains(out, "Slack took the update again") {
		t.Errorf("summary or recovery not logged:\n%s", out)
	}
}

// Slack never comes back: the Stream gives up after DeliverFor, and the
// log has the final summary.
func TestSlackNeverComesBack(t *testing.T) {
	fake, p := setupSlack(t)
	log, logs := newLog()
	fake.FailNext("chat.postMessage", 1_000_000, http.StatusInternalServerError, 0, "")
	o := opts(log, newClock(), "Snapshot volumes")
	o.DeliverFor = 300 * time.Millisecond
	s := Start(context.Background(), p, o)
	s.Done(0, "")
	s.Finish(Succeeded, "snap-0abc completed")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Wait(ctx); !errors.Is(err, ErrGaveUp) {
		t.Fatalf("Wait = %v, want ErrGaveUp", err)
	}
	out := logs.String()
	if !strings.Contains(out, "gave up delivering to Slack") || strings.Count(out, "snap-0abc completed") < 2 {
		t.Errorf("give-up and summary not logged:\n%s", out)
	}
	// Capped backoff: 300ms at ≤50ms apart is a handful of attempts.
	if n := len(filter(fake.Calls(), isMainPost)); n < 3 || n > 40 {
		t.Errorf("%d attempts in 300ms", n)
	}
}

// not_in_channel: keep trying at a polite pace, log it once, and deliver
// once someone invites the bot.
func TestSlackNotInChannelUntilInvited(t *testing.T) {
	fake, p := setupSlack(t)
	log, logs := newLog()
	fake.NotInChannel(channel)
	o := opts(log, newClock(), "Snapshot volumes")
	o.MinInterval, o.MaxBackoff = 10*time.Millisecond, 20*time.Millisecond
	s := Start(context.Background(), p, o)
	s.Begin(0, "")
	s.Log("a detail line")
	refused := 0
	fake.WaitFor(t, 10*time.Second, "several refused posts", func(c slackfake.Call) bool {
		if c.Error == "not_in_channel" {
			refused++
		}
		return refused >= 4
	})
	fake.JoinChannel(channel)
	s.Done(0, "")
	s.Finish(Succeeded, "done")
	wait(t, s)

	posts := filter(fake.Calls(), isMainPost)
	for i := 1; i < len(posts); i++ {
		if gap := posts[i].At.Sub(posts[i-1].At); gap < o.MinInterval {
			t.Errorf("posts %d and %d only %s apart", i-1, i, gap)
		}
	}
	if n := strings.Count(logs.String(), "cannot post in this channel"); n != 1 {
		t.Errorf("not_in_channel logged %d times, want once:\n%s", n, logs)
	}
	if got := mainMessage(t, fake).AllText(); !strings.Contains(got, "succeeded") {
		t.Errorf("final state not delivered:\n%s", got)
	}
	if n := len(filter(fake.Calls(), isThreadPost)); n != 1 {
		t.Errorf("%d thread posts, want 1", n)
	}
}

// 1000 lines arriving while Slack is busy: few thread posts, each one that
// Slack accepts, with the first and last lines and a note of what was
// skipped.
func TestSlackThreadBatching(t *testing.T) {
	for _, tc := range []struct {
		name     string
		line     func(i int) string
		maxPosts int
	}{
		{"short lines", func(i int) string { return fmt.Sprintf("line %04d", i) }, 1},
		// 200 kept lines of 1000 bytes: split so each post stays small.
		{"long lines", func(i int) string { return fmt.Sprintf("line %04d ", i) + strings.Repeat("é", 1000) }, 25},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake, p := setupSlack(t)
			p.gate = make(chan struct{})
			log, _ := newLog()
			s := Start(context.Background(), p, opts(log, newClock(), "Restore"))
			s.Begin(0, "circleci-restore")
			for i := 1; i <= 1000; i++ {
				s.Log(tc.line(i))
			}
			s.Done(0, "")
			s.Finish(Succeeded, "restored")
			close(p.gate)
			wait(t, s)

			ref, _ := s.Ref()
			posts := filter(fake.Calls(), isThreadPost)
			if len(posts) == 0 || len(posts) > tc.maxPosts {
				t.Fatalf("%d thread posts, want 1..%d", len(posts), tc.maxPosts)
			}
			var all strings.Builder
			for _, c := range posts {
				if c.Status != http.StatusOK || c.ThreadTS != ref.TS {
					t.Errorf("thread post %s", c)
				}
				if len(c.Blocks.BlockSet) > chat.MaxBlocks {
					t.Errorf("thread post of %d blocks", len(c.Blocks.BlockSet))
				}
				for _, b := range c.Blocks.BlockSet {
					if sb, ok := b.(*slack.SectionBlock); ok && utf8.RuneCountInString(sb.Text.Text) > chat.MaxSectionText {
						t.Errorf("section of %d characters", utf8.RuneCountInString(sb.Text.Text))
					}
				}
				all.WriteString(fake.Text(c) + "\n")
			}
			got := all.String()
			for _, want := range []string{"line 0001", "line 0100", "800 lines skipped", "line 0901", "line 1000"} {
				if !strings.Contains(got, want) {
					t.Errorf("thread lacks %q", want)
				}
			}
			for _, unwanted := range []string{"line 0101", "line 0900"} {
				if strings.Contains(got, unwanted) {
					t.Errorf("thread has %q, which should have been skipped", unwanted)
				}
			}
			if strings.Index(got, "line 0100") > strings.Index(got, "800 lines skipped") || strings.Index(got, "800 lines skipped") > strings.Index(got, "line 0901") {
				t.Error("thread lines out of order")
			}
		})
	}
}

// The largest message Render can make is one Slack accepts.
func TestSlackAcceptsLargestRender(t *testing.T) {
	fake, p := setupSlack(t)
	st := Snapshot{OpID: "op-1", Title: strings.Repeat("T", 5000), Requester: "U1", Started: t0, Now: t0, Outcome: Failed, Finished: t0,
		Summary: strings.Repeat("summary line <&>\n", 2000)}
	for i := range 200 {
		st.Steps = append(st.Steps, Step{Name: strings.Repeat("n", 400), State: StepState(i % 5), Detail: strings.Repeat("é", 2000), Pct: 50, HasPct: true})
	}
	if _, err := p.Post(context.Background(), Render(st)); err != nil {
		t.Fatalf("Slack rejected the message: %v", err)
	}
	if c := fake.Calls()[0]; c.Status != http.StatusOK {
		t.Fatalf("%s", c)
	}
}
