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
	last, _ := s.Last("backup")
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
	st.Put(bucket, "backup", Run{Job: "backup", Started: now, Result: "running"})
	s, r := newSched(t, st, now.Add(time.Minute))
	s.Add(Job{Name: "backup", Spec: "0 */6 * * *", Run: func(context.Context) error { return nil }})
	s.CheckMissed(context.Background())
	if got := r.all(); len(got) != 1 || !strings.Contains(got[0], "was cut off when the bot stopped") {
		t.Fatalf("reports: %v", got)
	}
}
