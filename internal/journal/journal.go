// Package journal owns the record of a multi-step operation (a restore, a
// failover, a rotation, a prune, …): its approved facts, each step's state
// written before and after the step runs, the values steps hand to later
// steps, and who holds the target. After a crash the record says exactly
// where the operation stopped, so it can be resumed without repeating a
// finished step, or given up with a list of what was left behind.
package journal

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/circlebot/circlebot/internal/kv"
)

// State of an operation.
type State string

const (
	Running   State = "running"   // a bot process is executing it
	Stopped   State = "stopped"   // cancelled, failed or interrupted: resumable
	Done      State = "done"      // every step finished
	Abandoned State = "abandoned" // given up with cancel; the target is free
	Failed    State = "failed"    // stopped and closed: its kind holds nothing for a resume
)

// StepState of one step.
type StepState string

const (
	StepPending     StepState = "pending"
	StepRunning     StepState = "running"
	StepDone        StepState = "done"
	StepFailed      StepState = "failed"
	StepInterrupted StepState = "interrupted" // the bot stopped while it ran
)

type Step struct {
	Name     string    `json:"name"`
	State    StepState `json:"state"`
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
	Detail   string    `json:"detail,omitempty"`
	Error    string    `json:"error,omitempty"`
	Attempts int       `json:"attempts,omitempty"`
}

// Op is one journaled operation.
type Op struct {
	ID     string `json:"id"`
	Kind   string `json:"kind"`   // the engine's kind, e.g. "restore-ebs"
	Title  string `json:"title"`  // for the progress message
	Target string `json:"target"` // the lock key it holds, e.g. box/circleci_services
	// Also are further lock keys it holds (a failover that rotates the
	// builders holds builders/<group> too).
	Also      []string `json:"also,omitempty"`
	RequestID string   `json:"request_id,omitempty"`
	// Trigger and Reason: how work that needs no approval was asked for
	// when not from Slack or the schedule ("api"), and why.
	Trigger   string            `json:"trigger,omitempty"`
	Reason    string            `json:"reason,omitempty"`
	Command   string            `json:"command"`
	Channel   string            `json:"channel"`
	Requester string            `json:"requester"`
	Approver  string            `json:"approver,omitempty"`
	Facts     map[string]string `json:"facts"` // the approved plan's facts
	// Plan is the kind's typed plan, encoded: what the steps are made from
	// again on a resume, on any replica.
	Plan string `json:"plan,omitempty"`
	// Result is what the steps hand to later ones (image ID, instance
	// ID…), the kind's typed result encoded: a step that is run again finds
	// what it made the first time here or by its tags in AWS.
	Result json.RawMessage `json:"result,omitempty"`
	// Data is where versions before typed results kept the same, and the
	// kind and plan before the engine: read, never written.
	Data      map[string]string `json:"data,omitempty"`
	Steps     []Step            `json:"steps"`
	State     State             `json:"state"`
	Why       string            `json:"why,omitempty"` // why it stopped
	CancelBy  string            `json:"cancel_by,omitempty"`
	Process   string            `json:"process,omitempty"`
	MessageTS string            `json:"message_ts,omitempty"`
	// Unannounced: interrupted by a process's death and not yet said in
	// its channel (a failed post is tried again).
	Unannounced bool `json:"unannounced,omitempty"`
	// Save, set by Run for the running step, makes a result durable at
	// once: what a step must not lose if the bot dies mid-step (the ID of a
	// command it started on the box).
	Save func(result json.RawMessage) error `json:"-"`

	Created  time.Time `json:"created"`
	Updated  time.Time `json:"updated"`
	Finished time.Time `json:"finished,omitzero"`
}

// NewID makes op-YYYYMMDD-HHMMSS-xxxx (UTC): sortable and short to type.
func NewID(t time.Time) string {
	var r [2]byte
	_, _ = rand.Read(r[:])
	return "op-" + t.UTC().Format("20060102-150405") + "-" + hex.EncodeToString(r[:])
}

// Next is the index of the first step not done, or len(Steps).
func (o *Op) Next() int {
	for i, s := range o.Steps {
		if s.State != StepDone {
			return i
		}
	}
	return len(o.Steps)
}

// Targets are every lock key the operation holds.
func (o *Op) Targets() []string { return append([]string{o.Target}, o.Also...) }

// Open reports whether the operation still holds its target.
func (o *Op) Open() bool { return o.State == Running || o.State == Stopped }

// Elapsed is the time from the first step's start to the end (or now).
func (o *Op) Elapsed(now time.Time) time.Duration {
	end := now
	if !o.Finished.IsZero() {
		end = o.Finished
	}
	if len(o.Steps) == 0 || o.Steps[0].Started.IsZero() {
		return 0
	}
	return end.Sub(o.Steps[0].Started)
}

var (
	ErrNotFound = errors.New("no such operation")
	// ErrCancelled stops Run at a step boundary after a cancel.
	ErrCancelled = errors.New("cancelled")
	// ErrTakenOver stops Run when the operation is no longer this run's:
	// another replica took it for dead (its heartbeat lapsed) and
	// stopped or resumed it. Nothing more is written for it here.
	ErrTakenOver = errors.New("taken over by another bot replica")
)

// why says why ctx ended, for the journal: a shutdown, or the cause it
// was given (e.g. this replica lost its heartbeat).
func why(ctx context.Context) string {
	if c := context.Cause(ctx); c != nil && !errors.Is(c, context.Canceled) && !errors.Is(c, context.DeadlineExceeded) {
		return c.Error()
	}
	return "the bot is shutting down"
}

// owned fails when the op is no longer run by the process that began
// this run.
func owned(o *Op, process string) error {
	if o.State != Running || o.Process != process {
		return fmt.Errorf("operation %s is %s under process %s: %w", o.ID, o.State, o.Process, ErrTakenOver)
	}
	return nil
}

// Store keeps operations in the bot's state store (bbolt, or DynamoDB
// shared by replicas); each change is a read and a write conditional on
// what was read.
type Store struct{ KV kv.Store }

const table = "operations"

func (s Store) Create(ctx context.Context, o *Op) error {
	val, err := json.Marshal(o)
	if err != nil {
		return err
	}
	_, err = s.KV.Put(ctx, table, o.ID, val, 0)
	if errors.Is(err, kv.ErrConflict) {
		return fmt.Errorf("operation %s exists", o.ID)
	}
	return err
}

func (s Store) Get(ctx context.Context, id string) (*Op, error) {
	it, err := s.KV.Get(ctx, table, id)
	if errors.Is(err, kv.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	return decode(id, it.Value)
}

func decode(id string, v []byte) (*Op, error) {
	var o Op
	if err := json.Unmarshal(v, &o); err != nil {
		return nil, fmt.Errorf("decode operation %s: %w", id, err)
	}
	return &o, nil
}

// ByRequest finds the operation an approval request started.
func (s Store) ByRequest(ctx context.Context, reqID string) (*Op, error) {
	all, err := s.All(ctx)
	if err != nil {
		return nil, err
	}
	for _, o := range all {
		if o.RequestID == reqID {
			return o, nil
		}
	}
	return nil, ErrNotFound
}

// Update applies fn to the stored operation atomically and returns the
// result; an error from fn leaves the record unchanged. fn may run more
// than once when another writer wins a race: it must only change the op.
func (s Store) Update(ctx context.Context, id string, fn func(*Op) error) (*Op, error) {
	var out *Op
	_, err := kv.Update(ctx, s.KV, table, id, func(cur []byte, exists bool) ([]byte, error) {
		if !exists {
			return nil, ErrNotFound
		}
		o, err := decode(id, cur)
		if err != nil {
			return nil, err
		}
		err = fn(o)
		out = o
		if err != nil {
			return nil, err
		}
		o.Updated = time.Now()
		return json.Marshal(o)
	})
	return out, err
}

// All lists every operation, oldest first (IDs sort by time).
func (s Store) All(ctx context.Context) ([]*Op, error) {
	return kv.ListJSON[*Op](ctx, s.KV, table)
}

// recordTimeout bounds a write of what already happened (see settled).
const recordTimeout = 10 * time.Second

// settled is the context of a write that records what already happened
// (a step that ended, a run that stopped) once ctx may have ended: the
// record must land all the same, or the operation stays Running under a
// live process and nobody can resume it. The write is still conditional
// on this run owning the operation, so a replica that was taken over
// writes nothing.
func settled(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
}

// Claim makes process the runner of a stopped (or new) operation, once: of
// two `resume`s, one gets the operation and the other an error.
func (s Store) Claim(ctx context.Context, id, process string) (*Op, error) {
	return s.Update(ctx, id, func(o *Op) error {
		switch o.State {
		case Stopped:
		case Running:
			// Whoever runs it (this process too): one runner at a time.
			return fmt.Errorf("operation `%s` is running (step %d of %d)", o.ID, o.Next()+1, len(o.Steps))
		default:
			return fmt.Errorf("operation `%s` is %s; it cannot be resumed", o.ID, o.State)
		}
		o.State, o.Process, o.Why, o.CancelBy, o.Unannounced = Running, process, "", "", false
		return nil
	})
}

// RequestCancel asks a running operation to stop at its next step
// boundary, or gives up a stopped one. It reports which happened.
func (s Store) RequestCancel(ctx context.Context, id, user string) (op *Op, abandoned bool, err error) {
	op, err = s.Update(ctx, id, func(o *Op) error {
		switch o.State {
		case Running:
			o.CancelBy = user
		case Stopped:
			o.State, o.CancelBy, o.Finished = Abandoned, user, time.Now()
			abandoned = true
		default:
			return fmt.Errorf("operation `%s` is already %s", o.ID, o.State)
		}
		return nil
	})
	return op, abandoned, err
}

// Progress is what Run reports to (a progress stream).
type Progress interface {
	Begin(i int, detail string)
	Done(i int, detail string)
	Fail(i int, err error)
	Log(line string)
}

// StepFunc runs one step. It must be safe to run again after a crash part
// way through: it looks for what it made before (op.Data, tags, client
// tokens) instead of making it twice. It may set op.Data entries; they
// are saved with the step's end.
type StepFunc func(ctx context.Context, op *Op, p Progress) (detail string, err error)

type Def struct {
	Name string
	Run  StepFunc
}

// StepError is the failure of one step, for the summary.
type StepError struct {
	Step string
	Err  error
}

func (e *StepError) Error() string { return e.Step + ": " + e.Err.Error() }
func (e *StepError) Unwrap() error { return e.Err }

// Run executes the operation's steps from the first unfinished one. Each
// step is recorded as running before it starts and as done (with the data
// it produced) after; a cancel is honoured between steps. On any stop the
// operation is left Stopped with the reason, ready for resume or cancel.
//
// ctx (the work context) bounds the steps and the writes that start one;
// what records a step's end or a stop is written even after ctx ended
// (see settled).
func (s Store) Run(ctx context.Context, id, process string, defs []Def, p Progress) (*Op, error) {
	// Read even if ctx has ended: a run that cannot start is recorded as
	// stopped at its first boundary, not left Running.
	gctx, cancel := settled(ctx)
	op, err := s.Get(gctx, id)
	cancel()
	if err != nil {
		return nil, err
	}
	if len(op.Steps) != len(defs) {
		return s.stop(ctx, id, process, fmt.Sprintf("it has %d steps recorded and this version of the bot runs %d", len(op.Steps), len(defs)),
			fmt.Errorf("operation %s has %d steps recorded, this version runs %d", id, len(op.Steps), len(defs)))
	}
	for i := range defs {
		if op.Steps[i].State == StepDone {
			p.Done(i, op.Steps[i].Detail)
		}
	}
	// The caller says whose run this is: if the operation changed hands
	// before this read, the first ownership check stops it.
	owner := process
	for i := op.Next(); i < len(defs); i = op.Next() {
		// The step boundary: a cancel and a shutdown are honoured here.
		if ctx.Err() != nil {
			return s.stop(ctx, op.ID, owner, fmt.Sprintf("interrupted before step %d (%s): %s", i+1, defs[i].Name, why(ctx)), ctx.Err())
		}
		op, err = s.Update(ctx, id, func(o *Op) error {
			if err := owned(o, owner); err != nil {
				return err
			}
			if o.CancelBy != "" {
				return ErrCancelled
			}
			o.Steps[i].State, o.Steps[i].Started, o.Steps[i].Error = StepRunning, time.Now(), ""
			o.Steps[i].Attempts++
			return nil
		})
		if errors.Is(err, ErrCancelled) {
			return s.stop(ctx, id, owner, fmt.Sprintf("cancelled by <@%s> before step %d (%s)", op.CancelBy, i+1, defs[i].Name), ErrCancelled)
		}
		if err != nil && ctx.Err() != nil {
			// ctx ended as the step was about to start: a stop at the
			// boundary, not a run left Running under a live process.
			return s.stop(ctx, id, owner, fmt.Sprintf("interrupted before step %d (%s): %s", i+1, defs[i].Name, why(ctx)), ctx.Err())
		}
		if err != nil {
			// Not started, and not to stay Running under a live process:
			// stopped at the boundary (if the store lets us say so).
			return s.stop(ctx, id, owner, fmt.Sprintf("step %d (%s) could not be journaled: %v", i+1, defs[i].Name, err), fmt.Errorf("journal step %s of %s: %w", defs[i].Name, id, err))
		}
		p.Begin(i, "")
		work := &Op{}
		*work = *op
		work.Result = slices.Clone(op.Result)
		var mu sync.Mutex
		saved := work.Result
		work.Save = func(b json.RawMessage) error {
			mu.Lock()
			saved = slices.Clone(b)
			mu.Unlock()
			_, err := s.Update(ctx, id, func(o *Op) error {
				if err := owned(o, owner); err != nil {
					return err
				}
				o.Result = b
				return nil
			})
			return err
		}
		detail, stepErr := runStep(ctx, defs[i], work, p)
		data := work.Result
		if bytes.Equal(data, op.Result) {
			// The step handed no result back (it only saved, or panicked
			// first): keep what it saved last.
			mu.Lock()
			data = saved
			mu.Unlock()
		}
		if stepErr != nil {
			if ctx.Err() != nil {
				p.Fail(i, fmt.Errorf("interrupted: %w", stepErr))
				return s.stopStep(ctx, id, owner, i, StepInterrupted, data, stepErr, fmt.Sprintf("interrupted during step %d (%s): %s", i+1, defs[i].Name, why(ctx)))
			}
			p.Fail(i, stepErr)
			return s.stopStep(ctx, id, owner, i, StepFailed, data, stepErr, fmt.Sprintf("step %d (%s) failed: %v", i+1, defs[i].Name, stepErr))
		}
		// The step happened: its end is recorded even if ctx ended as it
		// finished.
		sctx, cancel := settled(ctx)
		op, err = s.Update(sctx, id, func(o *Op) error {
			if err := owned(o, owner); err != nil {
				return err
			}
			o.Result = data
			o.Steps[i].State, o.Steps[i].Finished, o.Steps[i].Detail = StepDone, time.Now(), detail
			if o.Next() == len(o.Steps) {
				o.State, o.Finished = Done, time.Now()
			}
			return nil
		})
		cancel()
		if err != nil {
			return op, fmt.Errorf("journal step %s of %s: %w", defs[i].Name, id, err)
		}
		p.Done(i, detail)
	}
	return op, nil
}

// PanicError is a step that panicked: it fails like any other failed step
// (recorded, the operation stopped, its target kept as its kind says),
// instead of leaving the operation "running" under a live process.
type PanicError struct {
	Value any
	Stack []byte // for the log, never for a channel
}

// Error says what happened without the panic's value (logged with the
// stack): it may carry internals, and this text reaches the channel.
func (e *PanicError) Error() string {
	return "the step panicked (a bug in the bot: the details are in its log)"
}

func runStep(ctx context.Context, d Def, op *Op, p Progress) (detail string, err error) {
	defer func() {
		if v := recover(); v != nil {
			detail, err = "", &PanicError{Value: v, Stack: debug.Stack()}
		}
	}()
	return d.Run(ctx, op, p)
}

// stop records that the run stopped, even after ctx ended (see settled).
func (s Store) stop(ctx context.Context, id, owner, why string, cause error) (*Op, error) {
	ctx, cancel := settled(ctx)
	defer cancel()
	op, err := s.Update(ctx, id, func(o *Op) error {
		if err := owned(o, owner); err != nil {
			return err
		}
		o.State, o.Why = Stopped, why
		return nil
	})
	if err != nil {
		return op, err
	}
	return op, cause
}

// stopStep records how a step ended, even after ctx ended (see settled).
func (s Store) stopStep(ctx context.Context, id, owner string, i int, st StepState, data json.RawMessage, cause error, why string) (*Op, error) {
	ctx, cancel := settled(ctx)
	defer cancel()
	op, err := s.Update(ctx, id, func(o *Op) error {
		if err := owned(o, owner); err != nil {
			return err
		}
		// What the step made before failing is kept: a resume finds it.
		o.Result = data
		o.Steps[i].State, o.Steps[i].Finished, o.Steps[i].Error = st, time.Now(), cause.Error()
		o.State, o.Why = Stopped, why
		return nil
	})
	if err != nil {
		return op, err
	}
	return op, &StepError{Step: op.Steps[i].Name, Err: cause}
}

// MarkInterrupted turns operations left Running by a process that is not
// alive into Stopped ones, naming the step that was running. It returns
// them.
func (s Store) MarkInterrupted(ctx context.Context, alive func(ctx context.Context, process string) bool) ([]*Op, error) {
	all, err := s.All(ctx)
	if err != nil {
		return nil, err
	}
	var out []*Op
	for _, o := range all {
		if o.State != Running || alive(ctx, o.Process) {
			continue
		}
		op, err := s.Update(ctx, o.ID, func(o *Op) error {
			if o.State != Running || alive(ctx, o.Process) {
				return errors.New("changed")
			}
			i := o.Next()
			o.State, o.Unannounced = Stopped, true
			if i < len(o.Steps) && o.Steps[i].State == StepRunning {
				o.Steps[i].State = StepInterrupted
				o.Why = fmt.Sprintf("interrupted during step %d (%s): the bot stopped", i+1, o.Steps[i].Name)
			} else {
				o.Why = "interrupted between steps: the bot stopped"
			}
			return nil
		})
		if err != nil {
			continue
		}
		out = append(out, op)
	}
	return out, nil
}

// TakeAnnouncement claims saying an interrupted operation in its channel:
// of the replicas that try, one gets it. A failed post gives it back
// (ReturnAnnouncement) for the next round.
func (s Store) TakeAnnouncement(ctx context.Context, id string) (*Op, error) {
	return s.Update(ctx, id, func(o *Op) error {
		if !o.Unannounced {
			return errors.New("announced already")
		}
		o.Unannounced = false
		return nil
	})
}

// ReturnAnnouncement marks the operation unannounced again. An operation
// that is no longer stopped (resumed or given up meanwhile) has nothing
// left to announce: that is not an error.
func (s Store) ReturnAnnouncement(ctx context.Context, id string) error {
	_, err := s.Update(ctx, id, func(o *Op) error {
		if o.State != Stopped && o.State != Failed {
			return errNotStopped
		}
		o.Unannounced = true
		return nil
	})
	if errors.Is(err, errNotStopped) {
		return nil
	}
	return err
}

var errNotStopped = errors.New("no longer stopped")
