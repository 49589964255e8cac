// Package kv owns the bot's state as versioned items with conditional
// writes, in one of two backends: bbolt (one replica, embedded) or
// DynamoDB (several replicas in different zones sharing state). Every
// check-and-set the bot does (a lock, a decision, a journal step, a
// lease) is a write conditional on the version it read, so two replicas
// racing give one winner. The same contract tests run against both.
//
// This is the foundation of running two replicas; the bot's stores move
// onto it one by one (see the README's "Two replicas" section).
package kv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Item is one value with the version that wrote it (1 for the first).
type Item struct {
	Key     string
	Value   []byte
	Version int64
}

var (
	// ErrConflict: the item's version is not the one the write expected
	// (someone else wrote it first).
	ErrConflict = errors.New("kv: conditional write lost: the item changed")
	ErrNotFound = errors.New("kv: no such item")
)

// Store is one backend. Version 0 in Put and Delete means "must not exist".
type Store interface {
	Get(ctx context.Context, table, key string) (Item, error)
	// Put writes value if the item is still at version, and returns the
	// new version.
	Put(ctx context.Context, table, key string, value []byte, version int64) (int64, error)
	Delete(ctx context.Context, table, key string, version int64) error
	// List returns a table's items in key order.
	List(ctx context.Context, table string) ([]Item, error)
	// Last returns up to n items with the greatest keys, greatest first
	// (the newest of time-ordered keys, e.g. the audit trail).
	Last(ctx context.Context, table string, n int) ([]Item, error)
}

// Update reads the item, lets fn make the new value from the current one
// (exists false: absent), and writes it conditionally, again while others
// win the race. An error from fn is returned as is and nothing is
// written.
func Update(ctx context.Context, s Store, table, key string, fn func(cur []byte, exists bool) ([]byte, error)) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		cur, err := s.Get(ctx, table, key)
		exists := err == nil
		if err != nil && !errors.Is(err, ErrNotFound) {
			return nil, err
		}
		next, err := fn(cur.Value, exists)
		if err != nil {
			return nil, err
		}
		_, err = s.Put(ctx, table, key, next, cur.Version)
		if err == nil {
			return next, nil
		}
		if !errors.Is(err, ErrConflict) {
			return nil, err
		}
		if attempt > 100 {
			return nil, fmt.Errorf("kv: %s/%s keeps changing: %w", table, key, err)
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}

// ListJSON lists a table and decodes each item's JSON value as T.
func ListJSON[T any](ctx context.Context, s Store, table string) ([]T, error) {
	items, err := s.List(ctx, table)
	if err != nil {
		return nil, err
	}
	out := make([]T, 0, len(items))
	for _, it := range items {
		var v T
		if err := json.Unmarshal(it.Value, &v); err != nil {
			return nil, fmt.Errorf("kv: decode %s/%s: %w", table, it.Key, err)
		}
		out = append(out, v)
	}
	return out, nil
}

// Lease is a named lease with a time to live, held by one holder at a
// time: the leader of scheduled work, say.
type Lease struct {
	Store  Store
	Table  string
	Name   string
	Holder string // this replica
	TTL    time.Duration
	Now    func() time.Time
}

type leaseValue struct {
	Holder  string
	Expires time.Time
}

func (l *Lease) now() time.Time {
	if l.Now != nil {
		return l.Now()
	}
	return time.Now()
}

// Acquire takes the lease if it is free, expired or already ours, and
// returns until when it holds. A lease held by another replica is
// ErrConflict (with the holder named), and the time returned is when
// that holder's lease runs out.
func (l *Lease) Acquire(ctx context.Context) (time.Time, error) {
	cur, err := l.Store.Get(ctx, l.Table, l.Name)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return time.Time{}, err
	}
	now := l.now()
	if err == nil {
		var v leaseValue
		if derr := decodeLease(cur.Value, &v); derr != nil {
			return time.Time{}, derr
		}
		if v.Holder != l.Holder && now.Before(v.Expires) {
			return v.Expires, fmt.Errorf("lease %s is held by %s until %s: %w", l.Name, v.Holder, v.Expires.UTC().Format(time.RFC3339), ErrConflict)
		}
	}
	until := now.Add(l.TTL)
	if _, err := l.Store.Put(ctx, l.Table, l.Name, encodeLease(leaseValue{Holder: l.Holder, Expires: until}), cur.Version); err != nil {
		return time.Time{}, err
	}
	return until, nil
}

// Current says who holds the lease and until when ("" when nobody does).
func (l *Lease) Current(ctx context.Context) (string, time.Time, error) {
	cur, err := l.Store.Get(ctx, l.Table, l.Name)
	if errors.Is(err, ErrNotFound) {
		return "", time.Time{}, nil
	}
	if err != nil {
		return "", time.Time{}, err
	}
	var v leaseValue
	if err := decodeLease(cur.Value, &v); err != nil {
		return "", time.Time{}, err
	}
	if !l.now().Before(v.Expires) {
		return "", v.Expires, nil
	}
	return v.Holder, v.Expires, nil
}

// Release gives the lease up if it is still ours.
func (l *Lease) Release(ctx context.Context) error {
	cur, err := l.Store.Get(ctx, l.Table, l.Name)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	var v leaseValue
	if err := decodeLease(cur.Value, &v); err != nil || v.Holder != l.Holder {
		return err
	}
	return l.Store.Delete(ctx, l.Table, l.Name, cur.Version)
}
