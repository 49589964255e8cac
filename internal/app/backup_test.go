package app_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/circlebot/circlebot/internal/app"
	"github.com/circlebot/circlebot/internal/bot"
	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/progress"
	"github.com/circlebot/circlebot/internal/slackio"
	"github.com/circlebot/circlebot/internal/testenv/faultproxy"
	"github.com/circlebot/circlebot/internal/testenv/slackfake"
)

// snapshotsOf returns the snapshots tagged with a backup ID.
func (e *env) snapshotsOf(id string) []ec2types.Snapshot {
	e.t.Helper()
	out, err := ec2.NewFromConfig(e.aws).DescribeSnapshots(context.Background(), &ec2.DescribeSnapshotsInput{
		Filters: []ec2types.Filter{{Name: aws.String("tag:" + ops.TagBackupID), Values: []string{id}}},
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return out.Snapshots
}

func tagOf(tags []ec2types.Tag, k string) string {
	for _, t := range tags {
		if aws.ToString(t.Key) == k {
			return aws.ToString(t.Value)
		}
	}
	return ""
}

// lastBackup waits for the bot to record a backup in a final state.
func (e *env) lastBackup(state string) *ops.Backup {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		recs, err := e.app.Backups.Records.Backups(e.t.Context())
		if err != nil {
			e.t.Fatal(err)
		}
		if len(recs) > 0 && recs[0].State == state {
			return recs[0]
		}
		time.Sleep(20 * time.Millisecond)
	}
	recs, _ := e.app.Backups.Records.Backups(e.t.Context())
	e.t.Fatalf("no backup reached state %s; records: %+v", state, recs)
	return nil
}

// finalMessage waits for the operation message of backup id to show its
// final state and returns its text.
func (e *env) finalMessage(id, outcome string) slackfake.Message {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, m := range e.slack.Messages(incident) {
			txt := m.AllText()
			if m.ThreadTS == "" && strings.Contains(txt, id) && strings.Contains(txt, outcome) {
				return m
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.t.Fatalf("no final %q message for %s; messages: %+v", outcome, id, e.slack.Messages(incident))
	return slackfake.Message{}
}

func TestBackupNowSnapshotsEveryVolumeAsOneTaggedSet(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.slash(alice, incident, "backup now")
	b := e.lastBackup(ops.StateCompleted)

	snaps := e.snapshotsOf(b.ID)
	if len(snaps) != 3 {
		t.Fatalf("want 3 snapshots in the set, got %d", len(snaps))
	}
	var vols []string
	for _, s := range snaps {
		vols = append(vols, aws.ToString(s.VolumeId))
		for k, want := range map[string]string{
			ops.TagInstance: e.inst.ServicesBox.ID, ops.TagPrivateIP: e.inst.ServicesBox.PrivateIP,
			ops.TagRequester: alice, ops.TagTrigger: "manual", ops.TagType: "m5.2xlarge",
		} {
			if got := tagOf(s.Tags, k); got != want {
				t.Errorf("%s: tag %s = %q, want %q", aws.ToString(s.SnapshotId), k, got, want)
			}
		}
		if tagOf(s.Tags, ops.TagDevice) == "" {
			t.Errorf("%s has no device tag", aws.ToString(s.SnapshotId))
		}
		if !strings.HasPrefix(aws.ToString(s.Description), "CircleCI Services box Backup taken at ") {
			t.Errorf("description %q is not the runbook's form", aws.ToString(s.Description))
		}
	}
	slices.Sort(vols)
	want := slices.Clone(e.inst.ServicesBox.Volumes)
	slices.Sort(want)
	if !slices.Equal(vols, want) {
		t.Errorf("snapshotted volumes %v, want the box's %v", vols, want)
	}
	if b.Shape.PrivateIP != e.inst.ServicesBox.PrivateIP || b.Shape.SubnetID != e.inst.ServicesBox.SubnetID || len(b.Shape.SecurityGroups) == 0 {
		t.Errorf("the record lacks the launch shape: %+v", b.Shape)
	}

	m := e.finalMessage(b.ID, "Restore point")
	for _, s := range b.Snapshots {
		if !strings.Contains(m.AllText(), s.ID) {
			t.Errorf("final message does not name %s:\n%s", s.ID, m.AllText())
		}
	}
	if m.Updates == 0 {
		t.Error("the progress message was never updated in place")
	}
	e.server.Wait()
	posts := 0
	for _, c := range e.slack.Calls() {
		if c.Method == "chat.postMessage" && c.ThreadTS == "" {
			posts++
		}
	}
	if posts != 1 {
		t.Errorf("one message per operation: got %d top-level posts", posts)
	}
	if n := e.proxy.Count("CreateSnapshots"); n != 1 {
		t.Errorf("CreateSnapshots called %d times", n)
	}
}

func TestBackupFollowsPendingSnapshotsAndRefusesASecond(t *testing.T) {
	t.Parallel()
	e := newEnvOn(t, patchedMoto(t), nil)
	ctx := context.Background()
	e.slash(alice, incident, "backup now")

	// Wait until the set exists and is pending.
	var id string
	deadline := time.Now().Add(30 * time.Second)
	for id == "" && time.Now().Before(deadline) {
		if recs, _ := e.app.Backups.Records.Backups(t.Context()); len(recs) > 0 && len(recs[0].Snapshots) == 3 {
			id = recs[0].ID
		}
		time.Sleep(20 * time.Millisecond)
	}
	if id == "" {
		t.Fatal("backup never created its snapshots")
	}
	snaps := e.snapshotsOf(id)
	for _, s := range snaps {
		if s.State != ec2types.SnapshotStatePending {
			t.Fatalf("patched moto should hold %s pending, it is %s", aws.ToString(s.SnapshotId), s.State)
		}
	}

	// A second request while the first is running is told which one runs.
	rid := e.slash(bob, incident, "backup now") // bob approves, he does not operate
	e.waitResponse(rid, "role refusal")
	rid = e.slash(alice, incident, "backup now")
	c := e.waitResponse(rid, "lock refusal")
	if txt := e.slack.Text(c); !strings.Contains(txt, "is running") || !strings.Contains(txt, id) {
		t.Errorf("second backup: %s", txt)
	}

	// Progress is reported as snapshots move.
	e.moto.SetSnapshotState(ctx, aws.ToString(snaps[0].SnapshotId), "completed", "100%")
	e.moto.SetSnapshotState(ctx, aws.ToString(snaps[1].SnapshotId), "pending", "50%")
	e.slack.WaitFor(t, 30*time.Second, "a progress update showing 1 of 3", func(c slackfake.Call) bool {
		return c.Method == "chat.update" && strings.Contains(e.slack.Text(c), "1 of 3 snapshots completed")
	})
	for _, s := range snaps[1:] {
		e.moto.SetSnapshotState(ctx, aws.ToString(s.SnapshotId), "completed", "100%")
	}
	b := e.lastBackup(ops.StateCompleted)
	if b.ID != id {
		t.Fatalf("completed %s, want %s", b.ID, id)
	}
	e.finalMessage(id, "Restore point")
	if n := len(e.snapshotsOf(id)); n != 3 {
		t.Errorf("%d snapshots after the refused second request, want 3", n)
	}
}

func TestBackupWithSnapshotInErrorFails(t *testing.T) {
	t.Parallel()
	e := newEnvOn(t, patchedMoto(t), nil)
	e.slash(alice, incident, "backup now")
	var snaps []ec2types.Snapshot
	deadline := time.Now().Add(30 * time.Second)
	for len(snaps) < 3 && time.Now().Before(deadline) {
		if recs, _ := e.app.Backups.Records.Backups(t.Context()); len(recs) > 0 && len(recs[0].Snapshots) == 3 {
			snaps = e.snapshotsOf(recs[0].ID)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(snaps) < 3 {
		t.Fatal("no snapshots")
	}
	e.moto.SetSnapshotState(context.Background(), aws.ToString(snaps[1].SnapshotId), "error", "12%")
	b := e.lastBackup(ops.StateFailed)
	if !strings.Contains(b.Error, aws.ToString(snaps[1].SnapshotId)) {
		t.Errorf("error does not name the failed snapshot: %s", b.Error)
	}
	e.finalMessage(b.ID, "is not a restore point")

	// A failed set is never offered as a restore point.
	pts, err := ops.RestorePoints(context.Background(), ec2.NewFromConfig(e.aws), []*ops.Backup{b})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pts {
		if p.ID == b.ID && p.Usable() {
			t.Errorf("failed backup listed as usable: %+v", p)
		}
	}
}

func TestBackupCompletesOnceUnderThrottling(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.proxy.SetFaults(faultproxy.Faults{ThrottleRate: 0.2, Seed: 7})
	for i := range 3 {
		e.slash(alice, incident, "backup now")
		b := e.lastBackup(ops.StateCompleted)
		e.server.Wait()
		if n := len(e.snapshotsOf(b.ID)); n != 3 {
			t.Fatalf("run %d: backup %s has %d snapshots, want exactly 3", i, b.ID, n)
		}
	}
	throttled := 0
	for _, c := range e.proxy.Calls() {
		if c.Fault == faultproxy.FaultThrottle {
			throttled++
		}
	}
	if throttled == 0 {
		t.Fatal("the fault proxy throttled nothing; the test proves nothing")
	}
	recs, _ := e.app.Backups.Records.Backups(t.Context())
	if len(recs) != 3 {
		t.Errorf("%d backup records, want 3", len(recs))
	}
}

func TestBackupListAndStatus(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.slash(alice, incident, "backup now")
	b := e.lastBackup(ops.StateCompleted)
	e.server.Wait()

	e.slash(alice, incident, "backup list")
	c := e.waitPost(incident, "backup list", func(s string) bool { return strings.Contains(s, "Restore points") })
	txt := e.slack.Text(c)
	if !strings.Contains(txt, b.ID) || !strings.Contains(txt, "by hand (runbook)") || !strings.Contains(txt, "Newest restore point `"+b.ID+"`") {
		t.Errorf("backup list: %s", txt)
	}
	if strings.Index(txt, b.ID) > strings.Index(txt, "by hand") {
		t.Errorf("list is not newest first:\n%s", txt)
	}
	rid := e.slash(alice, incident, "backup status "+b.Snapshots[1].ID)
	st := e.slack.Text(e.waitResponse(rid, "backup status"))
	for _, want := range []string{b.ID, e.inst.ServicesBox.PrivateIP, b.Snapshots[0].ID, b.Snapshots[2].Device} {
		if !strings.Contains(st, want) {
			t.Errorf("backup status lacks %q:\n%s", want, st)
		}
	}
	rid = e.slash(alice, incident, "backup status bk-20200101-000000-abcd")
	if st := e.slack.Text(e.waitResponse(rid, "unknown backup")); !strings.Contains(st, "no restore point") {
		t.Errorf("unknown backup: %s", st)
	}
}

func TestScheduledBackupPrunesPerPolicyAndKeepsOthers(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *config.Config) {
		c.Slack.ReportChannel = incident
		c.Backup.Schedule = "0 */6 * * *"
		c.Backup.Retention.KeepLast = 1
	})
	ctx := context.Background()
	poster := slackio.NewWeb(botToken, e.slack.APIURL(), slog.New(slog.NewTextHandler(io.Discard, nil))).For(chat.Request{ChannelID: incident})
	if err := e.app.ScheduledBackup(ctx, poster); err != nil {
		t.Fatal(err)
	}
	first := e.lastBackup(ops.StateCompleted)
	if first.Trigger != "scheduled" || first.Requester != "scheduler" {
		t.Errorf("record: %+v", first)
	}
	if err := e.app.ScheduledBackup(ctx, poster); err != nil {
		t.Fatal(err)
	}
	second := e.lastBackup(ops.StateCompleted)
	if second.ID == first.ID {
		t.Fatal("second scheduled backup not recorded")
	}
	if n := len(e.snapshotsOf(first.ID)); n != 0 {
		t.Errorf("retention kept %d snapshots of the older bot backup", n)
	}
	if n := len(e.snapshotsOf(second.ID)); n != 3 {
		t.Errorf("the newest backup lost snapshots: %d left", n)
	}
	// The runbook-made set is not the bot's to prune.
	out, err := ec2.NewFromConfig(e.aws).DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: e.inst.Snapshots})
	if err != nil || len(out.Snapshots) != len(e.inst.Snapshots) {
		t.Errorf("hand-made snapshots touched: %v %v", out, err)
	}
	e.slack.WaitFor(t, 30*time.Second, "retention report", func(c slackfake.Call) bool {
		s := e.slack.Text(c)
		return c.Method == "chat.update" && strings.Contains(s, "Retention pruned "+first.ID+" (3 snapshots)") && strings.Contains(s, "approved by the retention policy")
	})
}

func TestBackupInterruptedByRestartIsFollowedToTheEnd(t *testing.T) {
	t.Parallel()
	moto := patchedMoto(t)
	e := newEnvOn(t, moto, nil)
	ctx, stop := context.WithCancel(context.Background())
	go e.app.Backups.Run(ctx, discardPoster{}, bot.BackupRequest{Requester: alice, Channel: incident})
	var rec *ops.Backup
	deadline := time.Now().Add(30 * time.Second)
	for rec == nil && time.Now().Before(deadline) {
		if recs, _ := e.app.Backups.Records.Backups(t.Context()); len(recs) > 0 && len(recs[0].Snapshots) == 3 {
			rec = recs[0]
		}
		time.Sleep(20 * time.Millisecond)
	}
	if rec == nil {
		t.Fatal("no snapshots")
	}
	stop() // the bot dies while the snapshots are pending
	deadline = time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if l, _ := e.app.Store.Locks(t.Context()); len(l) == 0 {
			break // Run has returned
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, s := range e.snapshotsOf(rec.ID) {
		moto.SetSnapshotState(context.Background(), aws.ToString(s.SnapshotId), "completed", "100%")
	}

	// A new bot process on the same data_dir (the lock's process token differs).
	cfg := e.app.Config
	e.app.Close()
	a2 := reopen(t, e, cfg)
	a2.Resume(context.Background(), func(string) progress.Poster { return e.slackPoster() })
	deadline = time.Now().Add(30 * time.Second)
	var got ops.Backup
	for time.Now().Before(deadline) {
		b, err := a2.Backups.Records.Backup(t.Context(), rec.ID)
		if err == nil && b.State == ops.StateCompleted {
			got = *b
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got.State != ops.StateCompleted {
		t.Fatalf("resumed backup did not complete")
	}
	if n := len(e.snapshotsOf(rec.ID)); n != 3 {
		t.Errorf("resume made more snapshots: %d", n)
	}
	e.slack.WaitFor(t, 30*time.Second, "resumed backup's message", func(c slackfake.Call) bool {
		return strings.Contains(e.slack.Text(c), "resumed after a bot restart")
	})
}

type discardPoster struct{}

func (discardPoster) Post(context.Context, chat.Message) (chat.Ref, error) {
	return chat.Ref{Channel: incident, TS: "1.1"}, nil
}
func (discardPoster) Update(context.Context, chat.Ref, chat.Message) error { return nil }
func (discardPoster) PostThread(context.Context, chat.Ref, chat.Message) (chat.Ref, error) {
	return chat.Ref{}, nil
}

func (e *env) slackPoster() progress.Poster {
	return slackio.NewWeb(botToken, e.slack.APIURL(), slog.New(slog.NewTextHandler(io.Discard, nil))).For(chat.Request{ChannelID: incident})
}

// reopen starts a second bot process's App on the first one's data_dir.
func reopen(t *testing.T, e *env, cfg config.Config) *app.App {
	t.Helper()
	a, err := app.New(context.Background(), app.Options{Config: cfg, Version: "test", AWS: botAWS(t, e.proxy.URL, e.aws, &cfg), Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	a.Engine.MinInterval = 20 * time.Millisecond
	a.Backups.EBS.PollMin, a.Backups.EBS.PollMax = 20*time.Millisecond, 100*time.Millisecond
	t.Cleanup(func() { a.Close() })
	return a
}

func TestASetMissingASnapshotIsNoRestorePoint(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.slash(alice, incident, "backup now")
	b := e.lastBackup(ops.StateCompleted)
	e.server.Wait()
	api := ec2.NewFromConfig(e.aws)
	if _, err := api.DeleteSnapshot(context.Background(), &ec2.DeleteSnapshotInput{SnapshotId: aws.String(b.Snapshots[1].ID)}); err != nil {
		t.Fatal(err)
	}
	recs, _ := e.app.Backups.Records.Backups(t.Context())
	pts, err := ops.RestorePoints(context.Background(), api, recs)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pts {
		if p.ID == b.ID && (p.Usable() || !strings.Contains(p.Error, "2 of its 3 snapshots")) {
			t.Fatalf("a set with a deleted snapshot: %+v", p)
		}
	}
	if n, ok := ops.Newest(pts); ok && n.ID == b.ID {
		t.Fatal("an incomplete set is offered as the newest restore point")
	}
}

func TestShutdownDoesNotWaitForPendingSnapshots(t *testing.T) {
	t.Parallel()
	moto := patchedMoto(t)
	e := newEnvOn(t, moto, nil)
	a := reopenFresh(t, e)
	a.Grace = 100 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- a.Serve(ctx, ln) }()
	go a.Backups.Run(ctx, discardPoster{}, bot.BackupRequest{Requester: alice, Channel: incident})
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if recs, _ := a.Backups.Records.Backups(t.Context()); len(recs) > 0 && len(recs[0].Snapshots) == 3 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop() // SIGTERM while the snapshots are pending
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("shutdown waited for the pending snapshots")
	}
}

// reopenFresh builds a second App with its own data_dir on the same AWS.
func reopenFresh(t *testing.T, e *env) *app.App {
	cfg := e.app.Config
	cfg.DataDir = t.TempDir()
	return reopen(t, e, cfg)
}
