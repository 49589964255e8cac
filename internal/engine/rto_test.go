package engine

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/store"
)

var rtoT0 = time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)

func rtoJournal(t *testing.T) journal.Store {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return journal.Store{KV: st.KV()}
}

// timed is one journaled step: its name and how long it took.
type timed struct {
	name string
	took time.Duration
}

// addOp journals a finished operation of kind whose steps ran back to
// back from at, each as long as given (a second's gap after each).
func addOp(t *testing.T, j journal.Store, id, kind string, at time.Time, state journal.State, result any, steps ...timed) {
	t.Helper()
	var ss []journal.Step
	now := at
	for _, s := range steps {
		ss = append(ss, journal.Step{Name: s.name, State: journal.StepDone, Started: now, Finished: now.Add(s.took)})
		now = now.Add(s.took + time.Second)
	}
	op := &journal.Op{ID: id, Kind: kind, State: state, Steps: ss, Created: at}
	if result != nil {
		b, err := json.Marshal(result)
		if err != nil {
			t.Fatal(err)
		}
		op.Result = b
	}
	if err := j.Create(t.Context(), op); err != nil {
		t.Fatal(err)
	}
}

func inPlaceRun(stop, swap, start, app time.Duration) []timed {
	return []timed{{"Check the restore point", 0}, {"Create the new volumes", 0}, {"Protect the old volumes", 0},
		{"Stop the Services box", stop}, {"Swap the volumes", swap}, {"Start the Services box", start}, {"Start the app", app}, {"Verify the Services box", time.Minute}}
}

func drillRun(image, launch, healthy time.Duration) []timed {
	return []timed{{ops.DrillSteps[0], 0}, {ops.DrillSteps[1], image}, {ops.DrillSteps[2], launch}, {ops.DrillSteps[3], healthy}, {ops.DrillSteps[4], time.Minute}}
}

func predictFor(t *testing.T, j journal.Store, path rtoPath) ops.RTO {
	t.Helper()
	var steps []string
	switch path.key {
	case ops.PathFailover:
		steps = ops.FailoverStepNames()
	default:
		steps = ops.RestoreStepNames(path.key)
	}
	return predictRTO(t.Context(), j, path, steps, stepDefaults(path, false))
}

// With nothing measured, each step is the timing model's default and the
// sum is the path's prediction; the sentence says so.
func TestPredictRTODefaultsPerStep(t *testing.T) {
	j := rtoJournal(t)
	for _, c := range []struct {
		path rtoPath
		want time.Duration
	}{
		// stop 60 + detach 10 + attach 5 + start 20 + agent 45
		{pathInPlace, 140 * time.Second},
		// image 30 + stop 60 + terminate 45 + IP 15 + launch 20 + checks 120
		{pathRebuild, 290 * time.Second},
		// the fence's stop; a warm standby waits for nothing else
		{pathFailover, 60 * time.Second},
	} {
		r := predictFor(t, j, c.path)
		if r.Predicted != c.want || r.Measured() {
			t.Errorf("%s: %+v, want the model's %s", c.path.what, r, c.want)
		}
		if l := r.Line(c.path.what); !strings.Contains(l, "timing model's default") || !strings.Contains(l, "no "+c.path.what+" has been measured") {
			t.Errorf("%s: %q", c.path.what, l)
		}
	}
	if l := predictFor(t, j, pathInPlace).Line("in-place restore"); !strings.HasPrefix(l, "predicted time to the app starting: about 2–3 min") {
		t.Errorf("in place: %q", l)
	}
	// A stopped standby starts and waits for its agent.
	cold := predictRTO(t.Context(), j, pathFailover, ops.FailoverStepNames(), stepDefaults(pathFailover, true))
	if cold.Predicted != 125*time.Second {
		t.Errorf("stopped standby: %s", cold.Predicted)
	}
}

// Each step is the median of its own newest measurements by finished
// operations of the same path, the gap before it included; the other
// path's operations and unfinished ones are not measurements.
func TestPredictRTOPerStepMedians(t *testing.T) {
	j := rtoJournal(t)
	ctx := t.Context()
	addOp(t, j, "op-1", KindRestoreEBS, rtoT0, journal.Done, nil, inPlaceRun(50*time.Second, 10*time.Second, 20*time.Second, 30*time.Second)...)
	addOp(t, j, "op-2", KindRestoreEBS, rtoT0.Add(time.Hour), journal.Done, nil, inPlaceRun(70*time.Second, 30*time.Second, 40*time.Second, 50*time.Second)...)
	addOp(t, j, "op-3", KindRestoreEBS, rtoT0.Add(2*time.Hour), journal.Done, nil, inPlaceRun(60*time.Second, 20*time.Second, 30*time.Second, 40*time.Second)...)
	// Not measurements of an in-place restore: a stopped one, a rebuild.
	addOp(t, j, "op-4", KindRestoreEBS, rtoT0.Add(3*time.Hour), journal.Stopped, nil, inPlaceRun(time.Hour, time.Hour, time.Hour, time.Hour)...)
	addOp(t, j, "op-5", KindRestoreEBS, rtoT0.Add(4*time.Hour), journal.Done, nil, timed{"Stop the old instance", time.Hour}, timed{"Start the app", time.Hour})

	got := predictFor(t, j, pathInPlace)
	// Medians: stop 60, swap 20, start 30, app 40, and a second's gap
	// before each of the 6 steps after the first.
	if want := (60+20+30+40+6)*time.Second + 0; got.Predicted != want {
		t.Fatalf("predicted %s, want %s: %+v", got.Predicted, want, got)
	}
	l := got.Line(pathInPlace.what)
	if !strings.Contains(l, "measured over the last 3 in-place restores (op-3, op-2, op-1)") || strings.Contains(l, "op-4") || strings.Contains(l, "op-5") {
		t.Errorf("line: %q", l)
	}
	if !strings.HasPrefix(l, "predicted time to the app starting: about 2–3 min: stop, swap, start and app start measured") {
		t.Errorf("line: %q", l)
	}
	// Only the newest rtoSamples count.
	for i := range 5 {
		addOp(t, j, "op-9"+string(rune('0'+i)), KindRestoreEBS, rtoT0.Add(time.Duration(10+i)*time.Hour), journal.Done, nil, inPlaceRun(10*time.Second, 0, 0, 0)...)
	}
	if got := predictRTO(ctx, j, pathInPlace, ops.RestoreStepNames(ops.MethodInPlace), stepDefaults(pathInPlace, false)); got.Predicted != 16*time.Second {
		t.Errorf("newest five: %s", got.Predicted)
	}
	// Actual stays as it was.
	if a := got.Actual(200 * time.Second); a != "The app started 3m20s after the start (predicted 2m36s)." {
		t.Errorf("actual: %q", a)
	}
}

// The steps come from the plan's own list: a step the path's history and
// the model know nothing of adds nothing (and is named), and the order
// is the plan's. The wait for a restore point still completing is the
// plan's own to predict: history adds nothing for it.
func TestPredictRTOTakesThePlansSteps(t *testing.T) {
	j := rtoJournal(t)
	steps := append([]string{"Follow the restore point's snapshots", "Warm the volumes"}, ops.RestoreStepNames(ops.MethodInPlace)...)
	r := predictRTO(t.Context(), j, pathInPlace, steps, stepDefaults(pathInPlace, false))
	if r.Predicted != 140*time.Second || len(r.Parts) != 9 || r.Parts[0].Took != 0 || r.Parts[1].Took != 0 {
		t.Fatalf("%+v", r)
	}
	// Once an operation measured it, a new step counts; the restore
	// point's wait does not.
	addOp(t, j, "op-1", KindRestoreEBS, rtoT0, journal.Done, nil, append([]timed{{"Follow the restore point's snapshots", time.Hour}, {"Warm the volumes", 5 * time.Minute}}, inPlaceRun(time.Minute, 0, 0, 0)...)...)
	r = predictRTO(t.Context(), j, pathInPlace, steps, stepDefaults(pathInPlace, false))
	if r.Parts[0].Took != 0 || len(r.Parts[0].Ops) != 0 {
		t.Errorf("the restore point's wait from history: %+v", r.Parts[0])
	}
	if r.Parts[1].Took != 5*time.Minute+time.Second || len(r.Parts[1].Ops) != 1 {
		t.Errorf("%+v", r.Parts[1])
	}
	if l := r.Line(pathInPlace.what); l != "predicted time to the app starting: about 6–7 min: warm the volumes and stop measured over the last in-place restore (op-1)" {
		t.Errorf("%q", l)
	}
	// A step neither measured nor modelled is said.
	r = predictRTO(t.Context(), rtoJournal(t), pathInPlace, []string{"Warm the volumes", "Stop the Services box", "Start the app"}, ops.StepTimes[ops.PathInPlace])
	if r.Predicted != 105*time.Second || !strings.Contains(r.Line("in-place restore"), "timing model's default") {
		t.Errorf("%+v %q", r, r.Line("in-place restore"))
	}
	addOp(t, j, "op-2", KindRestoreEBS, rtoT0.Add(time.Hour), journal.Done, nil, inPlaceRun(time.Minute, 0, 0, 0)...)
	r = predictRTO(t.Context(), j, pathInPlace, []string{"Check the restore point", "Thaw", "Stop the Services box"}, ops.StepTimes[ops.PathInPlace])
	if l := r.Line(pathInPlace.what); !strings.HasSuffix(l, "; nothing for thaw (neither measured nor modelled)") {
		t.Errorf("%q", l)
	}
}

// Drills measure a rebuild's image, launch and status checks (not the
// app, not a stop): a journal with only drills changes those parts of
// the rebuild's prediction and the sentence says "from N drills"; the
// in-place prediction is unchanged by them.
func TestPredictRTOFromDrills(t *testing.T) {
	j := rtoJournal(t)
	model := predictFor(t, j, pathRebuild)
	type work struct {
		Checks time.Duration `json:"checks"`
	}
	addOp(t, j, "dr-1", KindDrill, rtoT0, journal.Done, work{Checks: 3 * time.Minute}, drillRun(2*time.Minute, 2*time.Second, 4*time.Minute)...)
	addOp(t, j, "dr-2", KindDrill, rtoT0.Add(time.Hour), journal.Done, work{Checks: 4 * time.Minute}, drillRun(4*time.Minute, 4*time.Second, 5*time.Minute)...)
	// A drill recorded before Checks: its image and launch count, its
	// health step (the app probe in it) does not.
	addOp(t, j, "dr-0", KindDrill, rtoT0.Add(-time.Hour), journal.Done, nil, drillRun(3*time.Minute, 3*time.Second, time.Hour)...)
	addOp(t, j, "dr-x", KindDrill, rtoT0.Add(2*time.Hour), journal.Failed, work{Checks: time.Hour}, drillRun(time.Hour, time.Hour, time.Hour)...)

	r := predictFor(t, j, pathRebuild)
	part := func(name string) ops.RTOPart {
		for _, p := range r.Parts {
			if p.Steps[0] == name {
				return p
			}
		}
		t.Fatalf("no part %q: %+v", name, r.Parts)
		return ops.RTOPart{}
	}
	// image: median of 2m, 3m, 4m plus the second's gap before it
	if p := part("Make an image of the restore point"); p.Took != 3*time.Minute+time.Second || len(p.Drills) != 3 || p.Default {
		t.Errorf("image: %+v", p)
	}
	if p := part("Launch the new Services box"); p.Took != 4*time.Second || len(p.Drills) != 3 {
		t.Errorf("launch: %+v", p)
	}
	if p := part("Wait for running and status checks"); p.Took != 4*time.Minute+time.Second || len(p.Drills) != 2 {
		t.Errorf("checks: %+v", p)
	}
	for _, name := range []string{"Stop the old instance", "Free the private IP", "Start the app"} {
		if p := part(name); !p.Default || len(p.Drills) > 0 {
			t.Errorf("%s: %+v", name, p)
		}
	}
	if r.Predicted == model.Predicted {
		t.Errorf("drills changed nothing: %s", r.Predicted)
	}
	l := r.Line(pathRebuild.what)
	for _, want := range []string{"image and launch from 3 drills (dr-2, dr-1, dr-0)", "status checks from 2 drills (dr-2, dr-1)", "the rest the timing model's defaults"} {
		if !strings.Contains(l, want) {
			t.Errorf("line %q lacks %q", l, want)
		}
	}
	if strings.Contains(l, "dr-x") {
		t.Errorf("a failed drill counted: %q", l)
	}
	if ip := predictFor(t, j, pathInPlace); ip.Measured() {
		t.Errorf("drills calibrated an in-place restore: %+v", ip)
	}

	// Past rebuilds and drills together: the newest measurements of a
	// step, whichever made them.
	addOp(t, j, "op-1", KindRestoreEBS, rtoT0.Add(3*time.Hour), journal.Done, nil,
		timed{"Check the restore point", 0}, timed{"Make an image of the restore point", 10 * time.Minute}, timed{"Protect the old volumes", 0},
		timed{"Stop the old instance", 2 * time.Minute}, timed{"Free the private IP", time.Minute}, timed{"Launch the new Services box", 0},
		timed{"Wait for running and status checks", 3 * time.Minute}, timed{"Start the app", 0}, timed{"Verify the new Services box", 0})
	r = predictFor(t, j, pathRebuild)
	l = r.Line(pathRebuild.what)
	for _, want := range []string{"image and launch from the last rebuild restore and 3 drills (op-1, dr-2, dr-1, dr-0)", "status checks from the last rebuild restore and 2 drills (op-1, dr-2, dr-1)", "stop and free the IP measured over the last rebuild restore (op-1)"} {
		if !strings.Contains(l, want) {
			t.Errorf("line %q lacks %q", l, want)
		}
	}
	if strings.Contains(l, "the rest") {
		t.Errorf("every step measured, yet: %q", l)
	}
}

// A plan journaled before per-step predictions (only "from") still reads
// and says what it said then.
func TestRTOOldPlansStillRead(t *testing.T) {
	var p ops.RestorePlan
	if err := json.Unmarshal([]byte(`{"method":"in-place","rto":{"predicted":240000000000,"from":["op-1","op-2"]}}`), &p); err != nil {
		t.Fatal(err)
	}
	if l := p.RTO.Line("in-place restore"); l != "predicted time to the app starting: about 4m, the median of the last 2 in-place restores on this account (op-1, op-2)" {
		t.Errorf("%q", l)
	}
	if a := p.RTO.Actual(3 * time.Minute); a != "The app started 3m0s after the start (predicted 4m)." {
		t.Errorf("%q", a)
	}
	// A new one carries its parts and no "from".
	b, err := json.Marshal(predictFor(t, rtoJournal(t), pathFailover))
	if err != nil {
		t.Fatal(err)
	}
	if s := string(b); strings.Contains(s, `"from"`) || !strings.Contains(s, `"parts"`) {
		t.Errorf("%s", s)
	}
}

// The report's lines: per path the measured times oldest first, the
// prediction and its sources; plainly "none measured yet" otherwise.
func TestRTOReportLines(t *testing.T) {
	j := rtoJournal(t)
	lines := strings.Join(RTOReportLines(t.Context(), j), "\n")
	for _, want := range []string{"in-place restores: none measured yet; the prediction is the timing model's default, about 2–3 min",
		"rebuild restores: none measured yet; the prediction is the timing model's default, about 4–5 min",
		"failovers: none measured yet; the prediction is the timing model's default, about 1 min",
		"drills, to healthy: none measured yet"} {
		if !strings.Contains(lines, want) {
			t.Errorf("%s\nlacks %q", lines, want)
		}
	}
	addOp(t, j, "op-1", KindRestoreEBS, rtoT0, journal.Done, nil, inPlaceRun(time.Minute, 0, 0, time.Minute)...)
	addOp(t, j, "op-2", KindRestoreEBS, rtoT0.Add(time.Hour), journal.Done, nil, inPlaceRun(2*time.Minute, 0, 0, time.Minute)...)
	addOp(t, j, "dr-1", KindDrill, rtoT0.Add(2*time.Hour), journal.Done, map[string]any{"checks": 2 * time.Minute}, drillRun(time.Minute, 0, 3*time.Minute)...)
	lines = strings.Join(RTOReportLines(t.Context(), j), "\n")
	for _, want := range []string{"in-place restores: 2m6s → 3m6s; predicted about 3–4 min: ", "(op-2, op-1)",
		"rebuild restores: none measured yet; predicted about 5–6 min: image and status checks from 1 drill (dr-1); the rest the timing model's defaults",
		"drills, to healthy: 4m3s"} {
		if !strings.Contains(lines, want) {
			t.Errorf("%s\nlacks %q", lines, want)
		}
	}
}
