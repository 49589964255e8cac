package bot

import (
	"context"
	"errors"
	"fmt"
	"strings"
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
	// Channel is approvals.channel: every request is shown there too, and
	// may be decided there ("": only where it was requested).
	Channel string
	Now     func() time.Time
}

func (a *Approvals) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

// How much of a plan the request message shows. Whatever the plan's size,
// the message keeps its ID, hash, expiry and buttons well inside Slack's
// limits; what does not fit goes, complete, into its thread.
const (
	// summaryItems is how many items of each list the message shows.
	summaryItems = 20
	// summaryBytes bounds the plan's part of the message.
	summaryBytes = 5000
	// pageBytes bounds one thread message of the full plan.
	pageBytes = chat.MaxMessageText - 2000
	// maxPages: a full plan longer than this many thread messages is
	// attached as one file instead, where the transport can.
	maxPages = 4
)

// request turns a destructive command into a plan, and then (unless it is
// a dry run) into a request that waits for a second person.
func (d Deps) request() Handler {
	return func(ctx context.Context, c Call) (Outcome, error) {
		plan, err := d.Engine.Propose(ctx, c.Cmd)
		if err != nil {
			return Outcome{}, err
		}
		if c.Cmd.DryRun {
			summary, complete := approvals.Summary(plan, summaryItems, summaryBytes)
			if !complete {
				summary += "_Long lists are cut here; a request (without `--dry-run`) attaches the full plan in its thread._\n"
			}
			text := fmt.Sprintf("*Dry run of* `%s %s` — nothing was changed and no approval was requested.\n%s%s", d.SlashCommand, c.Cmd.Text(), summary, preflightText(plan))
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
	return d.publish(ctx, c, req)
}

// publish shows a new request (created Posting: nobody can decide it yet)
// in its channel and in approvals.channel, each with its full plan, and
// only then opens it for decisions. If it cannot be shown complete in its
// own channel it is voided: nobody can approve what nobody could see.
func (d Deps) publish(ctx context.Context, c Call, req approvals.Request) (Outcome, error) {
	ref, err := d.show(ctx, c.Reply, req)
	if err != nil {
		why := fmt.Sprintf("its message could not be posted in <#%s> (%s)", req.Channel, slackReason(err))
		if ref.TS != "" {
			why = fmt.Sprintf("its full plan could not be attached in <#%s> (%s)", req.Channel, slackReason(err))
		}
		return d.unposted(ctx, c, req, why, err, ref)
	}
	var copies []approvals.Copy
	var notes []string
	if ch := d.Approvals.Channel; ch != "" && ch != req.Channel {
		out, err := d.in(c, ch)
		var cref chat.Ref
		if err == nil {
			cref, err = d.show(ctx, out, req)
		}
		if err != nil {
			d.Log.Warn("show an approval request in approvals.channel", "request", req.ID, "channel", ch, "err", err)
			if cref.TS != "" {
				d.updateRequest(ctx, out, cref, d.requestMessage(req, fmt.Sprintf(":x: Not shown in full here (%s): decide it in <#%s>.", slackReason(err), req.Channel)))
			}
			notes = append(notes, fmt.Sprintf("Request `%s` could not be shown in <#%s> (%s): approvers can decide it only here.", req.ID, ch, slackReason(err)))
		} else {
			copies = append(copies, approvals.Copy{Channel: ch, TS: cref.TS})
		}
	}
	if _, err := d.Approvals.Store.SetMessage(ctx, req.ID, ref.TS, copies); err != nil {
		shown := []chat.Ref{ref}
		for _, cp := range copies {
			shown = append(shown, chat.Ref{Channel: cp.Channel, TS: cp.TS})
		}
		return d.unposted(ctx, c, req, "it could not be recorded as posted", err, shown...)
	}
	if len(notes) > 0 {
		if err := c.Reply.Ephemeral(ctx, chat.Text(":warning: "+strings.Join(notes, " "))); err != nil {
			d.Log.Warn("tell the requester where their request is shown", "request", req.ID, "err", err)
		}
	}
	return Outcome{Result: "ok", Detail: "requested " + req.ID + " plan " + approvals.Short(req.PlanHash)}, nil
}

// unposted gives up a request that was not shown complete: it is voided
// (nobody can decide it, on any replica), what was posted of it says so,
// and the requester is told.
func (d Deps) unposted(ctx context.Context, c Call, req approvals.Request, why string, cause error, shown ...chat.Ref) (Outcome, error) {
	d.Log.Warn("approval request not opened", "request", req.ID, "why", why, "err", cause)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := d.Approvals.Store.Void(sctx, req.ID, why); err != nil {
		// Still Posting (never opened), or decided in the moment a lost
		// answer left it open: either way no one decides it unseen.
		d.Log.Error("void an approval request that was not posted", "request", req.ID, "err", err)
	}
	req.State, req.Note = approvals.Unposted, why
	for _, ref := range shown {
		if ref.TS == "" {
			continue
		}
		out, err := d.in(c, ref.Channel)
		if err == nil {
			d.updateRequest(sctx, out, ref, d.requestMessage(req, fmt.Sprintf(":x: Not open for approval: %s. Nothing will run; make a new request.", why)))
		}
	}
	msg := fmt.Sprintf(":x: Your request `%s` (`%s %s`) was not opened: %s. Nobody can approve it and nothing was changed; try again.", req.ID, d.SlashCommand, req.Command, why)
	if err := c.Reply.Ephemeral(ctx, chat.Text(msg)); err != nil {
		d.Log.Error("tell the requester their request was not opened", "request", req.ID, "err", err)
	}
	return Outcome{Result: "failed", Detail: fmt.Sprintf("request %s not opened: %s", req.ID, why)}, nil
}

// show posts the request message with out and, when the message shows
// only part of the plan, the full plan in its thread. The ref is set when
// the message itself was posted, even if the plan then failed.
func (d Deps) show(ctx context.Context, out Replier, req approvals.Request) (chat.Ref, error) {
	ref, err := out.Post(ctx, d.requestMessage(req, ""))
	if err != nil {
		return chat.Ref{}, err
	}
	if _, complete := approvals.Summary(req.Plan, summaryItems, summaryBytes); complete {
		return ref, nil
	}
	if err := d.attachPlan(ctx, out, ref, req); err != nil {
		return ref, fmt.Errorf("attach the full plan: %w", err)
	}
	return ref, nil
}

// attachPlan puts the whole plan in the thread of the request message:
// as thread messages that each fit Slack's limits, or, when that would
// take more than maxPages of them, as one text file (which also carries
// the exact text the hash is taken of).
func (d Deps) attachPlan(ctx context.Context, out Replier, ref chat.Ref, req approvals.Request) error {
	if ref.TS == "" {
		return fmt.Errorf("the message was posted through the slash command, so it has no thread: invite the bot to <#%s>", ref.Channel)
	}
	pages := chat.Pages(approvals.Full(req.Plan), pageBytes)
	if up, ok := out.(FileUploader); ok && len(pages) > maxPages {
		doc := fmt.Sprintf("Request %s: %s %s, requested by %s, expires %s UTC\n\n%s", req.ID, d.SlashCommand, req.Command, req.Requester, req.Expires.UTC().Format("2006-01-02 15:04"), approvals.Document(req.Plan))
		err := up.UploadFile(ctx, ref, req.ID+"-plan.txt", fmt.Sprintf("Full plan of %s (plan %s)", req.ID, approvals.Short(req.PlanHash)), []byte(doc))
		if err == nil {
			return nil
		}
		d.Log.Warn("attach the full plan as a file; posting it in the thread instead", "request", req.ID, "err", err)
	}
	for i, p := range pages {
		head := fmt.Sprintf("*Full plan of request `%s`* · plan `%s` · part %d of %d\n", req.ID, approvals.Short(req.PlanHash), i+1, len(pages))
		if _, err := out.PostThread(ctx, ref, chat.Text(head+p)); err != nil {
			return fmt.Errorf("part %d of %d: %w", i+1, len(pages), err)
		}
	}
	return nil
}

// requestMessage shows the request: its plan (long lists cut, with counts;
// the full plan is in the thread), and while it waits (status "") its ID,
// plan hash, expiry and buttons; afterwards status says how it ended. The
// text `/circleci approve <id>` is part of the contract: runbooks rely on
// it. The message stays well inside Slack's limits whatever the plan.
func (d Deps) requestMessage(r approvals.Request, status string) chat.Message {
	pending := status == ""
	head := fmt.Sprintf(":lock: *Approval needed:* `%s %s`, requested by <@%s> in <#%s>", d.SlashCommand, chat.Truncate(r.Command, 300), r.Requester, r.Channel)
	if pending && r.Plan.Blocked() != "" {
		head = fmt.Sprintf(":no_entry: *Pre-flight failed, cannot be approved:* `%s %s`, requested by <@%s> in <#%s>", d.SlashCommand, chat.Truncate(r.Command, 300), r.Requester, r.Channel)
	}
	if !pending {
		head = fmt.Sprintf("*Request* `%s`: `%s %s`, requested by <@%s> in <#%s>", r.ID, d.SlashCommand, chat.Truncate(r.Command, 300), r.Requester, r.Channel)
	}
	summary, complete := approvals.Summary(r.Plan, summaryItems, summaryBytes)
	blocks := chat.Section(head + "\n" + summary)
	if t := preflightText(r.Plan); t != "" {
		blocks = append(blocks, chat.Section(t)...)
	}
	if !complete {
		blocks = append(blocks, chat.Context(fmt.Sprintf(":paperclip: Long lists are cut above. The full plan is attached in this message's thread, and the plan hash `%s` covers every item of it, not only what is shown here.", r.PlanHash)))
	}
	if !pending {
		blocks = append(blocks, chat.Context(status))
		return chat.Message{Text: fmt.Sprintf("Request %s: %s %s", r.ID, d.SlashCommand, r.Command), Blocks: blocks}
	}
	deny := slack.NewButtonBlockElement(slackio.ButtonID("deny"), "deny "+r.ID, slack.NewTextBlockObject(slack.PlainTextType, "Deny", false, false)).WithStyle(slack.StyleDanger)
	if why := r.Plan.Blocked(); why != "" {
		// Nothing to approve: the request is shown so that the channel
		// sees what AWS would refuse; Deny withdraws it.
		blocks = append(blocks, chat.Context(fmt.Sprintf("Request `%s` · plan `%s` · expires %s UTC · :no_entry: *Cannot be approved:* its pre-flight failed: %s. Nothing was changed. Fix that, then make a new request; `%s deny %s` withdraws this one.",
			r.ID, approvals.Short(r.PlanHash), r.Expires.UTC().Format("15:04"), why, d.SlashCommand, r.ID)),
			slack.NewActionBlock("approval", deny))
		text := fmt.Sprintf("Cannot be approved: %s (request %s) — its pre-flight failed", chat.Truncate(r.Command, 300), r.ID)
		return chat.Message{Text: text, Blocks: blocks}
	}
	where := make([]string, 0, 2)
	for _, ch := range d.decisionChannels(r) {
		where = append(where, "<#"+ch+">")
	}
	blocks = append(blocks, chat.Context(fmt.Sprintf("Request `%s` · plan `%s` · expires %s UTC · in %s, an approver other than the requester: `%s approve %s` or `%s deny %s`",
		r.ID, approvals.Short(r.PlanHash), r.Expires.UTC().Format("15:04"), strings.Join(where, " or "), d.SlashCommand, r.ID, d.SlashCommand, r.ID)))
	approve := slack.NewButtonBlockElement(slackio.ButtonID("approve"), "approve "+r.ID, slack.NewTextBlockObject(slack.PlainTextType, "Approve", false, false)).WithStyle(slack.StylePrimary)
	approve.Confirm = slack.NewConfirmationBlockObject(
		slack.NewTextBlockObject(slack.PlainTextType, "Run this plan?", false, false),
		slack.NewTextBlockObject(slack.MarkdownType, fmt.Sprintf("`%s` will run as planned (plan `%s`). It is checked against AWS again first.", chat.Truncate(r.Command, 150), approvals.Short(r.PlanHash)), false, false),
		slack.NewTextBlockObject(slack.PlainTextType, "Approve and run", false, false),
		slack.NewTextBlockObject(slack.PlainTextType, "Cancel", false, false))
	blocks = append(blocks, slack.NewActionBlock("approval", approve, deny))
	text := fmt.Sprintf("Approval needed: %s (request %s) — %s approve %s", chat.Truncate(r.Command, 300), r.ID, d.SlashCommand, r.ID)
	return chat.Message{Text: text, Blocks: blocks}
}

// decisionChannels are where r may be decided: where it was shown, or,
// while it is being shown, where it is meant to be.
func (d Deps) decisionChannels(r approvals.Request) []string {
	if r.State != approvals.Posting {
		return r.Channels()
	}
	chans := []string{r.Channel}
	if ch := d.Approvals.Channel; ch != "" && ch != r.Channel {
		chans = append(chans, ch)
	}
	return chans
}

func (d Deps) approve(ctx context.Context, c Call) (Outcome, error) {
	return d.decide(ctx, c, true)
}

func (d Deps) deny(ctx context.Context, c Call) (Outcome, error) {
	return d.decide(ctx, c, false)
}

// decide records an approval or a denial given where the request's plan
// was shown (anywhere else it is refused and nothing changes). What
// follows is said in the request's channel, whichever channel it was
// decided in: its messages are updated, and an approved operation runs and
// reports there.
func (d Deps) decide(ctx context.Context, c Call, approve bool) (Outcome, error) {
	user := c.Req.UserID
	// The request's channel never changes: find out first that this
	// transport can speak there, before anything is decided.
	seen, err := d.Approvals.Store.Get(ctx, c.Cmd.ID)
	if errors.Is(err, approvals.ErrNotFound) {
		return Outcome{}, &UserError{Msg: fmt.Sprintf("there is no request `%s`.", c.Cmd.ID)}
	}
	if err != nil {
		return Outcome{}, err
	}
	out, err := d.in(c, seen.Channel)
	if err != nil {
		return Outcome{}, &UserError{Msg: fmt.Sprintf("request `%s` was not decided: %s. Decide it in <#%s>.", seen.ID, err, seen.Channel)}
	}
	r, err := d.Approvals.Store.Decide(ctx, c.Cmd.ID, approvals.Decision{User: user, Channel: c.Req.ChannelID, Approver: d.Policy.May(user, commands.ClassDecide), Approve: approve}, d.Approvals.now())
	var ref *approvals.Refusal
	switch {
	case errors.Is(err, approvals.ErrNotFound):
		return Outcome{}, &UserError{Msg: fmt.Sprintf("there is no request `%s`.", c.Cmd.ID)}
	case errors.As(err, &ref):
		return Outcome{Result: "refused", Detail: ref.Reason}, c.Reply.Ephemeral(ctx, chat.Text("Not done: "+ref.Reason))
	case err != nil:
		return Outcome{}, err
	}
	if !approve {
		d.updateAll(ctx, c, out, r, fmt.Sprintf(":no_entry_sign: Denied by <@%s> at %s UTC. Nothing was run.", user, r.Decided.UTC().Format("15:04")))
		return Outcome{Result: "ok", Detail: "denied " + r.ID}, nil
	}
	d.updateAll(ctx, c, out, r, fmt.Sprintf(":white_check_mark: Approved by <@%s> at %s UTC; checking the plan against AWS again, then running.", user, r.Decided.UTC().Format("15:04")))
	return d.execute(ctx, c, out, r)
}

// execute runs an approved request once, speaking through out (the
// request's channel): Begin lets exactly one caller through; the engine
// derives the plan again and runs it only if it hashes as approved.
func (d Deps) execute(ctx context.Context, c Call, out Replier, r approvals.Request) (Outcome, error) {
	if _, err := d.Approvals.Store.Begin(ctx, r.ID, d.Approvals.Process); err != nil {
		return Outcome{Result: "refused", Detail: err.Error()}, nil
	}
	err := d.Engine.Execute(ctx, r, out)
	var changed *engine.PlanChangedError
	var refused *ops.PreflightError
	var resumeRefused *engine.ResumeRefusedError
	switch {
	case errors.As(err, &resumeRefused):
		// An approved resume that its pre-flight stopped: the operation
		// stays stopped, to be resumed again once fixed (or given up).
		d.finish(ctx, r.ID, approvals.Refused, resumeRefused.Why)
		d.updateAll(ctx, c, out, r, fmt.Sprintf(":no_entry: Approved by <@%s>, not run: %s", r.Decider, resumeRefused.Why))
		_, perr := out.Post(ctx, chat.Text(fmt.Sprintf(":no_entry: Request `%s` was approved, but %s", r.ID, resumeRefused.Msg)))
		return Outcome{Result: "refused", Detail: resumeRefused.Why}, perr
	case errors.As(err, &refused):
		why := refused.Error()
		d.finish(ctx, r.ID, approvals.Refused, why)
		d.updateAll(ctx, c, out, r, fmt.Sprintf(":no_entry: Approved by <@%s>, not run: %s. Nothing was changed.", r.Decider, why))
		_, perr := out.Post(ctx, chat.Text(fmt.Sprintf(":no_entry: Request `%s` was approved but not run: just before its first step, %s. Nothing was changed. Fix that, then make a new request.", r.ID, why)))
		return Outcome{Result: "refused", Detail: why}, perr
	case errors.As(err, &changed):
		d.finish(ctx, r.ID, approvals.Refused, changed.Error())
		msg := fmt.Sprintf(":warning: Request `%s` was approved but not run: %s. Nothing was changed. Make a new request to see the current plan.", r.ID, changed.Error())
		d.updateAll(ctx, c, out, r, fmt.Sprintf(":warning: Approved by <@%s>, not run: %s. Make a new request to see the current plan.", r.Decider, changed.Error()))
		_, perr := out.Post(ctx, chat.Text(msg))
		return Outcome{Result: "refused", Detail: changed.Error()}, perr
	case err != nil:
		d.finish(ctx, r.ID, approvals.Failed, ops.Explain(err))
		// The operation's own progress message may never have been posted
		// (it can fail before starting): say it here too.
		d.updateAll(ctx, c, out, r, fmt.Sprintf(":x: Approved by <@%s>; failed: %s", r.Decider, ops.Explain(err)))
		return Outcome{}, &UserError{Msg: fmt.Sprintf("request `%s` failed: %s", r.ID, ops.Explain(err))}
	}
	d.finish(ctx, r.ID, approvals.Done, "")
	d.updateAll(ctx, c, out, r, fmt.Sprintf(":white_check_mark: Approved by <@%s> and done.", r.Decider))
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

// in is how to speak in channel for this call: the call's own replier in
// its own channel, else the transport's replier for that channel.
func (d Deps) in(c Call, channel string) (Replier, error) {
	if channel == c.Req.ChannelID {
		return c.Reply, nil
	}
	if rl, ok := c.Reply.(chat.Relay); ok {
		return rl.In(channel), nil
	}
	return nil, fmt.Errorf("this transport cannot post in <#%s>", channel)
}

// updateAll rewrites every message of the request, in its channel
// (through out) and its copies, with status; the copies also say where
// the operation reports.
func (d Deps) updateAll(ctx context.Context, c Call, out Replier, r approvals.Request, status string) {
	// A message posted through a response_url (no ts) can be replaced only
	// through the call that came from its channel.
	if r.MessageTS != "" || r.Channel == c.Req.ChannelID {
		d.updateRequest(ctx, out, chat.Ref{Channel: r.Channel, TS: r.MessageTS}, d.requestMessage(r, status))
	}
	for _, cp := range r.Copies {
		rep, err := d.in(c, cp.Channel)
		if err != nil {
			d.Log.Warn("update a copy of the approval request message", "channel", cp.Channel, "err", err)
			continue
		}
		d.updateRequest(ctx, rep, chat.Ref{Channel: cp.Channel, TS: cp.TS}, d.requestMessage(r, fmt.Sprintf("%s It reports in <#%s>.", status, r.Channel)))
	}
}

// updateRequest rewrites one request message. Slack failing it is logged:
// the state is in the store, and the outcome is posted or streamed
// separately.
func (d Deps) updateRequest(ctx context.Context, r Replier, ref chat.Ref, m chat.Message) {
	if err := r.Update(ctx, ref, m); err != nil {
		d.Log.Warn("update the approval request message", "channel", ref.Channel, "ts", ref.TS, "err", err)
	}
}

// slackReason is why Slack refused, in a few words (the API's error code
// when it gave one).
func slackReason(err error) string {
	var se slack.SlackErrorResponse
	if errors.As(err, &se) {
		return "`" + se.Err + "`"
	}
	return chat.Truncate(err.Error(), 200)
}
