package engine

import (
	"strings"
	"testing"
	"time"

	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/ops"
)

// partlyPrunedPlan deletes bk-old and finishes bk-partly, which a stopped
// prune left with 2 of its 3 snapshots.
func partlyPrunedPlan() PrunePlan {
	at := time.Date(2026, 11, 28, 6, 0, 0, 0, time.UTC)
	return PrunePlan{Policy: ops.Policy{KeepLast: 1}, Verdicts: []ops.Verdict{
		{Point: ops.Point{ID: "bk-new", Method: ops.MethodEBS, State: ops.StateCompleted, Started: at, Snapshots: []string{"snap-n1"}}, Keep: true, Newest: true, Why: "the newest completed restore point"},
		{Point: ops.Point{ID: "bk-partly", Method: ops.MethodEBS, State: ops.StatePartlyPruned, Started: at.Add(-time.Hour), SizeGiB: 16,
			Snapshots: []string{"snap-p2", "snap-p3"}, PrunedBy: "op-1", SetSize: 3}, Finish: true, Why: "partly pruned"},
		{Point: ops.Point{ID: "bk-old", Method: ops.MethodEBS, State: ops.StateCompleted, Started: at.Add(-2 * time.Hour), SizeGiB: 24,
			Snapshots: []string{"snap-o1", "snap-o2", "snap-o3"}, SetSize: 3}, Why: "past the retention policy"},
	}}
}

// The plan a second person approves says which sets are finished, and
// how much of each is left; finishing is a fact of the hashed plan.
func TestPruneApprovalSaysWhatItFinishes(t *testing.T) {
	p := partlyPrunedPlan()
	a := pruneApproval(p)
	changes := strings.Join(a.Changes, "\n")
	for _, want := range []string{"finish pruning `bk-partly` (2 of 3 snapshots left", "`op-1` began deleting it", "delete `bk-old` (2026-11-28 04:00, 3 snapshots, 24 GiB)"} {
		if !strings.Contains(changes, want) {
			t.Errorf("changes lack %q:\n%s", want, changes)
		}
	}
	if a.Facts["finish"] != "bk-partly" || a.Facts["delete"] != "bk-partly,bk-old" || a.Facts["snapshots"] != "snap-p2,snap-p3,snap-o1,snap-o2,snap-o3" {
		t.Errorf("facts %v", a.Facts)
	}
	plain := p
	plain.Verdicts = []ops.Verdict{p.Verdicts[0], p.Verdicts[2]}
	if _, ok := pruneApproval(plain).Facts["finish"]; ok {
		t.Error("a plan that finishes nothing has a finish fact (its hash would change)")
	}
}

// The summary of a finished prune says what it finished and how many
// snapshots that took; a prune that finishes nothing reads as it did.
func TestPruneSummarySaysWhatItFinished(t *testing.T) {
	k := Prune(Setup{}, Retention{})
	op := Record{Op: &journal.Op{Approver: "U0BOB"}}
	got := k.Summary(partlyPrunedPlan(), PruneResult{Deleted: []string{"snap-p3", "snap-o1", "snap-o2", "snap-o3"}}, op)
	if want := "Retention pruned bk-old (3 snapshots) and finished pruning bk-partly (1 snapshots a stopped prune left), approved by <@U0BOB>."; got != want {
		t.Errorf("summary:\n%s\nwant\n%s", got, want)
	}
	p := partlyPrunedPlan()
	p.Verdicts = []ops.Verdict{p.Verdicts[0], p.Verdicts[2]}
	got = k.Summary(p, PruneResult{Deleted: []string{"snap-o1", "snap-o2", "snap-o3"}}, Record{Op: &journal.Op{}})
	if want := "Retention pruned bk-old (3 snapshots), approved by the retention policy in the config."; got != want {
		t.Errorf("summary:\n%s\nwant\n%s", got, want)
	}
}
