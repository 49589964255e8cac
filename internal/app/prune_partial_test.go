package app_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/testenv/faultproxy"
)

// partlyPruned makes two backups and has an approved prune (keep_last 1)
// stop at the 2nd DeleteSnapshot of the older one: it returns the two
// backups, the older one's snapshots in the order a prune deletes them,
// and the prune.
func partlyPruned(t *testing.T, edit func(*config.Config)) (e *env, older, newer *ops.Backup, snaps []string, op string) {
	t.Helper()
	e = newEnv(t, func(c *config.Config) {
		c.Backup.Retention.KeepLast = 1
		if edit != nil {
			edit(c)
		}
	})
	var made []*ops.Backup
	for range 2 {
		e.slash(alice, incident, "backup now")
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if recs, _ := e.app.Backups.Records.Backups(t.Context()); len(recs) == len(made)+1 && recs[0].State == ops.StateCompleted {
				made = append(made, recs[0])
				break
			}
		}
		e.server.Wait()
	}
	if len(made) != 2 {
		t.Fatalf("made %d backups", len(made))
	}
	older, newer = made[0], made[1]
	for _, s := range older.Snapshots {
		snaps = append(snaps, s.ID)
	}
	slices.Sort(snaps) // the order a prune deletes them in
	if len(snaps) != 3 {
		t.Fatalf("the older backup has %d snapshots", len(snaps))
	}

	// The 2nd DeleteSnapshot fails, every attempt of it.
	e.proxy.SetFaults(faultproxy.Faults{ServerErrorRate: 1, Match: func(c faultproxy.Call) bool {
		return c.Action == "DeleteSnapshot" && !isDryRun(c) && c.Params.Get("SnapshotId") == snaps[1]
	}})
	first := e.requestPrune()
	e.slash(bob, incident, "approve "+first)
	e.waitText("the prune stops", "stopped after deleting 1 snapshots", "Nothing is held")
	e.server.Wait()
	e.proxy.SetFaults(faultproxy.Faults{})
	stopped, err := e.app.Journal.ByRequest(t.Context(), first)
	if err != nil {
		t.Fatal(err)
	}
	op = stopped.ID
	left := e.snapshotsOf(older.ID)
	if len(left) != 2 {
		t.Fatalf("%d snapshots of %s left, want 2", len(left), older.ID)
	}
	for _, s := range left {
		if tagOf(s.Tags, ops.TagPruning) != op || tagOf(s.Tags, ops.TagSetSize) != "3" {
			t.Errorf("snapshot left unmarked: %v", s.Tags)
		}
	}
	if rec, err := e.app.Backups.Records.Backup(t.Context(), older.ID); err != nil || rec.Pruning != op || rec.State != ops.StateCompleted {
		t.Errorf("record %+v (%v)", rec, err)
	}
	return e, older, newer, snaps, op
}

// A prune that fails part-way leaves the set it was deleting partly
// pruned: every snapshot left carries the prune's mark, `backup list`,
// `backup status` and the daily report call it partly pruned (not a
// failed restore point), and the next prune — whose plan says so —
// deletes the rest although the policy alone would keep the set.
func TestAPruneThatStopsPartWayIsFinishedByTheNext(t *testing.T) {
	e, older, newer, snaps, op := partlyPruned(t, nil)
	e.slash(alice, incident, "backup list")
	list := e.slack.Text(e.waitPost(incident, "backup list", func(s string) bool { return strings.Contains(s, "Restore points") }))
	line := lineWith(list, older.ID)
	if !strings.Contains(line, ":wastebasket:") || !strings.Contains(line, "partly pruned: 2 of its 3 snapshots left by `"+op+"`") || strings.Contains(line, ":x:") || strings.Contains(line, "incomplete") {
		t.Errorf("backup list shows %s as:\n%s\nin\n%s", older.ID, line, list)
	}
	if !strings.Contains(list, "Newest restore point `"+newer.ID+"`") {
		t.Errorf("backup list:\n%s", list)
	}
	rid := e.slash(alice, incident, "backup status "+older.ID)
	st := e.slack.Text(e.waitResponse(rid, "backup status"))
	if !strings.Contains(st, "partly pruned") || !strings.Contains(st, snaps[0]+"`") || !strings.Contains(st, "deleted by `"+op+"`") {
		t.Errorf("backup status:\n%s", st)
	}
	e.slash(alice, incident, "report now")
	report := e.waitText("report", "Daily backup report")
	if strings.Contains(report, "Failed:") || !strings.Contains(report, "`"+older.ID+"` partly pruned") || !strings.Contains(report, "(the 2 snapshots a stopped prune left)") {
		t.Errorf("report:\n%s", report)
	}
	e.server.Wait()

	// The next prune finishes it, and says so before and after.
	e.proxy.Reset()
	second := e.requestPrune()
	e.waitText("the plan", second, "finish pruning `"+older.ID+"` (2 of 3 snapshots left")
	e.slash(bob, incident, "approve "+second)
	e.waitText("the summary", "Retention finished pruning "+older.ID+" (2 snapshots a stopped prune left), approved by <@"+bob+">")
	e.server.Wait()
	if n := len(e.snapshotsOf(older.ID)); n != 0 {
		t.Errorf("%d snapshots of the partly pruned set left", n)
	}
	if n := len(e.snapshotsOf(newer.ID)); n != 3 {
		t.Errorf("the newest restore point lost snapshots: %d left", n)
	}
	if n := realCount(e.proxy, "DeleteSnapshot"); n != 2 {
		t.Errorf("DeleteSnapshot called %d times, want 2", n)
	}
	if n := e.proxy.Count("CreateTags"); n != 0 {
		t.Errorf("a partly pruned set was marked again (%d CreateTags)", n)
	}
}

// The scheduled prune after a backup finishes a partly pruned set too,
// with the policy in the config as its approval, while it prunes what
// the policy says.
func TestTheScheduledPruneFinishesAPartlyPrunedSet(t *testing.T) {
	e, older, newer, _, _ := partlyPruned(t, func(c *config.Config) {
		c.Slack.ReportChannel = incident
		c.Backup.Schedule = "0 */6 * * *"
	})
	poster := e.web().For(chat.Request{ChannelID: incident})
	if err := e.app.ScheduledBackup(context.Background(), poster); err != nil {
		t.Fatal(err)
	}
	e.waitText("the summary", "Retention pruned "+newer.ID+" (3 snapshots) and finished pruning "+older.ID+" (2 snapshots a stopped prune left), approved by the retention policy in the config.")
	for _, b := range []*ops.Backup{older, newer} {
		if n := len(e.snapshotsOf(b.ID)); n != 0 {
			t.Errorf("%d snapshots of %s left", n, b.ID)
		}
	}
	if newest := e.lastBackup(ops.StateCompleted); len(e.snapshotsOf(newest.ID)) != 3 {
		t.Errorf("the scheduled backup %s lost snapshots", newest.ID)
	}
}

func lineWith(text, sub string) string {
	for l := range strings.SplitSeq(text, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}
