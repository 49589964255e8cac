package bot

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/slack-go/slack"

	"github.com/circlebot/circlebot/internal/approvals"
	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/commands"
	"github.com/circlebot/circlebot/internal/engine"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/slackio"
)

// Approvals is the two-person flow's state and its clock.
type Approvals struct {
	Store   approvals.Store
	TTL     time.Duration
	Process string
	Now     func() time.Time
}

func (a *Approvals) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

// request turns a destructive command into a plan, and then (unless it is
// a dry run) into a request that waits for a second person.
func (d Deps) request() Handler {
	return func(ctx context.Context, c Call) (Outcome, error) {
		plan, err := d.Engine.Propose(ctx, c.Cmd)
		if err != nil {
			return Outcome{}, err
		}
		if c.Cmd.DryRun {
			text := fmt.Sprintf("*Dry run of* `%s %s` — nothing was changed and no approval was requested.\n%s", d.SlashCommand, c.Cmd.Text(), approvals.Render(plan))
			return Outcome{Result: "ok", Detail: "dry run " + approvals.Short(plan.Hash())}, c.Reply.Ephemeral(ctx, chat.Text(text))
		}
		return d.ask(ctx, c, plan)
	}
}

// ask makes the command with its plan a request that waits for a second
// person, shown in the channel with its buttons.
func (d Deps) ask(ctx context.Context, c Call, plan approvals.Plan) (Outcome, error) {
	now := d.Approvals.now()
	req := approvals.New(c.Cmd.Text(), plan, c.Req.UserID, c.Req.ChannelID, now, d.Approvals.TTL)
	if err := d.Approvals.Store.Create(ctx, req); err != nil {
		return Outcome{}, fmt.Errorf("save approval request: %w", err)
	}
	ref, err := c.Reply.Post(ctx, d.requestMessage(req, true, ""))
	if err != nil {
		return Outcome{}, fmt.Errorf("post approval request: %w", err)
	}
	if err := d.Approvals.Store.SetMessage(ctx, req.ID, ref.TS); err != nil {
		return Outcome{}, err
	}
	return Outcome{Result: "ok", Detail: "requested " + req.ID + " plan " + approvals.Short(req.PlanHash)}, nil
}

// requestMessage shows the plan and, while pending, the buttons. The text
// `/circleci approve <id>` is part of the contract: runbooks rely on it.
func (d Deps) requestMessage(r approvals.Request, pending bool, status string) chat.Message {
	head := fmt.Sprintf(":lock: *Approval needed:* `%s %s`, requested by <@%s>", d.SlashCommand, r.Command, r.Requester)
	if !pending {
		head = fmt.Sprintf("*Request* `%s`: `%s %s`, requested by <@%s>", r.ID, d.SlashCommand, r.Command, r.Requester)
	}
	blocks := chat.Section(head + "\n" + approvals.Render(r.Plan))
	if pending {
		blocks = append(blocks, chat.Context(fmt.Sprintf("Request `%s` · plan `%s` · expires %s UTC · an approver other than the requester: `%s approve %s` or `%s deny %s`",
			r.ID, approvals.Short(r.PlanHash), r.Expires.UTC().Format("15:04"), d.SlashCommand, r.ID, d.SlashCommand, r.ID)))
		approve := slack.NewButtonBlockElement(slackio.ButtonActionID, "approve "+r.ID, slack.NewTextBlockObject(slack.PlainTextType, "Approve", false, false)).WithStyle(slack.StylePrimary)
		approve.Confirm = slack.NewConfirmationBlockObject(
			slack.NewTextBlockObject(slack.PlainTextType, "Run this plan?", false, false),
			slack.NewTextBlockObject(slack.MarkdownType, fmt.Sprintf("`%s` will run as shown (plan `%s`). It is checked against AWS again first.", r.Command, approvals.Short(r.PlanHash)), false, false),
			slack.NewTextBlockObject(slack.PlainTextType, "Approve and run", false, false),
			slack.NewTextBlockObject(slack.PlainTextType, "Cancel", false, false))
		deny := slack.NewButtonBlockElement(slackio.ButtonActionID, "deny "+r.ID, slack.NewTextBlockObject(slack.PlainTextType, "Deny", false, false)).WithStyle(slack.StyleDanger)
		blocks = append(blocks, slack.NewActionBlock("approval", approve, deny))
	} else {
		blocks = append(blocks, chat.Context(status))
	}
	text := fmt.Sprintf("Approval needed: %s (request %s) — %s approve %s", r.Command, r.ID, d.SlashCommand, r.ID)
	return chat.Message{Text: text, Blocks: blocks}
}

func (d Deps) approve(ctx context.Context, c Call) (Outcome, error) {
	return d.decide(ctx, c, true)
}

func (d Deps) deny(ctx context.Context, c Call) (Outcome, error) {
	return d.decide(ctx, c, false)
}

func (d Deps) decide(ctx context.Context, c Call, approve bool) (Outcome, error) {
	user := c.Req.UserID
	r, err := d.Approvals.Store.Decide(ctx, c.Cmd.ID, user, d.Policy.May(user, commands.ClassDecide), approve, d.Approvals.now())
	var ref *approvals.Refusal
	switch {
	case errors.Is(err, approvals.ErrNotFound):
		return Outcome{}, &UserError{Msg: fmt.Sprintf("there is no request `%s`.", c.Cmd.ID)}
	case errors.As(err, &ref):
		return Outcome{Result: "refused", Detail: ref.Reason}, c.Reply.Ephemeral(ctx, chat.Text("Not done: "+ref.Reason))
	case err != nil:
		return Outcome{}, err
	}
	msgRef := chat.Ref{Channel: r.Channel, TS: r.MessageTS}
	if !approve {
		d.updateRequest(ctx, c.Reply, msgRef, d.requestMessage(r, false, fmt.Sprintf(":no_entry_sign: Denied by <@%s> at %s UTC. Nothing was run.", user, r.Decided.UTC().Format("15:04"))))
		return Outcome{Result: "ok", Detail: "denied " + r.ID}, nil
	}
	d.updateRequest(ctx, c.Reply, msgRef, d.requestMessage(r, false, fmt.Sprintf(":white_check_mark: Approved by <@%s> at %s UTC; checking the plan against AWS again, then running.", user, r.Decided.UTC().Format("15:04"))))
	return d.execute(ctx, c, r)
}

// execute runs an approved request once: Begin lets exactly one caller
// through; the engine derives the plan again and runs it only if it
// hashes as approved.
func (d Deps) execute(ctx context.Context, c Call, r approvals.Request) (Outcome, error) {
	if _, err := d.Approvals.Store.Begin(ctx, r.ID, d.Approvals.Process); err != nil {
		return Outcome{Result: "refused", Detail: err.Error()}, nil
	}
	err := d.Engine.Execute(ctx, r, c.Reply)
	msgRef := chat.Ref{Channel: r.Channel, TS: r.MessageTS}
	var changed *engine.PlanChangedError
	switch {
	case errors.As(err, &changed):
		d.finish(ctx, r.ID, approvals.Refused, changed.Error())
		msg := fmt.Sprintf(":warning: Request `%s` was approved but not run: %s. Nothing was changed. Make a new request to see the current plan.", r.ID, changed.Error())
		d.updateRequest(ctx, c.Reply, msgRef, d.requestMessage(r, false, fmt.Sprintf(":warning: Approved by <@%s>, not run: %s. Make a new request to see the current plan.", r.Decider, changed.Error())))
		_, perr := c.Reply.Post(ctx, chat.Text(msg))
		return Outcome{Result: "refused", Detail: changed.Error()}, perr
	case err != nil:
		d.finish(ctx, r.ID, approvals.Failed, ops.Explain(err))
		// The operation's own progress message may never have been posted
		// (it can fail before starting): say it here too.
		d.updateRequest(ctx, c.Reply, msgRef, d.requestMessage(r, false, fmt.Sprintf(":x: Approved by <@%s>; failed: %s", r.Decider, ops.Explain(err))))
		return Outcome{}, &UserError{Msg: fmt.Sprintf("request `%s` failed: %s", r.ID, ops.Explain(err))}
	}
	d.finish(ctx, r.ID, approvals.Done, "")
	d.updateRequest(ctx, c.Reply, msgRef, d.requestMessage(r, false, fmt.Sprintf(":white_check_mark: Approved by <@%s> and done.", r.Decider)))
	return Outcome{Result: "ok", Detail: "ran " + r.ID}, nil
}

// finish records how an approved request ended. A failure to record it is
// logged: the request then shows "executing" until the recovery path,
// which sees its operation journaled (or its process gone), closes it.
func (d Deps) finish(ctx context.Context, id string, st approvals.State, note string) {
	// Recorded even if ctx ended meanwhile (the bot shutting down as the
	// operation stopped): the request must not stay "executing".
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := d.Approvals.Store.Finish(ctx, id, st, note); err != nil {
		d.Log.Error("record how an approval request ended", "request", id, "state", st, "err", err)
	}
}

// updateRequest rewrites the request's message. Slack failing it is
// logged: the state is in the store, and the outcome is posted or streamed
// separately.
func (d Deps) updateRequest(ctx context.Context, r Replier, ref chat.Ref, m chat.Message) {
	if err := r.Update(ctx, ref, m); err != nil {
		d.Log.Warn("update the approval request message", "channel", ref.Channel, "ts", ref.TS, "err", err)
	}
}
