package store

import (
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
		if err := s.Audit(AuditRecord{At: at, UserID: "U1", Command: fmt.Sprint("cmd", i), Outcome: "ok"}); err != nil {
			t.Fatal(err)
		}
	}
	h, err := s.History(3)
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
			if err := s.Audit(AuditRecord{UserID: "U1", Command: fmt.Sprint(i)}); err != nil {
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
	h, _ := s.History(100)
	if len(h) != 20 {
		t.Fatalf("after reopen: %d records", len(h))
	}
}

func TestSecondOpenFailsClearly(t *testing.T) {
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
