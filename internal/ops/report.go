package ops

import (
	"slices"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// ReportInput is everything the daily report is computed from: what AWS
// holds now (the restore points) and what the bot recorded (backup
// records, drills). BuildReport is pure, so the numbers can be checked
// against a fixture.
type ReportInput struct {
	Now      time.Time
	Points   []Point   // newest first, as RestorePoints gives them
	Records  []*Backup // the bot's backup records
	Schedule cron.Schedule
	RPO      time.Duration
	Prune    []Verdict // retention's verdicts now; nil: no policy
	Drills   []Drill
}

// Report is the daily report's content.
type Report struct {
	Now       time.Time
	RPO       time.Duration
	Recent    []Point // started in the last 24 h, newest first
	Newest    *Point  // newest completed restore point
	NewestAge time.Duration
	OverRPO   bool
	Failed    []Failure   // scheduled (and other) backups that failed in 24 h
	Missed    []time.Time // scheduled times in 24 h with no backup started
	Count     int         // completed restore points
	GiB       int64       // their provisioned volume size (EBS) plus tarball size
	PruneNext []Point     // what retention would delete now
	LastDrill *Drill      // newest successful drill
	Drills    int         // drills in the last 30 days
	// FailedDrill is a drill newer than LastDrill that failed: the newest
	// restore point may not restore.
	FailedDrill *Drill
	Age         []AgeSample // newest completed restore point's age, 30 days
	Sizes       []SizeSample
}

type Failure struct {
	At      time.Time
	ID      string
	Trigger string
	Why     string
}

// AgeSample is the age of the newest completed restore point at At: the
// RPO sawtooth.
type AgeSample struct {
	At  time.Time
	Age time.Duration
}

type SizeSample struct {
	At  time.Time
	GiB float64
}

// Window is what "recent" means in the report.
const Window = 24 * time.Hour

// ChartDays is the span of the charts.
const ChartDays = 30

// BuildReport computes the report.
func BuildReport(in ReportInput) Report {
	now := in.Now.UTC()
	r := Report{Now: now, RPO: in.RPO}
	since := now.Add(-Window)
	var completed []Point
	var bytes int64
	for _, p := range in.Points {
		if !p.Started.Before(since) {
			r.Recent = append(r.Recent, p)
		}
		if p.Usable() {
			completed = append(completed, p)
			r.Count++
			bytes += int64(p.SizeGiB)<<30 + p.Bytes
			if r.Newest == nil || p.Started.After(r.Newest.Started) {
				pp := p
				r.Newest = &pp
			}
		}
	}
	r.GiB = bytes >> 30
	if r.Newest != nil {
		r.NewestAge = now.Sub(r.Newest.Started)
		r.OverRPO = in.RPO > 0 && r.NewestAge > in.RPO
	} else {
		r.OverRPO = true
	}
	// Failures come from the records: a failed backup may have left
	// nothing in AWS.
	for _, b := range in.Records {
		if b.Started.Before(since) {
			continue
		}
		if b.State == StateFailed || b.State == StateInterrupted {
			r.Failed = append(r.Failed, Failure{At: b.Started, ID: b.ID, Trigger: b.Trigger, Why: b.Error})
		}
	}
	slices.SortFunc(r.Failed, func(a, b Failure) int { return b.At.Compare(a.At) })
	// A scheduled time with no scheduled backup started within 15 minutes
	// of it did not run (the bot was down, or another operation held the
	// box).
	// (@every schedules have no fixed times to miss.)
	if _, every := in.Schedule.(cron.ConstantDelaySchedule); in.Schedule != nil && !every {
		var scheduled []time.Time
		for _, b := range in.Records {
			if b.Trigger == "scheduled" {
				scheduled = append(scheduled, b.Started)
			}
		}
		for _, p := range in.Points { // AWS's tags count too (a lost record)
			if p.Trigger == "scheduled" {
				scheduled = append(scheduled, p.Started)
			}
		}
		for t := in.Schedule.Next(since); !t.After(now.Add(-time.Minute)); t = in.Schedule.Next(t) {
			ran := slices.ContainsFunc(scheduled, func(s time.Time) bool {
				return !s.Before(t.Add(-time.Minute)) && s.Before(t.Add(15*time.Minute))
			})
			if !ran {
				r.Missed = append(r.Missed, t)
			}
		}
	}
	for _, v := range in.Prune {
		if !v.Keep {
			r.PruneNext = append(r.PruneNext, v.Point)
		}
	}
	monthAgo := now.Add(-ChartDays * 24 * time.Hour)
	for i := range in.Drills {
		d := in.Drills[i]
		if d.Started.After(monthAgo) {
			r.Drills++
		}
		if d.State == DrillPassed && (r.LastDrill == nil || d.Started.After(r.LastDrill.Started)) {
			r.LastDrill = &d
		}
	}
	for i := range in.Drills {
		d := in.Drills[i]
		if d.State == DrillFailed && (r.LastDrill == nil || d.Started.After(r.LastDrill.Started)) && (r.FailedDrill == nil || d.Started.After(r.FailedDrill.Started)) {
			r.FailedDrill = &d
		}
	}
	// The sawtooth also remembers restore points retention has pruned
	// since: the bot's records of completed backups.
	seen := map[string]bool{}
	for _, p := range completed {
		seen[p.ID] = true
	}
	for _, b := range in.Records {
		if b.State == StateCompleted && !seen[b.ID] {
			completed = append(completed, Point{ID: b.ID, Started: b.Started, State: StateCompleted})
		}
	}
	r.Age = ageSeries(completed, monthAgo, now, time.Hour)
	for _, p := range completed {
		if p.Started.After(monthAgo) && seen[p.ID] {
			r.Sizes = append(r.Sizes, SizeSample{At: p.Started, GiB: float64(p.SizeGiB) + float64(p.Bytes)/(1<<30)})
		}
	}
	slices.SortFunc(r.Sizes, func(a, b SizeSample) int { return a.At.Compare(b.At) })
	return r
}

// ageSeries samples, every step from..to, how old the newest restore
// point completed by then was (-1 before the first one).
func ageSeries(completed []Point, from, to time.Time, step time.Duration) []AgeSample {
	starts := make([]time.Time, 0, len(completed))
	for _, p := range completed {
		starts = append(starts, p.Started)
	}
	slices.SortFunc(starts, func(a, b time.Time) int { return a.Compare(b) })
	var out []AgeSample
	i := -1
	for t := from.Truncate(step); !t.After(to); t = t.Add(step) {
		for i+1 < len(starts) && !starts[i+1].After(t) {
			i++
		}
		age := time.Duration(-1)
		if i >= 0 {
			age = t.Sub(starts[i])
		}
		out = append(out, AgeSample{At: t, Age: age})
	}
	return out
}

// Span writes a configured duration the way people write it: 24h, 90m,
// 1h30m (not 24h0m0s).
func Span(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
		if strings.HasSuffix(s, "h0m") {
			s = strings.TrimSuffix(s, "0m")
		}
	}
	return s
}
