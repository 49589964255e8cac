package engine

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/circlebot/circlebot/internal/approvals"
	"github.com/circlebot/circlebot/internal/commands"
	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/ops"
)

// Failover is `failover [--to <i-…>] [--force-unknown]`: fence the
// Services box, move the service address to the replica, start the app,
// verify.
func Failover(s Setup, f *ops.Failover) Kind[ops.FailoverPlan, ops.FailoverResult] {
	return Kind[ops.FailoverPlan, ops.FailoverResult]{
		Name: KindFailover, What: "failover", Command: commands.Failover,
		Plan: func(ctx context.Context, cmd commands.Command) (ops.FailoverPlan, error) {
			p, err := ops.RetryRead(ctx, s.wait(), func() (ops.FailoverPlan, error) { return f.PlanWith(ctx, cmd.Target, cmd.ForceUnknown, cmd.ForceStale) })
			if err == nil {
				p.RTO = predictRTO(ctx, s.Journal, pathFailover, ops.StepNames(f.Steps(p)), stepDefaults(pathFailover, p.Replica.State == "stopped"))
			}
			return p, err
		},
		Approval: func(p ops.FailoverPlan) approvals.Plan { return failoverApproval(p, f.StopTimeout, s.SlashCommand) },
		Title: func(p ops.FailoverPlan) string {
			return fmt.Sprintf("Failover of the Services box to `%s`", p.Replica.ID)
		},
		Target: s.box,
		Also: func(p ops.FailoverPlan) []string {
			if p.BuilderPlan != nil {
				// It rotates the builders too: no `builders rotate` alongside.
				return []string{BuildersLock(p.BuilderPlan.Group)}
			}
			return nil
		},
		Preflight: f.Preflight,
		Steps:     func(p ops.FailoverPlan, _ Env) []journal.Def { return f.Steps(p) },
		Recheck: func(ctx context.Context, p ops.FailoverPlan, op Record) ([]string, error) {
			var changes []string
			// Until the fence (step 1) is done, the old primary must be as
			// approved: a box that was down and came back is a healthy
			// Services box, and fencing it is a new decision.
			if p.Primary != nil && !op.done(0) {
				c, err := primaryChanged(ctx, s, p)
				if err != nil {
					return nil, err
				}
				changes = append(changes, c...)
			}
			// Until the replica is started (step 2), it must be as approved.
			if !op.done(1) {
				c, err := ops.Changed(ctx, s.EC2, "the replica", p.Replica.ID, p.Replica.State)
				if err != nil {
					return nil, err
				}
				changes = append(changes, nonEmpty(c)...)
			}
			return changes, nil
		},
		Summary: func(p ops.FailoverPlan, _ ops.FailoverResult, op Record) string {
			var steps []string
			for _, st := range op.Steps {
				steps = append(steps, fmt.Sprintf("%s %s", st.Name, st.Finished.Sub(st.Started).Round(time.Second)))
			}
			next := fmt.Sprintf("`%s builders rotate` so every builder reconnects", s.SlashCommand)
			if p.BuilderPlan != nil {
				next = "builders were rotated"
			}
			old := "no old box"
			if p.Primary != nil {
				// Say what the fence step found, not what it hoped for.
				old = "old box: " + op.Steps[0].Detail
				if !p.Primary.Unreadable() {
					old += ", renamed " + p.NameTag + "-fenced"
				}
			}
			// A refresh building a replica of the old box holds the
			// backups until it ends: the backup advised here waits for
			// its cancel.
			refreshes := ""
			for _, c := range p.Building {
				if c.Op != "" && c.ID != p.Replica.ID {
					refreshes += fmt.Sprintf("`%s cancel %s` (the replica refresh of the old box: it holds the backups until it ends), ", s.SlashCommand, c.Op)
				}
			}
			return fmt.Sprintf("The Services box is now `%s` (%s, %s), after %s (approved by <@%s>); %s. Steps: %s. %sNext: %s; webhooks sent during the outage were lost; %sbuild a new replica (and take a backup: `%s backup now`).",
				p.Replica.ID, p.Replica.AZ, serviceAddr(p), op.Took, op.Approver, old, strings.Join(steps, ", "), withSpace(p.RTO.Actual(toApp(op.Op, appStepFailover))), next, refreshes, s.SlashCommand)
		},
		Hold: true, BoxLine: true,
	}
}

func primaryChanged(ctx context.Context, s Setup, p ops.FailoverPlan) ([]string, error) {
	if p.Primary.Unknown == "" {
		c, err := ops.Changed(ctx, s.EC2, "the Services box", p.Primary.ID, p.Primary.State)
		return nonEmpty(c), err
	}
	// It could not be read when approved: if it can be now, the risk the
	// approver took is not the one in front of us.
	box, err := ops.FindBox(ctx, s.EC2, s.NameTag)
	if err != nil {
		return nil, nil
	}
	return []string{fmt.Sprintf("the Services box could not be read when this was approved (%s); now `%s` is %s", strings.TrimSuffix(p.Primary.Unknown, "."), aws.ToString(box.InstanceId), box.State.Name)}, nil
}

func failoverApproval(p ops.FailoverPlan, stop time.Duration, slash string) approvals.Plan {
	ap := approvals.Plan{Action: "failover", Facts: p.Facts()}
	r := p.Replica
	if p.ReplicaTag != "" && r.Name == ops.RetiredName(p.ReplicaTag) {
		// Named with --to: a person chose it, so it is said, not refused.
		ap.Changes = append(ap.Changes, fmt.Sprintf(":warning: `%s` is a replica a refresh retired (Name=%s): its data is as old as that refresh, older than the replica's now. Promoted only because `--to` named it.", r.ID, r.Name))
	}
	switch {
	case p.Primary == nil:
		ap.Changes = append(ap.Changes, "no Services box is tagged Name="+p.NameTag+": nothing to fence")
	case p.Primary.Unreadable():
		ap.Changes = append(ap.Changes, fmt.Sprintf(":warning: the Services box cannot be read (%s) and no instance holds its address: *no stop can be attempted*. *Risk:* if the old box still runs somewhere, it must be stopped by hand before it comes back. Approved only because `--force-unknown` was asked for.", strings.TrimSuffix(p.Primary.Unknown, ".")))
	case p.Primary.Unknown != "":
		ap.Changes = append(ap.Changes, fmt.Sprintf(":warning: the Services box cannot be read (%s); `%s` holds its address, and a forced stop of it is attempted but may not land or be confirmed. *Risk:* if it is still running, two Services boxes serve until it is stopped by hand. Approved only because `--force-unknown` was asked for.", strings.TrimSuffix(p.Primary.Unknown, "."), p.Primary.ID))
	case p.ForceUnknown:
		ap.Changes = append(ap.Changes, fmt.Sprintf("fence the Services box `%s` (%s, %s): stop it, forced after %s; with `--force-unknown` the failover goes on even if the stop is *not confirmed* — *Risk:* two boxes may serve until it is stopped by hand", p.Primary.ID, p.Primary.State, p.Primary.AZ, stop))
	default:
		ap.Changes = append(ap.Changes, fmt.Sprintf("fence the Services box `%s` (%s, %s): stop it, forced after %s, and confirm it stopped — before anything moves", p.Primary.ID, p.Primary.State, p.Primary.AZ, stop))
	}
	if r.State == "stopped" {
		ap.Changes = append(ap.Changes, fmt.Sprintf("start the replica `%s`", r.ID))
	}
	switch p.Discovery {
	case ops.DiscoverySecondaryIP:
		ap.Changes = append(ap.Changes, fmt.Sprintf("move the service address %s from its interface to the replica's `%s` (same subnet `%s`), and check it left the old one", p.ServiceIP, r.ENI, r.Subnet))
	case ops.DiscoveryENI:
		ap.Changes = append(ap.Changes, fmt.Sprintf("detach interface `%s` (%s) and attach it to the replica `%s`", p.ENI, p.ServiceIP, r.ID))
	case ops.DiscoveryLoadBalancer:
		ap.Changes = append(ap.Changes, fmt.Sprintf("in %d target groups (TCP 80, 443, 4434): deregister every target but the replica (the old box), then register `%s`", len(p.TargetGroups), r.ID))
	case ops.DiscoveryNone:
		ap.Changes = append(ap.Changes, fmt.Sprintf("nothing moves: builders must reach the replica at %s with CIRCLE_SECRET_PASSPHRASE — update the builders' launch template to that IP first", r.IP))
		if p.BuilderPlan != nil {
			ap.Changes = append(ap.Changes, fmt.Sprintf("then replace all %d builders of `%s` (%d at a time, never fewer than %d healthy)", len(p.Builders), p.BuilderPlan.Group, p.BuilderPlan.Batch, p.BuilderPlan.Desired))
		}
	}
	ap.Changes = append(ap.Changes, fmt.Sprintf("name `%s` %s (the old box becomes %s-fenced)", r.ID, p.NameTag, p.NameTag))
	if os := p.OSAddress(); os != "" {
		ap.Changes = append(ap.Changes, "configure "+os)
	} else if p.Discovery == ops.DiscoverySecondaryIP || p.Discovery == ops.DiscoveryENI {
		ap.Changes = append(ap.Changes, fmt.Sprintf(":warning: the replica's OS is *not* told to use %s (`failover.os_address_command: none`, or no SSM): it must own that address by itself, or builders cannot reach it", p.ServiceIP))
	}
	if p.AppStart != "" {
		ap.Changes = append(ap.Changes, "start the app on the replica through SSM: `"+p.AppStart+"`")
	}
	check := "instance status checks"
	if p.HealthURL != "" {
		check += " and " + ops.FillHealthURL(p.HealthURL, r.IP, p.ServiceIP)
	}
	ap.Changes = append(ap.Changes, "verify "+check)
	ap.Keeps = []string{"the old box and its volumes (stopped, renamed, not terminated)", "the replica's data as the replication left it"}
	for _, c := range p.Building {
		if c.ID == r.ID {
			continue
		}
		ap.Keeps = append(ap.Keeps, ops.CandidateLines([]ops.Candidate{c}, p.ReplicaTag)+": not the replica, not touched")
		if c.Op != "" {
			ap.Keeps = append(ap.Keeps, fmt.Sprintf("`%s` never retires a promoted replica (it stops first): after this failover `%s cancel %s`, then build a replica of the new box", c.Op, slash, c.Op))
		}
	}
	if l := p.Lag; l != nil {
		switch {
		case l.State == ops.LagInSync:
			ap.Keeps = append(ap.Keeps, fmt.Sprintf("replication: the replica is in sync (checked %s UTC)", l.At.UTC().Format("15:04:05")))
		case p.ForceStale:
			ap.Changes = append([]string{fmt.Sprintf(":warning: replication: the replica is %s (checked %s UTC). *`--force-stale`*: it is promoted anyway — what it has not received is lost.", l, l.At.UTC().Format("15:04:05"))}, ap.Changes...)
		default:
			ap.Changes = append([]string{fmt.Sprintf(":warning: replication: the replica is %s (checked %s UTC): what it has not received is lost", l, l.At.UTC().Format("15:04:05"))}, ap.Changes...)
		}
	}
	ap.Undo = []string{
		fmt.Sprintf("expected downtime: the fence (≤ %s), seconds to move the address, then the app's start (typically 5–15 minutes)", stop),
		"webhooks sent during the outage are lost; running builds are retried",
	}
	if p.RTO.Predicted > 0 {
		ap.Undo = append(ap.Undo, p.RTO.Line(pathFailover.what))
	}
	return ap
}

func serviceAddr(p ops.FailoverPlan) string {
	switch p.Discovery {
	case ops.DiscoverySecondaryIP, ops.DiscoveryENI:
		return "service address " + p.ServiceIP
	case ops.DiscoveryLoadBalancer:
		return "behind the load balancer"
	}
	return "IP " + p.Replica.IP
}

// BuildersLock is the lock key of work on the builder group.
func BuildersLock(group string) string { return "builders/" + group }

// Rotate is `builders rotate`: replace every builder in batches, never
// below the desired healthy count; b is nil when builders.asg_name is
// unset.
func Rotate(s Setup, b *ops.Builders) Kind[ops.RotationPlan, ops.NoResult] {
	return Kind[ops.RotationPlan, ops.NoResult]{
		Name: KindRotate, What: "builder rotation", Command: commands.BuildersRotate,
		Ready: func() error {
			if b == nil {
				return refusef("no builder group is configured (`builders.asg_name`).")
			}
			return nil
		},
		Plan: func(ctx context.Context, _ commands.Command) (ops.RotationPlan, error) {
			return ops.RetryRead(ctx, s.wait(), func() (ops.RotationPlan, error) { return b.Plan(ctx) })
		},
		Approval: func(p ops.RotationPlan) approvals.Plan {
			ap := approvals.Plan{Action: "builders rotate", Facts: p.Facts()}
			for i, batch := range p.Batches() {
				ap.Changes = append(ap.Changes, fmt.Sprintf("batch %d: raise desired capacity to %d, wait until the new builders are healthy, then terminate %s", i+1, int(p.Desired)+len(batch), strings.Join(batch, ", ")))
			}
			ap.Keeps = []string{fmt.Sprintf("at least %d healthy builders at every moment (the desired capacity); the launch template and group settings", p.Desired)}
			ap.Undo = []string{"the old builders are terminated; builds running on them are retried by CircleCI"}
			return ap
		},
		Title: func(p ops.RotationPlan) string { return fmt.Sprintf("Rotation of the builders of `%s`", p.Group) },
		Target: func() string {
			if b == nil {
				return BuildersLock("")
			}
			return BuildersLock(b.Group)
		},
		Preflight: func(ctx context.Context, p ops.RotationPlan) ops.Preflight {
			if b == nil {
				return ops.Preflight{}
			}
			return b.Preflight(ctx, p)
		},
		Steps: func(p ops.RotationPlan, _ Env) []journal.Def { return b.Steps(p) },
		Summary: func(p ops.RotationPlan, _ ops.NoResult, op Record) string {
			return fmt.Sprintf("Rotated the builders of `%s` in %s (approved by <@%s>): %s.", p.Group, op.Took, op.Approver, op.Steps[len(op.Steps)-1].Detail)
		},
		Hold: true,
	}
}

func withSpace(s string) string {
	if s == "" {
		return ""
	}
	return s + " "
}
