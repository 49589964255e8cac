package bot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/slack-go/slack"

	"github.com/circlebot/circlebot/internal/approvals"
	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/commands"
	"github.com/circlebot/circlebot/internal/kv"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/progress"
	"github.com/circlebot/circlebot/internal/slackio"
)

// Action is one destructive operation: Plan derives exactly what would run
// from live state (called when requested and again just before running),
// Execute runs a plan that a second person approved.
type Action interface {
	Plan(ctx context.Context, cmd commands.Command) (approvals.Plan, error)
	Execute(ctx context.Context, req approvals.Request, r Replier) error
}

// Approvals is the two-person flow's state and its clock.
type Approvals struct {
	Store   approvals.Store
	TTL     time.Duration
	Process string
	// Alive reports whether a bot process may still run what it began
	// (default: only this one).
	Alive func(ctx context.Context, process string) bool
	Now   func() time.Time
	// Journaled reports requests that became journaled operations: those
	// are announced (and resumable) by the journal, not here.
	Journaled func(ctx context.Context, reqID string) bool
	Log       *slog.Logger // default slog.Default()
}

func (a *Approvals) log() *slog.Logger {
	if a.Log != nil {
		return a.Log
	}
	return slog.Default()
}

func (a *Approvals) alive(ctx context.Context, process string) bool {
	if a.Alive != nil {
		return a.Alive(ctx, process)
	}
	return process == a.Process
}

func (a *Approvals) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

// request turns a destructive command into a plan, and then (unless it is
// a dry run) into a request that waits for a second person.
func (d Deps) request(act Action) Handler {
	return func(ctx context.Context, c Call) (Outcome, error) {
		plan, err := act.Plan(ctx, c.Cmd)
		if err != nil {
			return Outcome{}, err
		}
		if c.Cmd.DryRun {
			text := fmt.Sprintf("*Dry run of* `%s %s` — nothing was changed and no approval was requested.\n%s", d.SlashCommand, c.Cmd.Text(), approvals.Render(plan))
			return Outcome{Result: "ok", Detail: "dry run " + approvals.Short(plan.Hash())}, c.Reply.Ephemeral(ctx, chat.Text(text))
		}
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
	// The request message only shows the decision, which is recorded and
	// answered here: a failed update is not worth failing the command for.
	if !approve {
		_ = c.Reply.Update(ctx, msgRef, d.requestMessage(r, false, fmt.Sprintf(":no_entry_sign: Denied by <@%s> at %s UTC. Nothing was run.", user, r.Decided.UTC().Format("15:04"))))
		return Outcome{Result: "ok", Detail: "denied " + r.ID}, nil
	}
	_ = c.Reply.Update(ctx, msgRef, d.requestMessage(r, false, fmt.Sprintf(":white_check_mark: Approved by <@%s> at %s UTC; checking the plan against AWS again, then running.", user, r.Decided.UTC().Format("15:04"))))
	return d.execute(ctx, c, r)
}

// execute runs an approved request once: Begin lets exactly one caller
// through, and the plan derived again from live state must hash the same.
func (d Deps) execute(ctx context.Context, c Call, r approvals.Request) (Outcome, error) {
	if _, err := d.Approvals.Store.Begin(ctx, r.ID, d.Approvals.Process); err != nil {
		return Outcome{Result: "refused", Detail: err.Error()}, nil
	}
	// finish records how the request ended, even if ctx ended meanwhile
	// (the bot is stopping): left executing, it reads as cut off later.
	finish := func(st approvals.State, note string) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if _, err := d.Approvals.Store.Finish(fctx, r.ID, st, note); err != nil {
			d.Approvals.log().Error("record the end of an approved request; it stays executing, and a later start may report it as cut off", "request", r.ID, "state", st, "err", err)
		}
	}
	cmd, err := commands.Parse(r.Command)
	act := d.Actions[cmd.Name]
	if err != nil || act == nil {
		finish(approvals.Failed, "command no longer runnable")
		return Outcome{}, fmt.Errorf("request %s: command %q cannot run in this version", r.ID, r.Command)
	}
	live, err := act.Plan(ctx, cmd)
	if err != nil || live.Hash() != r.PlanHash {
		why := "the plan changed since it was approved"
		if err != nil {
			why = "the plan cannot be made again: " + err.Error()
		}
		finish(approvals.Refused, why)
		msg := fmt.Sprintf(":warning: Request `%s` was approved but not run: %s (approved plan `%s`, live plan `%s`). Nothing was changed. Make a new request to see the current plan.",
			r.ID, why, approvals.Short(r.PlanHash), approvals.Short(live.Hash()))
		_, perr := c.Reply.Post(ctx, chat.Text(msg))
		return Outcome{Result: "refused", Detail: why}, perr
	}
	err = act.Execute(ctx, r, c.Reply)
	msgRef := chat.Ref{Channel: r.Channel, TS: r.MessageTS}
	var changed *PlanChangedError
	// The updates of the request message below repeat what the outcome
	// says: a failed one is not worth failing the command for.
	switch {
	case errors.As(err, &changed):
		finish(approvals.Refused, changed.Error())
		_ = c.Reply.Update(ctx, msgRef, d.requestMessage(r, false, fmt.Sprintf(":warning: Approved by <@%s>, not run: %s. Make a new request to see the current plan.", r.Decider, changed.Error())))
		return Outcome{Result: "refused", Detail: changed.Error()}, nil
	case err != nil:
		finish(approvals.Failed, ops.Explain(err))
		// The operation's own progress message may never have been posted
		// (it can fail before starting): say it here too.
		_ = c.Reply.Update(ctx, msgRef, d.requestMessage(r, false, fmt.Sprintf(":x: Approved by <@%s>; failed: %s", r.Decider, ops.Explain(err))))
		return Outcome{}, &UserError{Msg: fmt.Sprintf("request `%s` failed: %s", r.ID, ops.Explain(err))}
	}
	finish(approvals.Done, "")
	_ = c.Reply.Update(ctx, msgRef, d.requestMessage(r, false, fmt.Sprintf(":white_check_mark: Approved by <@%s> and done.", r.Decider)))
	return Outcome{Result: "ok", Detail: "ran " + r.ID}, nil
}

// AnnounceInterrupted reports requests that were executing when a previous
// bot process stopped. They are never started again.
func (a *Approvals) AnnounceInterrupted(ctx context.Context, posterFor func(string) progress.Poster, slash string) {
	all, err := a.Store.All(ctx)
	if err != nil {
		if ctx.Err() == nil { // not just the bot stopping
			a.log().Error("read approval requests to announce interrupted ones", "err", err)
		}
		return
	}
	for _, r := range all {
		if r.State != approvals.Executing || a.alive(ctx, r.Process) {
			continue
		}
		if a.Journaled != nil && a.Journaled(ctx, r.ID) {
			// Its operation is announced by the journal; a conflict is
			// another replica having marked it first.
			if _, err := a.Store.Interrupt(ctx, r.ID, r.Process, "interrupted: the bot stopped while it ran; its operation can be resumed"); err != nil && !errors.Is(err, kv.ErrConflict) {
				a.log().Error("mark an interrupted approved request failed; it stays executing until the next check", "request", r.ID, "err", err)
			}
			continue
		}
		if _, err := a.Store.Interrupt(ctx, r.ID, r.Process, "interrupted: the bot stopped while it ran"); err != nil {
			if !errors.Is(err, kv.ErrConflict) {
				a.log().Error("mark an interrupted approved request failed; it stays executing until the next check", "request", r.ID, "err", err)
			}
			continue // another replica said it, or it finished after all
		}
		msg := fmt.Sprintf(":warning: Request `%s` (`%s %s`, approved by <@%s>) was running when the bot stopped. It was not started again; check its last progress message, then make a new request if needed.", r.ID, slash, r.Command, r.Decider)
		if _, err := posterFor(r.Channel).Post(ctx, chat.Text(msg)); err != nil {
			a.log().Error("announce an interrupted approved request; it is marked failed and not announced again", "request", r.ID, "channel", r.Channel, "err", err)
		}
	}
}
