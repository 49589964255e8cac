package store

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/circlebot/circlebot/internal/kv"
)

// deadlines notes whether each call that reaches the backend has one.
type deadlines struct {
	kv.Store
	mu      sync.Mutex
	without int
	calls   int
}

func (d *deadlines) note(ctx context.Context) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls++
	if _, ok := ctx.Deadline(); !ok {
		d.without++
	}
}

func (d *deadlines) Get(ctx context.Context, table, key string) (kv.Item, error) {
	d.note(ctx)
	return d.Store.Get(ctx, table, key)
}

func (d *deadlines) Put(ctx context.Context, table, key string, value []byte, version int64) (int64, error) {
	d.note(ctx)
	return d.Store.Put(ctx, table, key, value, version)
}

func (d *deadlines) Delete(ctx context.Context, table, key string, version int64) error {
	d.note(ctx)
	return d.Store.Delete(ctx, table, key, version)
}

func (d *deadlines) List(ctx context.Context, table string) ([]kv.Item, error) {
	d.note(ctx)
	return d.Store.List(ctx, table)
}

func (d *deadlines) Last(ctx context.Context, table string, n int) ([]kv.Item, error) {
	d.note(ctx)
	return d.Store.Last(ctx, table, n)
}

// openNoting opens a store whose backend notes the calls it gets, behind
// the same guard Open puts in front of it.
func openNoting(t *testing.T) (*Store, *deadlines) {
	t.Helper()
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	d := &deadlines{Store: kv.Bolt{DB: s.db}}
	s.kv = kv.Bounded(d, 0)
	return s, d
}

// A state call made without a deadline gets one before it reaches the
// backend: none can hang for as long as the connection does.
func TestStateCallsWithoutADeadlineGetOne(t *testing.T) {
	s, d := openNoting(t)
	ctx := context.Background()
	if err := s.Audit(ctx, AuditRecord{UserID: "U1", Command: "status", Outcome: "ok"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.History(ctx, 5); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, "records", "k", map[string]string{"a": "b"}); err != nil {
		t.Fatal(err)
	}
	var v map[string]string
	if err := s.Get(ctx, "records", "k", &v); err != nil {
		t.Fatal(err)
	}
	if err := s.Each(ctx, "records", func(string, []byte) error { return nil }); err != nil {
		t.Fatal(err)
	}
	unlock, err := s.TryLock(ctx, Lock{Key: "box/x", OpID: "op-1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Locks(ctx); err != nil {
		t.Fatal(err)
	}
	if err := unlock(); err != nil {
		t.Fatal(err)
	}
	if err := s.Adopt(ctx, Lock{Key: "box/x", OpID: "op-1", Process: "p"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Unlock(ctx, "box/x", "op-1"); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.calls == 0 || d.without != 0 {
		t.Fatalf("%d of %d state calls reached the backend without a deadline", d.without, d.calls)
	}
}

// A call on an ended context returns its error and writes nothing.
func TestStateCallsOnACancelledContextWriteNothing(t *testing.T) {
	s, d := openNoting(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Audit(ctx, AuditRecord{UserID: "U1", Command: "status", Outcome: "ok"}); !errors.Is(err, context.Canceled) {
		t.Errorf("audit: %v", err)
	}
	if err := s.Put(ctx, "records", "k", "v"); !errors.Is(err, context.Canceled) {
		t.Errorf("put: %v", err)
	}
	if _, err := s.TryLock(ctx, Lock{Key: "box/x", OpID: "op-1"}); !errors.Is(err, context.Canceled) {
		t.Errorf("lock: %v", err)
	}
	if err := s.Adopt(ctx, Lock{Key: "box/x", OpID: "op-1"}); !errors.Is(err, context.Canceled) {
		t.Errorf("adopt: %v", err)
	}
	d.mu.Lock()
	calls := d.calls
	d.mu.Unlock()
	if calls != 0 {
		t.Fatalf("%d calls reached the backend on a cancelled context", calls)
	}
	live := context.Background()
	if h, err := s.History(live, 5); err != nil || len(h) != 0 {
		t.Errorf("history after cancelled writes: %+v %v", h, err)
	}
	if l, err := s.Locks(live); err != nil || len(l) != 0 {
		t.Errorf("locks after cancelled writes: %+v %v", l, err)
	}
	var v string
	if err := s.Get(live, "records", "k", &v); !errors.Is(err, ErrNotFound) {
		t.Errorf("record after a cancelled put: %q %v", v, err)
	}
}

// A lock taken under a context that then ends (the bot shutting down
// mid-operation) is still released by its unlock.
func TestUnlockOutlivesTheLocksContext(t *testing.T) {
	s, _ := openNoting(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	unlock, err := s.TryLock(ctx, Lock{Key: "box/x", OpID: "op-1"})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := unlock(); err != nil {
		t.Fatalf("release after the context ended: %v", err)
	}
	if l, err := s.Locks(context.Background()); err != nil || len(l) != 0 {
		t.Fatalf("locks after release: %+v %v", l, err)
	}
}
