package slackio

import (
	"sync"
	"time"
)

// Dedupe remembers request keys for a while so a request Slack delivers
// twice (an HTTP retry after a slow ack, or a Socket Mode redelivery) runs
// once. It is per process; a shared store takes over with several replicas.
type Dedupe struct {
	mu   sync.Mutex
	ttl  time.Duration
	max  int
	seen map[string]time.Time
	now  func() time.Time
}

func NewDedupe(ttl time.Duration, max int) *Dedupe {
	return &Dedupe{ttl: ttl, max: max, seen: map[string]time.Time{}, now: time.Now}
}

// First reports whether key is new, and remembers it.
func (d *Dedupe) First(key string) bool {
	if key == "" {
		return true
	}
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
