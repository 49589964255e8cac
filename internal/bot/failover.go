package bot

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

// FailoverAction is `failover` through the two-person rule.
type FailoverAction struct{ R *Operations }

func (a FailoverAction) Plan(ctx context.Context, cmd commands.Command) (approvals.Plan, error) {
	if err := a.R.checkFree(ctx); err != nil {
		return approvals.Plan{}, err
	}
	ap, _, err := a.R.failoverPlan(ctx, cmd)
	return ap, err
}

func (s *Operations) failoverPlan(ctx context.Context, cmd commands.Command) (approvals.Plan, ops.FailoverPlan, error) {
	p, err := ops.RetryRead(ctx, s.retryWait(), func() (ops.FailoverPlan, error) {
		return s.Failover.Plan(ctx, cmd.Target, cmd.ForceUnknown)
	})
	if err != nil {
		return approvals.Plan{}, p, refusal(err)
	}
	return failoverApproval(p, s.Failover.StopTimeout, s.SlashCommand), p, nil
}

func failoverApproval(p ops.FailoverPlan, stop time.Duration, slash string) approvals.Plan {
	ap := approvals.Plan{Action: "failover", Facts: p.Facts()}
	r := p.Replica
	switch {
	case p.Primary == nil:
		ap.Changes = append(ap.Changes, "no Services box is tagged Name="+p.NameTag+": nothing to fence")
	case p.Primary.Unknown != "" && p.Primary.ID == "unknown":
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
	if p.AppStart != "" {
		ap.Changes = append(ap.Changes, "start the app on the replica through SSM: `"+p.AppStart+"`")
	}
	check := "instance status checks"
	if p.HealthURL != "" {
		check += " and " + strings.ReplaceAll(p.HealthURL, "{ip}", r.IP)
	}
	ap.Changes = append(ap.Changes, "verify "+check)
	ap.Keeps = []string{"the old box and its volumes (stopped, renamed, not terminated)", "the replica's data as the replication left it"}
	ap.Undo = []string{
		fmt.Sprintf("expected downtime: the fence (≤ %s), seconds to move the address, then the app's start (typically 5–15 minutes)", stop),
		"webhooks sent during the outage are lost; running builds are retried",
	}
	return ap
}

func (a FailoverAction) Execute(ctx context.Context, req approvals.Request, r Replier) error {
	s := a.R
	return s.execute(ctx, req, r, s.lockKey(), "failover", func(ctx context.Context, cmd commands.Command) (derived, error) {
		ap, p, err := s.failoverPlan(ctx, cmd)
		if err != nil {
			return derived{}, err
		}
		d := derived{plan: ap, data: map[string]string{"kind": "failover", "plan": p.Encode()},
			title: fmt.Sprintf("Failover of the Services box to `%s`", p.Replica.ID)}
		if p.BuilderPlan != nil {
			// It rotates the builders too: no `builders rotate` alongside.
			d.also = []string{"builders/" + p.BuilderPlan.Group}
		}
		return d, nil
	})
}

func (s *Operations) failoverSummary(op *journal.Op, took time.Duration) string {
	p, _ := ops.DecodeFailoverPlan(op.Data["plan"])
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
		if p.Primary.ID != "unknown" {
			old += ", renamed " + p.NameTag + "-fenced"
		}
	}
	return fmt.Sprintf("The Services box is now `%s` (%s, %s), after %s (approved by <@%s>); %s. Steps: %s. Next: %s; webhooks sent during the outage were lost; build a new replica (and take a backup: `%s backup now`).",
		p.Replica.ID, p.Replica.AZ, serviceAddr(p), took, op.Approver, old, strings.Join(steps, ", "), next, s.SlashCommand)
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

// RotateAction is `builders rotate` through the two-person rule.
type RotateAction struct{ R *Operations }

func (s *Operations) builderLock() string { return "builders/" + s.Builders.Group }

func (a RotateAction) Plan(ctx context.Context, _ commands.Command) (approvals.Plan, error) {
	if a.R.Builders == nil {
		return approvals.Plan{}, &UserError{Msg: "no builder group is configured (`builders.asg_name`)."}
	}
	ap, _, err := a.R.rotationPlan(ctx)
	return ap, err
}

func (s *Operations) rotationPlan(ctx context.Context) (approvals.Plan, ops.RotationPlan, error) {
	p, err := ops.RetryRead(ctx, s.retryWait(), func() (ops.RotationPlan, error) { return s.Builders.Plan(ctx) })
	if err != nil {
		return approvals.Plan{}, p, refusal(err)
	}
	ap := approvals.Plan{Action: "builders rotate", Facts: p.Facts()}
	for i, b := range p.Batches() {
		ap.Changes = append(ap.Changes, fmt.Sprintf("batch %d: raise desired capacity to %d, wait until the new builders are healthy, then terminate %s", i+1, int(p.Desired)+len(b), strings.Join(b, ", ")))
	}
	ap.Keeps = []string{fmt.Sprintf("at least %d healthy builders at every moment (the desired capacity); the launch template and group settings", p.Desired)}
	ap.Undo = []string{"the old builders are terminated; builds running on them are retried by CircleCI"}
	return ap, p, nil
}

func (a RotateAction) Execute(ctx context.Context, req approvals.Request, r Replier) error {
	s := a.R
	return s.execute(ctx, req, r, s.builderLock(), "builder rotation", func(ctx context.Context, _ commands.Command) (derived, error) {
		ap, p, err := s.rotationPlan(ctx)
		if err != nil {
			return derived{}, err
		}
		return derived{plan: ap, data: map[string]string{"kind": "rotate", "plan": p.Encode()},
			title: fmt.Sprintf("Rotation of the builders of `%s`", p.Group)}, nil
	})
}

func (d Deps) buildersStatus(ctx context.Context, c Call) (Outcome, error) {
	if d.Ops.Builders == nil {
		return Outcome{}, &UserError{Msg: "no builder group is configured (`builders.asg_name`)."}
	}
	st, err := d.Ops.Builders.Status(ctx)
	if err != nil {
		return Outcome{}, refusal(err)
	}
	var b strings.Builder
	healthy := 0
	for _, i := range st.Instances {
		if i.State == "InService" && i.Health == "Healthy" {
			healthy++
		}
	}
	mark := ":white_check_mark:"
	if healthy < int(st.Desired) {
		mark = ":warning:"
	}
	fmt.Fprintf(&b, "%s *Builders* `%s`: %d healthy of %d desired (min %d, max %d)", mark, st.Group, healthy, st.Desired, st.Min, st.Max)
	if st.LaunchTemplate != "" {
		fmt.Fprintf(&b, ", launch template %s", st.LaunchTemplate)
	}
	b.WriteString("\n")
	for _, i := range st.Instances {
		fmt.Fprintf(&b, "• `%s` %s, %s, %s %s\n", i.ID, i.State, i.Health, i.AZ, i.Type)
	}
	if box, err := ops.FindBox(ctx, d.Status.EC2, d.Status.Target.NameTag); err == nil {
		sh := ops.ShapeOf(box)
		addr := sh.PrivateIP
		if len(sh.SecondaryIPs) > 0 {
			addr += " (service address " + strings.Join(sh.SecondaryIPs, ", ") + ")"
		}
		fmt.Fprintf(&b, "Builders reach the Services box `%s` (%s) at %s.", sh.InstanceID, box.State.Name, addr)
	}
	b.WriteString(fmt.Sprintf("\nAfter a restore or failover: `%s builders rotate`.", d.SlashCommand))
	return OK, c.Reply.Ephemeral(ctx, chat.Text(b.String()))
}

// SecretAction is `secret`: the passphrase, after approval, to the
// requester only.
type SecretAction struct {
	P            *ops.Passphrase
	SlashCommand string
}

func (a SecretAction) Plan(ctx context.Context, cmd commands.Command) (approvals.Plan, error) {
	src, err := a.P.Source(ctx)
	if err != nil {
		return approvals.Plan{}, refusal(err)
	}
	return approvals.Plan{Action: "secret", Facts: map[string]string{"source": src},
		Changes: []string{"read CIRCLE_SECRET_PASSPHRASE from " + src + " and show it to the requester only, in a message nobody else sees"},
		Keeps:   []string{"the passphrase is not posted in the channel, logged, or stored by the bot (read through SSM, it stays in SSM's command history for a while: prefer `secret.secrets_manager_id`)"},
		Undo:    []string{"whoever sees it can join builders to this installation: rotate it if it leaks"},
	}, nil
}

func (a SecretAction) Execute(ctx context.Context, req approvals.Request, r Replier) error {
	v, err := a.P.Read(ctx, req.Plan.Facts["source"])
	if err != nil {
		return err
	}
	msg := fmt.Sprintf(":key: CIRCLE_SECRET_PASSPHRASE for the builders (approved by <@%s>):\n```%s```\nOnly you see this message. Put it in the builders' launch template or secret store; do not paste it in a channel.", req.Decider, v)
	if err := r.EphemeralTo(ctx, req.Requester, chat.Text(msg)); err != nil {
		return fmt.Errorf("deliver the passphrase to <@%s>: %w", req.Requester, err)
	}
	_, err = r.Post(ctx, chat.Text(fmt.Sprintf(":key: The passphrase was shown to <@%s> only (request `%s`, approved by <@%s>).", req.Requester, req.ID, req.Decider)))
	return err
}
