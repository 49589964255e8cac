// Package schedule owns recurring work (backups, reports): it runs jobs on
// cron schedules in UTC, records each run durably, and notices runs that
// did not happen because the bot was down.
package schedule

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/store"
)

const bucket = "schedule"

// Job is one recurring task.
type Job struct {
	Name string // "backup", "report"
	Spec string // cron expression
	Run  func(ctx context.Context) error
}

// Run is the durable record of a job's last run.
type Run struct {
	Job      string    `json:"job"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished,omitzero"`
	Result   string    `json:"result"` // running, ok, failed: …
}

// Reporter tells people about a missed or failed run.
type Reporter func(ctx context.Context, text string)

type Scheduler struct {
	store  *store.Store
	report Reporter
	log    *slog.Logger
	cron   *cron.Cron
	jobs   []Job
	now    func() time.Time
	wg     sync.WaitGroup
	ctx    context.Context
}

func New(st *store.Store, report Reporter, log *slog.Logger) *Scheduler {
	return &Scheduler{store: st, report: report, log: log, now: time.Now,
		cron: cron.New(cron.WithLocation(time.UTC), cron.WithParser(config.CronParser))}
}

// Add registers a job; a bad spec is an error at start-up, not at 3 a.m.
func (s *Scheduler) Add(j Job) error {
	sched, err := config.CronParser.Parse(j.Spec)
	if err != nil {
		return fmt.Errorf("schedule %s: %q: %w", j.Name, j.Spec, err)
	}
	s.jobs = append(s.jobs, j)
	s.cron.Schedule(sched, cron.FuncJob(func() { s.run(j) }))
	return nil
}

// Start reports runs missed while the bot was down, then starts the clock.
func (s *Scheduler) Start(ctx context.Context) {
	s.ctx = ctx
	s.CheckMissed(ctx)
	s.cron.Start()
}

// Stop stops the clock and waits for running jobs.
func (s *Scheduler) Stop() {
	<-s.cron.Stop().Done()
	s.wg.Wait()
}

// CheckMissed compares each job's last recorded run with its schedule. A
// run that should have started since (with a minute of slack) did not: it
// is reported, not run late, because a backup hours late can surprise
// people more than a missing one. A job never run before is baselined.
func (s *Scheduler) CheckMissed(ctx context.Context) {
	now := s.now().UTC()
	for _, j := range s.jobs {
		var last Run
		err := s.store.Get(bucket, j.Name, &last)
		if errors.Is(err, store.ErrNotFound) {
			_ = s.store.Put(bucket, j.Name, Run{Job: j.Name, Started: now, Finished: now, Result: "baseline"})
			continue
		}
		if err != nil {
			s.log.Error("read schedule record", "job", j.Name, "err", err)
			continue
		}
		sched, _ := config.CronParser.Parse(j.Spec)
		due := sched.Next(last.Started)
		if last.Result == "running" {
			s.report(ctx, fmt.Sprintf(":warning: The scheduled %s that started at %s UTC was cut off when the bot stopped; it was not run again.", j.Name, last.Started.Format("2006-01-02 15:04")))
			last.Result, last.Finished = "interrupted", now
			_ = s.store.Put(bucket, j.Name, last)
		}
		if due.Add(time.Minute).Before(now) {
			missed := 0
			for t := due; t.Before(now) && missed < 1000; t = sched.Next(t) {
				missed++
			}
			s.report(ctx, fmt.Sprintf(":warning: Scheduled %s did not run: %d run(s) missed since %s UTC (schedule `%s`), because the bot was not running. The next one is at %s UTC; run it now by hand if needed.",
				j.Name, missed, due.Format("2006-01-02 15:04"), j.Spec, sched.Next(now).Format("2006-01-02 15:04")))
			// Record that the gap was reported, so it is said once.
			_ = s.store.Put(bucket, j.Name, Run{Job: j.Name, Started: now, Finished: now, Result: fmt.Sprintf("missed %d", missed)})
		}
	}
}

func (s *Scheduler) run(j Job) {
	s.wg.Add(1)
	defer s.wg.Done()
	ctx := s.ctx
	r := Run{Job: j.Name, Started: s.now().UTC(), Result: "running"}
	if err := s.store.Put(bucket, j.Name, r); err != nil {
		s.log.Error("record schedule run", "job", j.Name, "err", err)
	}
	err := func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("panic: %v", p)
			}
		}()
		return j.Run(ctx)
	}()
	r.Finished, r.Result = s.now().UTC(), "ok"
	if err != nil {
		r.Result = "failed: " + err.Error()
		s.log.Error("scheduled job failed", "job", j.Name, "err", err)
		var rep Reported
		if !errors.Is(err, context.Canceled) && !errors.As(err, &rep) {
			s.report(ctx, fmt.Sprintf(":x: Scheduled %s failed: %s", j.Name, err.Error()))
		}
	}
	if err := s.store.Put(bucket, j.Name, r); err != nil {
		s.log.Error("record schedule run", "job", j.Name, "err", err)
	}
}

// Reported wraps an error whose failure the job already told people
// about (e.g. in its progress message), so the scheduler records it
// without posting it a second time.
type Reported struct{ Err error }

func (r Reported) Error() string { return r.Err.Error() }
func (r Reported) Unwrap() error { return r.Err }

// Last returns the last recorded run of a job.
func (s *Scheduler) Last(name string) (Run, error) {
	var r Run
	err := s.store.Get(bucket, name, &r)
	return r, err
}
