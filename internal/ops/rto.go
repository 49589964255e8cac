package ops

import (
	"fmt"
	"strings"
	"time"
)

// RTO is a plan's predicted time from approval to the app starting, and
// what the prediction rests on.
type RTO struct {
	Predicted time.Duration `json:"predicted,omitempty"`
	// From are the past operations on this account it is the median of;
	// none: the AWS timing model's default for this path.
	From []string `json:"from,omitempty"`
}

// Default times to the app starting, until this account has measured
// its own: bench/rto's results on the AWS timing model
// (internal/testenv/motoserver.Model), rounded up.
const (
	DefaultInPlaceRTO  = 4 * time.Minute
	DefaultRebuildRTO  = 6 * time.Minute
	DefaultFailoverRTO = 2 * time.Minute
)

// Line is the plan's sentence on it.
func (r RTO) Line(what string) string {
	if len(r.From) == 0 {
		return fmt.Sprintf("predicted time to the app starting: about %s — the AWS timing model's default (bench/rto), as no %s has been measured on this account yet", Span(r.Predicted), what)
	}
	return fmt.Sprintf("predicted time to the app starting: about %s, the median of the last %d %s on this account (%s)", Span(r.Predicted), len(r.From), what, strings.Join(r.From, ", "))
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
