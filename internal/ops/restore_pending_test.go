package ops

import (
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

func TestSourceProgressEstimatesFromTheRateSinceStart(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	snap := func(id string, st ec2types.SnapshotState, pct string, ago time.Duration) ec2types.Snapshot {
		return ec2types.Snapshot{SnapshotId: aws.String(id), State: st, Progress: aws.String(pct), StartTime: aws.Time(now.Add(-ago))}
	}
	for _, c := range []struct {
		name    string
		snaps   []ec2types.Snapshot
		least   int
		left    time.Duration
		ok      bool
		pending int
		failed  string
	}{
		{"one at a quarter after 5m", []ec2types.Snapshot{snap("a", "pending", "25%", 5*time.Minute)}, 25, 15 * time.Minute, true, 1, ""},
		{"the slowest counts", []ec2types.Snapshot{snap("a", "pending", "90%", 9*time.Minute), snap("b", "pending", "50%", 10*time.Minute), snap("c", "completed", "100%", 10*time.Minute)}, 50, 10 * time.Minute, true, 2, ""},
		{"0% is unknown", []ec2types.Snapshot{snap("a", "pending", "0%", time.Minute), snap("b", "pending", "50%", time.Minute)}, 0, time.Minute, false, 2, ""},
		{"seconds near the end", []ec2types.Snapshot{snap("a", "pending", "99%", 99*time.Second)}, 99, time.Second, true, 1, ""},
		{"all completed", []ec2types.Snapshot{snap("a", "completed", "100%", time.Hour)}, 100, 0, true, 0, ""},
		{"an error is named", []ec2types.Snapshot{snap("a", "pending", "10%", time.Minute), snap("b", "error", "40%", time.Minute)}, 10, 9 * time.Minute, true, 1, "b"},
	} {
		least, left, ok, pending, failed := sourceProgress(c.snaps, now)
		got := ""
		if failed != nil {
			got = aws.ToString(failed.SnapshotId)
		}
		if least != c.least || left != c.left || ok != c.ok || len(pending) != c.pending || got != c.failed {
			t.Errorf("%s: got %d%% %s ok=%t pending %v failed %q; want %d%% %s ok=%t %d pending failed %q", c.name, least, left, ok, pending, got, c.least, c.left, c.ok, c.pending, c.failed)
		}
	}
}

// A plan whose source is completing puts the stop before the volumes or
// the image; one whose source is completed keeps its order.
func TestPendingSourceOrdersTheStopBeforeTheVolumes(t *testing.T) {
	r := &SnapshotRestore{}
	plan := RestorePlan{Method: MethodInPlace, InPlace: &InPlacePlan{}, Old: &OldBox{InstanceID: "i-1"}}
	names := func(p RestorePlan) []string {
		var out []string
		for _, d := range r.Steps(p) {
			out = append(out, d.Name)
		}
		return out
	}
	done := names(plan)
	if done[0] != "Check the restore point" || done[1] != "Create the new volumes" || done[3] != "Stop the Services box" || plan.StopStep() != 3 {
		t.Fatalf("completed source: %v", done)
	}
	plan.Completing = &Completing{Progress: 10}
	got := names(plan)
	want := []string{"Follow the restore point's snapshots", "Protect the old volumes", "Stop the Services box", "Create the new volumes", "Swap the volumes"}
	for i, w := range want {
		if got[i] != w {
			t.Fatalf("pending source: %v, want it to begin %v", got, want)
		}
	}
	if len(got) != len(done) || got[plan.StopStep()] != "Stop the Services box" {
		t.Errorf("pending source: %v (stop step %d)", got, plan.StopStep())
	}
	rebuild := RestorePlan{Completing: &Completing{}}
	if got := names(rebuild); got[0] != "Follow the restore point's snapshots" || got[2] != "Stop the old instance" || got[3] != "Make an image of the restore point" {
		t.Errorf("pending rebuild: %v", got)
	}
}

// `restore latest` with no completed restore point names the newest one
// still completing: the bot's can be followed (`restore bk-…`), another's
// only waited for; failed, pruned and tarball points are not offered.
func TestNoCompletedPointNamesOneStillCompleting(t *testing.T) {
	at := time.Date(2026, 11, 30, 3, 4, 0, 0, time.UTC)
	none := "there is no completed EBS restore point to restore from (`backup list` shows them)."
	for _, c := range []struct {
		name string
		pts  []Point
		want string
	}{
		{"nothing", nil, none},
		{"one completing", []Point{{ID: "bk-1", Method: MethodEBS, MadeByBot: true, State: StateRunning, Started: at, Pct: 40}},
			"there is no completed EBS restore point yet, but `bk-1` (begun 2026-11-30 03:04 UTC) is still completing (40%): `restore bk-1` restores from it, keeping the box serving until it is nearly complete."},
		{"failed, pruned, not the bot's, tarball", []Point{
			{ID: "bk-2", Method: MethodEBS, MadeByBot: true, State: StateFailed},
			{ID: "bk-3", Method: MethodEBS, MadeByBot: true, State: StateRunning, PrunedBy: "op-1"},
			{ID: "bk-5", Method: MethodTarball, MadeByBot: true, State: StateRunning},
		}, none},
		{"not the bot's", []Point{{ID: "snap-4", Method: MethodEBS, State: StateRunning, Started: at, Pct: 0}},
			"there is no completed EBS restore point yet; `snap-4` (begun 2026-11-30 03:04 UTC) is still completing (0%): `restore latest` takes it once it has completed (`backup list` shows its progress)."},
	} {
		if got := noCompletedPoint(c.pts); got != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.name, got, c.want)
		}
	}
}
