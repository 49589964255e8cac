package bot

import (
	"fmt"
	"strings"

	"github.com/circlebot/circlebot/internal/approvals"
	"github.com/circlebot/circlebot/internal/chat"
)

// preflightRows is how many pre-flight rows the request message shows;
// a refused row is always among them.
const preflightRows = 25

// preflightText is the plan's pre-flight as a table for Slack: each call,
// what it acts on, ok, refused or skipped, and AWS's reason ("" when the
// kind has no pre-flight).
func preflightText(p approvals.Plan) string {
	if len(p.Preflight) == 0 {
		return ""
	}
	refused, skipped := 0, 0
	for _, c := range p.Preflight {
		switch c.Status {
		case approvals.CheckRefused:
			refused++
		case "skipped": // ops.CheckSkipped; approvals keeps the status as text
			skipped++
		}
	}
	var b strings.Builder
	switch {
	case refused > 0:
		fmt.Fprintf(&b, "*Pre-flight* (every call tried without effect): :x: %d of %d refused\n", refused, len(p.Preflight))
	case skipped == 0:
		fmt.Fprintf(&b, "*Pre-flight* (every call tried without effect): :white_check_mark: AWS would accept all %d\n", len(p.Preflight))
	case skipped == len(p.Preflight):
		// Nothing was tried: saying "would accept" would claim a check
		// that was not made.
		fmt.Fprintf(&b, "*Pre-flight* (every call tried without effect): :white_circle: none of the %d could be tried now; each is checked when its step runs\n", skipped)
	default:
		fmt.Fprintf(&b, "*Pre-flight* (every call tried without effect): :white_check_mark: AWS would accept the %d tried; %d checked later\n", len(p.Preflight)-skipped, skipped)
	}
	// Refused rows first: they are what the reader must act on.
	rows := make([]approvals.Check, 0, len(p.Preflight))
	for _, c := range p.Preflight {
		if c.Status == approvals.CheckRefused {
			rows = append(rows, c)
		}
	}
	for _, c := range p.Preflight {
		if c.Status != approvals.CheckRefused {
			rows = append(rows, c)
		}
	}
	for i, c := range rows {
		if i == preflightRows {
			fmt.Fprintf(&b, "• … and %d more, all ok or skipped\n", len(rows)-i)
			break
		}
		mark := ":white_check_mark: ok"
		switch c.Status {
		case approvals.CheckRefused:
			mark = ":x: *refused*"
		case "skipped":
			mark = ":white_circle: skipped"
		}
		line := fmt.Sprintf("%s `%s`", mark, c.Call)
		if c.On != "" {
			line += " " + c.On
		}
		if c.Reason != "" {
			line += " — " + c.Reason
		}
		b.WriteString("• " + chat.Truncate(line, 500) + "\n")
	}
	return b.String()
}
