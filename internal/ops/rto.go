package ops

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/circlebot/circlebot/internal/journal"
)

// RTO is a plan's predicted time from approval to the app starting, and
// what the prediction rests on.
type RTO struct {
	Predicted time.Duration `json:"predicted,omitempty"`
	// From are the past operations whose whole time to the app starting
	// it was the median of: plans journaled before predictions were made
	// step by step (read, no longer written).
	From []string `json:"from,omitempty"`
	// Parts are the path's steps up to the app's start, in the plan's
	// order, each with its predicted time and where that came from.
	Parts []RTOPart `json:"parts,omitempty"`
}

// RTOPart is one step of the path (or consecutive steps measured as one)
// and the source of its predicted time: the past operations of the same
// path and the drills that measured it (the median of the newest of
// those), else the timing model's default (Default), else nothing (0).
type RTOPart struct {
	Steps   []string      `json:"steps"`
	Label   string        `json:"label,omitempty"` // short, for the sentence
	Took    time.Duration `json:"took,omitempty"`
	Ops     []string      `json:"ops,omitempty"`
	Drills  []string      `json:"drills,omitempty"`
	Default bool          `json:"default,omitempty"`
	// Plan: the plan's own estimate (a restore point still completing:
	// its snapshots' time left, from their progress so far).
	Plan bool `json:"plan,omitempty"`
}

func (p RTOPart) measured() bool { return len(p.Ops)+len(p.Drills) > 0 }

// The recovery paths a prediction is for (keys of StepTimes).
const (
	PathInPlace  = MethodInPlace
	PathRebuild  = MethodRebuild
	PathFailover = "failover"
)

// StepTime is what a prediction assumes of one step until this account
// has measured it: AWS's waits in it on the timing model.
type StepTime struct {
	Label   string        // short, for the plan's sentence
	Default time.Duration // the sum of Model's durations
	// Model names the rows of internal/testenv/motoserver.Model whose
	// durations Default is the sum of ("+" between; "": the step makes
	// API calls only and waits for no AWS change on the critical path).
	// TestStepTimesMatchTheModel fails when the two drift apart.
	Model string
	// PlanTimed: the plan predicts this step itself from what it found
	// (how much of its restore point is still to complete), so history
	// and the default add nothing for it (they would count it twice).
	PlanTimed bool
}

func st(label string, d time.Duration, model string) StepTime {
	return StepTime{Label: label, Default: d, Model: model}
}

// waitForPoint is the step a restore whose restore point is still
// completing begins with; its plan adds the remaining time itself.
var waitForPoint = StepTime{Label: "restore point", PlanTimed: true}

// StepTimes are each path's steps' defaults, copied from the AWS timing
// model (internal/testenv/motoserver.Model; ops must not import the test
// launcher). Only the waits on the critical path count, as bench/rto
// measures them: a wait that overlaps an earlier one (the in-place
// volumes created while the box stops, the SSM agent online before a
// rebuilt box's status checks pass) costs its step nothing. The bot's own
// polling (seconds) is not in them. A step not listed here (a newer
// version's) has no default and adds nothing until measured.
var StepTimes = map[string]map[string]StepTime{
	PathRebuild: {
		"Follow the restore point's snapshots": waitForPoint,
		"Check the restore point":              st("check", 0, ""),
		"Make an image of the restore point":   st("image", 30*time.Second, "image"),
		"Protect the old volumes":              st("protect", 0, ""),
		"Stop the old instance":                st("stop", 60*time.Second, "stop"),
		"Free the private IP":                  st("free the IP", 60*time.Second, "terminate+ip_release"),
		// RunInstances returns at once; the next step waits for running.
		"Launch the new Services box":             st("launch", 0, ""),
		"Wait for running and status checks":      st("status checks", 140*time.Second, "launch+status_checks"),
		"Reattach the old box's other interfaces": st("reattach", 0, ""),
		// The agent (45 s after running) answers before the checks pass.
		"Start the app": st("app start", 0, ""),
	},
	PathInPlace: {
		"Follow the restore point's snapshots": waitForPoint,
		"Check the restore point":              st("check", 0, ""),
		// CreateVolume only: the volumes become available while the box
		// stops (volume_create < stop), and the swap waits for them.
		"Create the new volumes":  st("volumes", 0, ""),
		"Protect the old volumes": st("protect", 0, ""),
		"Stop the Services box":   st("stop", 60*time.Second, "stop"),
		"Swap the volumes":        st("swap", 15*time.Second, "volume_detach+volume_attach"),
		"Start the Services box":  st("start", 20*time.Second, "start"),
		"Start the app":           st("app start", 45*time.Second, "agent"),
	},
	PathFailover: {
		"Fence the old primary": st("fence", 60*time.Second, "stop"),
		// A warm standby is running, its agent online (a stopped one:
		// ColdStandby).
		"Start the replica instance":                        st("standby start", 0, ""),
		"Move the service address":                          st("address move", 0, ""),
		"Configure the service address in the replica's OS": st("OS address", 0, ""),
		"Hand over the Name tag":                            st("Name tag", 0, ""),
		"Start the app on the replica":                      st("app start", 0, ""),
	},
}

// ColdStandby is the failover's "Start the replica instance" when the
// standby is stopped: it starts, and the SSM agent must come online
// before the next steps' commands.
var ColdStandby = st("standby start", 65*time.Second, "start+agent")

// StepNames are the names of a step list, in order.
func StepNames(defs []journal.Def) []string {
	names := make([]string, len(defs))
	for i, d := range defs {
		names[i] = d.Name
	}
	return names
}

// RestoreStepNames are the steps of a typical restore by method (the
// report's prediction; a plan's own uses its own list).
func RestoreStepNames(method string) []string {
	p := RestorePlan{Method: method}
	if method == MethodInPlace {
		p.InPlace, p.Old = &InPlacePlan{}, &OldBox{}
	}
	return StepNames((&SnapshotRestore{}).Steps(p))
}

// FailoverStepNames are the steps of a typical failover (to a warm
// standby in the box's subnet, the address moved and configured).
func FailoverStepNames() []string {
	return StepNames((&Failover{}).Steps(FailoverPlan{Discovery: DiscoverySecondaryIP, ServiceMAC: "-"}))
}

// About writes a prediction as people say it: "about 2–3 min".
func About(d time.Duration) string {
	switch m := int(d / time.Minute); {
	case d < time.Minute:
		return "under a minute"
	case d%time.Minute == 0:
		return fmt.Sprintf("about %d min", m)
	default:
		return fmt.Sprintf("about %d–%d min", m, m+1)
	}
}

// Line is the plan's sentence on it; what names the path ("in-place
// restore", its plural made with an s).
func (r RTO) Line(what string) string {
	return "predicted time to the app starting: " + r.Sources(what)
}

// Measured says whether any of it rests on this account's measurements.
func (r RTO) Measured() bool {
	return len(r.From) > 0 || slices.ContainsFunc(r.Parts, RTOPart.measured)
}

// quickStep is the predicted time under which a step is not named in
// the sentence: it makes API calls and waits for nothing.
const quickStep = 2 * time.Second

// Sources is the prediction and, compactly, what it rests on: which
// steps were measured by which operations and drills, and that the rest
// are the timing model's defaults.
func (r RTO) Sources(what string) string {
	if len(r.Parts) == 0 && len(r.From) > 0 { // a plan journaled before per-step predictions
		return fmt.Sprintf("about %s, the median of the last %d %s on this account (%s)", Span(r.Predicted), len(r.From), plural(len(r.From), what), strings.Join(r.From, ", "))
	}
	wait := ""
	if i := slices.IndexFunc(r.Parts, func(p RTOPart) bool { return p.Plan }); i >= 0 {
		wait = fmt.Sprintf(" (of which about %s waiting for the %s to complete, from its progress so far)", Span(r.Parts[i].Took), r.Parts[i].Label)
		if r.Parts[i].Took == 0 {
			wait = fmt.Sprintf(" plus the %s completing, which its progress cannot tell yet", r.Parts[i].Label)
		}
	}
	if !r.Measured() {
		return fmt.Sprintf("%s%s — the AWS timing model's default (bench/rto) for the rest, as no %s has been measured on this account yet", About(r.Predicted), wait, what)
	}
	// One phrase per set of sources, in the order the steps come.
	type group struct {
		labels      []string
		ops, drills []string
	}
	var groups []*group
	var rest, unknown []string
	for _, p := range r.Parts {
		switch {
		case p.Plan:
			// Said apart (wait).
		case p.Took < quickStep && p.Default:
			// API calls only: naming them would bury the waits.
		case p.measured():
			i := slices.IndexFunc(groups, func(g *group) bool { return slices.Equal(g.ops, p.Ops) && slices.Equal(g.drills, p.Drills) })
			if i < 0 {
				groups = append(groups, &group{ops: p.Ops, drills: p.Drills})
				i = len(groups) - 1
			}
			if p.Took >= quickStep {
				groups[i].labels = append(groups[i].labels, p.Label)
			}
		case p.Default:
			rest = append(rest, p.Label)
		default:
			unknown = append(unknown, p.Label)
		}
	}
	named := slices.ContainsFunc(groups, func(g *group) bool { return len(g.labels) > 0 })
	var phrases []string
	for _, g := range groups {
		var from string
		switch ids := strings.Join(append(slices.Clone(g.ops), g.drills...), ", "); {
		case len(g.drills) == 0:
			from = fmt.Sprintf("measured over the last %s (%s)", count(len(g.ops), what), ids)
		case len(g.ops) == 0:
			from = fmt.Sprintf("from %d %s (%s)", len(g.drills), plural(len(g.drills), "drill"), ids)
		default:
			from = fmt.Sprintf("from the last %s and %d %s (%s)", count(len(g.ops), what), len(g.drills), plural(len(g.drills), "drill"), ids)
		}
		if len(g.labels) == 0 { // only steps of seconds (API calls) measured by these
			if named {
				continue
			}
			g.labels = []string{"the steps (seconds each)"}
		}
		phrases = append(phrases, and(g.labels)+" "+from)
	}
	if len(rest) > 0 {
		phrases = append(phrases, "the rest the timing model's defaults")
	}
	if len(unknown) > 0 {
		phrases = append(phrases, "nothing for "+and(unknown)+" (neither measured nor modelled)")
	}
	return About(r.Predicted) + wait + ": " + strings.Join(phrases, "; ")
}

// count is "3 in-place restores", or "in-place restore" for one (after
// "the last").
func count(n int, what string) string {
	if n == 1 {
		return what
	}
	return fmt.Sprintf("%d %s", n, plural(n, what))
}

func plural(n int, what string) string {
	if n == 1 {
		return what
	}
	return what + "s"
}

func and(items []string) string {
	if len(items) < 2 {
		return strings.Join(items, "")
	}
	return strings.Join(items[:len(items)-1], ", ") + " and " + items[len(items)-1]
}

// Actual is the summary's sentence: how long it took to the app starting
// beside what was predicted.
func (r RTO) Actual(took time.Duration) string {
	if took <= 0 {
		return ""
	}
	s := fmt.Sprintf("The app started %s after the start", took.Round(time.Second))
	if r.Predicted > 0 {
		s += fmt.Sprintf(" (predicted %s)", Span(r.Predicted))
	}
	return s + "."
}
