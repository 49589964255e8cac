package engine

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/circlebot/circlebot/internal/approvals"
	"github.com/circlebot/circlebot/internal/awsclient"
	"github.com/circlebot/circlebot/internal/commands"
	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/store"
)

// people records, per step run, the operation its context carried.
type people struct {
	mu   sync.Mutex
	seen []string // "step op-… requester approver", or "step -" without one
}

func (p *people) kind(w *world, name string, cmd commands.Name, hold bool) Kind[fakePlan, fakeResult] {
	k := fakeKind(w, name, cmd, hold)
	k.Steps = func(fakePlan, Env) []journal.Def {
		var defs []journal.Def
		for _, d := range []journal.Def{w.step("one"), w.step("two"), w.step("three")} {
			run := d.Run
			d.Run = func(ctx context.Context, op *journal.Op, pr journal.Progress) (string, error) {
				p.mu.Lock()
				s := d.Name + " -"
				if o, ok := awsclient.OperationFrom(ctx); ok {
					s = d.Name + " " + o.ID + " " + o.Requester + " " + o.Approver
					if o.ID != op.ID {
						s += " (not this operation)"
					}
				}
				p.seen = append(p.seen, s)
				p.mu.Unlock()
				return run(ctx, op, pr)
			}
			defs = append(defs, d)
		}
		return defs
	}
	return k
}

func (p *people) take() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.seen
	p.seen = nil
	return out
}

// The steps of an approved operation run with its requester, approver and
// ID in their context (what awsclient signs their AWS calls with), a
// resumed one too, whoever resumes it; the scheduler's retention, which
// nobody approved, runs without.
func TestApprovedStepsCarryWhoAskedAndWhoApproved(t *testing.T) {
	w := &world{version: 1, fail: map[string]int{"two": 1}}
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	p := &people{}
	r := &Registry{}
	Register(r, p.kind(w, "fake-restore", commands.Restore, true))
	Register(r, p.kind(w, "fake-prune", commands.BackupPrune, false))
	for _, c := range otherDestructive() {
		Register(r, p.kind(w, "fake-"+string(c), c, true))
	}
	ap := approvals.Store{KV: st.KV()}
	e := &Engine{Kinds: r, Journal: journal.Store{KV: st.KV()}, Store: st, Approvals: &ap, SlashCommand: "/circleci",
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), MinInterval: time.Millisecond}
	ctx := context.Background()

	req := approve(t, e, "restore latest")
	if err := e.Execute(ctx, req, &out{}); err == nil {
		t.Fatal("step two did not fail")
	}
	op, err := e.Journal.ByRequest(ctx, req.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Resume(ctx, op.ID, "U0CAROL", &out{}); err != nil {
		t.Fatal(err)
	}
	who := " " + op.ID + " U0ALICE U0BOB"
	want := []string{"one" + who, "two" + who, "two" + who, "three" + who}
	if got := p.take(); !slices.Equal(got, want) {
		t.Errorf("approved and resumed steps saw\n%q\nwant\n%q", got, want)
	}

	c, _ := commands.Parse("backup prune")
	if _, err := e.Start(ctx, c, "scheduler", "C1", &out{}); err != nil {
		t.Fatal(err)
	}
	if got, want := p.take(), []string{"one -", "two -", "three -"}; !slices.Equal(got, want) {
		t.Errorf("the scheduler's steps saw %q, want %q", got, want)
	}
}
