package engine

import (
	"context"
	"slices"
	"time"

	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/ops"
)

// rtoSamples is how many past operations a prediction is the median of:
// recent enough to follow a change of instance type or data size.
const rtoSamples = 5

// The step each path's "app starting" ends with.
const (
	appStepRestore  = "Start the app"
	appStepFailover = "Start the app on the replica"
	swapStep        = "Swap the volumes" // only an in-place restore has it
)

// predictRTO is the median time to the app starting of the last
// rtoSamples finished operations of kind that match, as the journal
// measured them step by step; with none, def (the timing model's). A
// journal that cannot be read gives the default too: a prediction must
// not stop a recovery.
func predictRTO(ctx context.Context, j journal.Store, kind, appStep string, match func(*journal.Op) bool, def time.Duration) ops.RTO {
	var took []time.Duration
	var from []string
	if j.KV != nil {
		all, err := j.All(ctx)
		if err == nil {
			for i := len(all) - 1; i >= 0 && len(took) < rtoSamples; i-- { // newest first
				op := all[i]
				if op.Kind != kind || op.State != journal.Done || (match != nil && !match(op)) {
					continue
				}
				if d := toApp(op, appStep); d > 0 {
					took, from = append(took, d), append(from, op.ID)
				}
			}
		}
	}
	if len(took) == 0 {
		return ops.RTO{Predicted: def}
	}
	slices.Sort(took)
	return ops.RTO{Predicted: took[len(took)/2].Round(time.Second), From: from}
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

func hasStep(name string) func(*journal.Op) bool {
	return func(op *journal.Op) bool {
		return slices.ContainsFunc(op.Steps, func(s journal.Step) bool { return s.Name == name })
	}
}

func not(f func(*journal.Op) bool) func(*journal.Op) bool {
	return func(op *journal.Op) bool { return !f(op) }
}
