// Package leader owns which replica runs the bot's own recurring work
// (schedules, outage detection, watching for dead replicas): the holder
// of one lease in the shared store, renewed while it lives.
//
// A holder counts itself leader only until a margin before its lease can
// expire, measured from before the write that renewed it, so a replica
// that can no longer renew stops before another can take over: two
// leaders never overlap (as long as the replicas' clocks agree to within
// the margin; NTP, or Amazon Time Sync, keeps them far closer).
package leader

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/circlebot/circlebot/internal/kv"
)

// Elector keeps trying to hold the lease and says whether it does.
type Elector struct {
	Lease kv.Lease
	Log   *slog.Logger
	// OnElected runs (in its own goroutine) each time this replica becomes
	// the leader, with a context that ends when it stops being one.
	OnElected func(ctx context.Context)
	Now       func() time.Time

	killed atomic.Bool
	wg     sync.WaitGroup // OnElected goroutines
	mu     sync.Mutex
	stop   context.CancelFunc
	base   context.Context
	until  time.Time
	cancel context.CancelFunc
	held   bool
}

func (e *Elector) now() time.Time {
	if e.Now != nil {
		return e.Now()
	}
	return time.Now()
}

func (e *Elector) margin() time.Duration { return e.Lease.TTL / 5 }

// Leader reports whether this replica may start leader-only work now.
func (e *Elector) Leader() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.now().Before(e.until)
}

// Run renews (or tries to take) the lease every TTL/3 until ctx ends,
// then gives it up so another replica takes over at once. A replica
// waiting for a held lease also tries the moment it runs out, so a
// crashed leader is replaced within the TTL of its last renewal.
func (e *Elector) Run(ctx context.Context) {
	if e.killed.Load() {
		return
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	// What was started as leader has ended when Run returns.
	defer e.wg.Wait()
	e.mu.Lock()
	e.base, e.stop = ctx, stop
	e.mu.Unlock()
	for {
		wait := e.round(ctx)
		select {
		case <-ctx.Done():
			e.step(false)
			if e.killed.Load() {
				return
			}
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if err := e.Lease.Release(rctx); err != nil {
				e.Log.Warn("release leadership", "err", err)
			}
			return
		case <-time.After(wait):
		}
	}
}

// Kill stops renewing without giving the lease up, as a crashed replica
// does: the others wait for it to expire (tests, drills).
func (e *Elector) Kill() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.killed.Store(true)
	e.until = time.Time{}
	if e.stop != nil {
		e.stop()
	}
}

func (e *Elector) round(ctx context.Context) (next time.Duration) {
	next = e.Lease.TTL / 3
	start := e.now()
	actx, cancel := context.WithTimeout(ctx, e.Lease.TTL/3)
	until, err := e.Lease.Acquire(actx)
	cancel()
	switch {
	case e.killed.Load():
		return next
	case err == nil:
		e.mu.Lock()
		if e.killed.Load() {
			e.mu.Unlock()
			return next
		}
		e.until = start.Add(e.Lease.TTL - e.margin())
		e.mu.Unlock()
		e.step(true)
	case errors.Is(err, kv.ErrConflict):
		e.step(false)
		if left := until.Sub(e.now()) + 10*time.Millisecond; left < next {
			next = max(left, 10*time.Millisecond)
		}
	default:
		// Unknown outcome (timeout, network): keep what was held until it
		// runs out; the next round asks again.
		if ctx.Err() == nil {
			e.Log.Warn("renew leadership", "err", err)
		}
		if !e.Leader() {
			e.step(false)
		}
	}
	return next
}

// step notes a change of leadership and starts or ends the leader's
// context.
func (e *Elector) step(leading bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if leading == e.held {
		return
	}
	e.held = leading
	if !leading {
		// Given up, lost or killed: no leader-only work starts from here,
		// even if the lease had time left.
		e.until = time.Time{}
		e.Log.Info("no longer the leader: scheduled work and outage detection stop here", "holder", e.Lease.Holder)
		if e.cancel != nil {
			e.cancel()
			e.cancel = nil
		}
		return
	}
	e.Log.Info("leader: this replica runs scheduled work and outage detection", "holder", e.Lease.Holder)
	ctx, cancel := context.WithCancel(e.base)
	e.cancel = cancel
	if e.OnElected != nil {
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			e.OnElected(ctx)
		}()
	}
}
