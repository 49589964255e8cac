package slackio

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Dedupe remembers request keys for a while so a request Slack delivers
// twice (an HTTP retry after a slow ack, or a Socket Mode redelivery) runs
// once. With replicas, Shared makes the decision across all of them (Slack
// may retry a delivery to another replica behind the load balancer, and
// each replica's Socket Mode connection may be handed the same envelope).
type Dedupe struct {
	// Shared, when set, is asked after the local memory says "new".
	Shared Claimer
	Log    *slog.Logger

	mu   sync.Mutex
	ttl  time.Duration
	max  int
	seen map[string]time.Time
	now  func() time.Time
}

func NewDedupe(ttl time.Duration, max int) *Dedupe {
	return &Dedupe{ttl: ttl, max: max, seen: map[string]time.Time{}, now: time.Now}
}

// Claimer records a key once across replicas: true for the first claim
// within ttl.
type Claimer interface {
	ClaimOnce(ctx context.Context, key string, ttl time.Duration) (bool, error)
}

// First reports whether key is new, and remembers it.
func (d *Dedupe) First(key string) bool {
	if key == "" {
		return true
	}
	if !d.local(key) {
		return false
	}
	if d.Shared == nil {
		return true
	}
	// Slack waits 3 s for the ack; the shared answer must come well before.
	// Both transports call First on their ack path with no context to
	// hand: this one second is the call's only bound, and all it needs.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	first, err := d.Shared.ClaimOnce(ctx, key, d.ttl)
	if err != nil {
		// Unknown: run it. A lost duplicate check is the lesser harm
		// (destructive commands are guarded again by their one-decision
		// approval); dropping a real command at 3 a.m. is not.
		if d.Log != nil {
			d.Log.Warn("shared duplicate check failed; handling the request", "err", err)
		}
		return true
	}
	return first
}

func (d *Dedupe) local(key string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.now()
	if at, ok := d.seen[key]; ok && now.Sub(at) < d.ttl {
		return false
	}
	if len(d.seen) >= d.max {
		d.evict(now)
	}
	d.seen[key] = now
	return true
}

// evict drops expired keys; if all are fresh (a flood), it drops the whole
// map rather than grow without bound — a lost dedupe key is safer than an
// out-of-memory bot, and destructive runs are guarded again by approvals.
func (d *Dedupe) evict(now time.Time) {
	for k, at := range d.seen {
		if now.Sub(at) >= d.ttl {
			delete(d.seen, k)
		}
	}
	if len(d.seen) >= d.max {
		clear(d.seen)
	}
}
