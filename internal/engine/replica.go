package engine

import (
	"context"
	"fmt"

	"github.com/circlebot/circlebot/internal/approvals"
	"github.com/circlebot/circlebot/internal/commands"
	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/ops"
)

// KindReplicaBuild and KindReplicaRefresh are `replica build` and
// `replica refresh` as the journal records them.
const (
	KindReplicaBuild   = "replica-build"
	KindReplicaRefresh = "replica-refresh"
)

// ReplicaBuild is `replica build [--subnet <subnet-id>]`: an image of the
// Services box, and the replica launched from it.
func ReplicaBuild(s Setup, r *ops.Replicas) Kind[ops.ReplicaPlan, ops.ReplicaResult] {
	return replicaKind(s, r, false)
}

// ReplicaRefresh is `replica refresh`: a new replica as `build` makes
// one, then the old one retired.
func ReplicaRefresh(s Setup, r *ops.Replicas) Kind[ops.ReplicaPlan, ops.ReplicaResult] {
	return replicaKind(s, r, true)
}

// replicaKind holds the Services box while it runs, and while stopped
// part-way: its image is of the box (a backup's snapshots of the same
// volumes alongside would compete), and a failover while two instances
// carry the replica's tag, or while the old one is being retired, must
// wait for it to finish or be given up.
func replicaKind(s Setup, r *ops.Replicas, refresh bool) Kind[ops.ReplicaPlan, ops.ReplicaResult] {
	name, cmd, what := KindReplicaBuild, commands.ReplicaBuild, "replica build"
	if refresh {
		name, cmd, what = KindReplicaRefresh, commands.ReplicaRefresh, "replica refresh"
	}
	return Kind[ops.ReplicaPlan, ops.ReplicaResult]{
		Name: name, What: what, Command: cmd,
		Plan: func(ctx context.Context, c commands.Command) (ops.ReplicaPlan, error) {
			return ops.RetryRead(ctx, s.wait(), func() (ops.ReplicaPlan, error) { return r.Plan(ctx, refresh, c.Subnet) })
		},
		Approval: replicaApproval,
		Title: func(p ops.ReplicaPlan) string {
			if p.Refresh {
				return fmt.Sprintf("Refresh of the replica `%s` from the Services box `%s`", p.Old.ID, p.Box.ID)
			}
			return fmt.Sprintf("Replica of the Services box `%s` in %s", p.Box.ID, p.SubnetAZ)
		},
		Target: s.box,
		Steps:  func(p ops.ReplicaPlan, _ Env) []journal.Def { return r.Steps(p) },
		Recheck: func(ctx context.Context, p ops.ReplicaPlan, op Record) ([]string, error) {
			var changes []string
			// Until the image is made (step 1), the box must be as approved.
			if !op.done(0) {
				c, err := ops.Changed(ctx, s.EC2, "the Services box", p.Box.ID, p.Box.State)
				if err != nil {
					return nil, err
				}
				changes = append(changes, nonEmpty(c)...)
			}
			// Until the old replica is retired, it must be as approved.
			if p.Old != nil && !op.done(4) {
				c, err := ops.Changed(ctx, s.EC2, "the old replica", p.Old.ID, p.Old.State)
				if err != nil {
					return nil, err
				}
				changes = append(changes, nonEmpty(c)...)
			}
			return changes, nil
		},
		Summary: func(p ops.ReplicaPlan, res ops.ReplicaResult, op Record) string {
			retired := ""
			if p.Old != nil {
				retired = fmt.Sprintf(" The old replica `%s` is %s", p.Old.ID, res.Retired)
				if res.Retired == "stopped" {
					retired += fmt.Sprintf(" and kept as Name=%s (terminate it once the new one has proved itself)", ops.RetiredName(p.ReplicaTag))
				}
				retired += "."
			}
			return fmt.Sprintf("The replica is `%s` (%s, %s, %s), launched from `%s`, the image of `%s` taken at %s UTC, after %s (approved by <@%s>).%s %s. A failover now goes to it (`%s failover --dry-run` shows the plan).",
				res.InstanceID, p.Box.Type, res.PrivateIP, p.SubnetAZ, res.ImageID, p.Box.ID, res.Imaged.UTC().Format("2006-01-02 15:04"), op.Took, op.Approver, retired, stepTimes(op), s.SlashCommand)
		},
		LeftBehind: func(p ops.ReplicaPlan, res ops.ReplicaResult, op Record) []string {
			var left []string
			if res.ImageID != "" {
				left = append(left, fmt.Sprintf("the image `%s` and its snapshots (tagged %s=%s)", res.ImageID, ops.TagReplicaOp, op.ID))
			}
			if res.InstanceID != "" {
				left = append(left, fmt.Sprintf("the new replica `%s` (Name=%s): check it, or terminate it", res.InstanceID, p.ReplicaTag))
			}
			return left
		},
		Hold: true,
	}
}

func replicaApproval(p ops.ReplicaPlan) approvals.Plan {
	b := p.Box
	action := "replica build"
	if p.Refresh {
		action = "replica refresh"
	}
	ap := approvals.Plan{Action: action, Facts: p.Facts()}
	if p.NoReboot {
		ap.Changes = append(ap.Changes, fmt.Sprintf("make an image of the Services box `%s` (%s, %s) with EC2 CreateImage without a reboot (NoReboot): no downtime; crash-consistent", b.ID, b.State, b.AZ))
	} else {
		ap.Changes = append(ap.Changes, fmt.Sprintf("make an image of the Services box `%s` (%s, %s) with EC2 CreateImage with a reboot (replica.image_reboot): CircleCI is down for minutes", b.ID, b.State, b.AZ))
	}
	ap.Changes = append(ap.Changes,
		fmt.Sprintf("wait until the image is available (up to %s): every volume of the box is copied: %s", ops.Span(p.ImageTimeout), b.VolumeList()),
		fmt.Sprintf("launch the replica from it: %s like the box, the same volumes (devices and sizes), security groups %v, in subnet `%s` (%s, from %s), tagged Name=%s", b.Type, p.Shape.SecurityGroups, p.Subnet, p.SubnetAZ, p.SubnetFrom, p.ReplicaTag),
		fmt.Sprintf("wait until it runs (up to %s)", ops.Span(p.Timeout)))
	if p.Old != nil {
		if p.Retire == ops.RetireTerminate {
			ap.Changes = append(ap.Changes, fmt.Sprintf("retire the old replica `%s` (%s, %s): *terminate* it (replica.retire: terminate)", p.Old.ID, p.Old.State, p.Old.AZ))
		} else {
			ap.Changes = append(ap.Changes, fmt.Sprintf("retire the old replica `%s` (%s, %s): stop it and rename it %s (replica.retire: stop); it and its volumes are kept", p.Old.ID, p.Old.State, p.Old.AZ, ops.RetiredName(p.ReplicaTag)))
		}
	}
	ap.Changes = append(ap.Changes, "verify the replica: the box's type and volumes, and the only instance tagged Name="+p.ReplicaTag)
	ap.Keeps = []string{fmt.Sprintf("the Services box `%s`, its IP %s and its volumes, with their data", b.ID, b.PrivateIP), "the image and its snapshots, for another replica or a restore"}
	if p.SubnetAZ == b.AZ {
		ap.Undo = append(ap.Undo, fmt.Sprintf(":warning: the replica goes to %s, the box's own zone: an outage of that zone takes both (the runbook puts it in another zone)", b.AZ))
	}
	if p.Old != nil {
		ap.Undo = append(ap.Undo, "while the new replica runs and the old one is not yet retired, two instances carry the replica's tag: a failover waits for this operation (it holds the Services box)")
		if p.Retire == ops.RetireTerminate {
			ap.Undo = append(ap.Undo, fmt.Sprintf("the old replica `%s` and its volumes are terminated: that cannot be undone", p.Old.ID))
		}
	}
	if p.NoReboot {
		ap.Undo = append(ap.Undo, "the image is made without a reboot, so it is crash-consistent: what the disks held at one instant, as after a power cut; writes in flight are lost and the replica's app recovers as after one. `replica.image_reboot: true` makes it file-system consistent instead, at the price of a reboot of the box (minutes of downtime)")
	} else {
		ap.Undo = append(ap.Undo, "EC2 shuts the box down and reboots it to make a file-system-consistent image: builds running on it are interrupted, webhooks sent meanwhile are lost (`replica.image_reboot: false` avoids the reboot; the image is then crash-consistent)")
	}
	ap.Undo = append(ap.Undo, "backups of the box wait until this is done; the replica costs as much as the box while it runs")
	return ap
}
