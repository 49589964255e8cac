package engine

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/circlebot/circlebot/internal/approvals"
	"github.com/circlebot/circlebot/internal/commands"
	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/ops"
)

// KindReboot is `reboot` as the journal records it.
const KindReboot = "reboot"

// Reboot is `reboot`: reboot the Services box and wait until it is back.
// Its plan states the downtime the last reboot took (from the journal j).
// A reboot that stops part-way holds nothing: the box is the same box,
// and the next move (another reboot, a failover) must not wait for it.
func Reboot(s Setup, j journal.Store, r *ops.Reboot) Kind[ops.RebootPlan, ops.RebootResult] {
	return Kind[ops.RebootPlan, ops.RebootResult]{
		Name: KindReboot, What: "reboot", Command: commands.Reboot,
		Plan: func(ctx context.Context, _ commands.Command) (ops.RebootPlan, error) {
			p, err := ops.RetryRead(ctx, s.wait(), func() (ops.RebootPlan, error) { return r.Plan(ctx) })
			if err != nil {
				return p, err
			}
			p.Downtime, err = lastTook(ctx, j, KindReboot)
			return p, err
		},
		Approval:  rebootApproval,
		Title:     func(p ops.RebootPlan) string { return fmt.Sprintf("Reboot of the Services box `%s`", p.Box.ID) },
		Target:    s.box,
		Preflight: r.Preflight,
		Steps:     func(p ops.RebootPlan, _ Env) []journal.Def { return r.Steps(p) },
		Summary: func(p ops.RebootPlan, _ ops.RebootResult, op Record) string {
			return fmt.Sprintf("The Services box `%s` (%s, %s) rebooted and is healthy after %s (approved by <@%s>). Downtime measured: %s — the next reboot's plan expects that. %s. Webhooks sent while it was down were lost; running builds are retried.",
				p.Box.ID, p.Box.Type, p.Box.PrivateIP, op.Took, op.Approver, op.Took, stepTimes(op))
		},
	}
}

func rebootApproval(p ops.RebootPlan) approvals.Plan {
	b := p.Box
	ap := approvals.Plan{Action: "reboot", Facts: p.Facts()}
	ap.Changes = []string{
		fmt.Sprintf("reboot the Services box `%s` (%s, %s, %s) with EC2 RebootInstances: CircleCI is unavailable until it is back", b.ID, b.Type, b.PrivateIP, b.AZ),
		fmt.Sprintf("wait until it has rebooted: its SSM agent answers with a boot time after the reboot (up to %s)", ops.Span(p.Timeout)),
	}
	if p.AppStart != "" {
		ap.Changes = append(ap.Changes, "start the app on it through SSM: `"+p.AppStart+"`")
	}
	ap.Changes = append(ap.Changes, "verify "+checks(p.HealthURL, b.PrivateIP, b.SecondaryIPs)+", and that it kept its private IP and volumes")
	ap.Keeps = []string{fmt.Sprintf("the instance `%s`, its private IP %s%s and its volumes %s, with their data", b.ID, b.PrivateIP, secondaries(b.SecondaryIPs), b.VolumeList())}
	ap.Undo = []string{
		p.Downtime.Expect("reboot", ops.DefaultRebootDowntime),
		"builds running on the box are interrupted (CircleCI retries them); webhooks sent while it is down are lost",
	}
	return ap
}

// checks names what the final health check looks at.
func checks(healthURL, ip string, secondary []string) string {
	c := "the instance status checks"
	if healthURL != "" {
		service := ""
		if len(secondary) > 0 {
			service = secondary[0]
		}
		c += " and " + ops.FillHealthURL(healthURL, ip, service)
	}
	return c
}

// lastTook is the downtime the last finished operation of a kind took,
// from its journal: from its first step's start to its end.
func lastTook(ctx context.Context, j journal.Store, kind string) (ops.Downtime, error) {
	all, err := j.All(ctx)
	if err != nil {
		return ops.Downtime{}, fmt.Errorf("read the last %s from the journal: %w", kind, err)
	}
	var last *journal.Op
	for _, op := range all { // oldest first
		if op.Kind == kind && op.State == journal.Done && !op.Finished.IsZero() {
			last = op
		}
	}
	if last == nil {
		return ops.Downtime{}, nil
	}
	return ops.Downtime{Took: last.Elapsed(last.Finished).Round(time.Second), Op: last.ID, At: last.Finished}, nil
}

// stepTimes is "Steps: Reboot … 0s, Wait … 1m2s, …".
func stepTimes(op Record) string {
	var steps []string
	for _, st := range op.Steps {
		if !st.Started.IsZero() && !st.Finished.IsZero() {
			steps = append(steps, fmt.Sprintf("%s %s", st.Name, st.Finished.Sub(st.Started).Round(time.Second)))
		}
	}
	return "Steps: " + strings.Join(steps, ", ")
}
