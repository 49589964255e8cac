package chat

import (
	"fmt"
	"strings"
	"time"
)

// Age renders a duration the way people say it: "3h12m", "2d4h", "45s".
func Age(d time.Duration) string {
	switch {
	case d < 0:
		return "in the future (clock skew?)"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	default:
		return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
	}
}

// Bytes renders a size as people read it: "1.5 GiB".
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// Who renders a requester: a Slack mention for people, the word itself
// for the scheduler.
func Who(requester string) string {
	if strings.HasPrefix(requester, "U") || strings.HasPrefix(requester, "W") {
		return "<@" + requester + ">"
	}
	return requester
}

// Count renders a number with thousands separators: "1,300".
func Count(n int) string {
	s := fmt.Sprint(n)
	if n < 0 {
		return "-" + Count(-n)
	}
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	return b.String()
}
