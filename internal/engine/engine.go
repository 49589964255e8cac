package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/circlebot/circlebot/internal/approvals"
	"github.com/circlebot/circlebot/internal/awsclient"
	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/commands"
	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/progress"
	"github.com/circlebot/circlebot/internal/store"
)

// Out is where an operation speaks: its channel, as a progress message
// updated in place with its thread. An Out that is also a Private can
// show a message to the requester alone (the transports of people's
// requests are; the scheduler's channel poster is not).
type Out = progress.Poster

// Private shows a message to one user in the request's channel.
type Private interface {
	EphemeralTo(ctx context.Context, user string, m chat.Message) error
}

// Refusal is a refusal the user can act on; its text is safe to show.
type Refusal = ops.RefusalError

func refusef(format string, a ...any) error { return &Refusal{Msg: fmt.Sprintf(format, a...)} }

// PlanChangedError: an approved plan is not what would run now. Err is
// set when the plan could not be made again at all.
type PlanChangedError struct {
	Approved, Live string
	Err            error
}

func (e *PlanChangedError) Error() string {
	if e.Err != nil {
		return "the plan cannot be made again: " + strings.TrimSuffix(ops.Explain(e.Err), ".")
	}
	return fmt.Sprintf("the plan changed since it was approved (approved %s, now %s); nothing was run", approvals.Short(e.Approved), approvals.Short(e.Live))
}

func (e *PlanChangedError) Unwrap() error { return e.Err }

// BusyError is a start refused because another operation holds its
// target: nothing was started. It reads as a Refusal (its text says who
// holds it and what to do) and unwraps to the store's *HeldError.
type BusyError struct {
	Msg  string
	Held *store.HeldError
}

func (e *BusyError) Error() string { return e.Msg }

// RetakeError: a step that needs its operation's target back (Kind.Retake)
// found another operation holding it, and did nothing.
type RetakeError struct {
	Held  store.Lock
	Op    string // the operation whose step waits
	Slash string
}

func (e *RetakeError) Error() string {
	target := "the Services box"
	if !strings.HasPrefix(e.Held.Key, "box/") {
		target = "`" + e.Held.Key + "`"
	}
	return fmt.Sprintf("%s is held by `%s` (%s, requested by %s): this step needs it and did nothing. Once that operation is over, `%s resume %s` checks again and goes on; `%s cancel %s` gives this one up",
		target, e.Held.OpID, e.Held.What, chat.Who(e.Held.Requester), e.Slash, e.Op, e.Slash, e.Op)
}
func (e *BusyError) Unwrap() error { return e.Held }
func (e *BusyError) As(target any) bool {
	if r, ok := target.(**Refusal); ok {
		*r = &Refusal{Msg: e.Msg}
		return true
	}
	return false
}

// ErrNothingToDo: the plan derived now has nothing in it (retention would
// prune nothing); nothing was journaled.
var ErrNothingToDo = errors.New("nothing to do")

// Engine runs every journaled operation the same way, whichever its kind:
// planned, locked, derived again under the lock and checked against what
// was approved, journaled step by step, streamed, summarised; resumed,
// cancelled, or recovered after a crash on whichever replica finds it.
type Engine struct {
	Kinds   *Registry
	Journal journal.Store
	Store   *store.Store
	// Approvals are the requests the engine runs once approved (nil: no
	// request is reported after a crash).
	Approvals *approvals.Store
	// EC2 and NameTag let a stopped operation say whether the Services box
	// runs (nil EC2: it is not said).
	EC2          ops.EC2
	NameTag      string
	SlashCommand string
	Log          *slog.Logger
	// ApprovalTTL is how long an approval stands: a stopped operation
	// approved longer ago than that needs a second person again to go on.
	ApprovalTTL time.Duration
	// RoleSessions: approved operations run in a role session of their
	// own (ops.role_arn), which may hold rights the bot's identity lacks.
	// A plan's pre-flight runs as the bot (nobody has approved it yet), so
	// what IAM refuses the bot is shown as checked later, as the session,
	// just before the first step.
	RoleSessions bool
	// MinInterval paces progress updates (tests); zero means the default.
	MinInterval time.Duration
	// AlsoRecover are records of work that is not an operation, which a
	// dead process may have left "running" (the schedule's run records):
	// Recover runs them after the operations, so that one call recovers
	// everything.
	AlsoRecover []func(context.Context)

	running sync.WaitGroup
}

// Wait returns when every operation this process runs has stopped.
func (e *Engine) Wait() { e.running.Wait() }

// Propose derives the plan of a destructive command for approval (or a
// dry run). A busy target and an empty plan are refused before anyone is
// asked to approve what cannot start.
func (e *Engine) Propose(ctx context.Context, cmd commands.Command) (approvals.Plan, error) {
	k, err := e.Kinds.forCommand(cmd)
	if err != nil {
		return approvals.Plan{}, err
	}
	if err := k.ready(); err != nil {
		return approvals.Plan{}, err
	}
	if err := e.checkFree(ctx, []string{k.target()}); err != nil {
		return approvals.Plan{}, err
	}
	d, err := e.derive(ctx, k, cmd)
	if err != nil {
		return approvals.Plan{}, err
	}
	if err := e.checkFree(ctx, d.also); err != nil {
		return approvals.Plan{}, err
	}
	if d.preflight != nil {
		pf := d.preflight(ctx)
		if e.RoleSessions {
			for i, c := range pf.Checks {
				if c.Status == ops.CheckRefused && c.Denied {
					pf.Checks[i].Status, pf.Checks[i].Reason = ops.CheckSkipped, "the bot's own identity may not ("+c.Reason+"); tried again as the approved operation's role session (ops.role_arn) just before the first step"
				}
			}
		}
		d.approval.Preflight = preflightRows(pf)
	}
	return d.approval, nil
}

// preflightRows is a pre-flight as the approval shows it.
func preflightRows(p ops.Preflight) []approvals.Check {
	out := make([]approvals.Check, 0, len(p.Checks))
	for _, c := range p.Checks {
		out = append(out, approvals.Check{Call: c.Call, On: c.On, Status: c.Status, Reason: c.Reason, Denied: c.Denied})
	}
	return out
}

func (e *Engine) derive(ctx context.Context, k kind, cmd commands.Command) (derived, error) {
	d, err := k.derive(ctx, cmd)
	if err != nil {
		return derived{}, refusal(err)
	}
	if d.empty != "" {
		return d, &nothing{msg: d.empty}
	}
	return d, nil
}

// nothing is an empty plan: a refusal for a person, ErrNothingToDo for
// the scheduler.
type nothing struct{ msg string }

func (n *nothing) Error() string        { return n.msg }
func (n *nothing) Is(target error) bool { return target == ErrNothingToDo }
func (n *nothing) As(target any) bool {
	if r, ok := target.(**Refusal); ok {
		*r = &Refusal{Msg: n.msg}
		return true
	}
	return false
}

// refusal keeps refusals as they are and explains AWS faults in one
// sentence a person can act on.
func refusal(err error) error {
	var r *Refusal
	if errors.As(err, &r) {
		return err
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	return &Refusal{Msg: ops.Explain(err)}
}

func (e *Engine) checkFree(ctx context.Context, keys []string) error {
	locks, err := e.Store.Locks(ctx)
	if err != nil {
		return err
	}
	for _, l := range locks {
		for _, k := range keys {
			if l.Key == k {
				return &Refusal{Msg: e.heldMessage(l)}
			}
		}
	}
	return nil
}

// heldMessage names what holds a target and what the user can do.
func (e *Engine) heldMessage(h store.Lock) string {
	verb, follow := "is running", "Follow it in its message."
	switch {
	case strings.HasPrefix(h.OpID, "bk-"):
		follow = fmt.Sprintf("Follow it in its message, or `%s backup status %s`.", e.SlashCommand, h.OpID)
	case strings.HasPrefix(h.OpID, "dr-"):
		// A drill holds only itself: it never stops part-way holding it.
	case strings.HasPrefix(h.OpID, "op-"):
		// A journaled operation keeps the box while it is stopped part-way.
		verb = "holds it (running, or stopped part-way)"
		follow = fmt.Sprintf("If it stopped, `%s resume %s` continues it and `%s cancel %s` gives it up.", e.SlashCommand, h.OpID, e.SlashCommand, h.OpID)
	}
	where := ""
	if h.Replica != "" {
		where = " on bot replica `" + h.Replica + "`"
	}
	target := "the Services box"
	if !strings.HasPrefix(h.Key, "box/") {
		target = "`" + h.Key + "`"
	}
	return fmt.Sprintf("another operation on %s %s: `%s` (%s), requested by %s %s ago%s. Nothing new was started. %s",
		target, verb, h.OpID, h.What, chat.Who(h.Requester), chat.Age(time.Since(h.Since)), where, follow)
}

// HeldMessage explains a *store.HeldError to a person.
func (e *Engine) HeldMessage(held *store.HeldError) string { return e.heldMessage(held.Holder) }

// Start is how work that needs no second person enters the engine:
// backups and drills, and the scheduler's retention (whose approval is
// the policy in the config). It returns the operation's ID once it was
// journaled ("" if it never started), with how it ended.
func (e *Engine) Start(ctx context.Context, cmd commands.Command, requester, channel string, out Out) (string, error) {
	return e.StartWith(ctx, cmd, requester, channel, out, StartOptions{})
}

// StartOptions are what a caller outside Slack (the backup API) adds to
// Start.
type StartOptions struct {
	// ID is the operation's ID when the caller gave it out before the
	// work began ("": a new one).
	ID string
	// Trigger ("api") and Reason are journaled with the operation and
	// handed to its steps (Env).
	Trigger, Reason string
	// Started hears the ID once the operation holds its target and is
	// journaled, before its first step: the caller may answer then.
	Started func(id string)
}

// StartWith is Start with o.
func (e *Engine) StartWith(ctx context.Context, cmd commands.Command, requester, channel string, out Out, o StartOptions) (string, error) {
	var id string
	err := e.start(ctx, cmd, approvals.Request{Command: cmd.Text(), Requester: requester, Channel: channel}, out, false, &id, o)
	return id, err
}

// Execute runs an approved request once: the target is locked, the plan
// is derived again under the lock and must hash as approved, and then each
// step runs and is journaled. A stopped operation keeps its target locked
// when its kind holds it, until it is resumed or given up.
func (e *Engine) Execute(ctx context.Context, req approvals.Request, out Out) error {
	cmd, err := commands.Parse(req.Command)
	if err != nil {
		return fmt.Errorf("request %s: command %q cannot be read by this version: %w", req.ID, req.Command, err)
	}
	if cmd.Name == commands.Resume {
		return e.resumeApproved(ctx, cmd.ID, req, out)
	}
	return e.start(ctx, cmd, req, out, true, nil, StartOptions{})
}

func (e *Engine) start(ctx context.Context, cmd commands.Command, req approvals.Request, out Out, approved bool, started *string, o StartOptions) error {
	k, err := e.Kinds.forCommand(cmd)
	if err != nil {
		return err
	}
	now := time.Now()
	opID := k.newID(now)
	if o.ID != "" {
		opID = o.ID
	}
	l := store.Lock{OpID: opID, What: k.what(), Requester: req.Requester, Process: e.Store.Process()}
	release, err := e.lockAll(ctx, []string{k.target()}, l)
	if err != nil {
		return err
	}
	// The plan is derived again under the lock: what runs is what the
	// world looks like now, and it must be what was approved.
	d, err := e.derive(ctx, k, cmd)
	switch {
	case err != nil && approved && !errors.Is(err, context.Canceled):
		release()
		return &PlanChangedError{Approved: req.PlanHash, Err: err}
	case err != nil:
		release()
		return err
	case approved && d.approval.Hash() != req.PlanHash:
		release()
		return &PlanChangedError{Approved: req.PlanHash, Live: d.approval.Hash()}
	}
	releaseAlso, err := e.lockAll(ctx, d.also, l)
	if err != nil {
		release()
		return err
	}
	// The pre-flight again, under the lock and just before the first
	// step: what AWS would refuse now stops here, with nothing touched
	// and nothing journaled.
	if d.preflight != nil {
		pctx := ctx
		if approved {
			// As the steps will run: in the operation's role session.
			pctx = asItsPeople(ctx, &journal.Op{ID: opID, Requester: req.Requester, Approver: req.Decider})
		}
		if err := d.preflight(pctx).Err(); err != nil {
			releaseAlso()
			release()
			return err
		}
	}
	b, err := k.bind(d.plan)
	if err != nil {
		releaseAlso()
		release()
		return err
	}
	op := &journal.Op{ID: opID, Kind: k.name(), Title: d.title, Target: k.target(), Also: d.also, RequestID: req.ID, Command: req.Command,
		Channel: req.Channel, Requester: req.Requester, Approver: req.Decider, Facts: d.approval.Facts, Plan: d.plan,
		Trigger: o.Trigger, Reason: o.Reason,
		State: journal.Running, Process: e.Store.Process(), Created: now, Updated: now}
	for _, def := range b.steps(e.env(op, out)) {
		op.Steps = append(op.Steps, journal.Step{Name: def.Name, State: journal.StepPending})
	}
	if err := e.Journal.Create(ctx, op); err != nil {
		releaseAlso()
		release()
		return fmt.Errorf("journal the %s: %w", k.name(), err)
	}
	if started != nil {
		*started = op.ID
	}
	if o.Started != nil {
		o.Started(op.ID)
	}
	return e.run(ctx, op.ID, out, "")
}

// lockAll takes every key or none.
func (e *Engine) lockAll(ctx context.Context, keys []string, l store.Lock) (release func(), err error) {
	var unlocks []func() error
	release = func() {
		for _, u := range unlocks {
			if err := u(); err != nil {
				e.Log.Error("release a lock after a refused start", "op", l.OpID, "err", err)
			}
		}
	}
	for _, k := range keys {
		l.Key = k
		u, err := e.Store.TryLock(ctx, l)
		if err != nil {
			release()
			var held *store.HeldError
			if errors.As(err, &held) {
				return nil, &BusyError{Msg: e.heldMessage(held.Holder), Held: held}
			}
			return nil, err
		}
		unlocks = append(unlocks, u)
	}
	return release, nil
}

func (e *Engine) env(op *journal.Op, out Out) Env {
	requester := op.Requester
	return Env{Requester: requester, Channel: op.Channel, Trigger: op.Trigger, Reason: op.Reason, Private: func(ctx context.Context, text string) error {
		p, ok := out.(Private)
		if !ok {
			return errors.New("this operation was resumed where no private message can be shown: run it again from Slack")
		}
		return p.EphemeralTo(ctx, requester, chat.Text(text))
	}}
}

// bind finds an operation's kind and decodes its plan.
func (e *Engine) bind(op *journal.Op) (kind, bound, error) {
	name, plan := op.Kind, op.Plan
	if plan == "" {
		// Recorded by a version before the engine: the kind and the plan
		// were in Data.
		name, plan = legacyKinds[op.Data["kind"]], op.Data["plan"]
	}
	k, ok := e.Kinds.kinds[name]
	if !ok {
		return nil, bound{}, fmt.Errorf("operation %s is of kind %q, which this version does not run", op.ID, name)
	}
	if err := k.ready(); err != nil {
		return nil, bound{}, err
	}
	b, err := k.bind(plan)
	if err != nil {
		return nil, bound{}, fmt.Errorf("read the plan of %s: %w", op.ID, err)
	}
	return k, b, nil
}

// legacyKinds maps what versions before the engine wrote in Data["kind"].
var legacyKinds = map[string]string{"snapshot": KindRestoreEBS, "tarball": KindRestoreTarball, "failover": KindFailover, "rotate": KindRotate}

// run executes the operation's remaining steps with a progress message and
// the closing summary.
func (e *Engine) run(ctx context.Context, id string, out Out, note string) error {
	e.running.Add(1)
	defer e.running.Done()
	op, err := e.Journal.Get(ctx, id)
	if err != nil {
		return err
	}
	k, b, err := e.bind(op)
	if err != nil {
		e.stopUnrunnable(ctx, op, err)
		return err
	}
	defs := b.steps(e.env(op, out))
	if i := slices.IndexFunc(defs, func(d journal.Def) bool { return d.Name == k.freeAfter() }); i >= 0 && i+1 < len(defs) {
		// Freed as the next step begins, once the journal holds the
		// free step done: whoever takes the operation up later sees it
		// past the step (pastFree) and does not take the targets again,
		// and a lock a dead process left is freed here.
		run := defs[i+1].Run
		defs[i+1].Run = func(ctx context.Context, o *journal.Op, p journal.Progress) (string, error) {
			if frees(o) {
				uctx, cancel := settled(ctx)
				defer cancel()
				if err := e.Store.Unlock(uctx, o.Target, o.ID); err != nil {
					e.Log.Error("free the target of an operation past its need", "op", o.ID, "lock", o.Target, "err", err)
				}
			}
			return run(ctx, o, p)
		}
	}
	if j := slices.IndexFunc(defs, func(d journal.Def) bool { return d.Name == k.retake() }); j >= 0 && frees(op) {
		run := defs[j].Run
		defs[j].Run = func(ctx context.Context, o *journal.Op, p journal.Progress) (string, error) {
			// Adopt, not TryLock: a crash inside this step left the
			// target held under this very operation.
			err := e.Store.Adopt(ctx, store.Lock{Key: o.Target, OpID: o.ID, What: k.what(), Requester: o.Requester, Process: e.Store.Process()})
			var held *store.HeldError
			if errors.As(err, &held) {
				return "", &RetakeError{Held: held.Holder, Op: o.ID, Slash: e.SlashCommand}
			}
			if err != nil {
				return "", err
			}
			defer func() {
				uctx, cancel := settled(ctx)
				defer cancel()
				// Own only: once another process took the operation over
				// (a lost heartbeat), the lock is its, and freeing it late
				// would let a failover at the old replica mid-retire.
				if err := e.Store.UnlockOwn(uctx, o.Target, o.ID); err != nil {
					e.Log.Error("free the target an operation took back for one step", "op", o.ID, "lock", o.Target, "err", err)
				}
			}()
			return run(ctx, o, p)
		}
	}
	st := progress.Start(ctx, out, progress.Options{OpID: op.ID, Title: op.Title, Requester: op.Requester, Steps: stepNames(op), Log: e.Log, MinInterval: e.MinInterval})
	if note != "" {
		st.Log(note)
	}
	// Under the store's work context: a replica cut off from the shared
	// state stops here before another replica can resume the operation.
	jctx, jcancel := e.Store.WorkContext(ctx)
	defer jcancel()
	op, err = e.Journal.Run(asItsPeople(jctx, op), id, e.Store.Process(), defs, st)
	if op == nil {
		if errors.Is(err, journal.ErrTakenOver) {
			st.Finish(progress.Cancelled, takenOver(id))
		} else {
			st.Finish(progress.Failed, ops.Explain(err))
		}
		e.flush(ctx, id, st)
		return err
	}
	if pe := (*journal.PanicError)(nil); errors.As(err, &pe) {
		e.Log.Error("a step panicked", "op", op.ID, "panic", pe.Value, "stack", string(pe.Stack))
	}
	rec := Record{Op: op, Took: op.Elapsed(time.Now()).Round(time.Second)}
	closed := false
	lostHeartbeat := errors.Is(context.Cause(jctx), store.ErrHeartbeatLost)
	cut := !errors.Is(err, journal.ErrCancelled) && (ctx.Err() != nil || lostHeartbeat)
	switch {
	case err == nil && op.State == journal.Done:
		e.unlock(ctx, op)
		st.Finish(progress.Succeeded, b.summary(rec))
	case errors.Is(err, journal.ErrTakenOver):
		st.Finish(progress.Cancelled, takenOver(op.ID))
	case cut && k.recovery() == Continue:
		// Taken up again where it stopped by the next recovery, here
		// after a restart or on another replica; its target is free
		// meanwhile (recovery takes it again), unless a replica has
		// taken the operation over already.
		e.unlockOwn(ctx, op)
		st.Finish(progress.Cancelled, fmt.Sprintf("Stopped following it (%s). The bot takes it up again where it stopped when it is back, or another replica does: nothing done is done twice.", op.Why))
	case lostHeartbeat && k.recovery() == Abandon:
		st.Finish(progress.Cancelled, fmt.Sprintf("Stopped: this bot replica lost its connection to the shared state (%s). Another replica cleans up what it left and says so here.", op.Why))
	case lostHeartbeat:
		st.Finish(progress.Cancelled, fmt.Sprintf("Stopped: this bot replica lost its connection to the shared state (%s). Another replica announces it and can `%s resume %s`.", op.Why, e.SlashCommand, op.ID))
	case !k.hold():
		// Nothing it left needs a resume: what it made is cleaned up as
		// its kind says, the operation is closed and its target freed for
		// the next request or scheduled run.
		closed = true
		cleaned := ""
		if b.cleanup != nil {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
			if did := b.cleanup(cctx, rec, cut); len(did) > 0 {
				cleaned = " Cleaned up: " + strings.Join(did, "; ") + "."
			}
			cancel()
		}
		last := ""
		if b.failed != nil {
			last = b.failed(rec)
		}
		if last == "" {
			last = fmt.Sprintf("%s Later steps did not run. Done so far: %s. Nothing is held: a new request starts afresh.", e.stopReason(ctx, op, err), e.leftBehind(op))
		}
		st.Finish(progress.Failed, last+cleaned)
	case errors.Is(err, journal.ErrCancelled):
		st.Finish(progress.Cancelled, fmt.Sprintf("Stopped by <@%s> at a step boundary: %s. %s %s", op.CancelBy, op.Why, e.boxLine(ctx, k, op), e.nextMoves(op)))
	case ctx.Err() != nil:
		st.Finish(progress.Cancelled, fmt.Sprintf("Stopped: the bot is shutting down (%s). %s", op.Why, e.nextMoves(op)))
	default:
		st.Finish(progress.Failed, fmt.Sprintf("%s Later steps did not run. %s %s", ops.Explain(err), e.boxLine(ctx, k, op), e.nextMoves(op)))
	}
	if closed {
		e.close(ctx, op)
	}
	e.Log.Info("operation", "op", op.ID, "kind", op.Kind, "state", op.State, "why", op.Why)
	e.flush(ctx, op.ID, st)
	if err != nil {
		return &Refusal{Msg: fmt.Sprintf("operation `%s` stopped: %s", op.ID, op.Why)}
	}
	return nil
}

// asItsPeople is the context an operation's steps run with: an approved
// operation's AWS calls carry who requested and who approved it (with
// ops.role_arn set they run in a role session naming them, see
// awsclient.OperationCredentials). Work nobody approved — the scheduler's
// retention — runs as the bot.
func asItsPeople(ctx context.Context, op *journal.Op) context.Context {
	if op.Approver == "" {
		return ctx
	}
	return awsclient.WithOperation(ctx, awsclient.Operation{ID: op.ID, Requester: op.Requester, Approver: op.Approver})
}

func (e *Engine) stopReason(ctx context.Context, op *journal.Op, err error) string {
	switch {
	case errors.Is(err, journal.ErrCancelled):
		return fmt.Sprintf("Stopped by <@%s>: %s.", op.CancelBy, op.Why)
	case ctx.Err() != nil:
		return fmt.Sprintf("Stopped: the bot is shutting down (%s).", op.Why)
	}
	return ops.Explain(err)
}

// flush waits, briefly, for the last word to reach Slack; the stream
// keeps trying on its own after that.
func (e *Engine) flush(ctx context.Context, id string, st *progress.Stream) {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
	defer cancel()
	if err := st.Wait(wctx); err != nil {
		e.Log.Warn("the progress message did not reach Slack in time; it keeps trying", "op", id, "err", err)
	}
}

// stopUnrunnable stops an operation this version cannot run (its kind is
// unknown or not configured) so that it does not stay "running".
func (e *Engine) stopUnrunnable(ctx context.Context, op *journal.Op, cause error) {
	ctx, cancel := settled(ctx)
	defer cancel()
	if _, err := e.Journal.Update(ctx, op.ID, func(o *journal.Op) error {
		if o.State != journal.Running || o.Process != e.Store.Process() {
			return errors.New("not ours")
		}
		o.State, o.Why = journal.Stopped, ops.Explain(cause)
		return nil
	}); err != nil {
		e.Log.Error("stop an operation this version cannot run", "op", op.ID, "err", err)
	}
}

// frees says whether op may give its target up past its FreeAfter step:
// only while it holds further keys that keep its own kind out (an
// operation journaled by a version without them holds its target to the
// end, as then).
func frees(op *journal.Op) bool { return len(op.Also) > 0 }

// inStep says whether op was cut inside its step named name: running
// or interrupted there. A step that failed ended, and gave back what it
// took (Retake frees the target however the step returns).
func inStep(op *journal.Op, name string) bool {
	for _, s := range op.Steps {
		if name != "" && s.Name == name {
			return s.State == journal.StepRunning || s.State == journal.StepInterrupted
		}
	}
	return false
}

// pastFree says whether op has done its step named name.
func pastFree(op *journal.Op, name string) bool {
	if name == "" {
		return false
	}
	for _, st := range op.Steps {
		if st.Name == name {
			return st.State == journal.StepDone
		}
	}
	return false
}

// unlock frees every target of a finished or given-up operation.
func (e *Engine) unlock(ctx context.Context, op *journal.Op) {
	ctx, cancel := settled(ctx)
	defer cancel()
	for _, k := range op.Targets() {
		if err := e.Store.Unlock(ctx, k, op.ID); err != nil {
			e.Log.Error("release a lock after an operation", "op", op.ID, "lock", k, "err", err)
		}
	}
}

// unlockOwn frees the targets of an operation this process stopped,
// only where this process still holds them.
func (e *Engine) unlockOwn(ctx context.Context, op *journal.Op) {
	ctx, cancel := settled(ctx)
	defer cancel()
	for _, k := range op.Targets() {
		if err := e.Store.UnlockOwn(ctx, k, op.ID); err != nil {
			e.Log.Error("release a lock after an operation stopped", "op", op.ID, "lock", k, "err", err)
		}
	}
}

// close ends a stopped operation of a kind that does not hold its target.
func (e *Engine) close(ctx context.Context, op *journal.Op) {
	ctx, cancel := settled(ctx)
	defer cancel()
	if _, err := e.Journal.Update(ctx, op.ID, func(o *journal.Op) error {
		if o.State != journal.Stopped {
			return fmt.Errorf("operation %s is %s", o.ID, o.State)
		}
		o.State, o.Finished = journal.Failed, time.Now()
		return nil
	}); err != nil {
		e.Log.Error("close a stopped operation", "op", op.ID, "err", err)
		return
	}
	e.unlock(ctx, op)
}

// takenOver is the last word of a run whose operation another replica
// took over.
func takenOver(id string) string {
	return fmt.Sprintf("Stopped here: another bot replica took `%s` over (this one was cut off from the shared state). Follow it there; nothing more is done from this replica.", id)
}

func stepNames(op *journal.Op) []string {
	var out []string
	for _, s := range op.Steps {
		out = append(out, s.Name)
	}
	return out
}

// nextMoves says what a stopped operation has left and how to go on.
func (e *Engine) nextMoves(op *journal.Op) string {
	return fmt.Sprintf("Done so far: %s. `%s resume %s` continues from step %d without repeating finished steps; `%s cancel %s` gives it up and frees the Services box.",
		e.leftBehind(op), e.SlashCommand, op.ID, op.Next()+1, e.SlashCommand, op.ID)
}

// leftBehind lists what the operation changed, from its journal.
func (e *Engine) leftBehind(op *journal.Op) string {
	var done []string
	for i, st := range op.Steps {
		if st.State == journal.StepDone {
			done = append(done, fmt.Sprintf("%d. %s (%s)", i+1, st.Name, st.Detail))
		}
	}
	if len(done) == 0 {
		return "nothing"
	}
	return strings.Join(done, "; ")
}

// boxLine says, from AWS now, whether CircleCI has a Services box running:
// what an engineer needs first when an operation stopped part-way.
func (e *Engine) boxLine(ctx context.Context, k kind, op *journal.Op) string {
	if !k.boxLine() || e.EC2 == nil {
		return ""
	}
	box, err := ops.FindBox(ctx, e.EC2, e.NameTag)
	switch {
	case errors.Is(err, ops.ErrNotFound):
		return fmt.Sprintf(":rotating_light: No instance is tagged Name=%s: *CircleCI is down* until this operation is resumed or a box is started by hand.", e.NameTag)
	case err != nil:
		return "The Services box's state could not be read: " + ops.Explain(err)
	}
	id := aws.ToString(box.InstanceId)
	switch box.State.Name {
	case "running":
		return fmt.Sprintf("The Services box `%s` is running.", id)
	case "stopped", "stopping":
		return fmt.Sprintf(":rotating_light: The Services box `%s` is %s: *CircleCI is down*. `%s resume %s` goes on; to bring that box back instead, give this operation up and start it (`aws ec2 start-instances --instance-ids %s`).", id, box.State.Name, e.SlashCommand, op.ID, id)
	}
	return fmt.Sprintf("The Services box `%s` is %s.", id, box.State.Name)
}

// find looks an operation up by its ID or by the request that started it.
func (e *Engine) find(ctx context.Context, id string) (*journal.Op, error) {
	op, err := e.Journal.Get(ctx, id)
	if errors.Is(err, journal.ErrNotFound) && strings.HasPrefix(id, "req-") {
		op, err = e.Journal.ByRequest(ctx, id)
	}
	if errors.Is(err, journal.ErrNotFound) {
		return nil, refusef("there is no operation `%s`. Operation IDs (op-…) are in each operation's progress message.", id)
	}
	return op, err
}

// NeedsApproval is a resume that a second person must approve first: the
// approval is older than the TTL, or live state differs from what was
// approved. Plan says what would run and what changed.
type NeedsApproval struct {
	Op   string
	Plan approvals.Plan
}

func (n *NeedsApproval) Error() string {
	return fmt.Sprintf("resuming %s needs a second person's approval", n.Op)
}

// Resume continues a stopped operation from its first unfinished step.
// A resume is a continuation of what was approved, not a new authority:
// if the approval is older than the TTL, or the live state of what the
// remaining steps act on is not what was approved, it returns a
// *NeedsApproval and changes nothing.
func (e *Engine) Resume(ctx context.Context, id, user string, out Out) (string, error) {
	op, plan, err := e.resumePlan(ctx, id)
	if err != nil {
		return "", err
	}
	if plan != nil {
		return "", &NeedsApproval{Op: op.ID, Plan: *plan}
	}
	return e.resume(ctx, op, out, fmt.Sprintf("Resumed by <@%s>", user))
}

// resumeApproved runs a resume that a second person approved, if what it
// would do now still hashes as approved.
func (e *Engine) resumeApproved(ctx context.Context, id string, req approvals.Request, out Out) error {
	op, plan, err := e.resumePlan(ctx, id)
	if err != nil {
		return &PlanChangedError{Approved: req.PlanHash, Err: err}
	}
	live := approvals.Plan{}
	if plan != nil {
		live = *plan
	}
	if live.Hash() != req.PlanHash {
		return &PlanChangedError{Approved: req.PlanHash, Live: live.Hash()}
	}
	_, err = e.resume(ctx, op, out, fmt.Sprintf("Resumed by <@%s>, approved by <@%s> (request `%s`)", req.Requester, req.Decider, req.ID))
	return err
}

// resumePlan finds a stopped operation and says whether it may go on at
// once (nil plan) or what must be approved first.
func (e *Engine) resumePlan(ctx context.Context, id string) (*journal.Op, *approvals.Plan, error) {
	op, err := e.find(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	_, b, err := e.bind(op)
	if err != nil {
		return nil, nil, refusal(err)
	}
	if op.State != journal.Stopped {
		// Claim says why (running, done, given up) when it refuses.
		return op, nil, nil
	}
	changes, err := b.recheck(ctx, Record{Op: op})
	if err != nil {
		return nil, nil, refusef("`%s` was not resumed: what it works from changed (%s). `%s cancel %s` gives it up; then request a new one.", op.ID, strings.TrimSuffix(ops.Explain(err), "."), e.SlashCommand, op.ID)
	}
	approved := op.Created
	stale := e.ApprovalTTL > 0 && time.Since(approved) > e.ApprovalTTL
	if !stale && len(changes) == 0 {
		return op, nil, nil
	}
	i := op.Next()
	var rest []string
	for j := i; j < len(op.Steps); j++ {
		rest = append(rest, fmt.Sprintf("%d. %s", j+1, op.Steps[j].Name))
	}
	plan := &approvals.Plan{Action: "resume", Facts: map[string]string{
		"operation": op.ID, "kind": op.Kind, "from_step": fmt.Sprint(i + 1), "approved": approved.UTC().Format(time.RFC3339),
		"plan": approvals.Short(planHash(op)), "changed": strings.Join(changes, "; "),
	}}
	plan.Changes = append(plan.Changes, fmt.Sprintf("continue `%s` (%s) from step %d: %s", op.ID, op.Title, i+1, strings.Join(rest, ", ")))
	if stale {
		plan.Changes = append(plan.Changes, fmt.Sprintf("it was approved by <@%s> at %s UTC, %s ago: longer than `approvals.ttl` (%s), so it is approved again", op.Approver, approved.UTC().Format("2006-01-02 15:04"), chat.Age(time.Since(approved)), e.ApprovalTTL))
	}
	for _, c := range changes {
		plan.Changes = append(plan.Changes, "changed since the approval: "+c)
	}
	plan.Keeps = []string{"the steps already done (" + e.leftBehind(op) + "): they are not run again"}
	plan.Undo = []string{"the remaining steps act on the state as it is now, shown above"}
	return op, plan, nil
}

// planHash identifies the approved plan an operation carries.
func planHash(op *journal.Op) string {
	return approvals.Plan{Action: op.Kind, Facts: op.Facts}.Hash()
}

// resume claims a stopped operation and runs it from its first unfinished
// step, once its pre-flight allows what is left.
func (e *Engine) resume(ctx context.Context, op *journal.Op, out Out, by string) (string, error) {
	op, err := e.Journal.Claim(ctx, op.ID, e.Store.Process())
	if err != nil {
		return "", &Refusal{Msg: err.Error() + "."}
	}
	if err := e.adopt(ctx, op); err != nil {
		e.giveBack(ctx, op.ID, "")
		return "", err
	}
	// Under the claim and the locks, as at the first start: what AWS would
	// refuse the steps still to run stops the resume before any of them.
	if err := e.preflightRest(ctx, op, out); err != nil {
		why := ""
		var rr *ResumeRefusedError
		if errors.As(err, &rr) {
			why = rr.Why
		}
		e.giveBack(ctx, op.ID, why)
		return "", err
	}
	i := op.Next()
	note := fmt.Sprintf("%s at step %d (%s); steps 1–%d are done and are not run again.", by, i+1, op.Steps[i].Name, i)
	if err := e.run(ctx, op.ID, out, note); err != nil {
		return "", err
	}
	return "resumed " + op.ID, nil
}

// giveBack returns a claimed operation that was not run to Stopped, with
// why ("" leaves it unsaid); its locks stay as adopted, held for a later
// resume or a cancel. Given back even if ctx ended: claimed and not run,
// it must not stay "running" under a live process.
func (e *Engine) giveBack(ctx context.Context, id, why string) {
	gctx, cancel := settled(ctx)
	defer cancel()
	if _, err := e.Journal.Update(gctx, id, func(o *journal.Op) error {
		o.State = journal.Stopped
		if why != "" {
			o.Why = why
		}
		return nil
	}); err != nil {
		e.Log.Error("give a claimed operation back", "op", id, "err", err)
	}
}

// ResumeRefusedError is a resume that its pre-flight stopped: AWS would
// refuse a call of a step still to run. Nothing ran; the operation is
// stopped where it was and keeps what it holds. It reads as a Refusal
// (Msg names each refused call, what it acts on, AWS's reason and what to
// do) and unwraps to the *ops.PreflightError of the rows that count.
type ResumeRefusedError struct {
	Op      string
	Refused []ops.Check
	// Msg is the whole message for the channel; Why is the line the
	// journal keeps as the operation's reason for being stopped.
	Msg, Why string
}

func (e *ResumeRefusedError) Error() string { return e.Msg }
func (e *ResumeRefusedError) Unwrap() error { return &ops.PreflightError{Refused: e.Refused} }
func (e *ResumeRefusedError) As(target any) bool {
	if r, ok := target.(**Refusal); ok {
		*r = &Refusal{Msg: e.Msg}
		return true
	}
	return false
}

// preflightRest runs the kind's pre-flight of the journaled plan again
// before a resume, in the operation's role session as its steps run (see
// asItsPeople), and refuses the resume when a row that counts for the
// steps still to run is refused (blocking). A kind without a pre-flight,
// or an operation this version cannot line up with its steps (run says
// why), resumes as before.
func (e *Engine) preflightRest(ctx context.Context, op *journal.Op, out Out) error {
	_, b, err := e.bind(op)
	if err != nil || b.preflight == nil {
		return nil
	}
	names := ops.StepNames(b.steps(e.env(op, out)))
	if len(names) != len(op.Steps) || op.Next() >= len(op.Steps) {
		return nil
	}
	pf := b.preflight(asItsPeople(ctx, op))
	if err := ctx.Err(); err != nil {
		return err // its answers are the cancellation's, not AWS's
	}
	rows := blocking(pf, op, names)
	if len(rows) == 0 {
		return nil
	}
	i := op.Next()
	for j := range rows {
		rows[j].On = strings.TrimSpace(rows[j].On + " " + stepsLeft(rows[j], op, names))
	}
	pe := &ops.PreflightError{Refused: rows}
	fix := "Fix what AWS refuses"
	if slices.ContainsFunc(rows, func(c ops.Check) bool { return c.Denied }) {
		fix = "Fix the permission (the bot's IAM policy, deploy/iam/policy.json, or the role in `ops.role_arn`)"
	}
	keeps := ""
	if kd, ok := e.Kinds.kinds[op.Kind]; ok && kd.hold() {
		keeps = " and keeps " + targetName(op.Target)
	}
	msg := fmt.Sprintf("`%s` (%s) was not resumed: just before step %d (%s), %s. Nothing was run: it stays stopped at step %d%s. %s, then `%s resume %s` again; or `%s cancel %s` gives it up.",
		op.ID, op.Title, i+1, op.Steps[i].Name, strings.TrimSuffix(pe.Error(), "."), i+1, keeps, fix, e.SlashCommand, op.ID, e.SlashCommand, op.ID)
	e.Log.Warn("a resume was refused by its pre-flight", "op", op.ID, "step", i+1, "refused", pe.Error())
	return &ResumeRefusedError{Op: op.ID, Refused: rows, Msg: msg, Why: fmt.Sprintf("its resume was refused just before step %d: %s", i+1, pe.Error())}
}

// blocking are the refused rows of a resume's pre-flight that count for
// the steps still to run. The pre-flight is the first start's, run on the
// journaled plan; each row names the steps it stands for (ops.Check.Steps,
// set by the kind's builder from the same names as its step list), and
// the journal says which of those are done. Weighing rows by that, rather
// than teaching every builder about done steps, keeps the builders as
// they are at the first start and the one judgement here:
//
//   - a row of steps that are all done does not count: those calls are
//     not made again, and AWS may refuse them for what they did (a stop
//     of a box the operation stopped, a launch at an address its own new
//     box holds);
//   - a row of the step that stopped part-way (begun, not done) counts
//     only when IAM refuses it: the step is safe to run again and finds
//     its own work (the instance it launched, the capacity it raised), so
//     AWS's answer about state may be that work; and if it is not, the
//     step meets it again where the operation is now, before any step
//     after it;
//   - a row of a step not yet begun counts whatever AWS says;
//   - a row that names no step, or a step this plan does not have, counts
//     (nothing says it is done with).
func blocking(pf ops.Preflight, op *journal.Op, names []string) []ops.Check {
	at := map[string][]int{}
	for i, n := range names {
		at[n] = append(at[n], i)
	}
	next := op.Next()
	begun := next < len(op.Steps) && op.Steps[next].State != journal.StepPending
	counts := func(c ops.Check) bool {
		if len(c.Steps) == 0 {
			return true
		}
		for _, s := range c.Steps {
			idx, ok := at[s]
			if !ok {
				return true
			}
			for _, i := range idx {
				switch {
				case op.Steps[i].State == journal.StepDone:
				case i == next && begun && !c.Denied:
				default:
					return true
				}
			}
		}
		return false
	}
	var out []ops.Check
	for _, c := range pf.Refused() {
		if counts(c) {
			out = append(out, c)
		}
	}
	return out
}

// stepsLeft says which steps still to run a row stands for: "(for step 6,
// Launch the new Services box)".
func stepsLeft(c ops.Check, op *journal.Op, names []string) string {
	var rest []string
	for i, n := range names {
		if op.Steps[i].State != journal.StepDone && slices.Contains(c.Steps, n) {
			rest = append(rest, fmt.Sprintf("%d, %s", i+1, n))
		}
	}
	if len(rest) == 0 {
		return ""
	}
	return "(for step " + strings.Join(rest, "; step ") + ")"
}

// targetName is a lock key as a person knows it.
func targetName(key string) string {
	if strings.HasPrefix(key, "box/") {
		return "the Services box"
	}
	return "`" + key + "`"
}

// adopt makes this process the holder of the operation's targets (only
// the further ones once it is past its kind's FreeAfter step, and the
// target again while it is inside its Retake step).
func (e *Engine) adopt(ctx context.Context, op *journal.Op) error {
	keys := op.Targets()
	if kd, ok := e.Kinds.kinds[op.Kind]; ok && pastFree(op, kd.freeAfter()) && frees(op) {
		keys = op.Also
		if inStep(op, kd.retake()) {
			// Stopped inside the step that took the target back (a
			// refresh half-way through retiring the old replica): it
			// keeps it until resumed or given up, as a held kind does.
			keys = op.Targets()
		} else if err := e.Store.Unlock(ctx, op.Target, op.ID); err != nil {
			// A process that died between the free step and the next
			// left the target locked under the operation, which no longer
			// needs it: a failover would be refused for nothing.
			e.Log.Error("free the target of an operation past its need", "op", op.ID, "lock", op.Target, "err", err)
		}
	}
	for _, k := range keys {
		what := op.Kind
		if kd, ok := e.Kinds.kinds[op.Kind]; ok {
			what = kd.what() // as a refusal names it ("EBS backup")
		}
		err := e.Store.Adopt(ctx, store.Lock{Key: k, OpID: op.ID, What: what, Requester: op.Requester, Since: op.Created, Process: e.Store.Process()})
		var held *store.HeldError
		if errors.As(err, &held) {
			return &Refusal{Msg: e.heldMessage(held.Holder)}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Cancel stops a running operation at its next step boundary, or gives up
// a stopped one and frees its targets.
func (e *Engine) Cancel(ctx context.Context, id, user string, out Out) (string, error) {
	op, err := e.find(ctx, id)
	if err != nil {
		return "", err
	}
	op, abandoned, err := e.Journal.RequestCancel(ctx, op.ID, user)
	if err != nil {
		return "", &Refusal{Msg: err.Error() + "; nothing to cancel."}
	}
	if !abandoned {
		i := op.Next()
		msg := fmt.Sprintf(":octagonal_sign: <@%s> asked `%s` to stop. Step %d (%s) finishes first (a step is never cut in half); nothing after it starts.", user, op.ID, i+1, op.Steps[min(i, len(op.Steps)-1)].Name)
		_, err := out.Post(ctx, chat.Text(msg))
		return "cancel requested " + op.ID, err
	}
	// Given up: its targets are freed even if the request's ctx ends now.
	e.unlock(ctx, op)
	hints, line := "", ""
	if k, b, err := e.bind(op); err == nil {
		if h := b.leftBehind(Record{Op: op}); len(h) > 0 {
			hints = " Kept, not deleted: " + strings.Join(h, ", ") + "."
		}
		line = e.boxLine(ctx, k, op)
	}
	msg := fmt.Sprintf(":wastebasket: <@%s> gave up `%s` (%s); new operations on its target may start. What it did: %s.%s %s",
		user, op.ID, op.Title, e.leftBehind(op), hints, line)
	_, err = out.Post(ctx, chat.Text(msg))
	return "abandoned " + op.ID, err
}

// Journaled reports whether an approval request became a journaled
// operation (which then has its own resume path).
func (e *Engine) Journaled(ctx context.Context, reqID string) (bool, error) {
	_, err := e.Journal.ByRequest(ctx, reqID)
	if errors.Is(err, journal.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// cleanupTimeout bounds a kind's Cleanup: a drill's teardown waits for
// its instance to terminate.
const cleanupTimeout = 10 * time.Minute

// settled is a context for writes that must land even after ctx ended
// (the bot is shutting down): the record that an operation stopped, or
// freed what it held. It keeps ctx's values and has its own deadline.
func settled(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
}
