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

// KindResize is `resize <instance-type>` as the journal records it.
const KindResize = "resize"

// Resize is `resize <instance-type>`: stop the Services box, change its
// type, start it, verify it on the same IP and volumes. Its plan states
// the downtime the last resize took (from the journal j). Stopped
// part-way, it keeps the box locked: the box may be stopped, or of the
// other type, until it is resumed or given up.
func Resize(s Setup, j journal.Store, r *ops.Resize) Kind[ops.ResizePlan, ops.ResizeResult] {
	return Kind[ops.ResizePlan, ops.ResizeResult]{
		Name: KindResize, What: "resize", Command: commands.Resize,
		Plan: func(ctx context.Context, cmd commands.Command) (ops.ResizePlan, error) {
			p, err := ops.RetryRead(ctx, s.wait(), func() (ops.ResizePlan, error) { return r.Plan(ctx, cmd.InstanceType) })
			if err != nil {
				return p, err
			}
			p.Downtime, err = lastTook(ctx, j, KindResize)
			return p, err
		},
		Approval: resizeApproval,
		Title: func(p ops.ResizePlan) string {
			return fmt.Sprintf("Resize of the Services box `%s` from %s to %s", p.Box.ID, p.From.Name, p.To.Name)
		},
		Target:    s.box,
		Preflight: r.Preflight,
		Steps:     func(p ops.ResizePlan, _ Env) []journal.Def { return r.Steps(p) },
		Recheck: func(ctx context.Context, p ops.ResizePlan, op Record) ([]string, error) {
			// Until the stop (step 1) is done, the box must be as approved:
			// a box that was stopped and runs now, or the reverse, is a
			// different decision.
			if op.done(0) {
				return nil, nil
			}
			c, err := ops.Changed(ctx, s.EC2, "the Services box", p.Box.ID, p.Box.State)
			return nonEmpty(c), err
		},
		Summary: func(p ops.ResizePlan, res ops.ResizeResult, op Record) string {
			if res.RolledBack {
				return fmt.Sprintf(":warning: *Not resized.* AWS could not start `%s` as %s (%s), so it was set back to %s and started: it runs as before, on %s with its volumes, healthy after %s of downtime (approved by <@%s>). Try another type (`%s resize <type> --dry-run` checks one) or try again later. %s.",
					p.Box.ID, p.To.Name, res.Why, p.From.Name, p.Box.PrivateIP, op.Took, op.Approver, s.SlashCommand, stepTimes(op))
			}
			return fmt.Sprintf("The Services box `%s` is now %s (was %s), on the same private IP %s with the same volumes, healthy after %s of downtime (approved by <@%s>). %s. Webhooks sent while it was down were lost; running builds are retried.",
				p.Box.ID, p.To, p.From.Name, p.Box.PrivateIP, op.Took, op.Approver, stepTimes(op))
		},
		LeftBehind: func(p ops.ResizePlan, res ops.ResizeResult, op Record) []string {
			// Given up part-way, the box may be stopped or of the new type:
			// say which type to look for.
			if op.done(1) {
				return []string{fmt.Sprintf("the Services box `%s`, set to %s (check its state and type before starting it)", p.Box.ID, res.Runs(p))}
			}
			return nil
		},
		Hold: true, BoxLine: true,
	}
}

func resizeApproval(p ops.ResizePlan) approvals.Plan {
	b := p.Box
	ap := approvals.Plan{Action: "resize", Facts: p.Facts()}
	if b.State == "stopped" {
		ap.Changes = append(ap.Changes, fmt.Sprintf("the Services box `%s` (%s) is stopped already: CircleCI is down until it is started", b.ID, b.AZ))
	} else {
		ap.Changes = append(ap.Changes, fmt.Sprintf("stop the Services box `%s` (%s, %s), forced after %s, and confirm it stopped: CircleCI is unavailable until it is back", b.ID, b.State, b.AZ, ops.Span(p.StopTimeout)))
	}
	ap.Changes = append(ap.Changes,
		fmt.Sprintf("change its instance type from %s to %s", p.From, p.To),
		fmt.Sprintf("start it; if AWS cannot start %s (no capacity in %s, the vCPU limit), set it back to %s and start that instead, and say so", p.To.Name, b.AZ, p.From.Name))
	if p.AppStart != "" {
		ap.Changes = append(ap.Changes, "start the app on it through SSM: `"+p.AppStart+"`")
	}
	ap.Changes = append(ap.Changes,
		"verify "+checks(p.HealthURL, b.PrivateIP, b.SecondaryIPs)+fmt.Sprintf(", the same private IP %s and the same volumes", b.PrivateIP),
		"checked before asking: "+strings.Join(p.Checked, "; "),
		p.Quota)
	ap.Keeps = []string{fmt.Sprintf("the instance `%s`, its private IP %s%s and its volumes %s, with their data", b.ID, b.PrivateIP, secondaries(b.SecondaryIPs), b.VolumeList())}
	ap.Undo = []string{p.Downtime.Expect("resize", ops.DefaultResizeDowntime)}
	if p.From.InstanceStore {
		ap.Undo = append(ap.Undo, fmt.Sprintf("the instance-store volumes of %s are wiped by the stop", p.From.Name))
	}
	ap.Undo = append(ap.Undo, "builds running on the box are interrupted (CircleCI retries them); webhooks sent while it is down are lost")
	return ap
}
