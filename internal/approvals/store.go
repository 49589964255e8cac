package approvals

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

var bucket = []byte("approvals")

var ErrNotFound = errors.New("no such request")

// Store keeps requests in the bot's bbolt file. Every state change is one
// Update that reads, checks and writes, so two clicks racing give exactly
// one decision and one execution.
type Store struct{ DB *bolt.DB }

func (s Store) Create(r Request) error {
	val, err := encode(r)
	if err != nil {
		return err
	}
	return s.DB.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucket)
		if err != nil {
			return err
		}
		if b.Get([]byte(r.ID)) != nil {
			return fmt.Errorf("request %s exists", r.ID)
		}
		return b.Put([]byte(r.ID), val)
	})
}

func (s Store) Get(id string) (Request, error) {
	var r Request
	err := s.DB.View(func(tx *bolt.Tx) error {
		var err error
		r, err = load(tx, id)
		return err
	})
	return r, err
}

func load(tx *bolt.Tx, id string) (Request, error) {
	var r Request
	b := tx.Bucket(bucket)
	if b == nil {
		return r, ErrNotFound
	}
	v := b.Get([]byte(id))
	if v == nil {
		return r, ErrNotFound
	}
	return r, json.Unmarshal(v, &r)
}

// update applies fn to the stored request atomically.
func (s Store) update(id string, fn func(*Request) error) (Request, error) {
	var out Request
	err := s.DB.Update(func(tx *bolt.Tx) error {
		r, err := load(tx, id)
		if err != nil {
			return err
		}
		if err := fn(&r); err != nil {
			out = r
			return err
		}
		val, err := encode(r)
		if err != nil {
			return err
		}
		out = r
		return tx.Bucket(bucket).Put([]byte(id), val)
	})
	return out, err
}

// Decide records user's approval or denial if the rules allow it; a
// *Refusal says why not. An expired request is marked so on the way.
func (s Store) Decide(id, user string, isApprover, approve bool, now time.Time) (Request, error) {
	var refusal *Refusal
	r, err := s.update(id, func(r *Request) error {
		if Expire(*r, now) {
			r.State = Expired
		}
		if refusal = CheckDecision(*r, user, isApprover, approve, now); refusal != nil {
			if r.State == Expired {
				return nil // keep the expiry, report the refusal
			}
			return refusal
		}
		r.Decider, r.Decided = user, now
		r.State = Denied
		if approve {
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
func (s Store) Begin(id, process string) (Request, error) {
	return s.update(id, func(r *Request) error {
		if r.State != Approved {
			return refuse("request `%s` is %s, not waiting to run", r.ID, r.State)
		}
		r.State, r.Process = Executing, process
		return nil
	})
}

// Finish records the end of an execution (Done, Failed or Refused).
func (s Store) Finish(id string, st State, note string) (Request, error) {
	return s.update(id, func(r *Request) error {
		r.State, r.Note = st, note
		return nil
	})
}

// SetMessage remembers the request message, to update it on decision.
func (s Store) SetMessage(id, ts string) error {
	_, err := s.update(id, func(r *Request) error { r.MessageTS = ts; return nil })
	return err
}

// All lists requests (for start-up checks and history).
func (s Store) All() ([]Request, error) {
	var out []Request
	err := s.DB.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if b == nil {
			return nil
		}
		return b.ForEach(func(_, v []byte) error {
			var r Request
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			out = append(out, r)
			return nil
		})
	})
	return out, err
}
