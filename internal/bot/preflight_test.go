package bot

import (
	"strings"
	"testing"

	"github.com/circlebot/circlebot/internal/approvals"
)

// The pre-flight's headline says what was tried: a table of rows that
// could not be tried now does not read as "AWS would accept all".
func TestPreflightHeadlineCountsOnlyWhatWasTried(t *testing.T) {
	ok := approvals.Check{Call: "ec2:StopInstances", Status: "ok"}
	skipped := approvals.Check{Call: "ssm:SendCommand", Status: "skipped", Reason: "no dry run"}
	refused := approvals.Check{Call: "ec2:TerminateInstances", Status: approvals.CheckRefused, Reason: "UnauthorizedOperation"}
	for _, c := range []struct {
		rows []approvals.Check
		want string
	}{
		{[]approvals.Check{ok, ok}, ":white_check_mark: AWS would accept all 2"},
		{[]approvals.Check{ok, skipped}, ":white_check_mark: AWS would accept the 1 tried; 1 checked later"},
		{[]approvals.Check{skipped, skipped}, ":white_circle: none of the 2 could be tried now; each is checked when its step runs"},
		{[]approvals.Check{ok, skipped, refused}, ":x: 1 of 3 refused"},
	} {
		got := preflightText(approvals.Plan{Preflight: c.rows})
		if first, _, _ := strings.Cut(got, "\n"); !strings.HasSuffix(first, c.want) {
			t.Errorf("headline %q, want it to end %q", first, c.want)
		}
	}
}
