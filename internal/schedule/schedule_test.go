package schedule

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/circlebot/circlebot/internal/store"
)

type reports struct {
	mu   sync.Mutex
	msgs []string
}

func (r *reports) add(_ context.Context, s string) {
	r.mu.Lock()
	r.msgs = append(r.msgs, s)
	r.mu.Unlock()
}
func (r *reports) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.msgs...)
}

func newSched(t *testing.T, st *store.Store, now time.Time) (*Scheduler, *reports) {
	r := &reports{}
	s := New(st, r.add, slog.New(slog.NewTextHandler(io.Discard, nil)))
	s.now = func() time.Time { return now }
	s.ctx = context.Background()
	return s, r
}

func TestMissedRunsAreReportedOnce(t *testing.T) {
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	t0 := time.Date(2026, 11, 28, 0, 30, 0, 0, time.UTC)
	job := Job{Name: "backup", Spec: "0 */6 * * *", Run: func(context.Context) error { return nil }}

	s, r := newSched(t, st, t0)
	s.Add(job)
	s.CheckMissed(context.Background()) // first start: baseline, nothing to say
	if len(r.all()) != 0 {
		t.Fatalf("first start reported %v", r.all())
	}
	// The bot was down from 00:30 to 13:00: the 06:00 and 12:00 runs were missed.
	s, r = newSched(t, st, t0.Add(12*time.Hour+30*time.Minute))
	s.Add(job)
	s.CheckMissed(context.Background())
	got := r.all()
	if len(got) != 1 || !strings.Contains(got[0], "2 run(s) missed since 2026-11-28 06:00") {
		t.Fatalf("missed report: %v", got)
	}
	s.CheckMissed(context.Background())
	if len(r.all()) != 1 {
		t.Fatalf("the same gap was reported twice: %v", r.all())
	}
}

func TestFailedRunIsReportedAndRecorded(t *testing.T) {
	st, _ := store.Open(t.TempDir())
	defer st.Close()
	s, r := newSched(t, st, time.Now())
	s.run(Job{Name: "backup", Spec: "@daily", Run: func(context.Context) error { return errors.New("no instance tagged Name=circleci_services") }})
	if got := r.all(); len(got) != 1 || !strings.Contains(got[0], "Scheduled backup failed: no instance tagged") {
		t.Fatalf("reports: %v", got)
	}
	last, _ := s.Last(t.Context(), "backup")
	if !strings.HasPrefix(last.Result, "failed:") {
		t.Fatalf("record: %+v", last)
	}
	// A failure the job already reported itself is recorded, not re-posted.
	s.run(Job{Name: "backup", Spec: "@daily", Run: func(context.Context) error { return Reported{errors.New("snapshot in error")} }})
	if len(r.all()) != 1 {
		t.Fatalf("reported twice: %v", r.all())
	}
}

func TestRunCutOffByACrashIsReported(t *testing.T) {
	st, _ := store.Open(t.TempDir())
	defer st.Close()
	now := time.Date(2026, 11, 28, 6, 0, 30, 0, time.UTC)
	st.Put(t.Context(), bucket, "backup", Run{Job: "backup", Started: now, Result: "running"})
	s, r := newSched(t, st, now.Add(time.Minute))
	s.Add(Job{Name: "backup", Spec: "0 */6 * * *", Run: func(context.Context) error { return nil }})
	s.CheckMissed(context.Background())
	if got := r.all(); len(got) != 1 || !strings.Contains(got[0], "was cut off when the bot stopped") {
		t.Fatalf("reports: %v", got)
	}
}

// Two schedulers that both believe they lead (the worst case of a lease
// handover) strike the same slot at once: the conditional record lets one
// run it. A non-leader lets the clock pass.
func TestASlotRunsOnceHoweverManyStrike(t *testing.T) {
	st, _ := store.Open(t.TempDir())
	defer st.Close()
	due := time.Date(2026, 11, 28, 6, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	runs := 0
	job := Job{Name: "backup", Spec: "0 */6 * * *", Run: func(context.Context) error { mu.Lock(); runs++; mu.Unlock(); return nil }}
	if err := st.Put(t.Context(), bucket, "backup", Run{Job: "backup", Started: due.Add(-6 * time.Hour), Result: "ok"}); err != nil {
		t.Fatal(err)
	}
	var scheds []*Scheduler
	for range 4 {
		s, _ := newSched(t, st, due.Add(time.Second))
		s.Leader = func() bool { return true }
		if err := s.Add(job); err != nil {
			t.Fatal(err)
		}
		scheds = append(scheds, s)
	}
	follower, _ := newSched(t, st, due.Add(time.Second))
	follower.Leader = func() bool { return false }
	follower.Add(job)
	var wg sync.WaitGroup
	for _, s := range append(scheds, follower) {
		wg.Go(func() { s.Fire("backup") })
	}
	wg.Wait()
	if runs != 1 {
		t.Fatalf("the 06:00 slot ran %d times", runs)
	}
	follower.Leader = func() bool { return true }
	follower.Fire("backup")
	if runs != 1 {
		t.Fatalf("a late strike of the same slot ran it again")
	}
}

// A new leader runs what fell due during the handover, late, and says
// so; what fell due longer ago than CatchUp is reported as missed.
func TestNewLeaderCatchesUpOnlyTheHandover(t *testing.T) {
	due := time.Date(2026, 11, 28, 6, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		late    time.Duration
		wantRun bool
	}{{30 * time.Second, true}, {10 * time.Minute, false}} {
		st, _ := store.Open(t.TempDir())
		ran := make(chan struct{}, 1)
		job := Job{Name: "backup", Spec: "0 */6 * * *", Run: func(context.Context) error { ran <- struct{}{}; return nil }}
		st.Put(t.Context(), bucket, "backup", Run{Job: "backup", Started: due.Add(-6 * time.Hour), Result: "ok"})
		s, r := newSched(t, st, due.Add(tc.late))
		s.CatchUp = 2*30*time.Second + time.Minute
		s.Add(job)
		s.Elected(context.Background())
		s.wg.Wait()
		got := len(ran) == 1
		if got != tc.wantRun {
			t.Errorf("%s late: ran %v, want %v (reports %v)", tc.late, got, tc.wantRun, r.all())
		}
		msgs := strings.Join(r.all(), "\n")
		if tc.wantRun && !strings.Contains(msgs, "runs now, 30s late") || !tc.wantRun && !strings.Contains(msgs, "1 run(s) missed") {
			t.Errorf("%s late: reports %q", tc.late, msgs)
		}
		st.Close()
	}
}

// The bot stops while a scheduled job runs: the run's outcome is still
// recorded, not left "running" for the next start to report as cut off.
func TestRunIsRecordedWhenTheBotStopsDuringIt(t *testing.T) {
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	s, r := newSched(t, st, time.Now())
	ctx, cancel := context.WithCancel(t.Context())
	s.ctx = ctx
	s.run(Job{Name: "backup", Spec: "@daily", Run: func(ctx context.Context) error {
		cancel() // the bot is shutting down
		return ctx.Err()
	}})
	last, err := s.Last(t.Context(), "backup")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(last.Result, "failed: context canceled") || last.Finished.IsZero() {
		t.Fatalf("record after a stop mid-run: %+v", last)
	}
	if got := r.all(); len(got) != 0 {
		t.Errorf("a run cut off by a shutdown was reported as failed: %v", got)
	}
}
