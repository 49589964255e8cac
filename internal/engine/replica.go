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

// ReplicaLock is held by a replica build or refresh from start to end:
// one new replica at a time.
func ReplicaLock(replicaTag string) string { return "replica/" + replicaTag }

// replicaKind: a build holds the Services box to its end, and while
// stopped part-way: its image is of the box, and until it is verified
// there is no replica to fail over to anyway.
//
// A refresh holds the box only while the image is requested, then frees
// it (FreeAfter), so that a failover may run on the old replica while the
// new one is built: an SRE in an incident gets the failover at once,
// rather than after a refresh (an image of every volume of the box can
// take most of an hour) or a cancel that waits for the step in progress.
// That is safe because, until the last step, the old replica alone
// carries the replica's Name (the new one is a candidate: see
// ops.CandidateName) and the refresh does not touch it; its last step
// takes the box back (Retake) before it retires the old replica, and
// refuses (changing nothing) while a failover holds it, or once the old
// replica was promoted. Backups and pruning stay out to the end
// (BackupsLock: the image's snapshots of the box's volumes are pending
// meanwhile), and a second build or refresh too (ReplicaLock).
func replicaKind(s Setup, r *ops.Replicas, refresh bool) Kind[ops.ReplicaPlan, ops.ReplicaResult] {
	name, cmd, what := KindReplicaBuild, commands.ReplicaBuild, "replica build"
	freeAfter, retake := "", ""
	if refresh {
		name, cmd, what = KindReplicaRefresh, commands.ReplicaRefresh, "replica refresh"
		freeAfter, retake = ops.ReplicaImageStep, ops.ReplicaCommitStep
	}
	return Kind[ops.ReplicaPlan, ops.ReplicaResult]{
		Name: name, What: what, Command: cmd,
		FreeAfter: freeAfter, Retake: retake,
		Also: func(p ops.ReplicaPlan) []string {
			if !p.Refresh {
				return nil
			}
			return []string{BackupsLock(s.NameTag), ReplicaLock(p.ReplicaTag)}
		},
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
			// Until the last step (which retires it) has begun, the old
			// replica must be as approved; after, it was stopped by that
			// step itself, and the step looks at its Name again anyway.
			if last := len(op.Steps) - 1; p.Old != nil && last >= 0 && op.Steps[last].Attempts == 0 {
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
			if p.Old == nil {
				if res.InstanceID != "" {
					left = append(left, fmt.Sprintf("the new replica `%s` (Name=%s): check it, or terminate it", res.InstanceID, p.ReplicaTag))
				}
				return left
			}
			// What is where, as the journal last recorded it: an SRE
			// needs to know which instance a failover would pick now.
			switch res.Retired {
			case "":
				left = append(left, fmt.Sprintf("the old replica `%s`, not retired: it is still the replica (Name=%s), unless a failover promoted it", p.Old.ID, p.ReplicaTag))
			case "stopped":
				left = append(left, fmt.Sprintf("the old replica `%s`, stopped and renamed Name=%s", p.Old.ID, ops.RetiredName(p.ReplicaTag)))
			default:
				left = append(left, fmt.Sprintf("the old replica `%s` is %s", p.Old.ID, res.Retired))
			}
			switch {
			case res.InstanceID == "":
			case res.Named:
				left = append(left, fmt.Sprintf("the new replica `%s`, named Name=%s: it is the replica", res.InstanceID, p.ReplicaTag))
			default:
				left = append(left, fmt.Sprintf("the new replica `%s`, still Name=%s: not the replica (no failover picks it); terminate it, or check it and rename it Name=%s by hand", res.InstanceID, ops.CandidateName(p.ReplicaTag), p.ReplicaTag))
			}
			if res.Retired != "" && !res.Named {
				left = append(left, fmt.Sprintf(":warning: no instance carries Name=%s now: rename one of them by hand (`aws ec2 create-tags --resources <instance-id> --tags Key=Name,Value=%s`), or `%s replica build`", p.ReplicaTag, p.ReplicaTag, s.SlashCommand))
			}
			return left
		},
		Hold: true,
	}
}

func launchName(p ops.ReplicaPlan) string {
	if p.Refresh {
		return ops.CandidateName(p.ReplicaTag) + " until the last step (not the replica: no failover picks it)"
	}
	return p.ReplicaTag
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
		fmt.Sprintf("launch the replica from it: %s like the box, the same volumes (devices and sizes), security groups %v, in subnet `%s` (%s, from %s), tagged Name=%s", b.Type, p.Shape.SecurityGroups, p.Subnet, p.SubnetAZ, p.SubnetFrom, launchName(p)),
		fmt.Sprintf("wait until it runs (up to %s)", ops.Span(p.Timeout)))
	if p.Old == nil {
		ap.Changes = append(ap.Changes, "verify the replica: the box's type and volumes, and the only instance tagged Name="+p.ReplicaTag)
	} else {
		ap.Changes = append(ap.Changes, "verify the new replica: the box's type and volumes")
		if p.Retire == ops.RetireTerminate {
			ap.Changes = append(ap.Changes, fmt.Sprintf("retire the old replica `%s` (%s, %s): *terminate* it (replica.retire: terminate); then rename the new one Name=%s, the only instance so tagged", p.Old.ID, p.Old.State, p.Old.AZ, p.ReplicaTag))
		} else {
			ap.Changes = append(ap.Changes, fmt.Sprintf("retire the old replica `%s` (%s, %s): stop it and rename it %s (replica.retire: stop); it and its volumes are kept; then rename the new one Name=%s, the only instance so tagged", p.Old.ID, p.Old.State, p.Old.AZ, ops.RetiredName(p.ReplicaTag), p.ReplicaTag))
		}
	}
	ap.Keeps = []string{fmt.Sprintf("the Services box `%s`, its IP %s and its volumes, with their data", b.ID, b.PrivateIP), "the image and its snapshots, for another replica or a restore"}
	if p.SubnetAZ == b.AZ {
		ap.Undo = append(ap.Undo, fmt.Sprintf(":warning: the replica goes to %s, the box's own zone: an outage of that zone takes both (the runbook puts it in another zone)", b.AZ))
	}
	if p.Old != nil {
		ap.Undo = append(ap.Undo, fmt.Sprintf("until the last step the old replica `%s` stays the replica (the only Name=%s): a failover meanwhile goes to it, and this refresh then stops without retiring it. The last step holds the Services box for its run (a failover waits for it)", p.Old.ID, p.ReplicaTag))
		if p.Retire == ops.RetireTerminate {
			ap.Undo = append(ap.Undo, fmt.Sprintf("the old replica `%s` and its volumes are terminated: that cannot be undone", p.Old.ID))
		}
	}
	if p.NoReboot {
		ap.Undo = append(ap.Undo, "the image is made without a reboot, so it is crash-consistent: what the disks held at one instant, as after a power cut; writes in flight are lost and the replica's app recovers as after one. `replica.image_reboot: true` makes it file-system consistent instead, at the price of a reboot of the box (minutes of downtime)")
	} else {
		ap.Undo = append(ap.Undo, "EC2 shuts the box down and reboots it to make a file-system-consistent image: builds running on it are interrupted, webhooks sent meanwhile are lost (`replica.image_reboot: false` avoids the reboot; the image is then crash-consistent)")
	}
	ap.Undo = append(ap.Undo, "backups of the box wait until this is done (and until it is given up, if it stops part-way); the replica costs as much as the box while it runs")
	return ap
}
