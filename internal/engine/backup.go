package engine

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/circlebot/circlebot/internal/approvals"
	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/commands"
	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/ops"
)

// Backups and drills as the journal records them.
const (
	KindBackupEBS     = "backup-ebs"
	KindBackupTarball = "backup-tarball"
	KindDrill         = "drill"
)

// Scheduler is who requests scheduled work: a backup or drill it starts
// is "scheduled", any other "manual".
const Scheduler = "scheduler"

// DrillLock is the lock key drills hold: one at a time per bot.
const DrillLock = "drill"

func trigger(env Env) string {
	if env.Trigger != "" {
		return env.Trigger
	}
	if env.Requester == Scheduler {
		return "scheduled"
	}
	return "manual"
}

// BackupPlan is what a backup is asked to be. Nothing of it needs a
// second person: a backup changes nothing on the box.
type BackupPlan struct {
	Method string `json:"method"`
}

// Backups is what the backup kinds act with.
type Backups struct {
	EBS *ops.EBSBackup
	// Tarball is nil when backup.bucket is unset: `backup now tarball`
	// is refused.
	Tarball *ops.TarballBackup
	Records ops.Records
	// DefaultMethod is backup.method: what `backup now` alone takes.
	DefaultMethod string
}

func (b Backups) method(c commands.Command) string {
	if c.Method != commands.MethodDefault {
		return string(c.Method)
	}
	if b.DefaultMethod == "" {
		return ops.MethodEBS
	}
	return b.DefaultMethod
}

// record is a backup's record as the store has it now (steps save it as
// they go, so it may be newer than the journal's copy), else the
// journal's.
func (b Backups) record(ctx context.Context, r ops.BackupWork, id string) *ops.Backup {
	if rec, err := b.Records.Backup(ctx, id); err == nil {
		return rec
	}
	rec := r.Record
	rec.ID = id
	return &rec
}

// legacy lists the backups of one method a version before the engine
// left "running" in their records.
func (b Backups) legacy(ctx context.Context, method, title string) ([]Legacy[BackupPlan, ops.BackupWork], error) {
	recs, err := b.Records.Backups(ctx)
	if err != nil {
		return nil, err
	}
	var out []Legacy[BackupPlan, ops.BackupWork]
	for _, rec := range recs {
		if rec.State != ops.StateRunning || rec.Method != method {
			continue
		}
		w, done := ops.LegacyBackup(rec)
		out = append(out, Legacy[BackupPlan, ops.BackupWork]{ID: rec.ID, Title: title, Channel: rec.Channel, Requester: rec.Requester,
			Created: rec.Started, Plan: BackupPlan{Method: method}, Result: w, Done: done})
	}
	return out, nil
}

func backupApproval(p BackupPlan) approvals.Plan {
	return approvals.Plan{Action: "backup now", Facts: map[string]string{"method": p.Method}}
}

// backupFailed is the last word of a backup that did not finish.
func backupFailed(r ops.BackupWork, op Record) string {
	if r.Record.Error != "" {
		return fmt.Sprintf("Backup `%s` failed: %s It is not a restore point.", op.ID, r.Record.Error)
	}
	return fmt.Sprintf("Backup `%s` stopped (%s). It is not a restore point and is not retried; take a new one with `backup now`.", op.ID, op.Why)
}

// BackupEBS is `backup now [ebs]` and the scheduled backup: one
// crash-consistent snapshot set of every volume of the Services box,
// followed to completion. A backup cut off by a restart or a replica's
// death is continued on its own (its create step adopts the set it made,
// found by the backup's tag, and never makes a second one); one that
// fails is recorded as failed and is never a restore point.
func BackupEBS(s Setup, b Backups) Kind[BackupPlan, ops.BackupWork] {
	const title = "EBS backup of the Services box"
	return Kind[BackupPlan, ops.BackupWork]{
		Name: KindBackupEBS, What: "EBS backup", Command: commands.BackupNow,
		Match: func(c commands.Command) bool { return b.method(c) == ops.MethodEBS },
		Plan: func(context.Context, commands.Command) (BackupPlan, error) {
			return BackupPlan{Method: ops.MethodEBS}, nil
		},
		Approval: backupApproval,
		Title:    func(BackupPlan) string { return title + " (`" + s.NameTag + "`)" },
		Target:   s.box,
		Also:     func(BackupPlan) []string { return []string{BackupsLock(s.NameTag)} },
		// Once every snapshot is requested and tagged, the backup only
		// follows them: the box is free for a restore (of this very
		// backup, which follows them too) or a failover.
		FreeAfter: ops.EBSSteps[2],
		NewID:     ops.NewBackupID,
		Steps: func(_ BackupPlan, env Env) []journal.Def {
			return b.EBS.Steps(ops.BackupRequest{Trigger: trigger(env), Requester: env.Requester, Channel: env.Channel, Reason: env.Reason})
		},
		Summary: func(_ BackupPlan, r ops.BackupWork, op Record) string {
			rec := r.Record
			rec.ID = op.ID
			return BackupSummary(&rec, s.SlashCommand)
		},
		Failed: func(_ BackupPlan, r ops.BackupWork, op Record) string { return backupFailed(r, op) },
		// What a failed step made stays (snapshots in a failed set are
		// no restore point, and retention prunes only completed sets'):
		// the record says it failed, if the step could not.
		Cleanup: func(ctx context.Context, _ BackupPlan, r ops.BackupWork, op Record, _ bool) []string {
			rec := b.record(ctx, r, op.ID)
			if rec.State != ops.StateRunning {
				return nil
			}
			rec.State, rec.Error, rec.Finished = ops.StateFailed, op.Why, time.Now()
			if err := b.Records.SaveBackup(ctx, rec); err != nil {
				return []string{"could not record the backup as failed: " + ops.Explain(err)}
			}
			return nil
		},
		Recover: Continue,
		Legacy: func(ctx context.Context) ([]Legacy[BackupPlan, ops.BackupWork], error) {
			return b.legacy(ctx, ops.MethodEBS, title+", resumed after a bot restart")
		},
	}
}

// BackupTarball is `backup now tarball`: circleci-backup on the box
// through SSM, the tarball uploaded to S3 in parts and verified. One cut
// off by a restart or a replica's death is never run again (its command
// died with the bot, or runs on unwatched): it is abandoned — the
// command cancelled, the upload aborted, the scratch directory removed —
// and that is said in its channel.
func BackupTarball(s Setup, b Backups) Kind[BackupPlan, ops.BackupWork] {
	const title = "Tarball backup of the Services box"
	return Kind[BackupPlan, ops.BackupWork]{
		Name: KindBackupTarball, What: "tarball backup", Command: commands.BackupNow,
		Match: func(c commands.Command) bool { return b.method(c) == ops.MethodTarball },
		Ready: func() error {
			if b.Tarball == nil {
				return refusef("tarball backups need `backup.bucket` in the config. Nothing was run.")
			}
			return nil
		},
		Plan: func(context.Context, commands.Command) (BackupPlan, error) {
			return BackupPlan{Method: ops.MethodTarball}, nil
		},
		Approval: backupApproval,
		Title:    func(BackupPlan) string { return title + " (`" + s.NameTag + "`)" },
		Target:   s.box,
		Also:     func(BackupPlan) []string { return []string{BackupsLock(s.NameTag)} },
		NewID:    ops.NewBackupID,
		Steps: func(_ BackupPlan, env Env) []journal.Def {
			return b.Tarball.Steps(ops.BackupRequest{Trigger: trigger(env), Requester: env.Requester, Channel: env.Channel, Reason: env.Reason})
		},
		Summary: func(_ BackupPlan, r ops.BackupWork, op Record) string {
			rec := r.Record
			rec.ID = op.ID
			return BackupSummary(&rec, s.SlashCommand)
		},
		Failed: func(_ BackupPlan, r ops.BackupWork, op Record) string { return backupFailed(r, op) },
		Cleanup: func(ctx context.Context, _ BackupPlan, r ops.BackupWork, op Record, cut bool) []string {
			return b.Tarball.Close(ctx, b.record(ctx, r, op.ID), cut)
		},
		Recover: Abandon,
		Legacy: func(ctx context.Context) ([]Legacy[BackupPlan, ops.BackupWork], error) {
			return b.legacy(ctx, ops.MethodTarball, title)
		},
	}
}

// BackupSummary is the closing sentence of a backup.
func BackupSummary(b *ops.Backup, slash string) string {
	switch b.Method {
	case ops.MethodTarball:
		return fmt.Sprintf("Restore point `%s`: `s3://%s/%s`, %s, sha256 `%s`. Restore with `%s restore s3://%s/%s`.",
			b.ID, b.Bucket, b.Key, chat.Bytes(b.Size), b.SHA256, slash, b.Bucket, b.Key)
	default:
		var ids []string
		for _, s := range b.Snapshots {
			ids = append(ids, fmt.Sprintf("`%s` (%s)", s.ID, s.Device))
		}
		note := ""
		if len(b.Notes) > 0 {
			note = " Note: " + strings.Join(b.Notes, "; ") + "."
		}
		return fmt.Sprintf("Restore point `%s`: %d GiB of `%s` (%s) in %s.%s", b.ID, b.SizeGiB(), b.Shape.InstanceID, b.Shape.PrivateIP, strings.Join(ids, ", "), note)
	}
}

// DrillPlan is a drill as asked for: the restore point is picked by its
// first step, from what is newest then.
type DrillPlan struct{}

// Drill is `drill now` and the scheduled drill: the newest restore point
// restored into the isolated drill subnet, measured, torn down. A drill
// that stops part-way is torn down by its cleanup — at once when a step
// fails or the bot shuts down, and by recovery, on whichever replica
// finds it, when the bot running it died — and that is said once.
func Drill(s Setup, r *ops.DrillRunner, drills ops.Drills) Kind[DrillPlan, ops.DrillWork] {
	return Kind[DrillPlan, ops.DrillWork]{
		Name: KindDrill, What: "restore drill", Command: commands.DrillNow,
		Ready:    r.Ready,
		Plan:     func(context.Context, commands.Command) (DrillPlan, error) { return DrillPlan{}, nil },
		Approval: func(DrillPlan) approvals.Plan { return approvals.Plan{Action: "drill now"} },
		Title:    func(DrillPlan) string { return "Restore drill (isolated; production is not touched)" },
		Target:   func() string { return DrillLock },
		NewID:    ops.NewDrillID,
		Steps: func(_ DrillPlan, env Env) []journal.Def {
			return r.Steps(ops.DrillRequest{Trigger: trigger(env), Requester: env.Requester, Channel: env.Channel})
		},
		Summary: func(_ DrillPlan, w ops.DrillWork, _ Record) string {
			d := w.Drill
			cleanup := "removed: " + strings.Join(d.Cleanup, "; ")
			if len(d.Cleanup) == 0 {
				cleanup = "nothing was left to remove"
			}
			return fmt.Sprintf("Restore point `%s` restores: healthy in *%s* (the measured restore time). Everything the drill made is gone (%s).", d.Source, d.RestoreTime.Round(time.Second), cleanup)
		},
		Failed: func(_ DrillPlan, w ops.DrillWork, op Record) string {
			if w.Drill.Error == "" {
				return fmt.Sprintf("The drill stopped (%s).", op.Why)
			}
			return fmt.Sprintf(":rotating_light: The drill of `%s` failed: %s If the restore point itself is at fault, a real restore from it would fail too: look now.", sourceName(w.Drill.Source), w.Drill.Error)
		},
		Cleanup: func(ctx context.Context, _ DrillPlan, w ops.DrillWork, op Record, cut bool) []string {
			d := w.Drill
			if cur, err := drills.Get(ctx, op.ID); err == nil {
				d = *cur
			}
			d.ID = op.ID
			if d.Requester == "" {
				d.Requester, d.Channel = op.Requester, op.Channel
			}
			return r.Close(ctx, &d, cut)
		},
		Recover: Abandon,
		Legacy: func(ctx context.Context) ([]Legacy[DrillPlan, ops.DrillWork], error) {
			all, err := drills.All(ctx)
			if err != nil {
				return nil, err
			}
			var out []Legacy[DrillPlan, ops.DrillWork]
			for _, d := range all {
				if d.State != ops.DrillRunning {
					continue
				}
				out = append(out, Legacy[DrillPlan, ops.DrillWork]{ID: d.ID, Title: "Restore drill (isolated; production is not touched)",
					Channel: d.Channel, Requester: d.Requester, Created: d.Started, Result: ops.DrillWork{Drill: d}})
			}
			return out, nil
		},
	}
}

func sourceName(s string) string {
	if s == "" {
		return "the newest restore point"
	}
	return s
}
