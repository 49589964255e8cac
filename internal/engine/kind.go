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
	// nil: no pre-flight.
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
	// Hold keeps the target locked while the operation is stopped part-way
	// (a half-done restore must not race a backup); without it, a stop
	// closes the operation: nothing it left needs a resume.
	Hold bool
	// BoxLine asks, when it stops, whether the Services box is running.
	BoxLine bool
}

// Env is what an operation's steps may use besides AWS: where private
// answers for the requester go.
type Env struct {
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

// Commands lists the commands the registry runs.
func (r *Registry) Commands() []commands.Name {
	var out []commands.Name
	for c := range r.byCmd {
		out = append(out, c)
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
