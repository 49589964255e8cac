package engine

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/circlebot/circlebot/internal/approvals"
	"github.com/circlebot/circlebot/internal/commands"
	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/ops"
)

// Kind describes one operation kind with a typed plan P and a typed
// result R (what its steps hand on to each other and leave behind). It is
// written once, next to the operation it runs, and registered with the
// engine; nothing outside the kind knows what P and R hold.
type Kind[P, R any] struct {
	// Name is what the journal records (stable across versions: a
	// stopped operation is found again by it after an upgrade).
	Name string
	// What names it in a refusal ("another operation … (restore)").
	What string
	// Command is the slash command that requests it; Match picks this
	// kind when several share one command (a restore from EBS or S3).
	Command commands.Name
	Match   func(commands.Command) bool
	// Plan derives the typed plan from live state: when it is requested,
	// and again under the lock just before it runs.
	Plan func(ctx context.Context, cmd commands.Command) (P, error)
	// Approval is what people see and approve; its hash binds the request.
	Approval func(P) approvals.Plan
	// Title heads the progress message.
	Title func(P) string
	// Target is the lock key the operation holds from before its plan is
	// derived for the last time until it is done (or given up).
	Target func() string
	// Also are further keys the plan needs (a failover that rotates the
	// builders holds their group too).
	Also func(P) []string
	// Ready refuses a kind this bot is not configured for (nil: ready).
	Ready func() error
	// Empty says, for a plan with nothing in it, why nothing would be done
	// ("": there is work).
	Empty func(P) string
	// Preflight tries every mutating call the plan will make without
	// effect (EC2 DryRun; a read where an API has none). It runs before
	// the plan is offered for approval, its table shown with the plan,
	// and again just before the first step: a refused row means the
	// request cannot be approved, or stops before anything is touched.
	// A resume runs it again on the journaled plan, before the first
	// unfinished step; there a row counts only while a step it stands
	// for (ops.Check.Steps) is still to run. nil: no pre-flight.
	Preflight func(ctx context.Context, p P) ops.Preflight
	// Steps are the journaled steps; each must be safe to run again.
	Steps func(P, Env) []journal.Def
	// Recheck runs before a stopped operation is resumed: an error means
	// what it works from is gone and it cannot go on; changes are what
	// differs in live state from what was approved (for the steps not yet
	// done), which a second person must see and approve before it goes
	// on. nil: only the approval's age counts.
	Recheck func(ctx context.Context, p P, op Record) (changes []string, err error)
	// Summary is the last word of a finished operation.
	Summary func(p P, r R, op Record) string
	// LeftBehind names what a given-up operation made, for a person to
	// keep or remove (nil: nothing).
	LeftBehind func(p P, r R, op Record) []string
	// FreeAfter names the step after which the operation no longer needs
	// its Target: it is freed as the next step begins, and a resume or a
	// recovery past it does not take it again; the Also keys stay held to
	// the end ("": all held to the end). An EBS backup whose snapshots are
	// requested only follows them: a restore of that very backup, which
	// follows it too, may run then.
	FreeAfter string
	// Retake names a step past FreeAfter that needs the Target again, for
	// its run only: it takes the target as it begins (refused while
	// another operation holds it: the step fails, changing nothing) and
	// frees it as it ends. A replica refresh frees the Services box once
	// its image is made, so that a failover may run meanwhile, and takes
	// it back to retire the old replica: the two never act on the old
	// replica at once. A crash inside the step leaves the target held
	// under the operation until it is resumed or given up.
	Retake string
	// Hold keeps the target locked while the operation is stopped part-way
	// (a half-done restore must not race a backup); without it, a stop
	// closes the operation: nothing it left needs a resume.
	Hold bool
	// BoxLine asks, when it stops, whether the Services box is running.
	BoxLine bool

	// Recover is what recovery does with an operation of this kind that
	// a dead process (or replica) left, or that a shutdown or a lost
	// heartbeat stopped part-way (zero: Announce).
	Recover Recovery
	// Cleanup undoes what an operation of a kind that does not hold its
	// target left, when it ends without finishing: a step failed or was
	// cancelled, the bot shut down under it, or (Abandon) recovery found
	// it left by a dead process. It is not called for a Continue kind
	// that was only cut off: that one is taken up again. cut: the bot
	// stopped under it (not a failed step). It returns what it did, in
	// words, for the last word or the announcement; ctx has a deadline of
	// its own (a shutdown must still clean up).
	Cleanup func(ctx context.Context, p P, r R, op Record, cut bool) []string
	// Failed is the last word of an operation of this kind that failed
	// (nil: the engine's own "Later steps did not run …").
	Failed func(p P, r R, op Record) string
	// NewID names a new operation (nil: journal.NewID, op-…): a backup
	// is its restore point's bk-… ID, so that one ID finds both.
	NewID func(time.Time) string
	// Legacy lists work of this kind that a version of the bot before the
	// engine recorded outside the journal and left unfinished (a backup
	// record still "running"): recovery journals each as a stopped
	// operation, then recovers it like any other.
	Legacy func(ctx context.Context) ([]Legacy[P, R], error)
}

// Recovery is what the one recovery path does with a stopped operation
// of a kind.
type Recovery int

const (
	// Announce says it in its channel and runs nothing: a kind that holds
	// its target keeps it until a person resumes or gives it up; any
	// other is closed. Destructive work: a person decides.
	Announce Recovery = iota
	// Continue takes it up again at once, on whichever replica finds it,
	// from its first unfinished step: non-destructive work whose steps
	// are safe to run again (a backup following its snapshots).
	Continue
	// Abandon runs its Cleanup, closes it and says in its channel what
	// was cleaned up; it is never run again (a tarball backup whose
	// command died with the bot, a drill).
	Abandon
)

// Legacy is one piece of unfinished work an earlier version recorded
// outside the journal, as this version's kind would have journaled it.
type Legacy[P, R any] struct {
	ID        string // its ID then (bk-…, dr-…): the operation's ID now
	Title     string
	Channel   string
	Requester string
	Created   time.Time
	Plan      P
	Result    R
	// Done is how many of the kind's steps it had finished.
	Done int
}

// Env is what an operation's steps may use besides AWS: where private
// answers for the requester go.
type Env struct {
	// Requester and Channel are who asked for the operation and where it
	// reports ("scheduler" and the report channel for scheduled work).
	Requester, Channel string
	// Trigger and Reason, when the work was started with StartOptions.
	Trigger, Reason string
	// Private shows text to the requester only (a revealed secret).
	Private func(ctx context.Context, text string) error
}

// Record is a finished or stopped operation as a kind's summary sees it.
type Record struct {
	*journal.Op
	Took time.Duration
}

// kind is a Kind with its plan type erased: what the engine works with.
type kind interface {
	name() string
	what() string
	command() commands.Name
	matches(commands.Command) bool
	derive(ctx context.Context, cmd commands.Command) (derived, error)
	bind(data string) (bound, error)
	target() string
	ready() error
	hold() bool
	boxLine() bool
	validate() error
	recovery() Recovery
	freeAfter() string
	retake() string
	newID(time.Time) string
	legacy(ctx context.Context) ([]*journal.Op, error)
}

// derived is a plan made from live state, ready to approve or run.
type derived struct {
	approval approvals.Plan
	plan     string // the typed plan, encoded for the journal
	title    string
	also     []string
	empty    string
	// preflight runs the kind's pre-flight of this plan (nil: none).
	preflight func(context.Context) ops.Preflight
}

// bound is a journaled operation's plan decoded again, with what the
// engine needs of it.
type bound struct {
	steps      func(Env) []journal.Def
	recheck    func(context.Context, Record) ([]string, error)
	summary    func(Record) string
	leftBehind func(Record) []string
	// cleanup is the kind's Cleanup (nil: none); failed its Failed.
	cleanup func(ctx context.Context, rec Record, cut bool) []string
	failed  func(Record) string
	// preflight is the kind's pre-flight of the journaled plan (nil:
	// none), run again before a resume.
	preflight func(context.Context) ops.Preflight
}

func (k Kind[P, R]) name() string           { return k.Name }
func (k Kind[P, R]) what() string           { return cmp.Or(k.What, k.Name) }
func (k Kind[P, R]) command() commands.Name { return k.Command }
func (k Kind[P, R]) hold() bool             { return k.Hold }
func (k Kind[P, R]) target() string         { return k.Target() }

func (k Kind[P, R]) ready() error {
	if k.Ready == nil {
		return nil
	}
	return k.Ready()
}
func (k Kind[P, R]) boxLine() bool { return k.BoxLine }

func (k Kind[P, R]) recovery() Recovery { return k.Recover }

func (k Kind[P, R]) freeAfter() string { return k.FreeAfter }
func (k Kind[P, R]) retake() string    { return k.Retake }

func (k Kind[P, R]) newID(t time.Time) string {
	if k.NewID == nil {
		return journal.NewID(t)
	}
	return k.NewID(t)
}

// legacy journals what an earlier version left as stopped operations of
// this kind (not yet stored: the engine creates them).
func (k Kind[P, R]) legacy(ctx context.Context) ([]*journal.Op, error) {
	if k.Legacy == nil {
		return nil, nil
	}
	found, err := k.Legacy(ctx)
	if err != nil {
		return nil, err
	}
	var out []*journal.Op
	for _, l := range found {
		plan, err := json.Marshal(l.Plan)
		if err != nil {
			return nil, fmt.Errorf("encode the %s plan of %s: %w", k.Name, l.ID, err)
		}
		res, err := json.Marshal(l.Result)
		if err != nil {
			return nil, fmt.Errorf("encode what %s made: %w", l.ID, err)
		}
		now := time.Now()
		var also []string
		if k.Also != nil {
			also = k.Also(l.Plan)
		}
		op := &journal.Op{ID: l.ID, Kind: k.Name, Title: l.Title, Target: k.target(), Also: also, Command: string(k.Command), Channel: l.Channel,
			Requester: l.Requester, Plan: string(plan), Result: res, State: journal.Stopped, Unannounced: true,
			Why: "interrupted: the bot stopped (it was started by an earlier version of the bot)", Created: cmp.Or(l.Created, now), Updated: now}
		for i, d := range k.Steps(l.Plan, Env{}) {
			st := journal.Step{Name: d.Name, State: journal.StepPending}
			if i < l.Done {
				st.State = journal.StepDone
			}
			op.Steps = append(op.Steps, st)
		}
		out = append(out, op)
	}
	return out, nil
}

func (k Kind[P, R]) matches(c commands.Command) bool { return k.Match == nil || k.Match(c) }

func (k Kind[P, R]) derive(ctx context.Context, cmd commands.Command) (derived, error) {
	if err := k.ready(); err != nil {
		return derived{}, err
	}
	p, err := k.Plan(ctx, cmd)
	if err != nil {
		return derived{}, err
	}
	enc, err := json.Marshal(p)
	if err != nil {
		return derived{}, fmt.Errorf("encode the %s plan: %w", k.Name, err)
	}
	d := derived{approval: k.Approval(p), plan: string(enc), title: k.Title(p)}
	if k.Also != nil {
		d.also = k.Also(p)
	}
	if k.Empty != nil {
		d.empty = k.Empty(p)
	}
	if k.Preflight != nil {
		d.preflight = func(ctx context.Context) ops.Preflight { return k.Preflight(ctx, p) }
	}
	return d, nil
}

func (k Kind[P, R]) bind(data string) (bound, error) {
	var p P
	if err := json.Unmarshal([]byte(data), &p); err != nil {
		return bound{}, fmt.Errorf("decode the %s plan: %w", k.Name, err)
	}
	b := bound{
		steps:   func(env Env) []journal.Def { return k.Steps(p, env) },
		recheck: func(context.Context, Record) ([]string, error) { return nil, nil },
		summary: func(rec Record) string {
			r, err := ops.ResultOf[R](rec.Op)
			if err != nil {
				return "Finished; its result could not be read: " + err.Error()
			}
			return k.Summary(p, r, rec)
		},
		leftBehind: func(Record) []string { return nil },
	}
	if k.Recheck != nil {
		b.recheck = func(ctx context.Context, r Record) ([]string, error) { return k.Recheck(ctx, p, r) }
	}
	if k.Preflight != nil {
		b.preflight = func(ctx context.Context) ops.Preflight { return k.Preflight(ctx, p) }
	}
	if k.Cleanup != nil {
		b.cleanup = func(ctx context.Context, rec Record, cut bool) []string {
			r, err := ops.ResultOf[R](rec.Op)
			if err != nil {
				return []string{"nothing could be cleaned up: its result could not be read: " + err.Error()}
			}
			return k.Cleanup(ctx, p, r, rec, cut)
		}
	}
	if k.Failed != nil {
		b.failed = func(rec Record) string {
			r, err := ops.ResultOf[R](rec.Op)
			if err != nil {
				return ""
			}
			return k.Failed(p, r, rec)
		}
	}
	if k.LeftBehind != nil {
		b.leftBehind = func(rec Record) []string {
			r, err := ops.ResultOf[R](rec.Op)
			if err != nil {
				return []string{"(its result could not be read: " + err.Error() + ")"}
			}
			return k.LeftBehind(p, r, rec)
		}
	}
	return b, nil
}

// validate fails start-up for a kind with a missing piece, rather than an
// operation at 3 a.m.
func (k Kind[P, R]) validate() error {
	var missing []string
	for what, ok := range map[string]bool{
		"Name": k.Name != "", "Command": k.Command != "", "Plan": k.Plan != nil, "Approval": k.Approval != nil,
		"Title": k.Title != nil, "Target": k.Target != nil, "Steps": k.Steps != nil, "Summary": k.Summary != nil,
	} {
		if !ok {
			missing = append(missing, what)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("engine: kind %q lacks %v", k.Name, missing)
	}
	switch {
	case k.Recover != Announce && k.Hold:
		// Held for a person's resume, or taken up (or given up) on its
		// own: not both.
		return fmt.Errorf("engine: kind %q holds its target for a resume and recovers on its own", k.Name)
	case k.Retake != "" && k.FreeAfter == "":
		return fmt.Errorf("engine: kind %q retakes a target it never frees", k.Name)
	case k.Recover == Abandon && k.Cleanup == nil:
		return fmt.Errorf("engine: kind %q is abandoned at recovery but has no Cleanup", k.Name)
	}
	return nil
}

// Registry is the one table of operation kinds.
type Registry struct {
	kinds  map[string]kind
	byCmd  map[commands.Name][]kind
	errors []error
}

// Register adds a kind to r. A doubled name or a kind with a missing
// piece is reported by Check.
func Register[P, R any](r *Registry, k Kind[P, R]) {
	if r.kinds == nil {
		r.kinds, r.byCmd = map[string]kind{}, map[commands.Name][]kind{}
	}
	if err := k.validate(); err != nil {
		r.errors = append(r.errors, err)
		return
	}
	if _, dup := r.kinds[k.Name]; dup {
		r.errors = append(r.errors, fmt.Errorf("engine: kind %q registered twice", k.Name))
		return
	}
	r.kinds[k.Name] = k
	r.byCmd[k.Command] = append(r.byCmd[k.Command], k)
}

// Check fails when a kind is incomplete or doubled, or when a command of
// the destructive class has no kind to run it.
func (r *Registry) Check() error {
	errs := append([]error(nil), r.errors...)
	for _, s := range commands.Specs() {
		if s.Class == commands.ClassDestructive && len(r.byCmd[s.Name]) == 0 {
			errs = append(errs, fmt.Errorf("engine: no operation kind runs %q", s.Name))
		}
	}
	return errors.Join(errs...)
}

// Commands lists the commands the registry runs that a second person
// approves (the destructive class); the others (a backup, a drill) are
// started with Start.
func (r *Registry) Commands() []commands.Name {
	destructive := map[commands.Name]bool{}
	for _, s := range commands.Specs() {
		destructive[s.Name] = s.Class == commands.ClassDestructive
	}
	var out []commands.Name
	for c := range r.byCmd {
		if destructive[c] {
			out = append(out, c)
		}
	}
	return out
}

func (r *Registry) forCommand(cmd commands.Command) (kind, error) {
	for _, k := range r.byCmd[cmd.Name] {
		if k.matches(cmd) {
			return k, nil
		}
	}
	return nil, fmt.Errorf("engine: no operation kind runs %q", cmd.Text())
}
