package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/circlebot/circlebot/internal/kv"
)

const tableReplicas = "replicas"

// DefaultHeartbeatTTL is how long a replica not heard from is taken for
// alive: long enough for a slow DynamoDB call or two, short enough that
// an operation of a dead replica is announced within a minute.
const DefaultHeartbeatTTL = 30 * time.Second

// SharedOptions configure a store that several replicas share.
type SharedOptions struct {
	// TTL: a replica whose heartbeat is older than this is dead. It
	// renews every TTL/3, so two lost renewals in a row are survived.
	TTL  time.Duration
	Name string // how people see this replica (host name, task ID)
	// Role is RoleConsole for an operator's console: it beats (its
	// operations' locks must be told alive or dead like any replica's)
	// but it serves no Slack, runs no schedule and never leads, so it is
	// not counted as a replica.
	Role string
	Log  *slog.Logger
	Now  func() time.Time
}

// RoleConsole marks a console's heartbeat (SharedOptions.Role).
const RoleConsole = "console"

// Replica is one replica's heartbeat.
type Replica struct {
	Process string    `json:"process"`
	Name    string    `json:"name"`
	Role    string    `json:"role,omitempty"` // "" (a replica) or RoleConsole
	Started time.Time `json:"started"`
	Beat    time.Time `json:"beat"`
	Expires time.Time `json:"expires"`
}

// OpenShared opens a store that other replicas share (DynamoDB): the
// first heartbeat is written before it returns, so a replica that cannot
// write to the table does not start.
func OpenShared(ctx context.Context, st kv.Store, o SharedOptions) (*Store, error) {
	if o.TTL <= 0 {
		o.TTL = DefaultHeartbeatTTL
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	f := &fenced{Store: st}
	s := &Store{kv: kv.Bounded(f, 0), proc: newProcess(), fence: f}
	hctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.hb = &heartbeat{kv: st, opt: o, me: Replica{Process: s.proc, Name: o.Name, Role: o.Role, Started: o.Now()}, cancel: cancel}
	if err := s.hb.beat(ctx); err != nil {
		cancel()
		return nil, fmt.Errorf("store: first heartbeat to the shared state: %w", err)
	}
	s.hb.wg.Add(1)
	go s.hb.loop(hctx)
	return s, nil
}

// Replicas lists the heartbeats in the shared store (none on bbolt).
func (s *Store) Replicas(ctx context.Context) ([]Replica, error) {
	if s.hb == nil {
		return nil, nil
	}
	return kv.ListJSON[Replica](ctx, s.kv, tableReplicas)
}

type heartbeat struct {
	kv     kv.Store
	opt    SharedOptions
	cancel context.CancelFunc
	wg     sync.WaitGroup

	killed atomic.Bool // stop leaves it where it was

	mu     sync.Mutex
	me     Replica
	lastOK time.Time
	err    error
	// lost ends when the heartbeat has not landed for 3/4 of the TTL:
	// the work of this replica stops before the others take it for dead
	// (at the full TTL) and take its work over.
	lost     context.Context
	lose     context.CancelCauseFunc
	watchdog *time.Timer
}

// ErrHeartbeatLost is the cause of a work context ended because this
// replica could not renew its heartbeat.
var ErrHeartbeatLost = errors.New("this bot replica lost its heartbeat to the shared state, so another replica may take its work over")

// arm (under mu) restarts the watchdog after a heartbeat landed, and
// starts a new epoch of work if the last one was lost.
func (h *heartbeat) arm() {
	if h.lost == nil || h.lost.Err() != nil {
		// Not a caller's context: an epoch that only the watchdog ends.
		h.lost, h.lose = context.WithCancelCause(context.Background())
	}
	lose := h.lose
	if h.watchdog != nil {
		h.watchdog.Stop()
	}
	h.watchdog = time.AfterFunc(h.opt.TTL*3/4, func() {
		h.opt.Log.Error("heartbeat not renewed for 3/4 of its TTL: stopping this replica's operations before another replica takes them over", "ttl", h.opt.TTL)
		lose(ErrHeartbeatLost)
	})
}

// WorkContext is ctx, ended also when this replica's heartbeat lapses
// (with ErrHeartbeatLost as its cause): operations and backups run under
// it, so a replica cut off from the shared state stops what it does
// before another replica resumes it. On bbolt it is ctx.
func (s *Store) WorkContext(ctx context.Context) (context.Context, context.CancelFunc) {
	wctx, cancel := context.WithCancelCause(ctx)
	if s.hb == nil {
		return wctx, func() { cancel(nil) }
	}
	s.hb.mu.Lock()
	lost := s.hb.lost
	s.hb.mu.Unlock()
	stop := context.AfterFunc(lost, func() { cancel(context.Cause(lost)) })
	return wctx, func() { stop(); cancel(nil) }
}

func (h *heartbeat) beat(ctx context.Context) error {
	h.mu.Lock()
	me := h.me
	h.mu.Unlock()
	now := h.opt.Now()
	me.Beat, me.Expires = now, now.Add(h.opt.TTL)
	val, err := json.Marshal(me)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, h.opt.TTL/3)
	defer cancel()
	_, err = kv.Update(ctx, h.kv, tableReplicas, me.Process, func([]byte, bool) ([]byte, error) { return val, nil })
	h.mu.Lock()
	defer h.mu.Unlock()
	h.err = err
	if err == nil && !h.killed.Load() {
		h.lastOK = now
		h.arm()
	}
	return err
}

func (h *heartbeat) loop(ctx context.Context) {
	defer h.wg.Done()
	t := time.NewTicker(h.opt.TTL / 3)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := h.beat(ctx)
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			h.opt.Log.Error("heartbeat to the shared state failed; other replicas take this one for dead after the TTL", "ttl", h.opt.TTL, "err", err)
			failing = true
		case err == nil && failing:
			h.opt.Log.Info("heartbeat to the shared state works again")
			failing = false
		}
	}
}

// healthy: the last heartbeat landed within the TTL. Past it, other
// replicas may already have taken over this one's work.
func (h *heartbeat) healthy() error {
	if h.killed.Load() {
		return errKilled
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if age := h.opt.Now().Sub(h.lastOK); age > h.opt.TTL {
		return fmt.Errorf("no heartbeat to the shared state for %s (last error: %v)", age.Round(time.Second), h.err)
	}
	return nil
}

// alive reads another replica's heartbeat. When the table cannot be read
// the answer is "alive": taking over a live replica's work is the worse
// mistake, and the question is asked again.
func (h *heartbeat) alive(ctx context.Context, process string) bool {
	cctx, cancel := context.WithTimeout(ctx, kv.DefaultTimeout)
	defer cancel()
	it, err := h.kv.Get(cctx, tableReplicas, process)
	if errors.Is(err, kv.ErrNotFound) {
		return false
	}
	if err != nil {
		if ctx.Err() != nil {
			return true // the caller is stopping: it takes nothing over
		}
		h.opt.Log.Warn("cannot read a replica's heartbeat; taking it for alive", "process", process, "err", err)
		return true
	}
	var r Replica
	if err := json.Unmarshal(it.Value, &r); err != nil {
		return false
	}
	return h.opt.Now().Before(r.Expires)
}

// stop ends the heartbeat and deletes it: a replica that stops cleanly is
// dead at once for the others.
func (h *heartbeat) stop() {
	h.cancel()
	h.wg.Wait()
	h.mu.Lock()
	if h.watchdog != nil {
		h.watchdog.Stop()
	}
	h.mu.Unlock()
	if h.killed.Load() {
		return
	}
	// Close has no caller's context: this is the process's last word.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	it, err := h.kv.Get(ctx, tableReplicas, h.me.Process)
	if err == nil {
		err = h.kv.Delete(ctx, tableReplicas, h.me.Process, it.Version)
	}
	if err != nil && !errors.Is(err, kv.ErrNotFound) {
		h.opt.Log.Warn("remove this replica's heartbeat on close; the others take it for dead when it expires", "ttl", h.opt.TTL, "err", err)
	}
}

// Kill makes this replica behave as a killed process from here on: its
// heartbeat stops where it was (the others see it dead once it expires)
// and nothing more it does reaches the shared state. For tests and
// failure drills.
func (s *Store) Kill() {
	if s.fence != nil {
		s.fence.dead.Store(true)
	}
	if s.hb != nil {
		s.hb.killed.Store(true)
		s.hb.cancel()
		s.hb.wg.Wait()
		s.hb.mu.Lock()
		if s.hb.watchdog != nil {
			s.hb.watchdog.Stop()
		}
		s.hb.mu.Unlock()
	}
}

// errKilled is what a killed replica's writes and reads get.
var errKilled = errors.New("store: this replica was killed")

// fenced cuts a killed replica off from the shared state.
type fenced struct {
	kv.Store
	dead atomic.Bool
}

func (f *fenced) Get(ctx context.Context, table, key string) (kv.Item, error) {
	if f.dead.Load() {
		return kv.Item{}, errKilled
	}
	return f.Store.Get(ctx, table, key)
}

func (f *fenced) Put(ctx context.Context, table, key string, value []byte, version int64) (int64, error) {
	if f.dead.Load() {
		return 0, errKilled
	}
	return f.Store.Put(ctx, table, key, value, version)
}

func (f *fenced) Delete(ctx context.Context, table, key string, version int64) error {
	if f.dead.Load() {
		return errKilled
	}
	return f.Store.Delete(ctx, table, key, version)
}

func (f *fenced) List(ctx context.Context, table string) ([]kv.Item, error) {
	if f.dead.Load() {
		return nil, errKilled
	}
	return f.Store.List(ctx, table)
}

func (f *fenced) Last(ctx context.Context, table string, n int) ([]kv.Item, error) {
	if f.dead.Load() {
		return nil, errKilled
	}
	return f.Store.Last(ctx, table, n)
}
