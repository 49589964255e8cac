package kv

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// seen records the deadline of every call that reaches the backend.
type seen struct {
	Store
	mu        sync.Mutex
	calls     int
	deadlines []time.Time
}

func (s *seen) note(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	d, _ := ctx.Deadline()
	s.deadlines = append(s.deadlines, d)
}

func (s *seen) Get(ctx context.Context, table, key string) (Item, error) {
	s.note(ctx)
	return s.Store.Get(ctx, table, key)
}

func (s *seen) Put(ctx context.Context, table, key string, value []byte, version int64) (int64, error) {
	s.note(ctx)
	return s.Store.Put(ctx, table, key, value, version)
}

func (s *seen) Delete(ctx context.Context, table, key string, version int64) error {
	s.note(ctx)
	return s.Store.Delete(ctx, table, key, version)
}

func (s *seen) List(ctx context.Context, table string) ([]Item, error) {
	s.note(ctx)
	return s.Store.List(ctx, table)
}

func (s *seen) Last(ctx context.Context, table string, n int) ([]Item, error) {
	s.note(ctx)
	return s.Store.Last(ctx, table, n)
}

func TestBoundedGivesEveryCallADeadline(t *testing.T) {
	for name, backend := range backends(t) {
		t.Run(name, func(t *testing.T) {
			rec := &seen{Store: backend}
			s := Bounded(rec, 0)
			start := time.Now()
			// No deadline: the default one is applied, to every call.
			if _, err := s.Put(context.Background(), "t", "k", []byte("v"), 0); err != nil {
				t.Fatal(err)
			}
			if _, err := Update(context.Background(), s, "t", "k", func([]byte, bool) ([]byte, error) { return []byte("w"), nil }); err != nil {
				t.Fatal(err)
			}
			if _, err := s.List(context.Background(), "t"); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Last(context.Background(), "t", 1); err != nil {
				t.Fatal(err)
			}
			it, err := s.Get(context.Background(), "t", "k")
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Delete(context.Background(), "t", "k", it.Version); err != nil {
				t.Fatal(err)
			}
			// A caller's own deadline is kept.
			mine, cancel := context.WithTimeout(context.Background(), time.Hour)
			defer cancel()
			want, _ := mine.Deadline()
			if _, err := s.List(mine, "t"); err != nil {
				t.Fatal(err)
			}
			rec.mu.Lock()
			defer rec.mu.Unlock()
			if rec.calls != 8 { // Update is a Get and a Put
				t.Fatalf("%d calls reached the backend, want 8", rec.calls)
			}
			for i, d := range rec.deadlines[:7] {
				if d.IsZero() || d.Before(start.Add(DefaultTimeout-time.Second)) || d.After(time.Now().Add(DefaultTimeout)) {
					t.Errorf("call %d: deadline %v, want about %s from the call", i, d, DefaultTimeout)
				}
			}
			if got := rec.deadlines[7]; !got.Equal(want) {
				t.Errorf("the caller's deadline was replaced: %v, want %v", got, want)
			}
		})
	}
}

func TestBoundedRefusesAnEndedContext(t *testing.T) {
	for name, backend := range backends(t) {
		t.Run(name, func(t *testing.T) {
			rec := &seen{Store: backend}
			s := Bounded(rec, time.Second)
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			if _, err := s.Put(ctx, "t", "k", []byte("v"), 0); !errors.Is(err, context.Canceled) {
				t.Fatalf("put with a cancelled context: %v", err)
			}
			if _, err := Update(ctx, s, "t", "k", func([]byte, bool) ([]byte, error) { return []byte("v"), nil }); !errors.Is(err, context.Canceled) {
				t.Fatalf("update with a cancelled context: %v", err)
			}
			if err := s.Delete(ctx, "t", "k", 1); !errors.Is(err, context.Canceled) {
				t.Fatalf("delete with a cancelled context: %v", err)
			}
			if _, err := s.Get(ctx, "t", "k"); !errors.Is(err, context.Canceled) {
				t.Fatalf("get with a cancelled context: %v", err)
			}
			if rec.calls != 0 {
				t.Fatalf("%d calls reached the backend with a cancelled context", rec.calls)
			}
			// Nothing was written.
			if _, err := s.Get(context.Background(), "t", "k"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("after cancelled writes: %v, want not found", err)
			}
		})
	}
}
