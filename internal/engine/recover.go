package engine

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/circlebot/circlebot/internal/approvals"
	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/progress"
)

// Recover is the one recovery path, run at start-up and, while replicas
// share the store, by the leader every round. Operations a dead process
// (or replica) was running are marked interrupted at their step and
// announced in their channel with how to go on; none is continued on its
// own. A kind that holds its target keeps it locked until the operation
// is resumed or given up; any other is closed and frees it. Approved
// requests that died before their operation was journaled are reported
// once. Marking is a conditional write, so of several replicas noticing
// one death, one announces it.
func (e *Engine) Recover(ctx context.Context, postTo func(channel string) progress.Poster) {
	if _, err := e.Journal.MarkInterrupted(ctx, e.Store.Alive); err != nil {
		e.Log.Error("read operations to recover", "err", err)
		return
	}
	all, err := e.Journal.All(ctx)
	if err != nil {
		e.Log.Error("read operations to recover", "err", err)
		return
	}
	for _, op := range all {
		// A running operation holds its own locks (here or on a live
		// replica); a stopped one keeps its target until resumed or given
		// up, if its kind holds it.
		if op.State != journal.Stopped {
			continue
		}
		if k, _, err := e.bind(op); err == nil && !k.hold() {
			// It holds nothing for a resume: closed now, whether or not
			// its announcement below reaches Slack (or it has none: a
			// replica that lost its heartbeat stopped it).
			e.close(ctx, op)
			continue
		}
		if err := e.adopt(ctx, op); err != nil {
			e.Log.Error("keep the target locked for a stopped operation", "op", op.ID, "err", err)
		}
	}
	for _, op := range all {
		if !op.Unannounced || (op.State != journal.Stopped && op.State != journal.Failed) {
			continue
		}
		op, err := e.Journal.TakeAnnouncement(ctx, op.ID)
		if err != nil {
			continue // another replica has it
		}
		k, _, berr := e.bind(op)
		held := berr != nil || k.hold()
		msg := e.interrupted(op, held)
		e.Log.Warn("interrupted operation", "op", op.ID, "why", op.Why)
		if _, err := postTo(op.Channel).Post(ctx, chat.Text(msg)); err != nil {
			e.Log.Error("announce an interrupted operation; trying again at the next round", "op", op.ID, "err", err)
			// Given back even if ctx ended (a shutdown as it posted), or
			// it would never be announced.
			rctx, cancel := settled(ctx)
			err := e.Journal.ReturnAnnouncement(rctx, op.ID)
			cancel()
			if err != nil {
				e.Log.Error("give the announcement back", "op", op.ID, "err", err)
			}
			continue
		}
	}
	e.recoverRequests(ctx, postTo)
}

func (e *Engine) interrupted(op *journal.Op, held bool) string {
	var steps []string
	for i, st := range op.Steps {
		mark := map[journal.StepState]string{journal.StepDone: ":white_check_mark:", journal.StepFailed: ":x:", journal.StepInterrupted: ":warning:"}[st.State]
		if mark == "" {
			mark = ":white_circle:"
		}
		line := fmt.Sprintf("%s %d. %s", mark, i+1, st.Name)
		if st.Detail != "" {
			line += " — " + st.Detail
		}
		steps = append(steps, line)
	}
	approved := ""
	if op.Approver != "" {
		approved = ", approved by <@" + op.Approver + ">"
	}
	if !held {
		return fmt.Sprintf(":warning: Operation `%s` (%s%s) was %s. It was not continued and holds nothing: request it again if it is still needed.\n%s",
			op.ID, op.Title, approved, op.Why, strings.Join(steps, "\n"))
	}
	return fmt.Sprintf(":warning: Operation `%s` (%s%s) was %s. It was not continued on its own, and the Services box stays locked for it.\n%s\n`%s resume %s` continues from step %d (a step that was cut off is checked and completed, never done twice); `%s cancel %s` gives it up.",
		op.ID, op.Title, approved, op.Why, strings.Join(steps, "\n"), e.SlashCommand, op.ID, op.Next()+1, e.SlashCommand, op.ID)
}

// recoverRequests reports approved requests that were executing when
// their process died before the engine journaled them: they are never
// started again. Those that became operations were announced above.
func (e *Engine) recoverRequests(ctx context.Context, postTo func(channel string) progress.Poster) {
	if e.Approvals == nil {
		return
	}
	all, err := e.Approvals.All(ctx)
	if err != nil {
		e.Log.Error("read approval requests to recover", "err", err)
		return
	}
	for _, r := range all {
		if r.State == approvals.Posting {
			e.abandonUnposted(ctx, r, postTo)
			continue
		}
		if r.State != approvals.Executing || e.Store.Alive(ctx, r.Process) {
			continue
		}
		journaled, err := e.Journaled(ctx, r.ID)
		if err != nil {
			e.Log.Warn("could not tell whether an interrupted request became an operation; looked at again next round", "request", r.ID, "err", err)
			continue
		}
		if journaled {
			if _, err := e.Approvals.Interrupt(ctx, r.ID, r.Process, "interrupted: the bot stopped while it ran; its operation can be resumed"); err != nil {
				e.Log.Debug("close an interrupted request (another replica may have)", "request", r.ID, "err", err)
			}
			continue
		}
		if _, err := e.Approvals.Interrupt(ctx, r.ID, r.Process, "interrupted: the bot stopped while it ran"); err != nil {
			continue // another replica said it, or it finished after all
		}
		msg := fmt.Sprintf(":warning: Request `%s` (`%s %s`, approved by <@%s>) was running when the bot stopped. It was not started again; check its last progress message, then make a new request if needed.", r.ID, e.SlashCommand, r.Command, r.Decider)
		if _, err := postTo(r.Channel).Post(ctx, chat.Text(msg)); err != nil {
			e.Log.Error("report an interrupted request", "request", r.ID, "err", err)
		}
	}
}

// PostingLimit is how long a request may stay Posting: posting its message
// (and the plan's file) is a few Slack calls, each bounded well within it.
// Past it, the bot that was posting has stopped.
const PostingLimit = 5 * time.Minute

// abandonUnposted voids a request whose bot stopped before posting it (it
// could never be decided) and tells its channel once: its requester saw
// nothing, and would otherwise wait for an approval that cannot come.
func (e *Engine) abandonUnposted(ctx context.Context, r approvals.Request, postTo func(channel string) progress.Poster) {
	if time.Since(r.Created) < PostingLimit {
		return
	}
	why := "the bot stopped before its message was posted"
	if _, err := e.Approvals.Abandon(ctx, r.ID, why); err != nil {
		return // opened after all, or another replica abandoned it
	}
	e.Log.Warn("approval request abandoned: never posted", "request", r.ID)
	msg := fmt.Sprintf(":warning: <@%s>, your request `%s` (`%s %s`) was never shown for approval: %s. Nobody can approve it and nothing was changed; make a new request if it is still needed.",
		r.Requester, r.ID, e.SlashCommand, r.Command, why)
	if _, err := postTo(r.Channel).Post(ctx, chat.Text(msg)); err != nil {
		e.Log.Error("report a request that was never posted", "request", r.ID, "err", err)
	}
}
