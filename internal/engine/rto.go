package engine

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/ops"
)

// rtoSamples is how many measurements a step's prediction is the median
// of: recent enough to follow a change of instance type or data size.
const rtoSamples = 5

// maxStepGap is the longest pause between one step's end and the next
// one's start that counts as the bot's own time (journal writes). A longer
// one is an operation stopped and resumed later: a person's time, not a
// recovery's.
const maxStepGap = time.Minute

// The step each path's "app starting" ends with.
const (
	appStepRestore  = "Start the app"
	appStepFailover = "Start the app on the replica"
	swapStep        = "Swap the volumes" // only an in-place restore has it
)

// rtoPath is a recovery path as the journal tells its operations apart.
type rtoPath struct {
	key     string // ops.StepTimes' key
	what    string // for sentences; its plural adds an s
	kind    string
	appStep string
	match   func(*journal.Op) bool
	drills  bool // drills measure some of its steps (drillMeasures)
}

var (
	pathInPlace  = rtoPath{ops.PathInPlace, "in-place restore", KindRestoreEBS, appStepRestore, hasStep(swapStep), false}
	pathRebuild  = rtoPath{ops.PathRebuild, "rebuild restore", KindRestoreEBS, appStepRestore, not(hasStep(swapStep)), true}
	pathFailover = rtoPath{ops.PathFailover, "failover", KindFailover, appStepFailover, nil, false}
)

// drillMeasures are the rebuild's steps a drill measures, and how: a
// drill does the same AWS work in them, on the same restore point's
// snapshots, in another subnet.
//   - "Make an image": RegisterImage of the restore point's snapshots,
//     waited for until available — the rebuild's image step.
//   - "Launch in the drill subnet": RunInstances, not waited for — the
//     rebuild's launch (which adds only its secondary IPs).
//   - "Wait until healthy" waits for running and both status checks (as
//     the rebuild's next step does), then probes drill.health_url if set:
//     only the first part (DrillWork.Checks, recorded apart) is the
//     rebuild's "Wait for running and status checks".
//
// Nothing else maps: a drill stops no box, frees no IP and starts no app
// through SSM (its app, if probed, starts on its own at boot), and an
// in-place restore or a failover does none of a drill's work.
var drillMeasures = map[string]func(op *journal.Op) (time.Duration, time.Time, bool){
	"Make an image of the restore point": drillStep(ops.DrillSteps[1]),
	"Launch the new Services box":        drillStep(ops.DrillSteps[2]),
	"Wait for running and status checks": func(op *journal.Op) (time.Duration, time.Time, bool) {
		i := slices.IndexFunc(op.Steps, func(s journal.Step) bool { return s.Name == ops.DrillSteps[3] })
		var w struct {
			Checks time.Duration `json:"checks"`
		}
		if i < 0 || op.Steps[i].State != journal.StepDone || json.Unmarshal(op.Result, &w) != nil || w.Checks <= 0 {
			return 0, time.Time{}, false // drills before Checks was recorded: the step alone is not the checks
		}
		return w.Checks + gapBefore(op, i), op.Steps[i].Finished, true
	},
}

func drillStep(name string) func(op *journal.Op) (time.Duration, time.Time, bool) {
	return func(op *journal.Op) (time.Duration, time.Time, bool) {
		i := slices.IndexFunc(op.Steps, func(s journal.Step) bool { return s.Name == name })
		if i < 0 {
			return 0, time.Time{}, false
		}
		d, ok := stepTook(op, i)
		return d, op.Steps[i].Finished, ok
	}
}

// stepTook is step i's measured time, with the pause before it when that
// is the bot's own (maxStepGap), so that a path's steps add up to its
// time to the app starting.
func stepTook(op *journal.Op, i int) (time.Duration, bool) {
	s := op.Steps[i]
	if s.State != journal.StepDone || s.Started.IsZero() || s.Finished.Before(s.Started) {
		return 0, false
	}
	return s.Finished.Sub(s.Started) + gapBefore(op, i), true
}

func gapBefore(op *journal.Op, i int) time.Duration {
	if i == 0 || op.Steps[i-1].Finished.IsZero() {
		return 0
	}
	if g := op.Steps[i].Started.Sub(op.Steps[i-1].Finished); g > 0 && g < maxStepGap {
		return g
	}
	return 0
}

type rtoSample struct {
	took time.Duration
	at   time.Time
	id   string
	dr   bool
}

// predictRTO predicts the time to the app starting of a plan of path
// whose steps are steps (the plan's own list, in its order): the sum,
// over its steps up to and including the app's start, of each step's
// predicted time — the median of its newest rtoSamples measurements by
// finished operations of the same path and, for the steps a drill does
// too, by finished drills; else the timing model's default for the step
// (defaults); else nothing. A journal that cannot be read gives the
// defaults: a prediction must not stop a recovery.
func predictRTO(ctx context.Context, j journal.Store, path rtoPath, steps []string, defaults map[string]ops.StepTime) ops.RTO {
	var past, drills []*journal.Op
	if j.KV != nil {
		if all, err := j.All(ctx); err == nil {
			for _, op := range all {
				switch {
				case op.State != journal.Done:
				case op.Kind == path.kind && (path.match == nil || path.match(op)):
					past = append(past, op)
				case path.drills && op.Kind == KindDrill:
					drills = append(drills, op)
				}
			}
		}
	}
	if i := slices.Index(steps, path.appStep); i >= 0 {
		steps = steps[:i+1]
	}
	var r ops.RTO
	for _, name := range steps {
		def, known := defaults[name]
		if def.PlanTimed {
			r.Parts = append(r.Parts, ops.RTOPart{Steps: []string{name}, Label: def.Label, Default: true})
			continue
		}
		var ss []rtoSample
		for _, op := range past {
			if i := slices.IndexFunc(op.Steps, func(s journal.Step) bool { return s.Name == name }); i >= 0 {
				if d, ok := stepTook(op, i); ok {
					ss = append(ss, rtoSample{d, op.Steps[i].Finished, op.ID, false})
				}
			}
		}
		if m := drillMeasures[name]; m != nil {
			for _, op := range drills {
				if d, at, ok := m(op); ok {
					ss = append(ss, rtoSample{d, at, op.ID, true})
				}
			}
		}
		part := ops.RTOPart{Steps: []string{name}, Label: cmp.Or(def.Label, lowerFirst(name))}
		if len(ss) > 0 {
			slices.SortFunc(ss, func(a, b rtoSample) int { return b.at.Compare(a.at) }) // newest first
			ss = ss[:min(len(ss), rtoSamples)]
			took := make([]time.Duration, len(ss))
			for i, s := range ss {
				took[i] = s.took
				if s.dr {
					part.Drills = append(part.Drills, s.id)
				} else {
					part.Ops = append(part.Ops, s.id)
				}
			}
			slices.Sort(took)
			part.Took = took[len(took)/2]
		} else if known {
			part.Took, part.Default = def.Default, true
		}
		r.Parts = append(r.Parts, part)
		r.Predicted += part.Took
	}
	r.Predicted = r.Predicted.Round(time.Second)
	return r
}

// stepDefaults are path's step defaults, and for a failover to a stopped
// standby its start.
func stepDefaults(path rtoPath, coldStandby bool) map[string]ops.StepTime {
	d := ops.StepTimes[path.key]
	if coldStandby {
		d = maps.Clone(d)
		d["Start the replica instance"] = ops.ColdStandby
	}
	return d
}

func lowerFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToLower(s[:1]) + s[1:]
}

// toApp is the time from an operation's first step to the end of its
// app-start step (0: it has none, or it did not finish).
func toApp(op *journal.Op, appStep string) time.Duration {
	if len(op.Steps) == 0 || op.Steps[0].Started.IsZero() {
		return 0
	}
	for _, s := range op.Steps {
		if s.Name == appStep && s.State == journal.StepDone && !s.Finished.IsZero() {
			return s.Finished.Sub(op.Steps[0].Started)
		}
	}
	return 0
}

// toHealthy is a drill's time from its first step to the end of "Wait
// until healthy" (0: it did not get there).
func toHealthy(op *journal.Op) time.Duration {
	return toApp(op, ops.DrillSteps[3])
}

// RTOReportLines are the daily report's lines on recovery times: per
// path, the last measured times to the app starting (oldest first) and
// the prediction a plan would make now with what it rests on; the
// drills' times to healthy.
func RTOReportLines(ctx context.Context, j journal.Store) []string {
	all, err := j.All(ctx)
	if err != nil {
		return []string{"*Recovery time:* the journal could not be read: " + ops.Explain(err)}
	}
	lines := []string{"*Recovery time to the app starting* (oldest → newest):"}
	for _, p := range []struct {
		path  rtoPath
		steps []string
	}{
		{pathInPlace, ops.RestoreStepNames(ops.MethodInPlace)},
		{pathRebuild, ops.RestoreStepNames(ops.MethodRebuild)},
		{pathFailover, ops.FailoverStepNames()},
	} {
		var took []string
		for _, op := range all {
			if op.Kind == p.path.kind && op.State == journal.Done && (p.path.match == nil || p.path.match(op)) {
				if d := toApp(op, p.path.appStep); d > 0 {
					took = append(took, d.Round(time.Second).String())
				}
			}
		}
		r := predictRTO(ctx, j, p.path, p.steps, stepDefaults(p.path, false))
		if len(took) == 0 {
			if r.Measured() { // a rebuild calibrated by drills
				lines = append(lines, fmt.Sprintf("• %s: none measured yet; predicted %s", plural(p.path.what), r.Sources(p.path.what)))
				continue
			}
			lines = append(lines, fmt.Sprintf("• %s: none measured yet; the prediction is the timing model's default, %s", plural(p.path.what), ops.About(r.Predicted)))
			continue
		}
		took = took[max(0, len(took)-rtoSamples):]
		lines = append(lines, fmt.Sprintf("• %s: %s; predicted %s", plural(p.path.what), strings.Join(took, " → "), r.Sources(p.path.what)))
	}
	var drilled []string
	for _, op := range all {
		if op.Kind == KindDrill && op.State == journal.Done {
			if d := toHealthy(op); d > 0 {
				drilled = append(drilled, d.Round(time.Second).String())
			}
		}
	}
	if len(drilled) > 0 {
		lines = append(lines, "• drills, to healthy: "+strings.Join(drilled[max(0, len(drilled)-rtoSamples):], " → "))
	} else {
		lines = append(lines, "• drills, to healthy: none measured yet")
	}
	return lines
}

func plural(what string) string { return what + "s" }

func hasStep(name string) func(*journal.Op) bool {
	return func(op *journal.Op) bool {
		return slices.ContainsFunc(op.Steps, func(s journal.Step) bool { return s.Name == name })
	}
}

func not(f func(*journal.Op) bool) func(*journal.Op) bool {
	return func(op *journal.Op) bool { return !f(op) }
}
