package approvals

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/circlebot/circlebot/internal/kv"
)

const table = "approvals"

var ErrNotFound = errors.New("no such request")

// Store keeps requests in the bot's state store (bbolt, or DynamoDB
// shared by replicas). Every state change is a read and a write
// conditional on what was read, so two clicks racing (on one replica or
// two) give exactly one decision and one execution.
type Store struct{ KV kv.Store }

func (s Store) Create(ctx context.Context, r Request) error {
	val, err := encode(r)
	if err != nil {
		return err
	}
	_, err = s.KV.Put(ctx, table, r.ID, val, 0)
	if errors.Is(err, kv.ErrConflict) {
		return fmt.Errorf("request %s exists", r.ID)
	}
	return err
}

func (s Store) Get(ctx context.Context, id string) (Request, error) {
	var r Request
	it, err := s.KV.Get(ctx, table, id)
	if errors.Is(err, kv.ErrNotFound) {
		return r, ErrNotFound
	}
	if err != nil {
		return r, err
	}
	return r, json.Unmarshal(it.Value, &r)
}

// update applies fn to the stored request atomically; an error from fn
// leaves the record unchanged.
func (s Store) update(ctx context.Context, id string, fn func(*Request) error) (Request, error) {
	var out Request
	_, err := kv.Update(ctx, s.KV, table, id, func(cur []byte, exists bool) ([]byte, error) {
		if !exists {
			return nil, ErrNotFound
		}
		var r Request
		if err := json.Unmarshal(cur, &r); err != nil {
			return nil, err
		}
		err := fn(&r)
		out = r
		if err != nil {
			return nil, err
		}
		return encode(r)
	})
	return out, err
}

// Decide records a decision if the rules allow it; a *Refusal says why
// not. A decision given outside the request's channels changes nothing;
// otherwise an expired request is marked so on the way.
func (s Store) Decide(ctx context.Context, id string, d Decision, now time.Time) (Request, error) {
	var refusal *Refusal
	r, err := s.update(ctx, id, func(r *Request) error {
		if refusal = CheckChannel(*r, d.Channel); refusal != nil {
			return refusal
		}
		if Expire(*r, now) {
			r.State = Expired
		}
		if refusal = CheckDecision(*r, d, now); refusal != nil {
			if r.State == Expired {
				return nil // keep the expiry, report the refusal
			}
			return refusal
		}
		r.Decider, r.Decided = d.User, now
		r.State = Denied
		if d.Approve {
			r.State = Approved
		}
		return nil
	})
	if refusal != nil {
		return r, refusal
	}
	return r, err
}

// Begin moves an approved request to executing, once: the caller that gets
// nil is the one that runs it.
func (s Store) Begin(ctx context.Context, id, process string) (Request, error) {
	return s.update(ctx, id, func(r *Request) error {
		if r.State != Approved {
			return refuse("request `%s` is %s, not waiting to run", r.ID, r.State)
		}
		r.State, r.Process = Executing, process
		return nil
	})
}

// Finish records the end of an execution (Done, Failed or Refused).
func (s Store) Finish(ctx context.Context, id string, st State, note string) (Request, error) {
	return s.update(ctx, id, func(r *Request) error {
		r.State, r.Note = st, note
		return nil
	})
}

// Interrupt finishes a request that process was executing when it died,
// only if it still is: of replicas noticing the same death, one does it.
func (s Store) Interrupt(ctx context.Context, id, process, note string) (Request, error) {
	return s.update(ctx, id, func(r *Request) error {
		if r.State != Executing || r.Process != process {
			return fmt.Errorf("request %s is %s: %w", id, r.State, kv.ErrConflict)
		}
		r.State, r.Note = Failed, note
		return nil
	})
}

// SetMessage records that the request's message is posted (ts in its
// channel, and its copies elsewhere) with its full plan, and opens it for
// decisions. It is conditional on the request still being Posting: one
// that was given up as unposted stays so.
func (s Store) SetMessage(ctx context.Context, id, ts string, copies []Copy) (Request, error) {
	return s.update(ctx, id, func(r *Request) error {
		if r.State != Posting {
			return fmt.Errorf("request %s is %s, not being posted: %w", id, r.State, kv.ErrConflict)
		}
		r.State, r.MessageTS, r.Copies = Pending, ts, copies
		return nil
	})
}

// Void gives up a request whose message could not be posted: it can never
// be decided. A request already opened for decisions (SetMessage wrote,
// but its answer was lost) is voided too, as long as nobody decided it.
func (s Store) Void(ctx context.Context, id, why string) (Request, error) {
	return s.update(ctx, id, func(r *Request) error {
		if r.State != Posting && r.State != Pending {
			return fmt.Errorf("request %s is %s: %w", id, r.State, kv.ErrConflict)
		}
		r.State, r.Note = Unposted, why
		return nil
	})
}

// Abandon voids a request still Posting (only): the bot that was posting
// it stopped before it could, so it will never be opened. A request that
// was opened in the meantime is left as it is.
func (s Store) Abandon(ctx context.Context, id, why string) (Request, error) {
	return s.update(ctx, id, func(r *Request) error {
		if r.State != Posting {
			return fmt.Errorf("request %s is %s, not being posted: %w", id, r.State, kv.ErrConflict)
		}
		r.State, r.Note = Unposted, why
		return nil
	})
}

// All lists requests (for start-up checks and history).
func (s Store) All(ctx context.Context) ([]Request, error) {
	return kv.ListJSON[Request](ctx, s.KV, table)
}
