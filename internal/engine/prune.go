package engine

import (
	"context"
	"fmt"
	"strings"

	"github.com/circlebot/circlebot/internal/approvals"
	"github.com/circlebot/circlebot/internal/commands"
	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/ops"
)

// PrunePlan is what retention deletes, decided when it was planned.
type PrunePlan struct {
	Policy   ops.Policy    `json:"policy"`
	Verdicts []ops.Verdict `json:"verdicts"`
}

func (p PrunePlan) doomed() (points, snapshots []string) {
	for _, v := range p.Verdicts {
		if !v.Keep {
			points = append(points, v.Point.ID)
			snapshots = append(snapshots, v.Point.Snapshots...)
		}
	}
	return points, snapshots
}

// finishing lists the partly pruned sets the plan finishes.
func (p PrunePlan) finishing() []string {
	var out []string
	for _, v := range p.Verdicts {
		if !v.Keep && v.Finish {
			out = append(out, v.Point.ID)
		}
	}
	return out
}

// PruneResult is what a prune deleted.
type PruneResult struct {
	Deleted []string `json:"deleted,omitempty"`
}

// Retention is where pruning reads restore points and deletes snapshots.
type Retention struct {
	EC2     ops.EC2
	Prune   ops.PrunerEC2
	Records func(context.Context) ([]*ops.Backup, error)
	// Mark notes in a backup's record that a prune began deleting it
	// (ops.Records.MarkPruning); nil: only the snapshots' tags do.
	Mark   func(ctx context.Context, backupID, op string) error
	Policy ops.Policy
}

// Prune is `backup prune`, and retention after a scheduled backup (with
// the policy in the config as its approval): delete the restore points
// retention does not keep.
func Prune(s Setup, r Retention) Kind[PrunePlan, PruneResult] {
	return Kind[PrunePlan, PruneResult]{
		Name: KindPrune, What: "retention pruning", Command: commands.BackupPrune,
		Ready: func() error {
			if !r.Policy.Enabled() {
				return refusef("no retention policy is configured (`backup.retention`): nothing would be pruned.")
			}
			return nil
		},
		Plan: func(ctx context.Context, _ commands.Command) (PrunePlan, error) {
			recs, err := r.Records(ctx)
			if err != nil {
				return PrunePlan{}, err
			}
			pts, err := ops.RestorePoints(ctx, r.EC2, recs)
			if err != nil {
				return PrunePlan{}, err
			}
			inUse, err := ops.SnapshotsInUse(ctx, r.Prune)
			if err != nil {
				return PrunePlan{}, err
			}
			p := PrunePlan{Policy: r.Policy, Verdicts: ops.Retain(pts, r.Policy, inUse)}
			for i := range p.Verdicts {
				p.Verdicts[i].Point.Record = nil // the record is not part of what is decided
			}
			return p, nil
		},
		Empty: func(p PrunePlan) string {
			if pts, _ := p.doomed(); len(pts) == 0 {
				return "retention would prune nothing right now. Nothing was requested."
			}
			return ""
		},
		Approval: pruneApproval,
		Preflight: func(ctx context.Context, p PrunePlan) ops.Preflight {
			return ops.PrunePreflight(ctx, r.Prune, p.Verdicts)
		},
		Title:  func(PrunePlan) string { return "Prune restore points past `backup.retention`" },
		Target: s.box,
		Also:   func(PrunePlan) []string { return []string{BackupsLock(s.NameTag)} },
		Steps: func(p PrunePlan, _ Env) []journal.Def {
			return []journal.Def{ops.Def("Delete snapshots", func(ctx context.Context, w *ops.Work[PruneResult], pr journal.Progress) (string, error) {
				deleted, err := ops.Pruner{EC2: r.Prune, Op: w.ID, Mark: r.Mark}.Prune(ctx, p.Verdicts, logOnly{pr})
				w.Result.Deleted = append(w.Result.Deleted, deleted...)
				if err != nil {
					return "", fmt.Errorf("stopped after deleting %d snapshots (what was not deleted stays: a set it began is marked partly pruned, and the next prune deletes the rest of it): %w", len(deleted), err)
				}
				return fmt.Sprintf("%d snapshots deleted", len(deleted)), nil
			})}
		},
		Summary: func(p PrunePlan, r PruneResult, op Record) string {
			who := "the retention policy in the config"
			if op.Approver != "" {
				who = "<@" + op.Approver + ">"
			}
			return fmt.Sprintf("Retention %s, approved by %s.", pruneOutcome(p, r), who)
		},
	}
}

// pruneOutcome says what a finished prune deleted: "pruned bk-a,bk-b (6
// snapshots)", and for the partly pruned sets it finished "finished
// pruning bk-c (2 snapshots)".
func pruneOutcome(p PrunePlan, r PruneResult) string {
	deleted := map[string]bool{}
	for _, s := range r.Deleted {
		deleted[s] = true
	}
	var pruned, finished []string
	var nPruned, nFinished int
	for _, v := range p.Verdicts {
		if v.Keep {
			continue
		}
		n := 0
		for _, s := range v.Point.Snapshots {
			if deleted[s] {
				n++
			}
		}
		if v.Finish {
			finished, nFinished = append(finished, v.Point.ID), nFinished+n
		} else {
			pruned, nPruned = append(pruned, v.Point.ID), nPruned+n
		}
	}
	var parts []string
	if len(pruned) > 0 || len(finished) == 0 {
		parts = append(parts, fmt.Sprintf("pruned %s (%d snapshots)", strings.Join(pruned, ","), nPruned))
	}
	if len(finished) > 0 {
		parts = append(parts, fmt.Sprintf("finished pruning %s (%d snapshots a stopped prune left)", strings.Join(finished, ","), nFinished))
	}
	return strings.Join(parts, " and ")
}

func pruneApproval(p PrunePlan) approvals.Plan {
	pts, snaps := p.doomed()
	plan := approvals.Plan{Action: "backup prune", Facts: map[string]string{
		"policy":    fmt.Sprintf("keep_last=%d keep_daily=%d keep_weekly=%d", p.Policy.KeepLast, p.Policy.KeepDaily, p.Policy.KeepWeekly),
		"delete":    strings.Join(pts, ","),
		"snapshots": strings.Join(snaps, ","),
	}}
	if fin := p.finishing(); len(fin) > 0 {
		plan.Facts["finish"] = strings.Join(fin, ",")
	}
	for _, v := range p.Verdicts {
		if v.Keep {
			if v.Newest {
				plan.Keeps = append(plan.Keeps, fmt.Sprintf("`%s`, the newest completed restore point", v.Point.ID))
			}
			continue
		}
		if v.Finish {
			plan.Changes = append(plan.Changes, fmt.Sprintf("finish pruning `%s` (%d of %d snapshots left, %d GiB) — `%s` began deleting it and stopped; it is no restore point, so it goes whatever the policy says", v.Point.ID, len(v.Point.Snapshots), v.Point.SetSize, v.Point.SizeGiB, v.Point.PrunedBy))
			continue
		}
		plan.Changes = append(plan.Changes, fmt.Sprintf("delete `%s` (%s, %d snapshots, %d GiB) — %s", v.Point.ID, v.Point.Started.UTC().Format("2006-01-02 15:04"), len(v.Point.Snapshots), v.Point.SizeGiB, v.Why))
	}
	plan.Keeps = append(plan.Keeps, "hand-made (runbook) snapshots, tarballs, running and failed backups, and snapshots an AMI uses")
	plan.Undo = []string{"deleted EBS snapshots cannot be recovered"}
	return plan
}

// logOnly gives a journal step's progress to code that reports through
// ops.Progress but only logs.
type logOnly struct{ p journal.Progress }

func (l logOnly) Begin(i int, detail string)  { l.p.Begin(i, detail) }
func (l logOnly) Done(i int, detail string)   { l.p.Done(i, detail) }
func (l logOnly) Fail(i int, err error)       { l.p.Fail(i, err) }
func (l logOnly) Log(line string)             { l.p.Log(line) }
func (logOnly) Skip(int, string)              {}
func (logOnly) Progress(int, float64, string) {}

// Passphrase reads CIRCLE_SECRET_PASSPHRASE.
type Passphrase interface {
	Source(ctx context.Context) (string, error)
	Read(ctx context.Context, source string) (string, error)
	// Preflight checks what the read needs without reading.
	Preflight(ctx context.Context, source string) ops.Preflight
}

// SecretPlan says where the passphrase is read from.
type SecretPlan struct {
	Source string `json:"source"`
}

// Secret is `secret`: the passphrase, after approval, to the requester
// only. It never reaches the journal, the channel or the log.
func Secret(s Setup, pp Passphrase) Kind[SecretPlan, ops.NoResult] {
	return Kind[SecretPlan, ops.NoResult]{
		Name: KindSecret, What: "secret", Command: commands.Secret,
		Plan: func(ctx context.Context, _ commands.Command) (SecretPlan, error) {
			src, err := pp.Source(ctx)
			return SecretPlan{Source: src}, err
		},
		Approval: func(p SecretPlan) approvals.Plan {
			return approvals.Plan{Action: "secret", Facts: map[string]string{"source": p.Source},
				Changes: []string{"read CIRCLE_SECRET_PASSPHRASE from " + p.Source + " and show it to the requester only, in a message nobody else sees"},
				Keeps:   []string{"the passphrase is not posted in the channel, logged, or stored by the bot (read through SSM, it stays in SSM's command history for a while: prefer `secret.secrets_manager_id`)"},
				Undo:    []string{"whoever sees it can join builders to this installation: rotate it if it leaks"},
			}
		},
		Preflight: func(ctx context.Context, p SecretPlan) ops.Preflight { return pp.Preflight(ctx, p.Source) },
		Title:     func(SecretPlan) string { return "CIRCLE_SECRET_PASSPHRASE for the requester" },
		Target:    func() string { return "secret/" + s.NameTag },
		Steps: func(p SecretPlan, env Env) []journal.Def {
			return []journal.Def{{Name: "Show the passphrase to the requester", Run: func(ctx context.Context, op *journal.Op, _ journal.Progress) (string, error) {
				v, err := pp.Read(ctx, p.Source)
				if err != nil {
					return "", err
				}
				msg := fmt.Sprintf(":key: CIRCLE_SECRET_PASSPHRASE for the builders (approved by <@%s>):\n```%s```\nOnly you see this message. Put it in the builders' launch template or secret store; do not paste it in a channel.", op.Approver, v)
				if err := env.Private(ctx, msg); err != nil {
					return "", fmt.Errorf("deliver the passphrase to <@%s>: %w", op.Requester, err)
				}
				return "shown to <@" + op.Requester + "> only", nil
			}}}
		},
		Summary: func(_ SecretPlan, _ ops.NoResult, op Record) string {
			return fmt.Sprintf(":key: The passphrase was shown to <@%s> only (request `%s`, approved by <@%s>).", op.Requester, op.RequestID, op.Approver)
		},
	}
}
