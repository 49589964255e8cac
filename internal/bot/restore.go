package bot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/circlebot/circlebot/internal/approvals"
	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/commands"
	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/progress"
	"github.com/circlebot/circlebot/internal/store"
)

// BoxLock is the lock key of every operation that changes or reads the
// Services box as a whole (backups, pruning, restores): one at a time.
func BoxLock(nameTag string) string { return "box/" + nameTag }

// TarballRestorer restores a tarball onto the Services box; nil when
// backup.bucket is unset.
type TarballRestorer interface {
	Plan(ctx context.Context, bucket, key string) (ops.TarballRestorePlan, error)
	Steps(plan ops.TarballRestorePlan) []journal.Def
	Recheck(ctx context.Context, plan ops.TarballRestorePlan) error
}

// Operations runs journaled operations (restores, failovers, builder
// rotations): started by an approved request,
// resumed by `resume`, stopped by `cancel`, and picked up after a crash.
type Operations struct {
	Snapshot     *ops.SnapshotRestore
	Tarball      TarballRestorer
	Failover     *ops.Failover
	Builders     *ops.Builders // nil: builders.asg_name unset
	Journal      journal.Store
	Store        *store.Store
	NameTag      string
	SlashCommand string
	Log          *slog.Logger
	MinInterval  time.Duration

	running sync.WaitGroup
}

// Wait returns when every restore this process runs has stopped.
func (s *Operations) Wait() { s.running.Wait() }

func (s *Operations) lockKey() string { return BoxLock(s.NameTag) }

// RestoreAction is `restore` through the two-person rule.
type RestoreAction struct{ R *Operations }

// Plan refuses early when the box is busy: an approver should not be asked
// to approve what cannot start.
func (a RestoreAction) Plan(ctx context.Context, cmd commands.Command) (approvals.Plan, error) {
	if err := a.R.checkFree(ctx); err != nil {
		return approvals.Plan{}, err
	}
	p, _, err := a.R.plan(ctx, cmd)
	return p, err
}

func (s *Operations) checkFree(ctx context.Context) error {
	locks, err := s.Store.Locks(ctx)
	if err != nil {
		return err
	}
	for _, l := range locks {
		if l.Key == s.lockKey() {
			return &UserError{Msg: heldMessage(l, s.SlashCommand)}
		}
	}
	return nil
}

// heldMessage names what holds the box and what the user can do.
func heldMessage(h store.Lock, slash string) string {
	verb, follow := "is running", "Follow it in its message."
	switch {
	case strings.HasPrefix(h.OpID, "bk-"):
		follow = fmt.Sprintf("Follow it in its message, or `%s backup status %s`.", slash, h.OpID)
	case strings.HasPrefix(h.OpID, "op-"):
		// A journaled operation keeps the box while it is stopped part-way.
		verb = "holds it (running, or stopped part-way)"
		follow = fmt.Sprintf("If it stopped, `%s resume %s` continues it and `%s cancel %s` gives it up.", slash, h.OpID, slash, h.OpID)
	}
	where := ""
	if h.Replica != "" {
		where = " on bot replica `" + h.Replica + "`"
	}
	return fmt.Sprintf("another operation on the Services box %s: `%s` (%s), requested by %s %s ago%s. Nothing new was started. %s",
		verb, h.OpID, h.What, who(h.Requester), Age(time.Since(h.Since)), where, follow)
}

// plan derives the approval plan and the data the journal keeps.
func (s *Operations) plan(ctx context.Context, cmd commands.Command) (approvals.Plan, map[string]string, error) {
	src := cmd.Source
	switch src.Kind {
	case commands.SourceS3:
		if s.Tarball == nil {
			return approvals.Plan{}, nil, &UserError{Msg: "tarball restores need `backup.bucket` in the config (and SSM on the Services box). Nothing was requested."}
		}
		tp, err := ops.RetryRead(ctx, s.retryWait(), func() (ops.TarballRestorePlan, error) { return s.Tarball.Plan(ctx, src.Bucket, src.Key) })
		if err != nil {
			return approvals.Plan{}, nil, refusal(err)
		}
		return tarballApproval(tp, s.SlashCommand), map[string]string{"kind": "tarball", "plan": tp.Encode()}, nil
	default:
		p, err := ops.RetryRead(ctx, s.retryWait(), func() (ops.RestorePlan, error) { return s.Snapshot.Plan(ctx, src.SnapshotID) })
		if err != nil {
			return approvals.Plan{}, nil, refusal(err)
		}
		return snapshotApproval(p), map[string]string{"kind": "snapshot", "plan": p.Encode()}, nil
	}
}

func refusal(err error) error {
	var r *ops.RefusalError
	if errors.As(err, &r) {
		return &UserError{Msg: r.Msg}
	}
	return &UserError{Msg: ops.Explain(err)}
}

// retryWait is the first pause between reads retried after AWS errors.
func (s *Operations) retryWait() time.Duration {
	if s.Snapshot != nil && s.Snapshot.Poll > 0 {
		return s.Snapshot.Poll
	}
	return time.Second
}

func snapshotApproval(p ops.RestorePlan) approvals.Plan {
	sh := p.Shape
	var snaps []string
	for _, s := range p.Snapshots {
		snaps = append(snaps, fmt.Sprintf("%s=`%s` (%d GiB)", s.Device, s.ID, s.SizeGiB))
	}
	ap := approvals.Plan{Action: "restore", Facts: p.Facts()}
	if p.Old != nil {
		ap.Changes = append(ap.Changes,
			fmt.Sprintf("turn off DeleteOnTermination on every volume of `%s` and tag them, then stop it (forced after `restore.stop_timeout`)", p.Old.InstanceID),
			fmt.Sprintf("terminate `%s` (now %s) so that %s is free for the new box", p.Old.InstanceID, p.Old.State, sh.PrivateIP))
	}
	ap.Changes = append(ap.Changes,
		fmt.Sprintf("register image `circleci-restore-op-…` from restore point `%s` (%s): %s", p.Source, p.SourceTime.UTC().Format("2006-01-02 15:04 UTC"), strings.Join(snaps, ", ")),
		fmt.Sprintf("launch the new Services box: %s in `%s` (%s), private IP %s%s, security groups %s (launch shape %s)",
			strings.Join(append([]string{sh.Type}, p.Fallbacks...), " or "), sh.SubnetID, sh.AZ, sh.PrivateIP, secondaries(sh.SecondaryIPs), strings.Join(sh.SecurityGroups, ", "), p.ShapeFrom))
	if p.AppStart != "" {
		ap.Changes = append(ap.Changes, "start the app on it through SSM: `"+p.AppStart+"`")
	}
	if p.Old != nil {
		var vols []string
		for _, v := range p.Old.Volumes {
			vols = append(vols, fmt.Sprintf("`%s` (%s)", v.ID, v.Device))
		}
		ap.Keeps = append(ap.Keeps, "the old box's volumes, detached and tagged: "+strings.Join(vols, ", "))
	}
	ap.Keeps = append(ap.Keeps, "the restore point's snapshots and the new image")
	if p.Old != nil {
		ap.Undo = append(ap.Undo, fmt.Sprintf("`%s` is terminated (its volumes stay; a box can be built from them by hand)", p.Old.InstanceID))
	}
	ap.Undo = append(ap.Undo, fmt.Sprintf("the new box has the data of %s UTC (%s old): builds and settings since then are not in it", p.SourceTime.UTC().Format("2006-01-02 15:04"), Age(time.Since(p.SourceTime))))
	return ap
}

func secondaries(ips []string) string {
	if len(ips) == 0 {
		return ""
	}
	return " (secondary " + strings.Join(ips, ", ") + ")"
}

func tarballApproval(p ops.TarballRestorePlan, slash string) approvals.Plan {
	ap := approvals.Plan{Action: "restore", Facts: p.Facts()}
	ap.Changes = []string{
		fmt.Sprintf("download `s3://%s/%s` (%s) onto the Services box `%s` (%s) through a presigned URL", p.Bucket, p.Key, humanBytes(p.Size), p.InstanceID, p.PrivateIP),
	}
	if p.AppStop != "" {
		ap.Changes = append(ap.Changes, "stop the app: `"+p.AppStop+"`")
	}
	ap.Changes = append(ap.Changes, "run `circleci-restore` on it")
	if p.AppStart != "" {
		ap.Changes = append(ap.Changes, "start the app: `"+p.AppStart+"`")
	}
	ap.Keeps = []string{"the box's current data: circleci-restore moves it to `/data/circleci-restore-<time>` (delete that by hand once the restore is confirmed)", "the tarball in S3"}
	ap.Undo = []string{fmt.Sprintf("the app runs on the data of %s UTC: builds and settings since then are not in it (the moved-aside data still has them)", p.Modified.UTC().Format("2006-01-02 15:04"))}
	return ap
}

// Execute starts a journaled restore of the approved plan.
func (a RestoreAction) Execute(ctx context.Context, req approvals.Request, r Replier) error {
	s := a.R
	return s.execute(ctx, req, r, s.lockKey(), "restore", func(ctx context.Context, cmd commands.Command) (derived, error) {
		plan, data, err := s.plan(ctx, cmd)
		if err != nil {
			return derived{}, err
		}
		d := derived{plan: plan, data: data, title: "Restore of the Services box from `" + plan.Facts["source"] + "`"}
		if data["kind"] == "tarball" {
			d.title = "Restore of the Services box from `s3://" + plan.Facts["bucket"] + "/" + plan.Facts["key"] + "`"
		}
		return d, nil
	})
}

// derived is a plan made again just before running, with what the
// journal keeps of it.
type derived struct {
	plan  approvals.Plan
	data  map[string]string // "kind", "plan" (the encoded ops plan)
	title string
	also  []string // further lock keys the operation needs
}

// execute starts a journaled operation of an approved request: the target
// is locked, the plan is derived again under the lock and must hash as
// approved, and then each step runs and is recorded. The lock stays with
// the operation until it is done or given up.
func (s *Operations) execute(ctx context.Context, req approvals.Request, r Replier, key, what string, derive func(context.Context, commands.Command) (derived, error)) error {
	now := time.Now()
	opID := journal.NewID(now)
	unlock, err := s.Store.TryLock(ctx, store.Lock{Key: key, OpID: opID, What: what, Requester: req.Requester, Process: s.Store.Process()})
	var held *store.HeldError
	if errors.As(err, &held) {
		return &UserError{Msg: heldMessage(held.Holder, s.SlashCommand)}
	}
	if err != nil {
		return err
	}
	// drop releases a lock of an operation that does not start. One left
	// behind refuses new operations on its target, so a failure is logged
	// with its key.
	drop := func(k string, u func() error) {
		if err := u(); err != nil {
			s.Log.Error("release the lock of an operation that did not start: it stays held", "op", opID, "lock", k, "err", err)
		}
	}
	cmd, err := commands.Parse(req.Command)
	if err != nil {
		drop(key, unlock)
		return err
	}
	d, err := derive(ctx, cmd)
	if err != nil {
		drop(key, unlock)
		return err
	}
	if d.plan.Hash() != req.PlanHash {
		drop(key, unlock)
		return &PlanChangedError{Approved: req.PlanHash, Live: d.plan.Hash()}
	}
	var unlocks []func() error
	for _, k := range d.also {
		u, err := s.Store.TryLock(ctx, store.Lock{Key: k, OpID: opID, What: what, Requester: req.Requester, Process: s.Store.Process()})
		if err != nil {
			for i, u := range unlocks {
				drop(d.also[i], u)
			}
			drop(key, unlock)
			if errors.As(err, &held) {
				return &UserError{Msg: heldMessage(held.Holder, s.SlashCommand)}
			}
			return err
		}
		unlocks = append(unlocks, u)
	}
	op := &journal.Op{ID: opID, Kind: d.data["kind"], Title: d.title, Target: key, Also: d.also, RequestID: req.ID, Command: req.Command,
		Channel: req.Channel, Requester: req.Requester, Approver: req.Decider, Facts: d.plan.Facts, Data: d.data,
		State: journal.Running, Process: s.Store.Process(), Created: now, Updated: now}
	release := func() {
		for i, u := range unlocks {
			drop(d.also[i], u)
		}
		drop(key, unlock)
	}
	defs, err := s.defs(op)
	if err != nil {
		release()
		return err
	}
	for _, n := range ops.Names(defs) {
		op.Steps = append(op.Steps, journal.Step{Name: n, State: journal.StepPending})
	}
	if err := s.Journal.Create(ctx, op); err != nil {
		release()
		return fmt.Errorf("journal the %s: %w", what, err)
	}
	return s.run(ctx, op.ID, r, "")
}

// defs rebuilds an operation's steps from the plan it carries.
func (s *Operations) defs(op *journal.Op) ([]journal.Def, error) {
	switch op.Data["kind"] {
	case "snapshot":
		p, err := ops.DecodeRestorePlan(op.Data["plan"])
		if err != nil {
			return nil, fmt.Errorf("read the plan of %s: %w", op.ID, err)
		}
		return s.Snapshot.Steps(p), nil
	case "tarball":
		if s.Tarball == nil {
			return nil, &UserError{Msg: "this bot has no `backup.bucket` configured, so it cannot run tarball restores"}
		}
		p, err := ops.DecodeTarballRestorePlan(op.Data["plan"])
		if err != nil {
			return nil, fmt.Errorf("read the plan of %s: %w", op.ID, err)
		}
		return s.Tarball.Steps(p), nil
	case "failover":
		p, err := ops.DecodeFailoverPlan(op.Data["plan"])
		if err != nil {
			return nil, fmt.Errorf("read the plan of %s: %w", op.ID, err)
		}
		return s.Failover.Steps(p), nil
	case "rotate":
		if s.Builders == nil {
			return nil, &UserError{Msg: "this bot has no `builders.asg_name` configured, so it cannot rotate builders"}
		}
		p, err := ops.DecodeRotationPlan(op.Data["plan"])
		if err != nil {
			return nil, fmt.Errorf("read the plan of %s: %w", op.ID, err)
		}
		return s.Builders.Steps(p), nil
	}
	return nil, fmt.Errorf("operation %s has unknown kind %q", op.ID, op.Data["kind"])
}

// run executes the operation's remaining steps with a progress message
// and the closing summary. The target stays locked unless it finished.
func (s *Operations) run(ctx context.Context, id string, poster progress.Poster, note string) error {
	s.running.Add(1)
	defer s.running.Done()
	op, err := s.Journal.Get(ctx, id)
	if err != nil {
		return err
	}
	defs, err := s.defs(op)
	if err != nil {
		return err
	}
	st := progress.Start(ctx, poster, progress.Options{OpID: op.ID, Title: op.Title, Requester: op.Requester, Steps: journalNames(op), Log: s.Log, MinInterval: s.MinInterval})
	if note != "" {
		st.Log(note)
	}
	// Under the store's work context: a replica cut off from the shared
	// state stops here before another replica can resume the operation.
	jctx, jcancel := s.Store.WorkContext(ctx)
	defer jcancel()
	op, err = s.Journal.Run(jctx, id, s.Store.Process(), defs, st)
	if op == nil {
		if errors.Is(err, journal.ErrTakenOver) {
			st.Finish(progress.Cancelled, takenOver(id))
		} else {
			st.Finish(progress.Failed, ops.Explain(err))
		}
		return err
	}
	switch {
	case err == nil && op.State == journal.Done:
		// Released even if ctx ended meanwhile: the operation is done, and
		// its locks would otherwise refuse new operations on its target.
		uctx, ucancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer ucancel()
		for _, k := range op.Targets() {
			if uerr := s.Store.Unlock(uctx, k, op.ID); uerr != nil {
				s.Log.Error("release a lock after an operation", "op", op.ID, "lock", k, "err", uerr)
			}
		}
		st.Finish(progress.Succeeded, s.summary(op))
	case errors.Is(err, journal.ErrCancelled):
		st.Finish(progress.Cancelled, fmt.Sprintf("Stopped by <@%s> at a step boundary: %s. %s %s", op.CancelBy, op.Why, s.boxLine(ctx, op), s.nextMoves(op)))
	case errors.Is(err, journal.ErrTakenOver):
		st.Finish(progress.Cancelled, takenOver(op.ID))
	case errors.Is(context.Cause(jctx), store.ErrHeartbeatLost):
		st.Finish(progress.Cancelled, fmt.Sprintf("Stopped: this bot replica lost its connection to the shared state (%s). Another replica announces it and can `%s resume %s`.", op.Why, s.SlashCommand, op.ID))
	case ctx.Err() != nil:
		st.Finish(progress.Cancelled, fmt.Sprintf("Stopped: the bot is shutting down (%s). %s", op.Why, s.nextMoves(op)))
	default:
		st.Finish(progress.Failed, fmt.Sprintf("%s Later steps did not run. %s %s", ops.Explain(err), s.boxLine(ctx, op), s.nextMoves(op)))
	}
	s.Log.Info("restore", "op", op.ID, "state", op.State, "why", op.Why)
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
	defer cancel()
	_ = st.Wait(wctx) // a Slack message, not state: the stream keeps trying on its own
	if err != nil {
		return &UserError{Msg: fmt.Sprintf("operation `%s` stopped: %s", op.ID, op.Why)}
	}
	return nil
}

// takenOver is the last word of a run whose operation another replica
// took over.
func takenOver(id string) string {
	return fmt.Sprintf("Stopped here: another bot replica took `%s` over (this one was cut off from the shared state). Follow it there; nothing more is done from this replica.", id)
}

func journalNames(op *journal.Op) []string {
	var out []string
	for _, s := range op.Steps {
		out = append(out, s.Name)
	}
	return out
}

// nextMoves says what a stopped operation has left and how to go on.
func (s *Operations) nextMoves(op *journal.Op) string {
	return fmt.Sprintf("Done so far: %s. `%s resume %s` continues from step %d without repeating finished steps; `%s cancel %s` gives it up and frees the Services box.",
		s.leftBehind(op), s.SlashCommand, op.ID, op.Next()+1, s.SlashCommand, op.ID)
}

// leftBehind lists what the operation changed, from its journal.
func (s *Operations) leftBehind(op *journal.Op) string {
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

func (s *Operations) summary(op *journal.Op) string {
	took := op.Elapsed(time.Now()).Round(time.Second)
	switch op.Data["kind"] {
	case "failover":
		return s.failoverSummary(op, took)
	case "rotate":
		return fmt.Sprintf("Rotated the builders of `%s` in %s (approved by <@%s>): %s.", op.Facts["group"], took, op.Approver, op.Steps[len(op.Steps)-1].Detail)
	}
	if op.Data["kind"] == "tarball" {
		return fmt.Sprintf("Restored `s3://%s/%s` onto `%s` in %s (approved by <@%s>). The data that was there is in `%s` on the box: delete it once you have checked the restore. Next: take a backup (`%s backup now`); webhooks sent while the app was stopped were lost.",
			op.Facts["bucket"], op.Facts["key"], op.Facts["instance"], took, op.Approver, op.Data["moved_aside"], s.SlashCommand)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Restored `%s` onto `%s` (%s, %s) in %s (approved by <@%s>).", op.Facts["source"], op.Data["instance_id"], op.Data["instance_type"], op.Facts["private_ip"], took, op.Approver)
	if kept := op.Data["kept_volumes"]; kept != "" {
		fmt.Fprintf(&b, " The old instance %s was terminated; its volumes %s are kept (tag %s=%s): delete them once you are sure.", strings.Fields(op.Facts["old_instance"])[0], strings.ReplaceAll(kept, ",", ", "), ops.TagKeptBy, op.ID)
	}
	fmt.Fprintf(&b, " Image `%s` stays registered. Next: `%s builders rotate` so builders reconnect; webhooks sent while the box was down were lost; take a fresh backup with `%s backup now`.",
		op.Data["image_id"], s.SlashCommand, s.SlashCommand)
	return b.String()
}

// boxLine says, from AWS now, whether CircleCI has a Services box running:
// what an engineer needs first when an operation stopped part-way.
func (s *Operations) boxLine(ctx context.Context, op *journal.Op) string {
	if op.Kind == "rotate" || s.Snapshot == nil {
		return ""
	}
	box, err := ops.FindBox(ctx, s.Snapshot.EC2, s.NameTag)
	switch {
	case errors.Is(err, ops.ErrNotFound):
		return fmt.Sprintf(":rotating_light: No instance is tagged Name=%s: *CircleCI is down* until this operation is resumed or a box is started by hand.", s.NameTag)
	case err != nil:
		return "The Services box's state could not be read: " + ops.Explain(err)
	}
	id := aws.ToString(box.InstanceId)
	switch box.State.Name {
	case "running":
		return fmt.Sprintf("The Services box `%s` is running.", id)
	case "stopped", "stopping":
		return fmt.Sprintf(":rotating_light: The Services box `%s` is %s: *CircleCI is down*. `%s resume %s` goes on; to bring that box back instead, give this operation up and start it (`aws ec2 start-instances --instance-ids %s`).", id, box.State.Name, s.SlashCommand, op.ID, id)
	}
	return fmt.Sprintf("The Services box `%s` is %s.", id, box.State.Name)
}

// recheck runs an operation's read-only checks again before a resume:
// what it restores from must still be there as approved.
func (s *Operations) recheck(ctx context.Context, op *journal.Op) error {
	switch op.Data["kind"] {
	case "snapshot":
		p, err := ops.DecodeRestorePlan(op.Data["plan"])
		if err == nil {
			err = s.Snapshot.Recheck(ctx, p)
		}
		return err
	case "tarball":
		if s.Tarball == nil {
			return nil
		}
		p, err := ops.DecodeTarballRestorePlan(op.Data["plan"])
		if err == nil {
			err = s.Tarball.Recheck(ctx, p)
		}
		return err
	}
	return nil
}

// find looks an operation up by its ID or by the request that started it.
func (s *Operations) find(ctx context.Context, id string) (*journal.Op, error) {
	op, err := s.Journal.Get(ctx, id)
	if errors.Is(err, journal.ErrNotFound) && strings.HasPrefix(id, "req-") {
		op, err = s.Journal.ByRequest(ctx, id)
	}
	if errors.Is(err, journal.ErrNotFound) {
		return nil, &UserError{Msg: fmt.Sprintf("there is no operation `%s`. Operation IDs (op-…) are in each operation's progress message.", id)}
	}
	return op, err
}

// Resume continues a stopped operation from its first unfinished step.
func (s *Operations) Resume(ctx context.Context, id, user string, poster progress.Poster) (Outcome, error) {
	op, err := s.find(ctx, id)
	if err != nil {
		return Outcome{}, err
	}
	if op.State == journal.Stopped {
		if err := s.recheck(ctx, op); err != nil {
			return Outcome{}, &UserError{Msg: fmt.Sprintf("`%s` was not resumed: what it restores from changed (%s). `%s cancel %s` gives it up; then request a new one.", op.ID, ops.Explain(err), s.SlashCommand, op.ID)}
		}
	}
	op, err = s.Journal.Claim(ctx, op.ID, s.Store.Process())
	if err != nil {
		return Outcome{}, &UserError{Msg: err.Error() + "."}
	}
	if err := s.adopt(ctx, op); err != nil {
		// Given back even if ctx ended: claimed and not run, the operation
		// would show as running under this live process, and nobody could
		// resume it.
		gctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if _, uerr := s.Journal.Update(gctx, op.ID, func(o *journal.Op) error { o.State = journal.Stopped; return nil }); uerr != nil {
			s.Log.Error("give back an operation claimed for a resume that could not lock its target", "op", op.ID, "err", uerr)
			return Outcome{}, &UserError{Msg: fmt.Sprintf("`%s` was not resumed: %s. It could not be set back to stopped either (%s), so it shows as running until this bot replica restarts.", op.ID, ops.Explain(err), ops.Explain(uerr))}
		}
		return Outcome{}, err
	}
	i := op.Next()
	note := fmt.Sprintf("Resumed by <@%s> at step %d (%s); steps 1–%d are done and are not run again.", user, i+1, op.Steps[i].Name, i)
	if err := s.run(ctx, op.ID, poster, note); err != nil {
		return Outcome{}, err
	}
	return Outcome{Result: "ok", Detail: "resumed " + op.ID}, nil
}

// adopt makes this process the holder of the operation's target.
func (s *Operations) adopt(ctx context.Context, op *journal.Op) error {
	for _, k := range op.Targets() {
		err := s.Store.Adopt(ctx, store.Lock{Key: k, OpID: op.ID, What: op.Kind, Requester: op.Requester, Since: op.Created, Process: s.Store.Process()})
		var held *store.HeldError
		if errors.As(err, &held) {
			return &UserError{Msg: heldMessage(held.Holder, s.SlashCommand)}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Cancel stops a running operation at its next step boundary, or gives up
// a stopped one and frees its target.
func (s *Operations) Cancel(ctx context.Context, id, user string, reply Replier) (Outcome, error) {
	op, err := s.find(ctx, id)
	if err != nil {
		return Outcome{}, err
	}
	op, abandoned, err := s.Journal.RequestCancel(ctx, op.ID, user)
	if err != nil {
		return Outcome{}, &UserError{Msg: err.Error() + "; nothing to cancel."}
	}
	if !abandoned {
		i := op.Next()
		msg := fmt.Sprintf(":octagonal_sign: <@%s> asked `%s` to stop. Step %d (%s) finishes first (a step is never cut in half); nothing after it starts.", user, op.ID, i+1, op.Steps[min(i, len(op.Steps)-1)].Name)
		_, err := reply.Post(ctx, chat.Text(msg))
		return Outcome{Result: "ok", Detail: "cancel requested " + op.ID}, err
	}
	for _, k := range op.Targets() {
		if err := s.Store.Unlock(ctx, k, op.ID); err != nil {
			return Outcome{}, err
		}
	}
	msg := fmt.Sprintf(":wastebasket: <@%s> gave up `%s` (%s); new operations on its target may start. What it did: %s.%s %s",
		user, op.ID, op.Title, s.leftBehind(op), s.cleanupHints(op), s.boxLine(ctx, op))
	_, err = reply.Post(ctx, chat.Text(msg))
	return Outcome{Result: "ok", Detail: "abandoned " + op.ID}, err
}

// cleanupHints names what a given-up restore made, for a person to keep
// or remove: the bot does not delete it.
func (s *Operations) cleanupHints(op *journal.Op) string {
	var h []string
	if v := op.Data["kept_volumes"]; v != "" {
		h = append(h, "old volumes "+v+" (tag "+ops.TagKeptBy+"="+op.ID+")")
	}
	if v := op.Data["image_id"]; v != "" {
		h = append(h, "image `"+v+"`")
	}
	if v := op.Data["instance_id"]; v != "" {
		h = append(h, "new instance `"+v+"`")
	}
	if v := op.Data["moved_aside"]; v != "" {
		h = append(h, "moved-aside data `"+v+"` on the box")
	}
	if len(h) == 0 {
		return ""
	}
	return " Kept, not deleted: " + strings.Join(h, ", ") + "."
}

// Recover runs at start-up, and on the leader while replicas share the
// store: operations a dead process (or replica) was running are marked
// interrupted at their step, keep the Services box locked, and are
// announced in their channel with how to resume or give them up. None is
// continued on its own. Marking is a conditional write, so of several
// replicas noticing one death, one announces it.
func (s *Operations) Recover(ctx context.Context, postTo func(string) progress.Poster) {
	if _, err := s.Journal.MarkInterrupted(ctx, s.Store.Alive); err != nil {
		s.Log.Error("read operations at start-up", "err", err)
		return
	}
	all, err := s.Journal.All(ctx)
	if err != nil {
		s.Log.Error("read operations at start-up", "err", err)
		return
	}
	for _, op := range all {
		// A running operation holds its own locks (here or on a live
		// replica); a stopped one keeps its target until resumed or given up.
		if op.State == journal.Stopped {
			if err := s.adopt(ctx, op); err != nil {
				s.Log.Error("keep the box locked for a stopped operation", "op", op.ID, "err", err)
			}
		}
	}
	for _, op := range all {
		if !op.Unannounced || op.State != journal.Stopped {
			continue
		}
		op, err := s.Journal.TakeAnnouncement(ctx, op.ID)
		if err != nil {
			continue // another replica has it
		}
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
		msg := fmt.Sprintf(":warning: Operation `%s` (%s, approved by <@%s>) was %s. It was not continued on its own, and the Services box stays locked for it.\n%s\n`%s resume %s` continues from step %d (a step that was cut off is checked and completed, never done twice); `%s cancel %s` gives it up.",
			op.ID, op.Title, op.Approver, op.Why, strings.Join(steps, "\n"), s.SlashCommand, op.ID, op.Next()+1, s.SlashCommand, op.ID)
		s.Log.Warn("interrupted operation", "op", op.ID, "why", op.Why)
		if _, err := postTo(op.Channel).Post(ctx, chat.Text(msg)); err != nil {
			s.Log.Error("announce interrupted operation; trying again at the next round", "op", op.ID, "err", err)
			if rerr := s.Journal.ReturnAnnouncement(ctx, op.ID); rerr != nil {
				// Nobody is told in Slack (the post just failed): the log is the trace.
				s.Log.Error("give back the announcement of an interrupted operation: it is not announced again", "op", op.ID, "err", rerr)
			}
		}
	}
}

// Journaled reports whether an approval request became a journaled
// operation (which then has its own resume path).
func (s *Operations) Journaled(ctx context.Context, reqID string) bool {
	_, err := s.Journal.ByRequest(ctx, reqID)
	return err == nil
}

func (d Deps) resume(ctx context.Context, c Call) (Outcome, error) {
	return d.Ops.Resume(ctx, c.Cmd.ID, c.Req.UserID, c.Reply)
}

func (d Deps) cancel(ctx context.Context, c Call) (Outcome, error) {
	return d.Ops.Cancel(ctx, c.Cmd.ID, c.Req.UserID, c.Reply)
}
