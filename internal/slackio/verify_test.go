package slackio

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"testing"
	"time"
)

func signed(secret, body string, at time.Time) http.Header {
	ts := strconv.FormatInt(at.Unix(), 10)
	h := http.Header{}
	h.Set("X-Slack-Request-Timestamp", ts)
	h.Set("X-Slack-Signature", SignatureHeader([]byte(secret), ts, []byte(body)))
	return h
}

func TestVerify(t *testing.T) {
	now := time.Unix(1_790_000_000, 0)
	body := "text=status&user_id=U1"
	cases := []struct {
		name string
		h    http.Header
		body string
		want error
	}{
		{"good", signed("s3cret", body, now), body, nil},
		{"skew within window", signed("s3cret", body, now.Add(-4*time.Minute)), body, nil},
		{"stale", signed("s3cret", body, now.Add(-6*time.Minute)), body, ErrStale},
		{"future", signed("s3cret", body, now.Add(6*time.Minute)), body, ErrStale},
		{"wrong secret", signed("other", body, now), body, ErrForged},
		{"body changed", signed("s3cret", body, now), body + "&text=restore", ErrForged},
		{"no headers", http.Header{}, body, ErrUnsigned},
		{"not hex", func() http.Header {
			h := signed("s3cret", body, now)
			h.Set("X-Slack-Signature", "v0=zz")
			return h
		}(), body, ErrForged},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := Verify([]byte("s3cret"), c.h, []byte(c.body), now)
			if !errors.Is(err, c.want) || (c.want == nil && err != nil) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

func TestVerifyRefusesAnEmptySecret(t *testing.T) {
	now := time.Unix(1_790_000_000, 0)
	// A forger signing with the empty key must not get through.
	if err := Verify(nil, signed("", "text=status", now), []byte("text=status"), now); !errors.Is(err, ErrNoSecret) {
		t.Fatalf("got %v", err)
	}
}

func TestDedupe(t *testing.T) {
	d := NewDedupe(time.Minute, 3)
	now := time.Unix(0, 0)
	d.now = func() time.Time { return now }
	if !d.First("a") || d.First("a") {
		t.Fatal("second delivery of a must be refused")
	}
	now = now.Add(2 * time.Minute)
	if !d.First("a") {
		t.Fatal("after the TTL a key is new again")
	}
	d.First("b")
	d.First("c")
	d.First("d") // at capacity: evicts, never grows past max
	if len(d.seen) > 3 {
		t.Fatalf("dedupe grew to %d", len(d.seen))
	}
	if !d.First("") || !d.First("") {
		t.Fatal("an empty key is never a duplicate")
	}
}

type claims struct {
	seen map[string]bool
	err  error
}

func (c *claims) ClaimOnce(_ context.Context, key string, _ time.Duration) (bool, error) {
	if c.err != nil {
		return false, c.err
	}
	first := !c.seen[key]
	c.seen[key] = true
	return first, nil
}

// With replicas, a delivery another replica took is a duplicate here too;
// when the shared answer fails, the request is handled rather than lost.
func TestDedupeAcrossReplicas(t *testing.T) {
	shared := &claims{seen: map[string]bool{}}
	a, b := NewDedupe(time.Minute, 10), NewDedupe(time.Minute, 10)
	a.Shared, b.Shared = shared, shared
	if !a.First("trig.1") || b.First("trig.1") {
		t.Fatal("a delivery ran on both replicas")
	}
	shared.err = errors.New("table unreachable")
	if !b.First("trig.2") {
		t.Error("a request was dropped because the shared check failed")
	}
	if b.First("trig.2") {
		t.Error("the local memory still drops a retry to the same replica")
	}
}
