package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/slack-go/slack"

	"github.com/circlebot/circlebot/internal/approvals"
	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/commands"
	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/store"
)

// world is what the fake kinds plan from and act on.
type world struct {
	mu      sync.Mutex
	version int            // the live state the plan is derived from
	empty   bool           // the plan has nothing to do
	fail    map[string]int // step name -> failures left
	panics  map[string]int // step name -> panics left
	ran     []string       // steps run, in order
}

type fakeResult struct {
	Made map[string]string `json:"made"`
}

func (w *world) step(name string) journal.Def {
	return ops.Def(name, func(ctx context.Context, op *ops.Work[fakeResult], _ journal.Progress) (string, error) {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.ran = append(w.ran, name)
		if w.panics[name] > 0 {
			w.panics[name]--
			panic("nil map in " + name)
		}
		if w.fail[name] > 0 {
			w.fail[name]--
			return "", fmt.Errorf("%s broke", name)
		}
		if op.Result.Made == nil {
			op.Result.Made = map[string]string{}
		}
		op.Result.Made[name] = "made"
		return name + " ok", nil
	})
}

type fakePlan struct {
	Version int `json:"version"`
}

func fakeKind(w *world, name string, cmd commands.Name, hold bool) Kind[fakePlan, fakeResult] {
	return Kind[fakePlan, fakeResult]{
		Name: name, Command: cmd,
		Plan: func(context.Context, commands.Command) (fakePlan, error) {
			w.mu.Lock()
			defer w.mu.Unlock()
			return fakePlan{Version: w.version}, nil
		},
		Empty: func(fakePlan) string {
			if w.empty {
				return "nothing to do here."
			}
			return ""
		},
		Approval: func(p fakePlan) approvals.Plan {
			return approvals.Plan{Action: name, Facts: map[string]string{"version": fmt.Sprint(p.Version)}}
		},
		Title:  func(fakePlan) string { return "Fake " + name },
		Target: func() string { return "box/test" },
		Steps: func(fakePlan, Env) []journal.Def {
			return []journal.Def{w.step("one"), w.step("two"), w.step("three")}
		},
		Summary: func(p fakePlan, _ fakeResult, op Record) string {
			return fmt.Sprintf("done v%d by %s", p.Version, op.Approver)
		},
		LeftBehind: func(_ fakePlan, r fakeResult, _ Record) []string {
			if r.Made["one"] != "" {
				return []string{"thing one"}
			}
			return nil
		},
		Hold: hold,
	}
}

// out records what the engine says.
type out struct {
	mu    sync.Mutex
	posts []string
	n     int
}

func (o *out) Post(_ context.Context, m chat.Message) (chat.Ref, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.n++
	o.posts = append(o.posts, text(m))
	return chat.Ref{Channel: "C1", TS: fmt.Sprint(o.n)}, nil
}

func (o *out) Update(_ context.Context, _ chat.Ref, m chat.Message) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.posts = append(o.posts, text(m))
	return nil
}

func (o *out) PostThread(_ context.Context, _ chat.Ref, m chat.Message) (chat.Ref, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.posts = append(o.posts, text(m))
	return chat.Ref{}, nil
}

// text is the message as written, blocks included.
func text(m chat.Message) string {
	parts := []string{m.Text}
	for _, b := range m.Blocks {
		switch b := b.(type) {
		case *slack.SectionBlock:
			if b.Text != nil {
				parts = append(parts, b.Text.Text)
			}
		case *slack.ContextBlock:
			for _, el := range b.ContextElements.Elements {
				if t, ok := el.(*slack.TextBlockObject); ok {
					parts = append(parts, t.Text)
				}
			}
		}
	}
	return strings.Join(parts, "\n")
}

func (o *out) said(s string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, p := range o.posts {
		if strings.Contains(p, s) {
			return true
		}
	}
	return false
}

// otherDestructive are the destructive commands besides restore and
// backup prune, for which the tests register a fake kind each (the
// registry refuses a destructive command without one).
func otherDestructive() []commands.Name {
	var out []commands.Name
	for _, s := range commands.Specs() {
		if s.Class == commands.ClassDestructive && s.Name != commands.Restore && s.Name != commands.BackupPrune {
			out = append(out, s.Name)
		}
	}
	return out
}

func newEngine(t *testing.T, w *world) (*Engine, *store.Store) {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	r := &Registry{}
	Register(r, fakeKind(w, "fake-restore", commands.Restore, true))
	Register(r, fakeKind(w, "fake-prune", commands.BackupPrune, false))
	for _, c := range otherDestructive() {
		Register(r, fakeKind(w, "fake-"+string(c), c, true))
	}
	if err := r.Check(); err != nil {
		t.Fatal(err)
	}
	ap := approvals.Store{KV: st.KV()}
	e := &Engine{Kinds: r, Journal: journal.Store{KV: st.KV()}, Store: st, Approvals: &ap, SlashCommand: "/circleci",
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), MinInterval: time.Millisecond}
	return e, st
}

func approve(t *testing.T, e *Engine, cmd string) approvals.Request {
	t.Helper()
	c, err := commands.Parse(cmd)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := e.Propose(context.Background(), c)
	if err != nil {
		t.Fatalf("propose %s: %v", cmd, err)
	}
	r := approvals.New(c.Text(), plan, "U0ALICE", "C1", time.Now(), time.Hour)
	r.Decider, r.State = "U0BOB", approvals.Executing
	return r
}

func locked(t *testing.T, st *store.Store) []string {
	t.Helper()
	ls, err := st.Locks(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, l := range ls {
		keys = append(keys, l.Key+"="+l.OpID)
	}
	return keys
}

func TestRegistryCheckFailsStartUp(t *testing.T) {
	w := &world{}
	r := &Registry{}
	broken := fakeKind(w, "broken", commands.Restore, true)
	broken.Steps, broken.Summary = nil, nil
	Register(r, broken)
	Register(r, fakeKind(w, "twice", commands.Failover, true))
	Register(r, fakeKind(w, "twice", commands.Failover, true))
	err := r.Check()
	for _, want := range []string{`kind "broken" lacks`, "Steps", "Summary", `kind "twice" registered twice`, `no operation kind runs "secret"`, `no operation kind runs "restore"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Check() = %v, want it to say %q", err, want)
		}
	}
}

func TestExecuteRunsTheApprovedPlanAndFreesTheTarget(t *testing.T) {
	w := &world{version: 1}
	e, st := newEngine(t, w)
	r := approve(t, e, "restore latest")
	o := &out{}
	if err := e.Execute(context.Background(), r, o); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(w.ran, ","); got != "one,two,three" {
		t.Errorf("ran %s", got)
	}
	op, err := e.Journal.ByRequest(context.Background(), r.ID)
	if err != nil || op.State != journal.Done || op.Kind != "fake-restore" || op.Approver != "U0BOB" {
		t.Fatalf("journal: %+v %v", op, err)
	}
	if l := locked(t, st); len(l) != 0 {
		t.Errorf("locks left: %v", l)
	}
	if !o.said("done v1 by U0BOB") {
		t.Errorf("no summary in %q", o.posts)
	}
}

func TestExecuteRefusesAChangedPlanAndChangesNothing(t *testing.T) {
	w := &world{version: 1}
	e, st := newEngine(t, w)
	r := approve(t, e, "restore latest")
	w.version = 2
	err := e.Execute(context.Background(), r, &out{})
	var changed *PlanChangedError
	if !errors.As(err, &changed) || changed.Approved != r.PlanHash {
		t.Fatalf("Execute = %v, want a PlanChangedError", err)
	}
	if len(w.ran) != 0 {
		t.Errorf("steps ran: %v", w.ran)
	}
	if all, _ := e.Journal.All(context.Background()); len(all) != 0 {
		t.Errorf("journaled: %+v", all)
	}
	if l := locked(t, st); len(l) != 0 {
		t.Errorf("locks left: %v", l)
	}
}

func TestProposeRefusesABusyTargetNamingItsHolder(t *testing.T) {
	e, st := newEngine(t, &world{})
	unlock, err := st.TryLock(context.Background(), store.Lock{Key: "box/test", OpID: "bk-1", What: "EBS backup", Requester: "scheduler", Process: st.Process()})
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	c, _ := commands.Parse("restore latest")
	_, err = e.Propose(context.Background(), c)
	var r *Refusal
	if !errors.As(err, &r) || !strings.Contains(r.Msg, "`bk-1` (EBS backup)") || !strings.Contains(r.Msg, "backup status bk-1") {
		t.Fatalf("Propose = %v", err)
	}
}

func TestAHoldingKindKeepsItsTargetAndResumesWhereItStopped(t *testing.T) {
	w := &world{version: 1, fail: map[string]int{"two": 1}}
	e, st := newEngine(t, w)
	r := approve(t, e, "restore latest")
	o := &out{}
	if err := e.Execute(context.Background(), r, o); err == nil {
		t.Fatal("a failed step did not stop the operation")
	}
	op, _ := e.Journal.ByRequest(context.Background(), r.ID)
	if op.State != journal.Stopped || op.Next() != 1 {
		t.Fatalf("after the failure: %s at step %d", op.State, op.Next())
	}
	if l := locked(t, st); len(l) != 1 || l[0] != "box/test="+op.ID {
		t.Fatalf("locks %v, want the box held by %s", l, op.ID)
	}
	if !o.said("resume "+op.ID) || !o.said("two broke") {
		t.Errorf("the stop message says neither the failure nor how to go on: %q", o.posts)
	}
	if _, err := e.Resume(context.Background(), r.ID, "U0CAROL", o); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(w.ran, ","); got != "one,two,two,three" {
		t.Errorf("ran %s; a resume must not repeat a finished step", got)
	}
	if op, _ := e.Journal.Get(context.Background(), op.ID); op.State != journal.Done {
		t.Errorf("after resume: %s", op.State)
	}
	if l := locked(t, st); len(l) != 0 {
		t.Errorf("locks left: %v", l)
	}
}

func TestANonHoldingKindClosesWhenItStops(t *testing.T) {
	w := &world{version: 1, fail: map[string]int{"two": 1}}
	e, st := newEngine(t, w)
	r := approve(t, e, "backup prune")
	o := &out{}
	if err := e.Execute(context.Background(), r, o); err == nil {
		t.Fatal("a failed step did not stop the operation")
	}
	op, _ := e.Journal.ByRequest(context.Background(), r.ID)
	if op.State != journal.Failed {
		t.Fatalf("state %s, want failed (closed)", op.State)
	}
	if l := locked(t, st); len(l) != 0 {
		t.Errorf("a closed operation holds %v", l)
	}
	if !o.said("Nothing is held") {
		t.Errorf("stop message: %q", o.posts)
	}
	if _, err := e.Resume(context.Background(), op.ID, "U0CAROL", o); err == nil {
		t.Error("a closed operation was resumed")
	}
}

func TestEmptyPlansAreRefusedOrSkipped(t *testing.T) {
	w := &world{empty: true}
	e, _ := newEngine(t, w)
	c, _ := commands.Parse("backup prune")
	_, err := e.Propose(context.Background(), c)
	var r *Refusal
	if !errors.As(err, &r) || r.Msg != "nothing to do here." {
		t.Errorf("Propose = %v, want the kind's refusal", err)
	}
	if _, err := e.Start(context.Background(), c, "scheduler", "C1", &out{}); !errors.Is(err, ErrNothingToDo) {
		t.Errorf("Start = %v, want ErrNothingToDo", err)
	}
	if all, _ := e.Journal.All(context.Background()); len(all) != 0 {
		t.Errorf("journaled: %+v", all)
	}
}

func TestCancelOfAStoppedOperationGivesItUpAndSaysWhatItLeft(t *testing.T) {
	w := &world{version: 1, fail: map[string]int{"two": 1}}
	e, st := newEngine(t, w)
	r := approve(t, e, "restore latest")
	_ = e.Execute(context.Background(), r, &out{}) // stops at step two
	o := &out{}
	if _, err := e.Cancel(context.Background(), r.ID, "U0CAROL", o); err != nil {
		t.Fatal(err)
	}
	if !o.said("Kept, not deleted: thing one") {
		t.Errorf("cancel message: %q", o.posts)
	}
	if l := locked(t, st); len(l) != 0 {
		t.Errorf("locks left: %v", l)
	}
}

// A dead process's operations are announced once: a holding kind keeps
// the box (adopted by this process), any other is closed.
func TestRecoverAnnouncesWhatADeadProcessLeft(t *testing.T) {
	w := &world{version: 1}
	e, st := newEngine(t, w)
	now := time.Now()
	for _, o := range []*journal.Op{
		{ID: "op-1", Kind: "fake-restore", Plan: `{"version":1}`, Target: "box/test", Channel: "C1", Requester: "U0ALICE", Approver: "U0BOB", Title: "Fake restore"},
		{ID: "op-2", Kind: "fake-prune", Plan: `{"version":1}`, Target: "prune/test", Channel: "C1", Requester: "scheduler", Title: "Fake prune"},
	} {
		o.State, o.Process, o.Created, o.Updated = journal.Running, "dead-process", now, now
		o.Steps = []journal.Step{{Name: "one", State: journal.StepDone}, {Name: "two", State: journal.StepRunning}, {Name: "three", State: journal.StepPending}}
		if err := e.Journal.Create(context.Background(), o); err != nil {
			t.Fatal(err)
		}
		if _, err := st.TryLock(context.Background(), store.Lock{Key: o.Target, OpID: o.ID, Process: "dead-process"}); err != nil {
			t.Fatal(err)
		}
	}
	o := &out{}
	e.Recover(context.Background(), func(string) Out { return o })
	e.Recover(context.Background(), func(string) Out { return o }) // once only
	n := 0
	for _, p := range o.posts {
		if strings.Contains(p, "Operation `op-1`") {
			n++
		}
	}
	if n != 1 {
		t.Errorf("op-1 announced %d times: %q", n, o.posts)
	}
	if !o.said("`/circleci resume op-1` continues from step 2") || !o.said("Operation `op-2` (Fake prune) was interrupted during step 2 (two)") {
		t.Errorf("announcements: %q", o.posts)
	}
	op1, _ := e.Journal.Get(context.Background(), "op-1")
	op2, _ := e.Journal.Get(context.Background(), "op-2")
	if op1.State != journal.Stopped || op2.State != journal.Failed {
		t.Errorf("states: op-1 %s, op-2 %s", op1.State, op2.State)
	}
	ls, _ := st.Locks(context.Background())
	if len(ls) != 1 || ls[0].OpID != "op-1" || ls[0].Process != st.Process() {
		t.Errorf("locks %+v: want only op-1's box, adopted by this process", ls)
	}
}

// A request whose bot died between saving it and posting it is voided
// once it is past PostingLimit and its requester told, once; a fresh one
// being posted is left alone.
func TestRecoverAbandonsARequestThatWasNeverPosted(t *testing.T) {
	e, _ := newEngine(t, &world{version: 1})
	ctx := context.Background()
	plan := approvals.Plan{Action: "restore"}
	stale := approvals.New("restore latest", plan, "U0ALICE", "C1", time.Now().Add(-PostingLimit-time.Minute), time.Hour)
	fresh := approvals.New("restore latest", plan, "U0ALICE", "C1", time.Now(), time.Hour)
	for _, r := range []approvals.Request{stale, fresh} {
		if err := e.Approvals.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	o := &out{}
	e.Recover(ctx, func(string) Out { return o })
	e.Recover(ctx, func(string) Out { return o })
	n := 0
	for _, p := range o.posts {
		if strings.Contains(p, stale.ID) {
			n++
		}
	}
	if n != 1 || !o.said("was never shown for approval") {
		t.Errorf("stale request reported %d times: %q", n, o.posts)
	}
	got, _ := e.Approvals.Get(ctx, stale.ID)
	if got.State != approvals.Unposted {
		t.Errorf("stale request is %s, want unposted", got.State)
	}
	if got, _ := e.Approvals.Get(ctx, fresh.ID); got.State != approvals.Posting {
		t.Errorf("fresh request is %s, want still posting", got.State)
	}
	if _, err := e.Approvals.SetMessage(ctx, stale.ID, "1.1", nil); err == nil {
		t.Error("an abandoned request was opened")
	}
}

// Operations journaled before the engine kept their kind and plan in
// Data: they are still found and resumed.
func TestAnOperationFromBeforeTheEngineResumes(t *testing.T) {
	w := &world{version: 1}
	e, st := newEngine(t, w)
	e.Kinds = &Registry{}
	Register(e.Kinds, fakeKind(w, KindRestoreEBS, commands.Restore, true))
	now := time.Now()
	op := &journal.Op{ID: "op-old", Kind: "restore", Target: "box/test", Channel: "C1", Requester: "U0ALICE", Title: "Old restore",
		Data:  map[string]string{"kind": "snapshot", "plan": `{"version":1}`},
		State: journal.Stopped, Created: now, Updated: now,
		Steps: []journal.Step{{Name: "one", State: journal.StepDone}, {Name: "two", State: journal.StepFailed}, {Name: "three", State: journal.StepPending}}}
	if err := e.Journal.Create(context.Background(), op); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Resume(context.Background(), "op-old", "U0CAROL", &out{}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(w.ran, ","); got != "two,three" {
		t.Errorf("ran %s", got)
	}
	if l := locked(t, st); len(l) != 0 {
		t.Errorf("locks left: %v", l)
	}
}

// A panicking step fails like any other: the operation stops with the
// panic recorded, the last word is said, and the box is held for a resume
// rather than forever by a "running" operation.
func TestAPanickingStepStopsTheOperation(t *testing.T) {
	w := &world{version: 1, panics: map[string]int{"two": 1}}
	e, st := newEngine(t, w)
	r := approve(t, e, "restore latest")
	o := &out{}
	if err := e.Execute(context.Background(), r, o); err == nil {
		t.Fatal("a panicking step did not stop the operation")
	}
	op, _ := e.Journal.ByRequest(context.Background(), r.ID)
	if op.State != journal.Stopped || op.Steps[1].State != journal.StepFailed || !strings.Contains(op.Steps[1].Error, "panicked") {
		t.Fatalf("journal: %s, step 2 %s %q", op.State, op.Steps[1].State, op.Steps[1].Error)
	}
	if !o.said("panicked") || !o.said("resume "+op.ID) {
		t.Errorf("last word: %q", o.posts)
	}
	if o.said("nil map") {
		t.Errorf("the panic's value reached the channel: %q", o.posts)
	}
	if _, err := e.Cancel(context.Background(), op.ID, "U0CAROL", o); err != nil {
		t.Fatalf("cancel after a panic: %v", err)
	}
	if l := locked(t, st); len(l) != 0 {
		t.Errorf("locks left: %v", l)
	}
}

// A resume is a continuation, not a new authority: past the approval's
// TTL, or with live state changed, it needs a second person, and changes
// nothing until one approves the resume plan.
func TestResumeAfterTheTTLOrAChangeNeedsApprovalAgain(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ttl     time.Duration
		changes []string
		want    string
	}{
		{name: "within the TTL, unchanged", ttl: time.Hour},
		{name: "past the TTL", ttl: time.Nanosecond, want: "longer than `approvals.ttl`"},
		{name: "live state changed", ttl: time.Hour, changes: []string{"the Services box `i-1` was stopped when this was approved; it is running now"}, want: "changed since the approval: the Services box `i-1` was stopped"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &world{version: 1, fail: map[string]int{"two": 1}}
			e, _ := newEngine(t, w)
			e.ApprovalTTL = tc.ttl
			k := fakeKind(w, "fake-restore", commands.Restore, true)
			k.Recheck = func(context.Context, fakePlan, Record) ([]string, error) { return tc.changes, nil }
			e.Kinds.kinds["fake-restore"] = k
			r := approve(t, e, "restore latest")
			_ = e.Execute(context.Background(), r, &out{}) // stops at step two
			op, _ := e.Journal.ByRequest(context.Background(), r.ID)
			_, err := e.Resume(context.Background(), op.ID, "U0ALICE", &out{})
			var again *NeedsApproval
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Resume = %v, want it to go on at once", err)
				}
				return
			}
			if !errors.As(err, &again) || !strings.Contains(strings.Join(again.Plan.Changes, "\n"), tc.want) {
				t.Fatalf("Resume = %v, want a request saying %q", err, tc.want)
			}
			if got := strings.Join(w.ran, ","); got != "one,two" {
				t.Fatalf("ran %s before a second person approved", got)
			}
			// The resume, approved by another person, runs; a plan that
			// changed again since is refused.
			req := approvals.New("resume "+op.ID, again.Plan, "U0ALICE", "C1", time.Now(), time.Hour)
			req.Decider = "U0BOB"
			stale := req
			stale.PlanHash = "0000"
			var changed *PlanChangedError
			if err := e.Execute(context.Background(), stale, &out{}); !errors.As(err, &changed) {
				t.Fatalf("a resume whose plan changed ran: %v", err)
			}
			o := &out{}
			if err := e.Execute(context.Background(), req, o); err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(w.ran, ","); got != "one,two,two,three" {
				t.Errorf("ran %s", got)
			}
			if !o.said("approved by <@U0BOB> (request `" + req.ID + "`)") {
				t.Errorf("the progress does not say who approved the resume: %q", o.posts)
			}
		})
	}
}

// A non-holding operation stopped by a replica that lost its heartbeat is
// Stopped but never marked for announcement: recovery closes it anyway, so
// it does not keep the box locked.
func TestRecoverClosesAStoppedOperationThatHoldsNothing(t *testing.T) {
	e, st := newEngine(t, &world{version: 1})
	now := time.Now()
	o := &journal.Op{ID: "op-3", Kind: "fake-prune", Plan: `{"version":1}`, Target: "box/test", Channel: "C1", Requester: "scheduler", Title: "Fake prune",
		State: journal.Stopped, Process: "cut-off-replica", Why: "interrupted during step 1 (one): heartbeat lost", Created: now, Updated: now,
		Steps: []journal.Step{{Name: "one", State: journal.StepInterrupted}, {Name: "two"}, {Name: "three"}}}
	if err := e.Journal.Create(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	if _, err := st.TryLock(context.Background(), store.Lock{Key: "box/test", OpID: "op-3", Process: "cut-off-replica"}); err != nil {
		t.Fatal(err)
	}
	e.Recover(context.Background(), func(string) Out { return &out{} })
	if got, _ := e.Journal.Get(context.Background(), "op-3"); got.State != journal.Failed {
		t.Errorf("state %s, want failed (closed)", got.State)
	}
	if l := locked(t, st); len(l) != 0 {
		t.Errorf("locks left: %v", l)
	}
}

// A kind that frees its target after step one and takes it back for
// step three (a replica refresh): a dead process that left the target
// locked past step one does not keep a failover out after recovery, and
// one cut inside step three keeps it for its resume.
func TestRecoverFreesATargetPastItsNeedAndKeepsOneTakenBack(t *testing.T) {
	for _, c := range []struct {
		name  string
		steps []journal.Step
		keep  bool
	}{
		{"cut before step two began", []journal.Step{{Name: "one", State: journal.StepDone}, {Name: "two", State: journal.StepPending}, {Name: "three", State: journal.StepPending}}, false},
		{"cut in step two", []journal.Step{{Name: "one", State: journal.StepDone}, {Name: "two", State: journal.StepRunning}, {Name: "three", State: journal.StepPending}}, false},
		{"cut in step three, which took it back", []journal.Step{{Name: "one", State: journal.StepDone}, {Name: "two", State: journal.StepDone}, {Name: "three", State: journal.StepRunning}}, true},
		{"step three failed (it gave it back)", []journal.Step{{Name: "one", State: journal.StepDone}, {Name: "two", State: journal.StepDone}, {Name: "three", State: journal.StepFailed}}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := &world{version: 1}
			e, st := newEngine(t, w)
			k := fakeKind(w, "fake-refresh", commands.ReplicaRefresh, true)
			k.FreeAfter, k.Retake = "one", "three"
			k.Also = func(fakePlan) []string { return []string{"replica/test"} }
			e.Kinds.kinds["fake-refresh"] = k
			now := time.Now()
			op := &journal.Op{ID: "op-r", Kind: "fake-refresh", Plan: `{"version":1}`, Target: "box/test", Also: []string{"replica/test"}, Channel: "C1",
				Requester: "U0ALICE", Approver: "U0BOB", Title: "Fake refresh", State: journal.Running, Process: "dead-process", Created: now, Updated: now, Steps: c.steps}
			if op.Steps[2].State == journal.StepFailed {
				op.State = journal.Stopped
			}
			if err := e.Journal.Create(context.Background(), op); err != nil {
				t.Fatal(err)
			}
			for _, key := range []string{"box/test", "replica/test"} {
				if _, err := st.TryLock(context.Background(), store.Lock{Key: key, OpID: op.ID, Process: "dead-process"}); err != nil {
					t.Fatal(err)
				}
			}
			o := &out{}
			e.Recover(context.Background(), func(string) Out { return o })
			held := map[string]string{}
			ls, _ := st.Locks(context.Background())
			for _, l := range ls {
				held[l.Key] = l.OpID + "@" + l.Process
			}
			if held["replica/test"] != "op-r@"+st.Process() {
				t.Errorf("replica/test: %q, want op-r's, adopted by this process", held["replica/test"])
			}
			box, kept := held["box/test"]
			switch {
			case c.keep && box != "op-r@"+st.Process():
				t.Errorf("box/test: %q, want kept for the resume (adopted)", box)
			case !c.keep && kept:
				t.Errorf("box/test still held (%q): the operation no longer needs it", box)
			}
		})
	}
}
