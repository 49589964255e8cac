package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/circlebot/circlebot/internal/kv"
)

const tableLocks = "locks"

// Lock says who holds a target (e.g. "box/circleci_services").
type Lock struct {
	Key       string    `json:"key"`
	OpID      string    `json:"op_id"`
	What      string    `json:"what"` // "EBS backup", for the refusal message
	Requester string    `json:"requester"`
	Since     time.Time `json:"since"`
	// Process identifies the bot process that took the lock; a lock left by
	// another process of this single-replica store is stale after a crash.
	Process string `json:"process"`
	// Replica names the bot replica that holds it, when replicas share
	// the store (people see which one is working).
	Replica string `json:"replica,omitempty"`
}

// HeldError is returned when the lock is taken; it names the holder.
type HeldError struct{ Holder Lock }

func (e *HeldError) Error() string {
	return fmt.Sprintf("%s is locked by %s (%s, requested by %s, since %s)", e.Holder.Key, e.Holder.OpID, e.Holder.What, e.Holder.Requester, e.Holder.Since.UTC().Format(time.RFC3339))
}

// TryLock takes key with a write conditional on its absence (one winner
// however many race, on one replica or several sharing the state store),
// or returns a *HeldError naming the holder. The returned func releases
// it, only if it is still ours.
//
// The release does not end with ctx: it is called when the work ctx
// bounded is over, often because ctx ended (a shutdown, a lost heartbeat),
// and a lock left behind refuses every new operation on the target until
// the next start. It keeps ctx's values and has its own deadline.
func (s *Store) TryLock(ctx context.Context, l Lock) (unlock func() error, err error) {
	if l.Replica == "" && s.hb != nil {
		l.Replica = s.hb.opt.Name
	}
	if l.Since.IsZero() {
		l.Since = time.Now()
	}
	val, err := json.Marshal(l)
	if err != nil {
		return nil, fmt.Errorf("store: encode lock: %w", err)
	}
	release := context.WithoutCancel(ctx)
	for attempt := 0; attempt < 3; attempt++ {
		_, err = s.KV().Put(ctx, tableLocks, l.Key, val, 0)
		if err == nil {
			return func() error {
				ctx, cancel := context.WithTimeout(release, kv.DefaultTimeout)
				defer cancel()
				return s.Unlock(ctx, l.Key, l.OpID)
			}, nil
		}
		if !errors.Is(err, kv.ErrConflict) {
			return nil, fmt.Errorf("store: lock %s: %w", l.Key, err)
		}
		cur, gerr := s.KV().Get(ctx, tableLocks, l.Key)
		if errors.Is(gerr, kv.ErrNotFound) {
			continue // released meanwhile: try again
		}
		if gerr != nil {
			return nil, fmt.Errorf("store: read lock %s: %w", l.Key, gerr)
		}
		var h Lock
		if err := json.Unmarshal(cur.Value, &h); err != nil {
			return nil, fmt.Errorf("decode lock %s: %w", l.Key, err)
		}
		return nil, &HeldError{Holder: h}
	}
	return nil, fmt.Errorf("store: lock %s keeps changing hands: %w", l.Key, err)
}

// Unlock releases key if opID holds it.
func (s *Store) Unlock(ctx context.Context, key, opID string) error {
	return s.unlock(ctx, key, opID, "")
}

// UnlockOwn releases key if opID holds it under this process: not once
// another process adopted the operation's lock (it took the operation
// over). The check and the delete are one conditional write.
func (s *Store) UnlockOwn(ctx context.Context, key, opID string) error {
	return s.unlock(ctx, key, opID, s.Process())
}

func (s *Store) unlock(ctx context.Context, key, opID, process string) error {
	cur, err := s.KV().Get(ctx, tableLocks, key)
	if errors.Is(err, kv.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("store: read lock %s: %w", key, err)
	}
	var h Lock
	if err := json.Unmarshal(cur.Value, &h); err != nil || h.OpID != opID || (process != "" && h.Process != process) {
		return nil
	}
	err = s.KV().Delete(ctx, tableLocks, key, cur.Version)
	if errors.Is(err, kv.ErrConflict) {
		return nil // changed hands meanwhile: not ours to release
	}
	return err
}

// Locks lists every held lock.
func (s *Store) Locks(ctx context.Context) ([]Lock, error) {
	return kv.ListJSON[Lock](ctx, s.KV(), tableLocks)
}

// Put stores v as JSON under bucket/key, durably, before returning
// (last writer wins: these are records one operation owns).
func (s *Store) Put(ctx context.Context, bucket, key string, v any) error {
	val, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("store: encode %s/%s: %w", bucket, key, err)
	}
	_, err = kv.Update(ctx, s.KV(), bucket, key, func([]byte, bool) ([]byte, error) { return val, nil })
	if err != nil {
		return fmt.Errorf("store: write %s/%s: %w", bucket, key, err)
	}
	return nil
}

// ErrNotFound is returned by Get for a missing key.
var ErrNotFound = errors.New("not found")

func (s *Store) Get(ctx context.Context, bucket, key string, v any) error {
	it, err := s.KV().Get(ctx, bucket, key)
	if errors.Is(err, kv.ErrNotFound) {
		return ErrNotFound
	}
	if err != nil {
		return err
	}
	return json.Unmarshal(it.Value, v)
}

// Each calls fn for every value in bucket, in key order.
func (s *Store) Each(ctx context.Context, bucket string, fn func(key string, val []byte) error) error {
	items, err := s.KV().List(ctx, bucket)
	if err != nil {
		return err
	}
	for _, it := range items {
		if err := fn(it.Key, it.Value); err != nil {
			return err
		}
	}
	return nil
}

var errSame = errors.New("already held so")

// Adopt takes key for l.OpID whether it is free or already held by that
// operation (under another, dead process): a stopped operation keeps its
// target across restarts. Held by another operation is a *HeldError.
func (s *Store) Adopt(ctx context.Context, l Lock) error {
	if l.Replica == "" && s.hb != nil {
		l.Replica = s.hb.opt.Name
	}
	if l.Since.IsZero() {
		l.Since = time.Now()
	}
	val, err := json.Marshal(l)
	if err != nil {
		return fmt.Errorf("store: encode lock: %w", err)
	}
	var held *HeldError
	_, err = kv.Update(ctx, s.KV(), tableLocks, l.Key, func(cur []byte, exists bool) ([]byte, error) {
		if exists {
			var h Lock
			if err := json.Unmarshal(cur, &h); err != nil {
				return nil, fmt.Errorf("decode lock %s: %w", l.Key, err)
			}
			if h.OpID != l.OpID {
				held = &HeldError{Holder: h}
				return nil, held
			}
			if h.Process == l.Process {
				return nil, errSame
			}
		}
		return val, nil
	})
	if held != nil {
		return held
	}
	if errors.Is(err, errSame) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("store: lock %s: %w", l.Key, err)
	}
	return nil
}
