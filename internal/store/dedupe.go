package store

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/circlebot/circlebot/internal/kv"
)

const tableDedupe = "dedupe"

type claim struct {
	Process string    `json:"process"`
	Expires time.Time `json:"expires"`
}

// ClaimOnce records key (a Slack delivery's ID) for ttl with a write
// conditional on no live claim: of the replicas handed the same delivery,
// one gets true.
func (s *Store) ClaimOnce(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	val, err := json.Marshal(claim{Process: s.proc, Expires: time.Now().Add(ttl)})
	if err != nil {
		return false, err
	}
	for range 3 {
		_, err := s.kv.Put(ctx, tableDedupe, key, val, 0)
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, kv.ErrConflict) {
			return false, err
		}
		cur, err := s.kv.Get(ctx, tableDedupe, key)
		if errors.Is(err, kv.ErrNotFound) {
			continue // swept meanwhile
		}
		if err != nil {
			return false, err
		}
		var c claim
		if json.Unmarshal(cur.Value, &c) == nil && time.Now().Before(c.Expires) {
			// Our own claim: an SDK retry of a put that landed. This
			// process's real duplicates never get here (its memory
			// drops them first).
			return c.Process == s.proc, nil
		}
		// An old claim of a key Slack reuses: take it over, once.
		if _, err := s.kv.Put(ctx, tableDedupe, key, val, cur.Version); err == nil {
			return true, nil
		} else if !errors.Is(err, kv.ErrConflict) {
			return false, err
		}
		return false, nil
	}
	return false, errors.New("store: duplicate check of a delivery keeps changing")
}

// SweepClaims deletes expired delivery claims (the leader does it now and
// then, so the table does not grow with every command ever sent).
func (s *Store) SweepClaims(ctx context.Context) (int, error) {
	items, err := s.kv.List(ctx, tableDedupe)
	if err != nil {
		return 0, err
	}
	n := 0
	now := time.Now()
	for _, it := range items {
		var c claim
		if json.Unmarshal(it.Value, &c) == nil && now.Before(c.Expires) {
			continue
		}
		if err := s.kv.Delete(ctx, tableDedupe, it.Key, it.Version); err == nil {
			n++
		}
	}
	return n, nil
}
