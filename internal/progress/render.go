package progress

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/slack-go/slack"

	"github.com/circlebot/circlebot/internal/chat"
)

// StepState is where one step of an operation stands.
type StepState int

// The step states are prefixed because Failed is also an Outcome, and the
// outcomes are what callers spell out (progress.Failed in Finish).
const (
	StepPending StepState = iota
	StepRunning
	StepDone
	StepFailed
	StepSkipped
)

func (s StepState) String() string {
	switch s {
	case StepPending:
		return "pending"
	case StepRunning:
		return "running"
	case StepDone:
		return "done"
	case StepFailed:
		return "failed"
	case StepSkipped:
		return "skipped"
	}
	return fmt.Sprintf("StepState(%d)", int(s))
}

// Outcome is how an operation ended. InProgress is the zero value so that a
// Snapshot nobody finished renders as the live message.
type Outcome int

const (
	InProgress Outcome = iota
	Succeeded
	Failed
	Cancelled
)

func (o Outcome) String() string {
	switch o {
	case InProgress:
		return "in progress"
	case Succeeded:
		return "succeeded"
	case Failed:
		return "failed"
	case Cancelled:
		return "cancelled"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// Emoji is the outcome's marker, shared with anything else that reports on
// operations so the same state always looks the same.
func (o Outcome) Emoji() string {
	switch o {
	case Succeeded:
		return ":white_check_mark:"
	case Failed:
		return ":x:"
	case Cancelled:
		return ":no_entry_sign:"
	}
	return ":hourglass_flowing_sand:"
}

// Step is one line of the checklist.
type Step struct {
	Name   string
	State  StepState
	Detail string // Done/Running: what happened; Failed: the error; Skipped: why
	// Pct is shown as a bar while the step runs, only when HasPct: a step
	// at 0% and a step that reports no percentage look different.
	Pct      float64
	HasPct   bool
	Started  time.Time
	Finished time.Time
}

// Snapshot is everything one rendering of the message shows. It is a value
// so that the console and tests can render without a Stream.
type Snapshot struct {
	OpID      string
	Title     string
	Requester string // Slack user ID, or a word such as "scheduler"
	Steps     []Step
	Outcome   Outcome
	Summary   string // shown once Outcome is not InProgress
	Started   time.Time
	Finished  time.Time // zero while running
	// Now is when the snapshot was taken; running durations are measured
	// to it so that Render stays a pure function.
	Now time.Time
}

// Limits on what one checklist line may carry, so that a long error or
// detail cannot push the message past Slack's limits or bury the other
// steps; the full text of a long error goes to the thread instead.
const (
	maxTitle      = 200
	maxStepName   = 150
	maxDetail     = 300
	maxSummary    = 2 * chat.MaxSectionText
	maxTextOutput = 300 // the notification fallback
	barCells      = 10
)

// Render is the Slack message for a snapshot.
func Render(st Snapshot) chat.Message {
	var blocks []slack.Block
	blocks = append(blocks, chat.Section(headline(st))...)
	blocks = append(blocks, chat.Context(contextLine(st)))
	if len(st.Steps) > 0 {
		lines := make([]string, len(st.Steps))
		for i, s := range st.Steps {
			lines[i] = stepLine(s, st.Outcome != InProgress, st.Now)
		}
		blocks = append(blocks, chat.Section(strings.Join(lines, "\n"))...)
	}
	if st.Outcome != InProgress {
		var b strings.Builder
		if sum := strings.TrimSpace(st.Summary); sum != "" {
			b.WriteString(clip(sum, maxSummary))
			b.WriteString("\n")
		}
		if !st.Started.IsZero() {
			fmt.Fprintf(&b, "*Total:* %s · ", fmtDuration(total(st)))
		}
		fmt.Fprintf(&b, "*Outcome:* %s", st.Outcome)
		if st.OpID != "" {
			fmt.Fprintf(&b, " · `%s`", st.OpID)
		}
		blocks = append(blocks, chat.Divider())
		blocks = append(blocks, chat.Section(b.String())...)
	}
	return chat.Message{Text: fallback(st), Blocks: blocks}.Fit()
}

func headline(st Snapshot) string {
	title := clip(oneLine(st.Title), maxTitle)
	if title == "" {
		title = "Operation"
	}
	line := fmt.Sprintf("%s *%s*", st.Outcome.Emoji(), title)
	if st.Outcome != InProgress {
		line += " — " + st.Outcome.String() + took(st)
	}
	return line
}

func contextLine(st Snapshot) string {
	var parts []string
	if st.OpID != "" {
		parts = append(parts, "`"+st.OpID+"`")
	}
	if r := requester(st.Requester); r != "" {
		parts = append(parts, "requested by "+r)
	}
	if !st.Started.IsZero() {
		if st.Outcome == InProgress {
			parts = append(parts, "elapsed "+fmtDuration(total(st)))
		} else {
			parts = append(parts, "took "+fmtDuration(total(st)))
		}
	}
	if len(parts) == 0 {
		return st.Outcome.String()
	}
	return strings.Join(parts, " · ")
}

// requester mentions Slack user IDs (so the name shows and the person can
// be reached) and leaves words such as "scheduler" as they are.
func requester(r string) string {
	if r == "" {
		return ""
	}
	if isUserID(r) {
		return "<@" + r + ">"
	}
	return r
}

func isUserID(s string) bool {
	if len(s) < 3 || (s[0] != 'U' && s[0] != 'W') {
		return false
	}
	for _, c := range s[1:] {
		if (c < 'A' || c > 'Z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// stepLine is one checklist line. final says the operation is over, when a
// step that never started is worth calling "not run" rather than leaving
// the reader to wonder whether it is still coming.
func stepLine(s Step, final bool, now time.Time) string {
	name := clip(oneLine(s.Name), maxStepName)
	detail := clip(oneLine(s.Detail), maxDetail)
	switch s.State {
	case StepRunning:
		var b strings.Builder
		b.WriteString(":hourglass_flowing_sand: " + name)
		switch {
		case s.HasPct && detail != "":
			fmt.Fprintf(&b, " — %s (%s)", bar(s.Pct), detail)
		case s.HasPct:
			b.WriteString(" — " + bar(s.Pct))
		case detail != "":
			b.WriteString(" — " + detail)
		}
		// How long a step has been running is what tells a stuck step from
		// a slow one; under a second it is noise.
		if !s.Started.IsZero() && !now.IsZero() && now.Sub(s.Started) >= time.Second {
			b.WriteString(" · " + fmtDuration(now.Sub(s.Started)))
		}
		return b.String()
	case StepDone:
		line := ":white_check_mark: " + name + " — " + fmtDuration(stepDuration(s))
		if detail != "" {
			line += " · " + detail
		}
		return line
	case StepFailed:
		if detail == "" {
			detail = "failed"
		}
		line := ":x: " + name + " — " + detail
		if !s.Started.IsZero() {
			line += " · " + fmtDuration(stepDuration(s))
		}
		return line
	case StepSkipped:
		line := ":heavy_minus_sign: " + name + " — skipped"
		if detail != "" {
			line += ": " + detail
		}
		return line
	default:
		if final {
			return ":white_large_square: " + name + " — not run"
		}
		return ":white_large_square: " + name
	}
}

// bar draws pct as ten cells and a whole percentage. Both round down: a
// snapshot set at 99.6% has not finished, and "100%" on a step still
// running would be read as done.
func bar(pct float64) string {
	if math.IsNaN(pct) || pct < 0 {
		pct = 0
	}
	if pct > 100 {
		pct = 100
	}
	whole := int(math.Floor(pct))
	filled := whole / (100 / barCells)
	return strings.Repeat("▓", filled) + strings.Repeat("░", barCells-filled) + fmt.Sprintf(" %d%%", whole)
}

// fallback is the notification text: one line that says what and how it
// stands, without relying on emoji rendering in a lock-screen banner.
func fallback(st Snapshot) string {
	title := clip(oneLine(st.Title), maxTitle)
	if title == "" {
		title = "Operation"
	}
	var s string
	if st.Outcome != InProgress {
		s = title + ": " + st.Outcome.String() + took(st)
		if st.OpID != "" {
			s += " (" + st.OpID + ")"
		}
		return clip(s, maxTextOutput)
	}
	s = title + ": running"
	for i, step := range st.Steps {
		if step.State == StepRunning {
			s += fmt.Sprintf(" — step %d/%d %s", i+1, len(st.Steps), clip(oneLine(step.Name), maxStepName))
			if step.HasPct {
				s += fmt.Sprintf(" %d%%", int(math.Floor(math.Max(0, math.Min(100, step.Pct)))))
			}
			break
		}
	}
	return clip(s, maxTextOutput)
}

// took is " in 4m12s", or nothing when the start is unknown (a snapshot
// built by hand) rather than a made-up "<1s".
func took(st Snapshot) string {
	if st.Started.IsZero() {
		return ""
	}
	return " in " + fmtDuration(total(st))
}

func total(st Snapshot) time.Duration {
	end := st.Finished
	if end.IsZero() {
		end = st.Now
	}
	if st.Started.IsZero() || end.Before(st.Started) {
		return 0
	}
	return end.Sub(st.Started)
}

func stepDuration(s Step) time.Duration {
	if s.Started.IsZero() || s.Finished.Before(s.Started) {
		return 0
	}
	return s.Finished.Sub(s.Started)
}

// fmtDuration is short and fixed in form so that a column of step
// durations reads at a glance: "<1s", "12s", "4m05s", "1h02m".
func fmtDuration(d time.Duration) string {
	switch {
	case d < time.Second:
		return "<1s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d/time.Minute), int(d%time.Minute/time.Second))
	default:
		return fmt.Sprintf("%dh%02dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	}
}

// oneLine keeps a checklist entry on its line: a newline inside a detail
// would break the checklist's one-step-per-line shape.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	return strings.Join(strings.Fields(s), " ")
}

func clip(s string, limit int) string { return chat.Truncate(s, limit) }

// escape makes text that is not meant as mrkdwn (error messages) show as
// written; Slack reads <, > and & as markup.
func escape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}
