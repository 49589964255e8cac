// Package store owns the bot's durable state: the audit trail, locks and
// records, in a bbolt file (one replica) or in a DynamoDB table shared by
// several replicas, each of which then says it is alive with a heartbeat.
package store

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/circlebot/circlebot/internal/kv"
)

const tableAudit = "audit"

// Store is safe for concurrent use; every check-and-set is a conditional
// write, on either backend.
type Store struct {
	db   *bolt.DB // nil when shared
	kv   kv.Store
	seq  atomic.Uint64
	proc string
	hb   *heartbeat // nil on bbolt: only this process can be alive
	// fence cuts a killed replica off (Kill); nil on bbolt.
	fence *fenced
}

// Open opens (creating if needed) dir/circlebot.db. A second bot on the same
// file waits up to a few seconds and then fails with a clear error, instead
// of hanging forever on bbolt's file lock.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store: create data_dir %s: %w", dir, err)
	}
	path := filepath.Join(dir, "circlebot.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 3 * time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("store: %s is locked by another process (is another bot running with the same data_dir?)", path)
		}
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	return &Store{db: db, kv: kv.Bounded(kv.Bolt{DB: db}, 0), proc: newProcess()}, nil
}

func newProcess() string {
	var tok [8]byte
	_, _ = rand.Read(tok[:])
	return hex.EncodeToString(tok[:])
}

// Process identifies this opening of the store: locks and journal entries
// carry it, so after a crash the next start can tell what was left behind.
func (s *Store) Process() string { return s.proc }

// Alive reports whether the bot process that wrote a lock or a journal
// entry may still be working on it. On bbolt only this process can be:
// the file lock keeps any other out, so anything another process left is
// from a process that is gone. A store shared by replicas answers from
// each process's heartbeat.
func (s *Store) Alive(ctx context.Context, process string) bool {
	if process == s.proc {
		return true
	}
	if s.hb == nil {
		return false
	}
	return s.hb.alive(ctx, process)
}

// Shared reports whether other replicas share this store.
func (s *Store) Shared() bool { return s.hb != nil }

// Close stops the heartbeat and removes it (a replica that stopped
// cleanly is gone at once, not after a TTL), then closes the file.
func (s *Store) Close() error {
	if s.hb != nil {
		s.hb.stop()
	}
	if s.db != nil {
		return s.db.Close()
	}
	return nil
}

// Ping reports whether the state is reachable (for /healthz): the file is
// open, or the shared table answers and this replica's heartbeat is
// current.
func (s *Store) Ping() error {
	if s.hb != nil {
		return s.hb.healthy()
	}
	return s.db.View(func(*bolt.Tx) error { return nil })
}

// DB exposes the handle to packages that keep their own buckets in the same
// file, so one fsync'd file holds all state.
func (s *Store) DB() *bolt.DB { return s.db }

// KV is the same file as versioned items with conditional writes, where
// approvals and the operation journal live (and, with DynamoDB behind the
// same interface, what replicas will share). Every call through it has a
// deadline: the caller's, or kv.DefaultTimeout (see kv.Bounded).
func (s *Store) KV() kv.Store { return s.kv }

// AuditRecord is one command, or one refusal, as it happened.
type AuditRecord struct {
	At      time.Time `json:"at"`
	UserID  string    `json:"user_id"`
	Channel string    `json:"channel"`
	Source  string    `json:"source"`  // slash, button, console, scheduler
	Command string    `json:"command"` // canonical text, or the raw text when it did not parse
	Outcome string    `json:"outcome"` // ok, refused, usage, failed, unavailable
	Detail  string    `json:"detail,omitempty"`
}

// Audit appends a record. Keys sort by time, then by a per-process sequence
// so records within one nanosecond keep their order.
func (s *Store) Audit(ctx context.Context, r AuditRecord) error {
	if r.At.IsZero() {
		r.At = time.Now()
	}
	val, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("store: encode audit record: %w", err)
	}
	// Hex of big-endian time and sequence: sorts as bytes and as text,
	// in bbolt and in DynamoDB alike.
	key := make([]byte, 16)
	binary.BigEndian.PutUint64(key, uint64(r.At.UnixNano()))
	binary.BigEndian.PutUint64(key[8:], s.seq.Add(1))
	_, err = s.KV().Put(ctx, tableAudit, hex.EncodeToString(key)+"-"+s.proc[:8], val, 0)
	if err != nil {
		return fmt.Errorf("store: write audit record: %w", err)
	}
	return nil
}

// History returns up to n audit records, newest first.
func (s *Store) History(ctx context.Context, n int) ([]AuditRecord, error) {
	items, err := s.KV().Last(ctx, tableAudit, n)
	if err != nil {
		return nil, fmt.Errorf("store: read history: %w", err)
	}
	out := make([]AuditRecord, 0, len(items))
	for _, it := range items {
		var r AuditRecord
		if err := json.Unmarshal(it.Value, &r); err != nil {
			return nil, fmt.Errorf("decode audit record %s: %w", it.Key, err)
		}
		out = append(out, r)
	}
	return out, nil
}
