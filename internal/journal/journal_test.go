package journal

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	bolt "go.etcd.io/bbolt"

	"github.com/circlebot/circlebot/internal/kv"
	"github.com/circlebot/circlebot/internal/testenv/motoserver"
)

func open(t *testing.T) Store {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "j.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return Store{KV: kv.Bolt{DB: db}}
}

type nopProgress struct{}

func (nopProgress) Begin(int, string) {}
func (nopProgress) Done(int, string)  {}
func (nopProgress) Fail(int, error)   {}
func (nopProgress) Log(string)        {}

func newOp(t *testing.T, s Store, process string, n int) *Op {
	t.Helper()
	o := &Op{ID: NewID(time.Now()), Kind: "test", State: Running, Process: process, Created: time.Now()}
	for i := 0; i < n; i++ {
		o.Steps = append(o.Steps, Step{Name: string(rune('a' + i)), State: StepPending})
	}
	if err := s.Create(t.Context(), o); err != nil {
		t.Fatal(err)
	}
	return o
}

// A failed step stops the operation; resuming runs only the unfinished
// steps, and data a step produced reaches later steps across the stop.
func TestResumeSkipsFinishedSteps(t *testing.T) {
	s := open(t)
	o := newOp(t, s, "p1", 3)
	runs := map[string]int{}
	failB := true
	defs := []Def{
		{"a", func(_ context.Context, op *Op, _ Progress) (string, error) {
			runs["a"]++
			op.Result = json.RawMessage(`{"made":"thing-1"}`)
			return "made thing-1", nil
		}},
		{"b", func(_ context.Context, op *Op, _ Progress) (string, error) {
			runs["b"]++
			if string(op.Result) != `{"made":"thing-1"}` {
				t.Errorf("step b saw result %s", op.Result)
			}
			if failB {
				return "", errors.New("boom")
			}
			return "ok", nil
		}},
		{"c", func(context.Context, *Op, Progress) (string, error) { runs["c"]++; return "ok", nil }},
	}
	got, err := s.Run(context.Background(), o.ID, o.Process, defs, nopProgress{})
	var se *StepError
	if !errors.As(err, &se) || se.Step != "b" {
		t.Fatalf("Run = %v, want step b's error", err)
	}
	if got.State != Stopped || got.Steps[0].State != StepDone || got.Steps[1].State != StepFailed || got.Steps[2].State != StepPending {
		t.Fatalf("after failure: state %s steps %+v", got.State, got.Steps)
	}
	if _, err := s.Claim(t.Context(), o.ID, "p1"); err != nil {
		t.Fatal(err)
	}
	failB = false
	got, err = s.Run(context.Background(), o.ID, o.Process, defs, nopProgress{})
	if err != nil || got.State != Done {
		t.Fatalf("resume: %v, state %s", err, got.State)
	}
	if runs["a"] != 1 || runs["b"] != 2 || runs["c"] != 1 {
		t.Fatalf("runs = %v, want a once, b twice, c once", runs)
	}
	if got.Steps[1].Attempts != 2 {
		t.Fatalf("attempts of b = %d", got.Steps[1].Attempts)
	}
}

// A cancel asked for during a step is honoured at the next boundary: the
// running step finishes, the next does not start, and cancelling the
// stopped operation gives it up.
func TestCancelAtStepBoundary(t *testing.T) {
	s := open(t)
	o := newOp(t, s, "p1", 3)
	ran := 0
	defs := make([]Def, 3)
	for i := range defs {
		defs[i] = Def{Name: "s", Run: func(context.Context, *Op, Progress) (string, error) {
			ran++
			if ran == 1 {
				if _, abandoned, err := s.RequestCancel(t.Context(), o.ID, "U0BOB"); err != nil || abandoned {
					t.Errorf("cancel while running: abandoned=%v err=%v", abandoned, err)
				}
			}
			return "", nil
		}}
	}
	got, err := s.Run(context.Background(), o.ID, o.Process, defs, nopProgress{})
	if !errors.Is(err, ErrCancelled) || ran != 1 || got.State != Stopped || got.Next() != 1 {
		t.Fatalf("err=%v ran=%d state=%s next=%d", err, ran, got.State, got.Next())
	}
	got, abandoned, err := s.RequestCancel(t.Context(), o.ID, "U0BOB")
	if err != nil || !abandoned || got.State != Abandoned || got.Open() {
		t.Fatalf("second cancel: %v %v %s", err, abandoned, got.State)
	}
	if _, err := s.Claim(t.Context(), o.ID, "p1"); err == nil {
		t.Fatal("an abandoned operation was resumed")
	}
}

// A process that died mid-step leaves the operation Running under its
// token; the next process marks it interrupted at that step.
func TestMarkInterrupted(t *testing.T) {
	s := open(t)
	o := newOp(t, s, "dead", 2)
	if _, err := s.Update(t.Context(), o.ID, func(o *Op) error { o.Steps[0].State = StepRunning; return nil }); err != nil {
		t.Fatal(err)
	}
	mine := newOp(t, s, "alive", 1)
	got, err := s.MarkInterrupted(t.Context(), func(_ context.Context, p string) bool { return p == "alive" })
	if err != nil || len(got) != 1 || got[0].ID != o.ID {
		t.Fatalf("MarkInterrupted = %v, %v", got, err)
	}
	if got[0].State != Stopped || got[0].Steps[0].State != StepInterrupted || got[0].Why == "" {
		t.Fatalf("interrupted op: %+v", got[0])
	}
	if m, _ := s.Get(t.Context(), mine.ID); m.State != Running {
		t.Fatalf("this process's own op was touched: %s", m.State)
	}
}

// A running operation is never claimed, not even by its own process: a
// second `resume` must not start a second runner.
func TestRunningIsNotClaimed(t *testing.T) {
	s := open(t)
	o := newOp(t, s, "me", 2)
	if _, err := s.Claim(t.Context(), o.ID, "me"); err == nil {
		t.Fatal("a running operation was claimed by its own process")
	}
	if _, err := s.Claim(t.Context(), o.ID, "other"); err == nil {
		t.Fatal("a running operation was claimed by another process")
	}
}

// Save keeps a result before the step ends: a crash mid-step keeps it.
func TestRecordSavesAtOnce(t *testing.T) {
	s := open(t)
	o := newOp(t, s, "me", 1)
	_, err := s.Run(context.Background(), o.ID, o.Process, []Def{{"a", func(_ context.Context, op *Op, _ Progress) (string, error) {
		if err := op.Save(json.RawMessage(`{"command":"cmd-1"}`)); err != nil {
			return "", err
		}
		if got, _ := s.Get(t.Context(), op.ID); string(got.Result) != `{"command":"cmd-1"}` {
			t.Errorf("result not saved during the step: %s", got.Result)
		}
		return "", errors.New("boom")
	}}}, nopProgress{})
	if err == nil {
		t.Fatal("want the step's error")
	}
	if got, _ := s.Get(t.Context(), o.ID); string(got.Result) != `{"command":"cmd-1"}` {
		t.Errorf("saved result lost after the failure: %s", got.Result)
	}
}

// Of many racing resumes (from one replica, or two sharing DynamoDB),
// exactly one claims the operation.
func TestClaimOnce(t *testing.T) {
	moto := motoserver.ForTest(t)
	d := kv.Dynamo{API: dynamodb.NewFromConfig(motoserver.AWSConfig(motoserver.Serialized(t, moto.URL))), Table: "circlebot-state"}
	if err := d.EnsureTable(context.Background()); err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]Store{"bbolt": open(t), "dynamodb": {KV: d}} {
		t.Run(name, func(t *testing.T) {
			o := newOp(t, s, "dead", 1)
			if _, err := s.MarkInterrupted(t.Context(), func(_ context.Context, p string) bool { return p == "me" }); err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			var mu sync.Mutex
			wins := 0
			for i := range 20 {
				wg.Go(func() {
					if _, err := s.Claim(t.Context(), o.ID, "replica-"+string(rune('a'+i))); err == nil {
						mu.Lock()
						wins++
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			if wins != 1 {
				t.Fatalf("%d claims won, want 1", wins)
			}
		})
	}
}

func TestMain(m *testing.M) { motoserver.Main(m) }

// Another replica took the operation over while a step of this run was
// in flight (this replica's heartbeat lapsed): the step's end is not
// written, the next step does not start, and the new owner's state stands.
func TestRunStopsWhenTakenOver(t *testing.T) {
	s := open(t)
	o := newOp(t, s, "replica-a", 3)
	ran := 0
	defs := []Def{
		{"a", func(context.Context, *Op, Progress) (string, error) { ran++; return "", nil }},
		{"b", func(_ context.Context, op *Op, _ Progress) (string, error) {
			ran++
			// Meanwhile: marked interrupted and resumed by replica B.
			if _, err := s.Update(t.Context(), op.ID, func(o *Op) error { o.Process = "replica-b"; return nil }); err != nil {
				t.Fatal(err)
			}
			if err := op.Save(json.RawMessage(`{"made":"x"}`)); !errors.Is(err, ErrTakenOver) {
				t.Errorf("record after takeover: %v", err)
			}
			return "done by a", nil
		}},
		{"c", func(context.Context, *Op, Progress) (string, error) { ran++; return "", nil }},
	}
	_, err := s.Run(context.Background(), o.ID, o.Process, defs, nopProgress{})
	if !errors.Is(err, ErrTakenOver) {
		t.Fatalf("run: %v", err)
	}
	got, _ := s.Get(t.Context(), o.ID)
	if ran != 2 || got.Steps[1].State != StepRunning || got.Process != "replica-b" || got.State != Running || len(got.Result) != 0 {
		t.Errorf("after takeover: ran %d, step b %s, process %s, state %s, result %s", ran, got.Steps[1].State, got.Process, got.State, got.Result)
	}
}

// An interrupted operation is announced by one of the replicas that try;
// a failed post gives it back; a resume before the announcement drops it.
func TestAnnouncementIsTakenOnce(t *testing.T) {
	s := open(t)
	o := newOp(t, s, "dead", 2)
	if _, err := s.MarkInterrupted(t.Context(), func(_ context.Context, p string) bool { return p != "dead" }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.TakeAnnouncement(t.Context(), o.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.TakeAnnouncement(t.Context(), o.ID); err == nil {
		t.Fatal("announced twice")
	}
	if err := s.ReturnAnnouncement(t.Context(), o.ID); err != nil { // the post failed
		t.Fatal(err)
	}
	if _, err := s.TakeAnnouncement(t.Context(), o.ID); err != nil {
		t.Fatalf("a failed announcement is not tried again: %v", err)
	}
	if err := s.ReturnAnnouncement(t.Context(), o.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Claim(t.Context(), o.ID, "me"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Get(t.Context(), o.ID); got.Unannounced {
		t.Error("a resumed operation is still to be announced as interrupted")
	}
}

// openBounded is a journal behind the guard the bot's store puts in
// front of its state: calls on an ended context are refused.
func openBounded(t *testing.T) Store {
	t.Helper()
	return Store{KV: kv.Bounded(open(t).KV, 0)}
}

// A journal call on a cancelled context returns its error and changes
// nothing; Run records that it could not start.
func TestCancelledContextWritesNothing(t *testing.T) {
	s := openBounded(t)
	o := newOp(t, s, "me", 1)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := s.Create(ctx, &Op{ID: "op-new", State: Running}); !errors.Is(err, context.Canceled) {
		t.Errorf("create: %v", err)
	}
	if _, err := s.Get(t.Context(), "op-new"); !errors.Is(err, ErrNotFound) {
		t.Errorf("an operation created on a cancelled context exists: %v", err)
	}
	if _, _, err := s.RequestCancel(ctx, o.ID, "U0BOB"); !errors.Is(err, context.Canceled) {
		t.Errorf("cancel request: %v", err)
	}
	if got, _ := s.Get(t.Context(), o.ID); got.CancelBy != "" {
		t.Errorf("a cancel asked for on a cancelled context was recorded: %+v", got)
	}
	// A run that cannot start is stopped before its first step, not left
	// Running.
	if _, err := s.Run(ctx, o.ID, "me", []Def{{"a", func(context.Context, *Op, Progress) (string, error) {
		t.Error("a step ran on a cancelled context")
		return "", nil
	}}}, nopProgress{}); !errors.Is(err, context.Canceled) {
		t.Errorf("run: %v", err)
	}
	if got, _ := s.Get(t.Context(), o.ID); got.State != Stopped || got.Steps[0].State != StepPending {
		t.Errorf("after a run on a cancelled context: state %s, step %s", got.State, got.Steps[0].State)
	}
}

// The bot stops (or loses its heartbeat) while a step runs: the step's
// end and the stop are still written, though the run's context ended,
// so the operation is left Stopped for a resume rather than Running
// under a live process.
func TestStopIsRecordedAfterTheContextEnded(t *testing.T) {
	for _, fail := range []bool{true, false} {
		s := openBounded(t)
		o := newOp(t, s, "me", 2)
		ctx, cancel := context.WithCancel(t.Context())
		defs := []Def{
			{"a", func(ctx context.Context, op *Op, _ Progress) (string, error) {
				op.Result = json.RawMessage(`{"made":"x"}`)
				cancel()
				if fail {
					return "", ctx.Err()
				}
				return "made x", nil
			}},
			{"b", func(context.Context, *Op, Progress) (string, error) {
				t.Error("a step started after the context ended")
				return "", nil
			}},
		}
		_, err := s.Run(ctx, o.ID, "me", defs, nopProgress{})
		if err == nil {
			t.Fatal("run went on after its context ended")
		}
		got, gerr := s.Get(t.Context(), o.ID)
		if gerr != nil {
			t.Fatal(gerr)
		}
		want := StepDone
		if fail {
			want = StepInterrupted
		}
		if got.State != Stopped || got.Steps[0].State != want || string(got.Result) != `{"made":"x"}` || got.Why == "" {
			t.Errorf("failed step %v: state %s, step a %s, result %s, why %q", fail, got.State, got.Steps[0].State, got.Result, got.Why)
		}
	}
}

// ReturnAnnouncement says when the announcement could not be given back,
// and not when there is nothing left to announce.
func TestReturnAnnouncementReportsFailure(t *testing.T) {
	s := openBounded(t)
	o := newOp(t, s, "dead", 1)
	if _, err := s.MarkInterrupted(t.Context(), func(_ context.Context, p string) bool { return p != "dead" }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.TakeAnnouncement(t.Context(), o.ID); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := s.ReturnAnnouncement(ctx, o.ID); err == nil {
		t.Error("a failed give-back reported success")
	}
	if _, err := s.Claim(t.Context(), o.ID, "me"); err != nil {
		t.Fatal(err)
	}
	if err := s.ReturnAnnouncement(t.Context(), o.ID); err != nil {
		t.Errorf("give-back of a resumed operation: %v", err)
	}
	if err := s.ReturnAnnouncement(t.Context(), "op-none"); !errors.Is(err, ErrNotFound) {
		t.Errorf("give-back of an unknown operation: %v", err)
	}
}
