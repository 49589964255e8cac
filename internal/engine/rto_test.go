package engine

import (
	"strings"
	"testing"
	"time"

	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/store"
)

// The prediction is the median time to the app starting of the last
// finished operations of the same path, from their journaled step times;
// with none, the model's default, and the plan's line says which.
func TestPredictRTOFromTheJournalElseTheModel(t *testing.T) {
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	j := journal.Store{KV: st.KV()}
	ctx := t.Context()

	none := predictRTO(ctx, j, KindRestoreEBS, appStepRestore, hasStep(swapStep), ops.DefaultInPlaceRTO)
	if none.Predicted != ops.DefaultInPlaceRTO || len(none.From) != 0 || !strings.Contains(none.Line("in-place restore"), "timing model's default") {
		t.Fatalf("no history: %+v %q", none, none.Line("in-place restore"))
	}
	t0 := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	add := func(id string, swap bool, toApp time.Duration, state journal.State) {
		steps := []journal.Step{{Name: "Check the restore point", State: journal.StepDone, Started: t0, Finished: t0.Add(time.Second)}}
		if swap {
			steps = append(steps, journal.Step{Name: swapStep, State: journal.StepDone, Started: t0, Finished: t0.Add(time.Minute)})
		}
		steps = append(steps, journal.Step{Name: appStepRestore, State: journal.StepDone, Started: t0, Finished: t0.Add(toApp)},
			journal.Step{Name: "Verify", State: journal.StepDone, Started: t0.Add(toApp), Finished: t0.Add(toApp + time.Minute)})
		if err := j.Create(ctx, &journal.Op{ID: id, Kind: KindRestoreEBS, State: state, Steps: steps, Created: t0}); err != nil {
			t.Fatal(err)
		}
	}
	add("op-1", true, 3*time.Minute, journal.Done)
	add("op-2", true, 5*time.Minute, journal.Done)
	add("op-3", true, 4*time.Minute, journal.Done)
	add("op-4", false, 9*time.Minute, journal.Done)    // a rebuild: another path
	add("op-5", true, 30*time.Minute, journal.Stopped) // not finished: not a measurement
	got := predictRTO(ctx, j, KindRestoreEBS, appStepRestore, hasStep(swapStep), ops.DefaultInPlaceRTO)
	if got.Predicted != 4*time.Minute || len(got.From) != 3 {
		t.Fatalf("in place: %+v, want the median 4m of op-1..3", got)
	}
	if l := got.Line("in-place restore"); !strings.Contains(l, "median of the last 3") || !strings.Contains(l, "op-3") {
		t.Errorf("line: %q", l)
	}
	rb := predictRTO(ctx, j, KindRestoreEBS, appStepRestore, not(hasStep(swapStep)), ops.DefaultRebuildRTO)
	if rb.Predicted != 9*time.Minute || len(rb.From) != 1 {
		t.Errorf("rebuild: %+v", rb)
	}
	if a := got.Actual(200 * time.Second); a != "The app started 3m20s after the start (predicted 4m)." {
		t.Errorf("actual: %q", a)
	}
}
