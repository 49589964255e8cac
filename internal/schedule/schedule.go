// Package schedule owns recurring work (backups, reports): it runs jobs on
// cron schedules in UTC, records each run durably, and notices runs that
// did not happen because the bot was down.
package schedule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/kv"
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
	// Process is the bot process (replica) that ran it.
	Process string `json:"process,omitempty"`
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

	// Leader gates every run: with replicas sharing the store, all of
	// them keep the clock and only the leader runs what falls due. Nil:
	// this is the only replica.
	Leader func() bool
	// CatchUp: a run that fell due at most this long ago and did not
	// happen (the leader died as it fell due) is run late by the next
	// leader rather than reported as missed.
	CatchUp time.Duration
}

func New(st *store.Store, report Reporter, log *slog.Logger) *Scheduler {
	return &Scheduler{store: st, report: report, log: log, now: time.Now,
		cron: cron.New(cron.WithLocation(time.UTC), cron.WithParser(config.CronParser))}
}

// SetClock replaces the clock that decides what is due (tests); call it
// before Start.
func (s *Scheduler) SetClock(now func() time.Time) { s.now = now }

// Add registers a job; a bad spec is an error at start-up, not at 3 a.m.
func (s *Scheduler) Add(j Job) error {
	sched, err := config.CronParser.Parse(j.Spec)
	if err != nil {
		return fmt.Errorf("schedule %s: %q: %w", j.Name, j.Spec, err)
	}
	s.jobs = append(s.jobs, j)
	s.cron.Schedule(sched, cron.FuncJob(func() { s.Fire(j.Name) }))
	return nil
}

// Fire is the clock striking for a job: the leader (or the only replica)
// runs it; any other replica lets it pass.
func (s *Scheduler) Fire(name string) {
	if s.Leader != nil && !s.Leader() {
		s.log.Debug("scheduled job left to the leader", "job", name)
		return
	}
	for _, j := range s.jobs {
		if j.Name == name {
			s.run(j)
		}
	}
}

// Start reports runs missed while the bot was down, then starts the clock.
// A replica that is not the leader reports nothing: the leader does, when
// it is elected (Elected).
func (s *Scheduler) Start(ctx context.Context) {
	s.ctx = ctx
	if s.Leader == nil || s.Leader() {
		s.CheckMissed(ctx)
	}
	s.cron.Start()
}

// Elected is called when this replica becomes the leader: what fell due
// during the handover runs now, older gaps are reported.
func (s *Scheduler) Elected(ctx context.Context) {
	if s.ctx == nil {
		return // not started yet; Start checks
	}
	s.CheckMissed(ctx)
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
		err := s.store.Get(ctx, bucket, j.Name, &last)
		if errors.Is(err, store.ErrNotFound) {
			if err := s.store.Put(ctx, bucket, j.Name, Run{Job: j.Name, Started: now, Finished: now, Result: "baseline"}); err != nil {
				// Without a baseline the next start baselines again: no run is reported missed meanwhile.
				s.log.Error("record schedule baseline", "job", j.Name, "err", err)
			}
			continue
		}
		if err != nil {
			s.log.Error("read schedule record", "job", j.Name, "err", err)
			continue
		}
		sched, _ := config.CronParser.Parse(j.Spec)
		due := sched.Next(last.Started)
		if last.Result == "running" && last.Process != "" && s.store.Alive(ctx, last.Process) {
			continue // another replica is running it (it lost the lease meanwhile)
		}
		if last.Result == "running" {
			s.cutOff(ctx, j, now)
		}
		if s.CatchUp > 0 && !due.After(now) && now.Sub(due) <= s.CatchUp && sched.Next(due).After(now) {
			s.log.Warn("running a scheduled job late: it fell due while no replica was the leader", "job", j.Name, "due", due, "late", now.Sub(due).Round(time.Second))
			s.report(ctx, fmt.Sprintf(":information_source: The scheduled %s due at %s UTC runs now, %s late: it fell due while the bot's replicas were handing over.", j.Name, due.Format("2006-01-02 15:04"), now.Sub(due).Round(time.Second)))
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.run(j)
			}()
			continue
		}
		if due.Add(time.Minute).Before(now) {
			missed := 0
			for t := due; t.Before(now) && missed < 1000; t = sched.Next(t) {
				missed++
			}
			s.report(ctx, fmt.Sprintf(":warning: Scheduled %s did not run: %d run(s) missed since %s UTC (schedule `%s`), because the bot was not running. The next one is at %s UTC; run it now by hand if needed.",
				j.Name, missed, due.Format("2006-01-02 15:04"), j.Spec, sched.Next(now).Format("2006-01-02 15:04")))
			// Record that the gap was reported, so it is said once.
			if err := s.store.Put(ctx, bucket, j.Name, Run{Job: j.Name, Started: now, Finished: now, Result: fmt.Sprintf("missed %d", missed)}); err != nil {
				s.log.Error("record a reported gap in the schedule; it may be reported again", "job", j.Name, "err", err)
			}
		}
	}
}

// errRan: the slot this run would fill has been started already.
var errRan = errors.New("this run of the schedule has started already")

// claim records the run as started, with a write conditional on no run
// having started since the slot fell due: however many replicas (or
// clock ticks) try one slot, one runs it.
func (s *Scheduler) claim(ctx context.Context, j Job, r Run) error {
	sched, err := config.CronParser.Parse(j.Spec)
	if err != nil {
		return err
	}
	val, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = kv.Update(ctx, s.store.KV(), bucket, j.Name, func(cur []byte, exists bool) ([]byte, error) {
		if exists {
			var last Run
			if json.Unmarshal(cur, &last) == nil && sched.Next(last.Started).After(r.Started) {
				return nil, errRan
			}
		}
		return val, nil
	})
	return err
}

// CheckCutOff reports runs whose replica died while running them. It
// runs inside the engine's one recovery (engine.Engine.AlsoRecover), at
// start-up and on the leader every round (at election the dead one's
// heartbeat may not have expired yet). A run record is bookkeeping of the
// clock — whether a slot was started, which CheckMissed reads — not work:
// the backup or drill a run started is an engine operation, which the
// engine recovers by its kind's policy; a report run is nothing else, so
// this is the only place its loss is said.
func (s *Scheduler) CheckCutOff(ctx context.Context) {
	for _, j := range s.jobs {
		var last Run
		if err := s.store.Get(ctx, bucket, j.Name, &last); err != nil || last.Result != "running" {
			continue
		}
		if last.Process == s.store.Process() || (last.Process != "" && s.store.Alive(ctx, last.Process)) {
			continue
		}
		s.cutOff(ctx, j, s.now().UTC())
	}
}

// cutOff marks a run that died with its process interrupted, with a
// write conditional on it being that run still, and says so once.
func (s *Scheduler) cutOff(ctx context.Context, j Job, now time.Time) {
	var started time.Time
	_, err := kv.Update(ctx, s.store.KV(), bucket, j.Name, func(cur []byte, exists bool) ([]byte, error) {
		var last Run
		if !exists || json.Unmarshal(cur, &last) != nil || last.Result != "running" {
			return nil, errRan
		}
		started = last.Started
		last.Result, last.Finished = "interrupted", now
		return json.Marshal(last)
	})
	if err != nil {
		if !errors.Is(err, errRan) {
			s.log.Error("mark a cut-off schedule run interrupted; tried again at the next check", "job", j.Name, "err", err)
		}
		return
	}
	s.report(ctx, fmt.Sprintf(":warning: The scheduled %s that started at %s UTC was cut off when the bot stopped; it was not run again.", j.Name, started.Format("2006-01-02 15:04")))
}

func (s *Scheduler) run(j Job) {
	s.wg.Add(1)
	defer s.wg.Done()
	ctx := s.ctx
	r := Run{Job: j.Name, Started: s.now().UTC(), Result: "running", Process: s.store.Process()}
	if ctx == nil || ctx.Err() != nil {
		return // stopping: the slot is left to whoever leads next
	}
	if err := s.claim(ctx, j, r); errors.Is(err, errRan) {
		s.log.Info("scheduled job already started for this slot (by another replica or an earlier tick)", "job", j.Name)
		return
	} else if err != nil && s.Leader != nil {
		// With replicas, an unrecorded run could be run again by the next
		// leader; the slot is reported instead, and the next leader's
		// catch-up or a person runs it.
		s.log.Error("record schedule run", "job", j.Name, "err", err)
		s.report(ctx, fmt.Sprintf(":x: Scheduled %s was not started: its run could not be recorded in the shared state (%v), and running it unrecorded could run it twice. Run it by hand if needed.", j.Name, err))
		return
	} else if err != nil {
		// Without the record a restart cannot tell the run happened; the
		// backup matters more than its bookkeeping.
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
	// The outcome is recorded even when the bot is stopping (ctx ended):
	// the job ran, and a record left "running" reads as cut off.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), kv.DefaultTimeout)
	defer cancel()
	if err := s.store.Put(rctx, bucket, j.Name, r); err != nil {
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
func (s *Scheduler) Last(ctx context.Context, name string) (Run, error) {
	var r Run
	err := s.store.Get(ctx, bucket, name, &r)
	return r, err
}
