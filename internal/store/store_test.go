package store

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestAuditHistoryNewestFirst(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	at := time.Unix(1_790_000_000, 0)
	for i := range 5 {
		if err := s.Audit(t.Context(), AuditRecord{At: at, UserID: "U1", Command: fmt.Sprint("cmd", i), Outcome: "ok"}); err != nil {
			t.Fatal(err)
		}
	}
	h, err := s.History(t.Context(), 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != 3 || h[0].Command != "cmd4" || h[2].Command != "cmd2" {
		t.Fatalf("history: %+v", h)
	}
}

func TestAuditConcurrentAndDurable(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			if err := s.Audit(t.Context(), AuditRecord{UserID: "U1", Command: fmt.Sprint(i)}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	s.Close()
	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	h, _ := s.History(t.Context(), 100)
	if len(h) != 20 {
		t.Fatalf("after reopen: %d records", len(h))
	}
}

// Parallel: the second Open waits out bbolt's 3 s lock timeout, idle.
func TestSecondOpenFailsClearly(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = Open(dir)
	if err == nil || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("got %v", err)
	}
}

// Twenty operations racing for the Services box: one holds it, the
// others are told who; only the holder releases it; a dead process's
// lock is adopted by the same operation only.
func TestLocks(t *testing.T) {
	st, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var wg sync.WaitGroup
	var mu sync.Mutex
	won, held := 0, 0
	for i := range 20 {
		wg.Go(func() {
			_, err := st.TryLock(t.Context(), Lock{Key: "box/x", OpID: fmt.Sprintf("op-%d", i), What: "restore"})
			var he *HeldError
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				won++
			case errors.As(err, &he) && he.Holder.OpID != "":
				held++
			default:
				t.Errorf("lock: %v", err)
			}
		})
	}
	wg.Wait()
	if won != 1 || held != 19 {
		t.Fatalf("%d won, %d told the holder; want 1 and 19", won, held)
	}
	locks, _ := st.Locks(t.Context())
	owner := locks[0].OpID
	if err := st.Unlock(t.Context(), "box/x", "op-nobody"); err != nil {
		t.Fatal(err)
	}
	if l, _ := st.Locks(t.Context()); len(l) != 1 {
		t.Fatal("a non-holder released the lock")
	}
	if err := st.Adopt(t.Context(), Lock{Key: "box/x", OpID: "op-other"}); err == nil {
		t.Fatal("another operation adopted a held lock")
	}
	if err := st.Adopt(t.Context(), Lock{Key: "box/x", OpID: owner, Process: "new"}); err != nil {
		t.Fatalf("the holder could not adopt its own lock: %v", err)
	}
	if err := st.Unlock(t.Context(), "box/x", owner); err != nil {
		t.Fatal(err)
	}
	if l, _ := st.Locks(t.Context()); len(l) != 0 {
		t.Fatalf("locks after release: %+v", l)
	}
}
