package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

var bucketLocks = []byte("locks")

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
}

// HeldError is returned when the lock is taken; it names the holder.
type HeldError struct{ Holder Lock }

func (e *HeldError) Error() string {
	return fmt.Sprintf("%s is locked by %s (%s, requested by %s, since %s)", e.Holder.Key, e.Holder.OpID, e.Holder.What, e.Holder.Requester, e.Holder.Since.UTC().Format(time.RFC3339))
}

// TryLock takes key in one bbolt transaction (check and put together), or
// returns a *HeldError naming the holder. The returned func releases it,
// only if it is still ours.
func (s *Store) TryLock(l Lock) (unlock func() error, err error) {
	if l.Since.IsZero() {
		l.Since = time.Now()
	}
	val, err := json.Marshal(l)
	if err != nil {
		return nil, fmt.Errorf("store: encode lock: %w", err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketLocks)
		if err != nil {
			return err
		}
		if cur := b.Get([]byte(l.Key)); cur != nil {
			var h Lock
			if err := json.Unmarshal(cur, &h); err != nil {
				return fmt.Errorf("decode lock %s: %w", l.Key, err)
			}
			return &HeldError{Holder: h}
		}
		return b.Put([]byte(l.Key), val)
	})
	var he *HeldError
	if errors.As(err, &he) {
		return nil, he
	}
	if err != nil {
		return nil, fmt.Errorf("store: lock %s: %w", l.Key, err)
	}
	return func() error { return s.Unlock(l.Key, l.OpID) }, nil
}

// Unlock releases key if opID holds it.
func (s *Store) Unlock(key, opID string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketLocks)
		if b == nil {
			return nil
		}
		cur := b.Get([]byte(key))
		if cur == nil {
			return nil
		}
		var h Lock
		if err := json.Unmarshal(cur, &h); err != nil || h.OpID != opID {
			return nil
		}
		return b.Delete([]byte(key))
	})
}

// Locks lists every held lock.
func (s *Store) Locks() ([]Lock, error) {
	var out []Lock
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketLocks)
		if b == nil {
			return nil
		}
		return b.ForEach(func(_, v []byte) error {
			var l Lock
			if err := json.Unmarshal(v, &l); err != nil {
				return err
			}
			out = append(out, l)
			return nil
		})
	})
	return out, err
}

// Put stores v as JSON under bucket/key, durably, before returning.
func (s *Store) Put(bucket, key string, v any) error {
	val, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("store: encode %s/%s: %w", bucket, key, err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte(bucket))
		if err != nil {
			return err
		}
		return b.Put([]byte(key), val)
	})
	if err != nil {
		return fmt.Errorf("store: write %s/%s: %w", bucket, key, err)
	}
	return nil
}

// ErrNotFound is returned by Get for a missing key.
var ErrNotFound = errors.New("not found")

func (s *Store) Get(bucket, key string, v any) error {
	return s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(bucket))
		if b == nil {
			return ErrNotFound
		}
		val := b.Get([]byte(key))
		if val == nil {
			return ErrNotFound
		}
		return json.Unmarshal(val, v)
	})
}

// Each calls fn for every value in bucket, in key order.
func (s *Store) Each(bucket string, fn func(key string, val []byte) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(bucket))
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error { return fn(string(k), v) })
	})
}

// Adopt takes key for l.OpID whether it is free or already held by that
// operation (under another, dead process): a stopped operation keeps its
// target across restarts. Held by another operation is a *HeldError.
func (s *Store) Adopt(l Lock) error {
	if l.Since.IsZero() {
		l.Since = time.Now()
	}
	val, err := json.Marshal(l)
	if err != nil {
		return fmt.Errorf("store: encode lock: %w", err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketLocks)
		if err != nil {
			return err
		}
		if cur := b.Get([]byte(l.Key)); cur != nil {
			var h Lock
			if err := json.Unmarshal(cur, &h); err != nil {
				return fmt.Errorf("decode lock %s: %w", l.Key, err)
			}
			if h.OpID != l.OpID {
				return &HeldError{Holder: h}
			}
		}
		return b.Put([]byte(l.Key), val)
	})
	var he *HeldError
	if errors.As(err, &he) {
		return he
	}
	if err != nil {
		return fmt.Errorf("store: lock %s: %w", l.Key, err)
	}
	return nil
}
