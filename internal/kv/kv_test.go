package kv

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	bolt "go.etcd.io/bbolt"

	"github.com/circlebot/circlebot/internal/testenv/motoserver"
)

func TestMain(m *testing.M) { motoserver.Main(m) }

// backends returns each implementation, fresh, for the same contract.
func backends(tb testing.TB) map[string]Store {
	tb.Helper()
	db, err := bolt.Open(filepath.Join(tb.TempDir(), "kv.db"), 0o600, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	moto := motoserver.ForTest(tb)
	d := Dynamo{API: dynamodb.NewFromConfig(motoserver.AWSConfig(motoserver.Serialized(tb, moto.URL))), Table: "circlebot-state"}
	if err := d.EnsureTable(context.Background()); err != nil {
		tb.Fatal(err)
	}
	return map[string]Store{"bbolt": Bolt{DB: db}, "dynamodb": d}
}

func TestContract(t *testing.T) {
	ctx := context.Background()
	for name, s := range backends(t) {
		t.Run(name, func(t *testing.T) {
			if _, err := s.Get(ctx, "locks", "box"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("get of nothing: %v", err)
			}
			v, err := s.Put(ctx, "locks", "box", []byte("op-1"), 0)
			if err != nil || v != 1 {
				t.Fatalf("first put: %d %v", v, err)
			}
			if _, err := s.Put(ctx, "locks", "box", []byte("op-2"), 0); !errors.Is(err, ErrConflict) {
				t.Fatalf("a second create must conflict: %v", err)
			}
			if _, err := s.Put(ctx, "locks", "box", []byte("op-2"), 7); !errors.Is(err, ErrConflict) {
				t.Fatalf("a stale version must conflict: %v", err)
			}
			it, err := s.Get(ctx, "locks", "box")
			if err != nil || string(it.Value) != "op-1" || it.Version != 1 {
				t.Fatalf("get: %+v %v", it, err)
			}
			if v, err := s.Put(ctx, "locks", "box", []byte("op-2"), 1); err != nil || v != 2 {
				t.Fatalf("put at the right version: %d %v", v, err)
			}
			if err := s.Delete(ctx, "locks", "box", 1); !errors.Is(err, ErrConflict) {
				t.Fatalf("delete at a stale version: %v", err)
			}
			if err := s.Delete(ctx, "locks", "box", 2); err != nil {
				t.Fatalf("delete: %v", err)
			}
			for _, k := range []string{"b", "a", "c"} {
				if _, err := s.Put(ctx, "journal", k, []byte(k), 0); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := s.Put(ctx, "other", "z", []byte("z"), 0); err != nil {
				t.Fatal(err)
			}
			items, err := s.List(ctx, "journal")
			if err != nil || len(items) != 3 || items[0].Key != "a" || items[2].Key != "c" {
				t.Fatalf("list: %+v %v", items, err)
			}
			last, err := s.Last(ctx, "journal", 2)
			if err != nil || len(last) != 2 || last[0].Key != "c" || last[1].Key != "b" {
				t.Fatalf("last 2: %+v %v", last, err)
			}
		})
	}
}

// Twenty writers racing on one item: every increment lands once.
func TestUpdateRaces(t *testing.T) {
	ctx := context.Background()
	for name, s := range backends(t) {
		t.Run(name, func(t *testing.T) {
			var wg sync.WaitGroup
			for range 20 {
				wg.Go(func() {
					_, err := Update(ctx, s, "counters", "n", func(cur []byte, exists bool) ([]byte, error) {
						n := 0
						if exists {
							n, _ = strconv.Atoi(string(cur))
						}
						return []byte(strconv.Itoa(n + 1)), nil
					})
					if err != nil {
						t.Error(err)
					}
				})
			}
			wg.Wait()
			if it, err := s.Get(ctx, "counters", "n"); err != nil || string(it.Value) != "20" {
				t.Fatalf("counter = %q (%v), want 20", it.Value, err)
			}
		})
	}
}

// A lease has one holder; the other replica takes it only after it
// expires, and the old holder cannot take it back then.
func TestLeaseHandsOverAfterTTL(t *testing.T) {
	ctx := context.Background()
	for name, s := range backends(t) {
		t.Run(name, func(t *testing.T) {
			var mu sync.Mutex
			now := time.Date(2026, 11, 28, 5, 0, 0, 0, time.UTC)
			clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
			a := &Lease{Store: s, Table: "leases", Name: "scheduler", Holder: "replica-a", TTL: 30 * time.Second, Now: clock}
			b := &Lease{Store: s, Table: "leases", Name: "scheduler", Holder: "replica-b", TTL: 30 * time.Second, Now: clock}
			if _, err := a.Acquire(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := b.Acquire(ctx); !errors.Is(err, ErrConflict) {
				t.Fatalf("b took a held lease: %v", err)
			}
			mu.Lock()
			now = now.Add(20 * time.Second)
			mu.Unlock()
			if _, err := a.Acquire(ctx); err != nil { // renew
				t.Fatal(err)
			}
			mu.Lock()
			now = now.Add(29 * time.Second)
			mu.Unlock()
			if _, err := b.Acquire(ctx); !errors.Is(err, ErrConflict) {
				t.Fatalf("b took the lease before the renewed TTL ran out: %v", err)
			}
			mu.Lock()
			now = now.Add(2 * time.Second) // a died: no renewal
			mu.Unlock()
			if _, err := b.Acquire(ctx); err != nil {
				t.Fatalf("b could not take an expired lease: %v", err)
			}
			if _, err := a.Acquire(ctx); !errors.Is(err, ErrConflict) {
				t.Fatalf("a took back a lease b holds: %v", err)
			}
			if err := a.Release(ctx); err != nil {
				t.Fatal(err)
			}
			if it, err := s.Get(ctx, "leases", "scheduler"); err != nil || !strings.Contains(string(it.Value), "replica-b") {
				t.Fatalf("a's release dropped b's lease: %q %v", it.Value, err)
			}
		})
	}
}

// Lock acquire+release and journal append, both backends side by side:
//
//	go test -run '^$' -bench . ./internal/kv/
func BenchmarkLockAcquireRelease(b *testing.B) {
	ctx := context.Background()
	for name, s := range backends(b) {
		b.Run(name, func(b *testing.B) {
			l := &Lease{Store: s, Table: "locks", Name: "box/circleci_services", Holder: "op-bench", TTL: time.Minute}
			for b.Loop() {
				if _, err := l.Acquire(ctx); err != nil {
					b.Fatal(err)
				}
				if err := l.Release(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkJournalAppend(b *testing.B) {
	ctx := context.Background()
	step := []byte(`{"name":"Launch the new Services box","state":"done","detail":"i-0123456789abcdef0 (m5.2xlarge) at 10.0.1.10"}`)
	for name, s := range backends(b) {
		b.Run(name, func(b *testing.B) {
			i := 0
			for b.Loop() {
				if _, err := s.Put(ctx, "journal", fmt.Sprintf("op-%09d", i), step, 0); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}
