package ops

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/circlebot/circlebot/internal/testenv/motoserver"
)

// The per-step defaults are copies of the timing model's durations (ops
// may not import the test launcher): a change to motoserver.Model that
// is not carried over fails here.
func TestStepTimesMatchTheModel(t *testing.T) {
	check := func(path, step string, st StepTime) {
		var sum time.Duration
		if st.Model != "" {
			for _, k := range strings.Split(st.Model, "+") {
				sum += motoserver.ModelDuration(k) // panics on a row the model no longer has
			}
		}
		if sum != st.Default {
			t.Errorf("%s %q: default %s, but Model's %s sum to %s", path, step, st.Default, st.Model, sum)
		}
	}
	for path, steps := range StepTimes {
		for step, st := range steps {
			check(path, step, st)
		}
	}
	check(PathFailover, "Start the replica instance (stopped)", ColdStandby)
	// Every step of each path has a default: the table follows the step
	// lists.
	for path, names := range map[string][]string{PathInPlace: RestoreStepNames(MethodInPlace), PathRebuild: RestoreStepNames(MethodRebuild), PathFailover: FailoverStepNames()} {
		for _, n := range names {
			if _, ok := StepTimes[path][n]; !ok && !slices.Contains([]string{"Verify the Services box", "Verify the new Services box", "Verify health"}, n) {
				t.Errorf("%s: step %q has no default", path, n)
			}
		}
	}
}

// The sentence names the steps that take time by their source, leaves
// out the API-call steps, and says when the measured ones all took
// seconds (moto, or a very fast account).
func TestRTOSourcesSentence(t *testing.T) {
	r := RTO{Predicted: 150 * time.Second, Parts: []RTOPart{
		{Steps: []string{"Check the restore point"}, Label: "check", Took: time.Second, Ops: []string{"op-2", "op-1"}},
		{Steps: []string{"Stop the Services box"}, Label: "stop", Took: 70 * time.Second, Ops: []string{"op-2", "op-1"}},
		{Steps: []string{"Swap the volumes"}, Label: "swap", Took: 20 * time.Second, Ops: []string{"op-2", "op-1"}},
		{Steps: []string{"Protect the old volumes"}, Label: "protect", Default: true},
		{Steps: []string{"Start the Services box"}, Label: "start", Took: 20 * time.Second, Default: true},
		{Steps: []string{"Wait for the restore point"}, Label: "wait for the restore point"},
		{Steps: []string{"Start the app"}, Label: "app start", Took: 40 * time.Second, Drills: []string{"dr-1"}},
	}}
	want := "predicted time to the app starting: about 2–3 min: stop and swap measured over the last 2 in-place restores (op-2, op-1); app start from 1 drill (dr-1); the rest the timing model's defaults; nothing for wait for the restore point (neither measured nor modelled)"
	if l := r.Line("in-place restore"); l != want {
		t.Errorf("got  %q\nwant %q", l, want)
	}
	quick := RTO{Predicted: 3 * time.Second, Parts: []RTOPart{{Label: "stop", Took: time.Second, Ops: []string{"op-1"}}, {Label: "check", Default: true}}}
	if l := quick.Line("failover"); l != "predicted time to the app starting: under a minute: the steps (seconds each) measured over the last failover (op-1)" {
		t.Errorf("%q", l)
	}
}
