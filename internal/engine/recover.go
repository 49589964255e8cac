package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/circlebot/circlebot/internal/approvals"
	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/progress"
)

// Recover is the one recovery path for every operation, whatever its
// kind, run at start-up and, while replicas share the store, by the
// leader every round. Work an earlier version recorded outside the
// journal is journaled first (Kind.Legacy). Operations a dead process
// (or replica) was running are marked interrupted at their step; then
// each stopped one is dealt with as its kind's Recover policy says:
//   - Announce (destructive work): said in its channel with how to go
//     on; a kind that holds its target keeps it locked until the
//     operation is resumed or given up, any other is closed;
//   - Continue (a backup): claimed and run on from its first unfinished
//     step, here, at once;
//   - Abandon (a tarball backup, a drill): claimed, cleaned up, closed
//     and said once.
//
// Locks a dead process left for work that is no open operation are
// freed, approved requests that died before their operation was
// journaled are reported once, and AlsoRecover runs last. Every change
// is a conditional write (a claim, a close, an announcement), so of
// several replicas noticing one death, one acts on it.
func (e *Engine) Recover(ctx context.Context, postTo func(channel string) progress.Poster) {
	e.importLegacy(ctx)
	if _, err := e.Journal.MarkInterrupted(ctx, e.Store.Alive); err != nil {
		e.Log.Error("read operations to recover", "err", err)
		return
	}
	all, err := e.Journal.All(ctx)
	if err != nil {
		e.Log.Error("read operations to recover", "err", err)
		return
	}
	e.releaseStale(ctx, all)
	for _, op := range all {
		// A running operation holds its own locks (here or on a live
		// replica); a stopped one keeps its target until resumed or given
		// up, if its kind holds it.
		if op.State != journal.Stopped {
			continue
		}
		k, b, err := e.bind(op)
		if err == nil && k.recovery() == Continue {
			e.continueOp(ctx, op, postTo)
			continue
		}
		if err == nil && k.recovery() == Abandon {
			e.abandon(ctx, op, b, postTo)
			continue
		}
		if err == nil && !k.hold() {
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
		k, _, berr := e.bind(op)
		if berr == nil && k.recovery() == Continue {
			continue // taken up again, not announced
		}
		e.announce(ctx, op.ID, berr != nil || k.hold(), postTo)
	}
	e.recoverRequests(ctx, postTo)
	for _, f := range e.AlsoRecover {
		f(ctx)
	}
}

// importLegacy journals, as stopped operations, the unfinished work that
// versions before the engine recorded only in their own records. One
// whose ID a live process holds a lock under is still being run by that
// (older) process, and is left to it.
func (e *Engine) importLegacy(ctx context.Context) {
	for _, k := range e.Kinds.kinds {
		if k.ready() != nil {
			continue
		}
		found, err := k.legacy(ctx)
		if err != nil {
			e.Log.Error("read work an earlier version left", "kind", k.name(), "err", err)
			continue
		}
		if len(found) == 0 {
			continue
		}
		locks, err := e.Store.Locks(ctx)
		if err != nil {
			e.Log.Error("read locks", "err", err)
			return
		}
	next:
		for _, op := range found {
			for _, l := range locks {
				if l.OpID == op.ID && e.Store.Alive(ctx, l.Process) {
					continue next
				}
			}
			if _, err := e.Journal.Get(ctx, op.ID); !errors.Is(err, journal.ErrNotFound) {
				continue // journaled already (by this version, or another replica's import)
			}
			if err := e.Journal.Create(ctx, op); err != nil {
				e.Log.Debug("journal work an earlier version left (another replica may have)", "op", op.ID, "err", err)
				continue
			}
			e.Log.Warn("journaled work an earlier version of the bot left unfinished", "op", op.ID, "kind", op.Kind)
		}
	}
}

// releaseStale frees locks a dead process left for work that is no open
// operation: a backup or drill of a version before the engine, or a
// start that died between its lock and its journal entry. An open
// operation's lock is dealt with by the operation's recovery.
func (e *Engine) releaseStale(ctx context.Context, all []*journal.Op) {
	locks, err := e.Store.Locks(ctx)
	if err != nil {
		e.Log.Error("read locks", "err", err)
		return
	}
	open := map[string]bool{}
	for _, op := range all {
		if op.Open() {
			open[op.ID] = true
		}
	}
	for _, l := range locks {
		if open[l.OpID] || e.Store.Alive(ctx, l.Process) {
			continue
		}
		e.Log.Warn("releasing a lock a dead process left", "op", l.OpID, "lock", l.Key, "since", l.Since)
		if err := e.Store.Unlock(ctx, l.Key, l.OpID); err != nil {
			e.Log.Error("release a lock a dead process left; tried again at the next round", "op", l.OpID, "lock", l.Key, "err", err)
		}
	}
}

// continueOp takes a stopped operation of a Continue kind up again, in
// the background: claimed (one replica gets it), its targets taken, and
// run from its first unfinished step. A target another operation holds
// now gives it back for the next round.
func (e *Engine) continueOp(ctx context.Context, op *journal.Op, postTo func(string) progress.Poster) {
	if ctx.Err() != nil {
		return // shutting down: the next start takes it up
	}
	op, err := e.Journal.Claim(ctx, op.ID, e.Store.Process())
	if err != nil {
		return // another replica has it
	}
	if err := e.adopt(ctx, op); err != nil {
		e.Log.Warn("an operation to continue waits: its target is held", "op", op.ID, "err", err)
		gctx, cancel := settled(ctx)
		defer cancel()
		if _, uerr := e.Journal.Update(gctx, op.ID, func(o *journal.Op) error { o.State = journal.Stopped; return nil }); uerr != nil {
			e.Log.Error("give a claimed operation back", "op", op.ID, "err", uerr)
		}
		return
	}
	i := op.Next()
	note := fmt.Sprintf("This operation was resumed after a bot restart (or a bot replica's death) at step %d (%s), on its own; steps 1–%d are done and are not run again.", i+1, op.Steps[min(i, len(op.Steps)-1)].Name, i)
	e.Log.Warn("continuing an interrupted operation", "op", op.ID, "kind", op.Kind, "step", i+1)
	e.running.Go(func() {
		if err := e.run(ctx, op.ID, postTo(op.Channel), note); err != nil {
			e.Log.Warn("a continued operation stopped", "op", op.ID, "err", err)
		}
	})
}

// abandon cleans up after a stopped operation of an Abandon kind, closes
// it and says so once. It is claimed first, so one replica does it; a
// process that dies while cleaning up leaves it running, and the next
// round marks it interrupted and cleans up again (the cleanups find what
// is left by their tags and IDs).
func (e *Engine) abandon(ctx context.Context, op *journal.Op, b bound, postTo func(string) progress.Poster) {
	op, err := e.Journal.Claim(ctx, op.ID, e.Store.Process())
	if err != nil {
		return // another replica has it
	}
	if err := e.adopt(ctx, op); err != nil {
		// Its target is held by a live operation: a drill's leftovers
		// are not swept under a running drill.
		e.Log.Warn("an operation to clean up waits: its target is held", "op", op.ID, "err", err)
		gctx, cancel := settled(ctx)
		defer cancel()
		if _, uerr := e.Journal.Update(gctx, op.ID, func(o *journal.Op) error { o.State = journal.Stopped; return nil }); uerr != nil {
			e.Log.Error("give a claimed operation back", "op", op.ID, "err", uerr)
		}
		return
	}
	why := op.Why
	if why == "" {
		why = "interrupted: the bot stopped"
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	did := b.cleanup(cctx, Record{Op: op}, true)
	cancel()
	sctx, cancel := settled(ctx)
	defer cancel()
	closed, err := e.Journal.Update(sctx, op.ID, func(o *journal.Op) error {
		if o.State != journal.Running || o.Process != e.Store.Process() {
			return fmt.Errorf("operation %s is %s under %s", o.ID, o.State, o.Process)
		}
		o.State, o.Finished, o.Unannounced = journal.Failed, time.Now(), true
		o.Why = why
		if len(did) > 0 {
			o.Why += ". It was not run again; cleaned up: " + strings.Join(did, "; ")
		}
		return nil
	})
	if err != nil {
		e.Log.Error("close an abandoned operation", "op", op.ID, "err", err)
		return
	}
	e.unlock(sctx, closed)
	e.announce(ctx, closed.ID, false, postTo)
}

// announce says once, in its channel, how an interrupted operation was
// left; a failed post is given back for the next round.
func (e *Engine) announce(ctx context.Context, id string, held bool, postTo func(string) progress.Poster) {
	op, err := e.Journal.TakeAnnouncement(ctx, id)
	if err != nil {
		return // another replica has it
	}
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
	}
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
