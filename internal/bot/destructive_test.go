package bot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/slack-go/slack"

	"github.com/circlebot/circlebot/internal/approvals"
	"github.com/circlebot/circlebot/internal/authz"
	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/commands"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/engine"
	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/store"
)

const (
	alice    = "U0ALICE" // operator
	bob      = "U0BOB"   // approver
	incident = "C0INCIDENT"
	approve  = "C0APPROVE"
	other    = "C0OTHER"
	secret   = "the-passphrase"
)

var idRE = regexp.MustCompile(`\b(bk|snap)-[0-9a-f]+\b`)

// said is one thing the fake Slack was asked to show.
type said struct {
	kind    string // post, thread, update, ephemeral, upload
	channel string
	user    string // ephemeral: who sees it
	ts      string // post: assigned; thread, upload: the parent; update: the message
	m       chat.Message
	file    []byte
}

// fakeSlack records what every replier shows, refuses what Slack would
// (too many blocks, sections or messages too long), and fails on demand.
type fakeSlack struct {
	mu         sync.Mutex
	seq        int
	log        []said
	failPost   map[string]int // channel -> posts that fail
	failThread map[string]int
	uploads    bool // files:write granted
}

func newFakeSlack() *fakeSlack {
	return &fakeSlack{failPost: map[string]int{}, failThread: map[string]int{}, uploads: true}
}

func (s *fakeSlack) said() []said {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]said(nil), s.log...)
}

// fakeReplier speaks in one channel for one user, as a transport does.
type fakeReplier struct {
	s             *fakeSlack
	channel, user string
}

func (s *fakeSlack) replier(channel, user string) *fakeReplier {
	return &fakeReplier{s: s, channel: channel, user: user}
}

// check applies Slack's limits to a message.
func check(m chat.Message) error {
	if len(m.Blocks) > chat.MaxBlocks {
		return fmt.Errorf("invalid_blocks: %d blocks", len(m.Blocks))
	}
	for _, b := range m.Blocks {
		a, ok := b.(*slack.ActionBlock)
		if !ok || a.Elements == nil {
			continue
		}
		seen := map[string]bool{}
		for _, el := range a.Elements.ElementSet {
			if btn, ok := el.(*slack.ButtonBlockElement); ok {
				if seen[btn.ActionID] {
					return fmt.Errorf("invalid_blocks: action_id %q twice in block %q", btn.ActionID, a.BlockID)
				}
				seen[btn.ActionID] = true
			}
		}
	}
	total := 0
	for _, t := range blockTexts(m) {
		if utf8.RuneCountInString(t) > chat.MaxSectionText {
			return fmt.Errorf("invalid_blocks: a text of %d characters", len(t))
		}
		total += utf8.RuneCountInString(t)
	}
	if total > chat.MaxMessageText {
		return fmt.Errorf("msg_blocks_too_long: %d characters", total)
	}
	return nil
}

func blockTexts(m chat.Message) []string {
	var out []string
	for _, b := range m.Blocks {
		switch b := b.(type) {
		case *slack.SectionBlock:
			if b.Text != nil {
				out = append(out, b.Text.Text)
			}
		case *slack.ContextBlock:
			for _, el := range b.ContextElements.Elements {
				if t, ok := el.(*slack.TextBlockObject); ok {
					out = append(out, t.Text)
				}
			}
		}
	}
	return out
}

func text(m chat.Message) string {
	return strings.Join(append([]string{m.Text}, blockTexts(m)...), "\n")
}

// buttons are the values of a message's buttons.
func buttons(m chat.Message) []string {
	var out []string
	for _, b := range m.Blocks {
		if a, ok := b.(*slack.ActionBlock); ok {
			for _, el := range a.Elements.ElementSet {
				if btn, ok := el.(*slack.ButtonBlockElement); ok {
					out = append(out, btn.Value)
				}
			}
		}
	}
	return out
}

func (r *fakeReplier) record(x said) {
	r.s.log = append(r.s.log, x)
}

func (r *fakeReplier) Ephemeral(_ context.Context, m chat.Message) error {
	return r.EphemeralTo(context.Background(), r.user, m)
}

func (r *fakeReplier) EphemeralTo(_ context.Context, user string, m chat.Message) error {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	r.record(said{kind: "ephemeral", channel: r.channel, user: user, m: m})
	return nil
}

func (r *fakeReplier) Post(_ context.Context, m chat.Message) (chat.Ref, error) {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	if r.s.failPost[r.channel] > 0 {
		r.s.failPost[r.channel]--
		return chat.Ref{}, errors.New("post to " + r.channel + ": not_in_channel")
	}
	if err := check(m); err != nil {
		return chat.Ref{}, err
	}
	r.s.seq++
	ts := fmt.Sprintf("1700000000.%06d", r.s.seq)
	r.record(said{kind: "post", channel: r.channel, ts: ts, m: m})
	return chat.Ref{Channel: r.channel, TS: ts}, nil
}

func (r *fakeReplier) Update(_ context.Context, ref chat.Ref, m chat.Message) error {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	if err := check(m); err != nil {
		return err
	}
	r.record(said{kind: "update", channel: ref.Channel, ts: ref.TS, m: m})
	return nil
}

func (r *fakeReplier) PostThread(_ context.Context, parent chat.Ref, m chat.Message) (chat.Ref, error) {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	if r.s.failThread[parent.Channel] > 0 {
		r.s.failThread[parent.Channel]--
		return chat.Ref{}, errors.New("post thread: ratelimited")
	}
	if err := check(m); err != nil {
		return chat.Ref{}, err
	}
	r.s.seq++
	r.record(said{kind: "thread", channel: parent.Channel, ts: parent.TS, m: m})
	return chat.Ref{Channel: parent.Channel, TS: fmt.Sprintf("1700000000.%06d", r.s.seq)}, nil
}

func (r *fakeReplier) UploadFile(_ context.Context, parent chat.Ref, filename, title string, data []byte) error {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	if !r.s.uploads {
		return errors.New("upload " + filename + ": missing_scope")
	}
	r.record(said{kind: "upload", channel: parent.Channel, ts: parent.TS, file: append([]byte(nil), data...)})
	return nil
}

func (r *fakeReplier) In(channel string) chat.Speaker { return r.s.replier(channel, r.user) }

// world is a bot with one destructive command, `backup prune`, whose plan
// names n restore points and whose one step shows the requester a secret.
type world struct {
	t     *testing.T
	d     Deps
	slack *fakeSlack
	n     int
	mu    sync.Mutex
	ran   int
}

type prunePlan struct {
	N int `json:"n"`
}

func (w *world) plan(p prunePlan) approvals.Plan {
	var pts, snaps, changes []string
	for i := range p.N {
		id := fmt.Sprintf("bk-%08x", i)
		pts = append(pts, id)
		for j := range 2 {
			snaps = append(snaps, fmt.Sprintf("snap-%012x%05d", i, j))
		}
		changes = append(changes, fmt.Sprintf("delete `%s` (2026-01-01 00:00, 2 snapshots, 8 GiB) — past keep_last", id))
	}
	return approvals.Plan{Action: "backup prune", Facts: map[string]string{"delete": strings.Join(pts, ","), "snapshots": strings.Join(snaps, ","), "policy": "keep_last=1"},
		Changes: changes, Undo: []string{"deleted EBS snapshots cannot be recovered"}}
}

func newWorld(t *testing.T, n int, approvalsChannel string) *world {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	w := &world{t: t, slack: newFakeSlack(), n: n}
	reg := &engine.Registry{}
	engine.Register(reg, engine.Kind[prunePlan, ops.NoResult]{
		Name: "test-prune", Command: commands.BackupPrune,
		Plan:     func(context.Context, commands.Command) (prunePlan, error) { return prunePlan{N: w.n}, nil },
		Approval: w.plan,
		Title:    func(prunePlan) string { return "Test prune" },
		Target:   func() string { return "box/test" },
		Steps: func(_ prunePlan, env engine.Env) []journal.Def {
			return []journal.Def{{Name: "Delete", Run: func(ctx context.Context, _ *journal.Op, _ journal.Progress) (string, error) {
				w.mu.Lock()
				w.ran++
				w.mu.Unlock()
				return "deleted", env.Private(ctx, secret)
			}}}
		},
		Summary: func(p prunePlan, _ ops.NoResult, _ engine.Record) string {
			return fmt.Sprintf("Pruned %d restore points.", p.N)
		},
	})
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ap := approvals.Store{KV: st.KV()}
	w.d = Deps{
		SlashCommand: "/circleci",
		Policy:       authz.New(config.Roles{Operators: []string{alice}, Approvers: []string{bob}}, nil),
		Approvals:    &Approvals{Store: ap, TTL: 30 * time.Minute, Process: st.Process(), Channel: approvalsChannel},
		Engine: &engine.Engine{Kinds: reg, Journal: journal.Store{KV: st.KV()}, Store: st, Approvals: &ap, SlashCommand: "/circleci",
			Log: log, MinInterval: time.Millisecond},
		Log: log,
	}
	return w
}

func (w *world) call(user, channel, text string) Call {
	w.t.Helper()
	cmd, err := commands.Parse(text)
	if err != nil {
		w.t.Fatal(err)
	}
	return Call{Req: chat.Request{ID: "t", UserID: user, ChannelID: channel, Text: text}, Cmd: cmd, Reply: w.slack.replier(channel, user)}
}

// request asks for the prune as alice in #incident and returns the request.
func (w *world) request() (approvals.Request, Outcome) {
	w.t.Helper()
	out, err := w.d.request()(w.t.Context(), w.call(alice, incident, "backup prune"))
	if err != nil {
		w.t.Fatalf("request: %v", err)
	}
	all, err := w.d.Approvals.Store.All(w.t.Context())
	if err != nil || len(all) != 1 {
		w.t.Fatalf("%d requests, %v", len(all), err)
	}
	return all[0], out
}

func (w *world) decide(user, channel, text string) (Outcome, error) {
	w.t.Helper()
	c := w.call(user, channel, text)
	if c.Cmd.Name == commands.Approve {
		return w.d.approve(w.t.Context(), c)
	}
	return w.d.deny(w.t.Context(), c)
}

func (w *world) state(id string) approvals.State {
	w.t.Helper()
	r, err := w.d.Approvals.Store.Get(w.t.Context(), id)
	if err != nil {
		w.t.Fatal(err)
	}
	return r.State
}

// Whatever the plan's size, the request message has the request ID, the
// plan hash, the expiry and both buttons within Slack's limits, counts
// what it cuts, and its thread carries the full plan the hash covers:
// thread messages that each fit, or a file past a few of them (thread
// messages again when files cannot be uploaded).
func TestRequestMessageIsCompleteWhateverThePlanSize(t *testing.T) {
	for _, c := range []struct {
		n       int
		uploads bool
		want    string // "" (all shown), "thread" or "upload"
	}{{2, true, ""}, {30, true, "thread"}, {1300, true, "upload"}, {2500, true, "upload"}, {2500, false, "thread"}} {
		t.Run(fmt.Sprintf("%d items, uploads %v", c.n, c.uploads), func(t *testing.T) {
			w := newWorld(t, c.n, "")
			w.slack.uploads = c.uploads
			r, out := w.request()
			if out.Result != "ok" || r.State != approvals.Pending {
				t.Fatalf("outcome %+v, request %s", out, r.State)
			}
			var msg *said
			var thread, uploads []said
			for _, s := range w.slack.said() {
				switch {
				case s.kind == "post" && s.channel == incident && msg == nil:
					msg = &s
				case s.kind == "thread" && msg != nil && s.ts == msg.ts:
					thread = append(thread, s)
				case s.kind == "upload" && msg != nil && s.ts == msg.ts:
					uploads = append(uploads, s)
				case s.kind == "post" || s.kind == "thread" || s.kind == "upload":
					t.Errorf("unexpected %s in %s", s.kind, s.channel)
				}
			}
			if msg == nil || r.MessageTS != msg.ts {
				t.Fatalf("no request message recorded as the request's (%v)", msg)
			}
			body := text(msg.m)
			for _, want := range []string{r.ID, "/circleci approve " + r.ID, "/circleci deny " + r.ID, approvals.Short(r.PlanHash), "expires " + r.Expires.UTC().Format("15:04") + " UTC"} {
				if !strings.Contains(body, want) {
					t.Errorf("the request message lacks %q", want)
				}
			}
			if b := buttons(msg.m); len(b) != 2 || b[0] != "approve "+r.ID || b[1] != "deny "+r.ID {
				t.Errorf("buttons %q", b)
			}
			if len(msg.m.Blocks) > chat.MaxBlocks {
				t.Errorf("%d blocks", len(msg.m.Blocks))
			}
			if c.want != "" && (!strings.Contains(body, fmt.Sprintf("What changes* (%s; the first 20 shown)", chat.Count(c.n))) ||
				!strings.Contains(body, "full plan is attached in this message's thread") || !strings.Contains(body, r.PlanHash)) {
				t.Errorf("the message does not say what it cut and where the rest is:\n%s", body)
			}

			t.Logf("request message: %d blocks, %d characters; %d thread messages, %d files", len(msg.m.Blocks), len(strings.Join(blockTexts(msg.m), "")), len(thread), len(uploads))
			var rest string
			switch c.want {
			case "":
				rest = body
				if len(thread)+len(uploads) > 0 {
					t.Errorf("a plan shown whole got %d thread messages and %d files", len(thread), len(uploads))
				}
			case "thread":
				if len(uploads) > 0 || len(thread) == 0 {
					t.Fatalf("%d thread messages, %d files", len(thread), len(uploads))
				}
				for i, s := range thread {
					if !strings.Contains(text(s.m), fmt.Sprintf("part %d of %d", i+1, len(thread))) {
						t.Errorf("thread message %d does not say which part it is", i+1)
					}
					rest += strings.Join(blockTexts(s.m), "")
				}
			case "upload":
				if len(uploads) != 1 || len(thread) > 0 {
					t.Fatalf("%d thread messages, %d files", len(thread), len(uploads))
				}
				rest = string(uploads[0].file)
				_, after, _ := strings.Cut(rest, "-----BEGIN PLAN-----\n")
				hashed, _, _ := strings.Cut(after, "-----END PLAN-----\n")
				if sum := sha256.Sum256([]byte(hashed)); hex.EncodeToString(sum[:]) != r.PlanHash {
					t.Error("the file's marked lines do not hash to the plan hash")
				}
			}
			p := w.plan(prunePlan{N: c.n})
			shown := map[string]bool{}
			for _, id := range idRE.FindAllString(rest, -1) {
				shown[id] = true
			}
			for _, item := range append(strings.Split(p.Facts["delete"], ","), strings.Split(p.Facts["snapshots"], ",")...) {
				if !shown[item] {
					t.Fatalf("%s is not shown anywhere", item)
				}
			}
			// It is approvable, and runs as planned.
			if out, err := w.decide(bob, incident, "approve "+r.ID); err != nil || out.Result != "ok" {
				t.Fatalf("approve: %+v %v", out, err)
			}
			if w.ran != 1 {
				t.Errorf("ran %d times", w.ran)
			}
		})
	}
}

// A request whose message cannot be posted, or whose full plan cannot be
// attached, is never open: the requester is told, and no approval (or
// denial) takes it.
func TestUnpostedRequestCannotBeApproved(t *testing.T) {
	for _, c := range []struct {
		name string
		n    int
		fail func(*fakeSlack)
		why  string
	}{
		{"message", 3, func(s *fakeSlack) { s.failPost[incident] = 1 }, "could not be posted in <#C0INCIDENT>"},
		{"thread", 30, func(s *fakeSlack) { s.failThread[incident] = 1 }, "full plan could not be attached in <#C0INCIDENT>"},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := newWorld(t, c.n, "")
			c.fail(w.slack)
			r, out := w.request()
			if out.Result != "failed" || r.State != approvals.Unposted {
				t.Fatalf("outcome %+v, request %s", out, r.State)
			}
			told := false
			for _, s := range w.slack.said() {
				if s.kind == "ephemeral" && s.user == alice && strings.Contains(text(s.m), r.ID) && strings.Contains(text(s.m), c.why) && strings.Contains(text(s.m), "Nobody can approve it") {
					told = true
				}
				// A message that was posted no longer offers to approve.
				if s.kind == "update" && s.ts == r.MessageTS && len(buttons(s.m)) > 0 {
					t.Error("the update of an unposted request has buttons")
				}
			}
			if !told {
				t.Errorf("the requester was not told; said: %+v", w.slack.said())
			}
			for _, cmd := range []string{"approve ", "deny "} {
				out, err := w.decide(bob, incident, cmd+r.ID)
				if err != nil || out.Result != "refused" || !strings.Contains(out.Detail, "never shown in full") {
					t.Errorf("%s: %+v %v", cmd, out, err)
				}
			}
			if w.ran != 0 || w.state(r.ID) != approvals.Unposted {
				t.Fatalf("ran %d, state %s", w.ran, w.state(r.ID))
			}
		})
	}
	t.Run("thread posted, message updated to say so", func(t *testing.T) {
		w := newWorld(t, 30, "")
		w.slack.failThread[incident] = 1
		w.request()
		for _, s := range w.slack.said() {
			if s.kind == "update" && strings.Contains(text(s.m), "Not open for approval") {
				return
			}
		}
		t.Error("the posted message was not updated to say it cannot be approved")
	})
}

// A decision from a channel where the plan was not shown is refused,
// naming the channel, and changes nothing; in the request's channel it
// works.
func TestDecisionFromAnotherChannelChangesNothing(t *testing.T) {
	w := newWorld(t, 3, "")
	r, _ := w.request()
	before := len(w.slack.said())
	for _, cmd := range []string{"approve ", "deny "} {
		out, err := w.decide(bob, other, cmd+r.ID)
		if err != nil || out.Result != "refused" || !strings.Contains(out.Detail, "only in <#C0INCIDENT>") {
			t.Fatalf("%s from another channel: %+v %v", cmd, out, err)
		}
	}
	after := w.slack.said()[before:]
	if len(after) != 2 || after[0].kind != "ephemeral" || after[0].channel != other || after[0].user != bob || !strings.Contains(text(after[0].m), "<#C0INCIDENT>") {
		t.Errorf("what the refusals said: %+v", after)
	}
	if w.state(r.ID) != approvals.Pending || w.ran != 0 {
		t.Fatalf("state %s, ran %d", w.state(r.ID), w.ran)
	}
	if out, err := w.decide(bob, incident, "approve "+r.ID); err != nil || out.Result != "ok" || w.ran != 1 {
		t.Fatalf("approve where it was asked: %+v %v, ran %d", out, err, w.ran)
	}
}

// With approvals.channel set, the request is shown there too and may be
// decided there; the operation then reports in the request's channel,
// and what is for the requester alone reaches them there.
func TestApprovalsChannelDecidesAndTheRequestChannelHearsTheRest(t *testing.T) {
	w := newWorld(t, 30, approve)
	r, _ := w.request()
	if len(r.Copies) != 1 || r.Copies[0].Channel != approve {
		t.Fatalf("copies %+v", r.Copies)
	}
	var copyMsg *said
	threads := map[string]int{}
	for _, s := range w.slack.said() {
		if s.kind == "post" && s.channel == approve {
			copyMsg = &s
		}
		if s.kind == "thread" {
			threads[s.channel]++
		}
	}
	if copyMsg == nil || copyMsg.ts != r.Copies[0].TS || !strings.Contains(text(copyMsg.m), "/circleci approve "+r.ID) || len(buttons(copyMsg.m)) != 2 {
		t.Fatalf("the copy in #approve: %+v", copyMsg)
	}
	if threads[incident] == 0 || threads[approve] != threads[incident] {
		t.Errorf("full plan threads: %v", threads)
	}
	if out, _ := w.decide(bob, other, "approve "+r.ID); out.Result != "refused" || !strings.Contains(out.Detail, "<#C0INCIDENT> or <#C0APPROVE>") {
		t.Fatalf("from a third channel: %+v", out)
	}
	before := len(w.slack.said())
	if out, err := w.decide(bob, approve, "approve "+r.ID); err != nil || out.Result != "ok" || w.ran != 1 {
		t.Fatalf("approve in #approve: %+v %v, ran %d", out, err, w.ran)
	}
	updated := map[string]bool{}
	for _, s := range w.slack.said()[before:] {
		switch {
		case s.kind == "post" || s.kind == "thread":
			if s.channel != incident {
				t.Errorf("%s in %s: %s", s.kind, s.channel, text(s.m))
			}
		case s.kind == "update":
			updated[s.channel+"/"+s.ts] = true
		case s.kind == "ephemeral" && strings.Contains(text(s.m), secret):
			if s.user != alice || s.channel != incident {
				t.Errorf("the secret went to %s in %s", s.user, s.channel)
			}
		}
	}
	if !updated[incident+"/"+r.MessageTS] || !updated[approve+"/"+r.Copies[0].TS] {
		t.Errorf("request messages updated: %v", updated)
	}
	progress := false
	for _, s := range w.slack.said()[before:] {
		if s.kind == "post" && s.channel == incident && strings.Contains(text(s.m), "Test prune") {
			progress = true
		}
	}
	if !progress {
		t.Error("no progress message in the request's channel")
	}
}
