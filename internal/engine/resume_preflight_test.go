package engine

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/circlebot/circlebot/internal/approvals"
	"github.com/circlebot/circlebot/internal/awsclient"
	"github.com/circlebot/circlebot/internal/commands"
	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/ops"
)

// preflights is a fake kind's pre-flight: one row per step, refused as
// the test says, and who it ran as.
type preflights struct {
	mu      sync.Mutex
	refuse  map[string]ops.Check // step -> its row, refused
	runs    int
	ranAsOp []string // the operation each run's AWS calls would carry ("" for the bot)
}

func (p *preflights) set(step string, c ops.Check) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.refuse == nil {
		p.refuse = map[string]ops.Check{}
	}
	c.Status, c.Steps = ops.CheckRefused, []string{step}
	p.refuse[step] = c
}

func (p *preflights) clear() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuse = nil
}

func (p *preflights) run(ctx context.Context, _ fakePlan) ops.Preflight {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.runs++
	who := ""
	if o, ok := awsclient.OperationFrom(ctx); ok {
		who = o.ID + " by " + o.Requester + "/" + o.Approver
	}
	p.ranAsOp = append(p.ranAsOp, who)
	var pf ops.Preflight
	for _, step := range []string{"one", "two", "three"} {
		if c, ok := p.refuse[step]; ok {
			pf.Checks = append(pf.Checks, c)
			continue
		}
		pf.Checks = append(pf.Checks, ops.Check{Call: "fake:Call" + step, On: "thing " + step, Status: ops.CheckOK, Steps: []string{step}})
	}
	return pf
}

// withPreflight is newEngine with a holding fake restore whose pre-flight
// is pf's.
func withPreflight(t *testing.T, w *world, pf *preflights) *Engine {
	t.Helper()
	e, _ := newEngine(t, w)
	k := fakeKind(w, "fake-restore", commands.Restore, true)
	k.Preflight = pf.run
	e.Kinds.kinds["fake-restore"] = k
	return e
}

// A resume runs the pre-flight again, as the operation (its role
// session), under its claim and locks, before its first unfinished step:
// a call IAM refuses for a step still to run stops it with nothing run,
// the operation stopped and holding its box as before and the message
// naming the call, what it acts on, AWS's reason and what to do. Once the
// permission is back the same resume goes on. (Before, a resume never ran
// the pre-flight: step three ran into the refusal.)
func TestResumeRunsThePreflightOfTheStepsLeftFirst(t *testing.T) {
	w := &world{version: 1, fail: map[string]int{"two": 1}}
	pf := &preflights{}
	e := withPreflight(t, w, pf)
	r := approve(t, e, "restore latest")
	_ = e.Execute(context.Background(), r, &out{}) // stops at step two
	op, _ := e.Journal.ByRequest(context.Background(), r.ID)
	if op.State != journal.Stopped || op.Next() != 1 {
		t.Fatalf("after the failure: %s at step %d", op.State, op.Next()+1)
	}
	runs := pf.runs
	pf.set("three", ops.Check{Call: "ec2:RunInstances", On: "m5.xlarge in subnet-1", Reason: "UnauthorizedOperation: You are not authorized to perform this operation.", Denied: true})

	_, err := e.Resume(context.Background(), op.ID, "U0CAROL", &out{})
	var rr *ResumeRefusedError
	if !errors.As(err, &rr) {
		t.Fatalf("Resume = %v, want a ResumeRefusedError", err)
	}
	if pf.runs != runs+1 {
		t.Fatalf("the pre-flight ran %d times on resume, want once", pf.runs-runs)
	}
	if got := pf.ranAsOp[len(pf.ranAsOp)-1]; got != op.ID+" by U0ALICE/U0BOB" {
		t.Errorf("the resume's pre-flight ran as %q, want the operation's role session", got)
	}
	for _, want := range []string{"`" + op.ID + "`", "was not resumed", "just before step 2 (two)", "ec2:RunInstances on m5.xlarge in subnet-1 (for step 3, three)", "UnauthorizedOperation", "Fix the permission", "/circleci resume " + op.ID, "/circleci cancel " + op.ID, "keeps the Services box", "Nothing was run"} {
		if !strings.Contains(rr.Msg, want) {
			t.Errorf("the refusal lacks %q:\n%s", want, rr.Msg)
		}
	}
	var ref *Refusal
	var pe *ops.PreflightError
	if !errors.As(err, &ref) || !errors.As(err, &pe) || len(pe.Refused) != 1 {
		t.Errorf("the refusal reads as neither a Refusal nor a PreflightError of one row: %v", err)
	}
	if got := strings.Join(w.ran, ","); got != "one,two" {
		t.Errorf("ran %s; a refused resume must run nothing", got)
	}
	got, _ := e.Journal.Get(context.Background(), op.ID)
	if got.State != journal.Stopped || got.Next() != 1 || !strings.Contains(got.Why, "ec2:RunInstances") {
		t.Errorf("after the refused resume: %s at step %d (%q)", got.State, got.Next()+1, got.Why)
	}
	if l := locked(t, e.Store); len(l) != 1 || l[0] != "box/test="+op.ID {
		t.Errorf("locks %v, want the box still held by %s", l, op.ID)
	}

	// The permission is back: the resume goes on and finishes.
	pf.clear()
	if _, err := e.Resume(context.Background(), op.ID, "U0CAROL", &out{}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(w.ran, ","); got != "one,two,two,three" {
		t.Errorf("ran %s", got)
	}
	if l := locked(t, e.Store); len(l) != 0 {
		t.Errorf("locks left: %v", l)
	}
}

// Rows of done steps do not count, even refused by IAM: those calls are
// not made again, and AWS refuses them for what the operation did. A row
// of the step that stopped part-way counts only when IAM refuses it.
// (Any refused row would block if the rows were not weighed by step.)
func TestResumeIgnoresThePreflightRowsOfDoneSteps(t *testing.T) {
	w := &world{version: 1, fail: map[string]int{"two": 1}}
	pf := &preflights{}
	e := withPreflight(t, w, pf)
	r := approve(t, e, "restore latest")
	_ = e.Execute(context.Background(), r, &out{}) // stops at step two
	op, _ := e.Journal.ByRequest(context.Background(), r.ID)
	pf.set("one", ops.Check{Call: "ec2:StopInstances", On: "i-old", Reason: "UnauthorizedOperation", Denied: true})
	pf.set("two", ops.Check{Call: "ec2:RunInstances", On: "10.0.0.5", Reason: "InvalidIPAddress.InUse: Address 10.0.0.5 is in use."})
	runs := pf.runs
	if _, err := e.Resume(context.Background(), op.ID, "U0CAROL", &out{}); err != nil {
		t.Fatalf("Resume = %v; rows of a done step and a state refusal of the step part-way must not block", err)
	}
	if pf.runs != runs+1 {
		t.Errorf("the pre-flight ran %d times on resume, want once", pf.runs-runs)
	}
	if got := strings.Join(w.ran, ","); got != "one,two,two,three" {
		t.Errorf("ran %s", got)
	}
}

// An approved resume (past the approval's TTL) is refused the same way:
// nothing runs, the operation stays stopped.
func TestAnApprovedResumeRunsThePreflightToo(t *testing.T) {
	w := &world{version: 1, fail: map[string]int{"two": 1}}
	pf := &preflights{}
	e := withPreflight(t, w, pf)
	e.ApprovalTTL = time.Nanosecond
	r := approve(t, e, "restore latest")
	_ = e.Execute(context.Background(), r, &out{})
	op, _ := e.Journal.ByRequest(context.Background(), r.ID)
	_, err := e.Resume(context.Background(), op.ID, "U0ALICE", &out{})
	var again *NeedsApproval
	if !errors.As(err, &again) {
		t.Fatalf("Resume = %v, want a request", err)
	}
	req := approvals.New("resume "+op.ID, again.Plan, "U0ALICE", "C1", time.Now(), time.Hour)
	req.Decider = "U0BOB"
	pf.set("two", ops.Check{Call: "ec2:RunInstances", On: "10.0.0.5", Reason: "UnauthorizedOperation", Denied: true})
	err = e.Execute(context.Background(), req, &out{})
	var rr *ResumeRefusedError
	if !errors.As(err, &rr) || !strings.Contains(rr.Msg, "ec2:RunInstances on 10.0.0.5 (for step 2, two)") {
		t.Fatalf("Execute = %v, want the resume refused", err)
	}
	if got := strings.Join(w.ran, ","); got != "one,two" {
		t.Errorf("ran %s", got)
	}
	if got, _ := e.Journal.Get(context.Background(), op.ID); got.State != journal.Stopped {
		t.Errorf("state %s after a refused approved resume", got.State)
	}
}

// How each refused row is weighed against the journal.
func TestBlockingWeighsEachRowByItsSteps(t *testing.T) {
	names := []string{"one", "two", "three"}
	op := &journal.Op{Steps: []journal.Step{{Name: "one", State: journal.StepDone}, {Name: "two", State: journal.StepFailed, Attempts: 1}, {Name: "three", State: journal.StepPending}}}
	notBegun := &journal.Op{Steps: []journal.Step{{Name: "one", State: journal.StepDone}, {Name: "two", State: journal.StepPending}, {Name: "three", State: journal.StepPending}}}
	row := func(denied bool, steps ...string) ops.Check {
		return ops.Check{Call: "x", Status: ops.CheckRefused, Denied: denied, Steps: steps}
	}
	for _, tc := range []struct {
		name string
		op   *journal.Op
		c    ops.Check
		want bool
	}{
		{"a done step's row, denied", op, row(true, "one"), false},
		{"a done step's row, state", op, row(false, "one"), false},
		{"the step part-way, state", op, row(false, "two"), false},
		{"the step part-way, denied", op, row(true, "two"), true},
		{"the next step, not begun, state", notBegun, row(false, "two"), true},
		{"a step not begun, state", op, row(false, "three"), true},
		{"a done step and one left", op, row(false, "one", "three"), true},
		{"no step named", op, row(false), true},
		{"a step this plan lacks", op, row(false, "four"), true},
		{"ok rows never", op, ops.Check{Call: "x", Status: ops.CheckOK, Steps: []string{"three"}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := blocking(ops.Preflight{Checks: []ops.Check{tc.c}}, tc.op, names)
			if (len(got) == 1) != tc.want {
				t.Errorf("blocking = %+v, want counted %v", got, tc.want)
			}
		})
	}
}
