package leader_test

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/circlebot/circlebot/internal/kv"
	"github.com/circlebot/circlebot/internal/leader"
	"github.com/circlebot/circlebot/internal/testenv/motoserver"
)

func TestMain(m *testing.M) { motoserver.Main(m) }

func electors(t *testing.T, ttl time.Duration, names ...string) []*leader.Elector {
	t.Helper()
	moto := motoserver.ForTest(t)
	d := kv.Dynamo{API: dynamodb.NewFromConfig(motoserver.AWSConfig(motoserver.Serialized(t, moto.URL))), Table: "circlebot-state"}
	if err := d.EnsureTable(context.Background()); err != nil {
		t.Fatal(err)
	}
	var out []*leader.Elector
	for _, n := range names {
		out = append(out, &leader.Elector{Lease: kv.Lease{Store: d, Table: "leases", Name: "leader", Holder: n, TTL: ttl}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	}
	return out
}

func waitLeader(t *testing.T, within time.Duration, es ...*leader.Elector) (int, time.Duration) {
	t.Helper()
	start := time.Now()
	for time.Since(start) < within {
		for i, e := range es {
			if e.Leader() {
				return i, time.Since(start)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no leader within %s", within)
	return -1, 0
}

// One leader at a time; after the leader crashes (stops renewing, gives
// nothing up), the other leads within the TTL of its last renewal; after
// a clean stop, within one renewal round. The two never lead at once.
func TestLeadershipHandsOverWithinTheTTL(t *testing.T) {
	const ttl = 1500 * time.Millisecond
	es := electors(t, ttl, "replica-a", "replica-b")
	var elected [2]atomic.Int32
	ctxs := make([]context.CancelFunc, 2)
	for i, e := range es {
		e.OnElected = func(context.Context) { elected[i].Add(1) }
		ctx, cancel := context.WithCancel(context.Background())
		ctxs[i] = cancel
		t.Cleanup(cancel)
		go e.Run(ctx)
	}
	first, _ := waitLeader(t, 2*ttl, es...)
	other := 1 - first

	c := &leader.Elector{Lease: es[0].Lease, Log: es[0].Log}
	c.Lease.Holder = "replica-c"
	// Watch for overlap for the rest of the test.
	overlap := make(chan struct{}, 1)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			n := 0
			for _, e := range []*leader.Elector{es[0], es[1], c} {
				if e.Leader() {
					n++
				}
			}
			if n > 1 {
				select {
				case overlap <- struct{}{}:
				default:
				}
			}
			time.Sleep(time.Millisecond)
		}
	}()
	// Steady: the leader keeps it over several TTLs.
	for deadline := time.Now().Add(2 * ttl); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if !es[first].Leader() || es[other].Leader() {
			t.Fatal("leadership moved while the leader was alive")
		}
	}

	es[first].Kill()
	_, took := waitLeader(t, 2*ttl, es[other])
	if took > ttl+200*time.Millisecond { // the lease's expiry, plus moto's latency
		t.Errorf("handover after a crash took %s, TTL %s", took, ttl)
	}
	t.Logf("handover after a crash: %s (TTL %s)", took, ttl)

	// The new leader stops cleanly: the lease is released, and a third
	// replica takes it at its next round.
	cctx, ccancel := context.WithCancel(context.Background())
	defer ccancel()
	go c.Run(cctx)
	ctxs[other]()
	_, took = waitLeader(t, 2*ttl, c)
	if took > ttl/3+300*time.Millisecond {
		t.Errorf("handover after a clean stop took %s", took)
	}
	close(stop)
	<-done
	select {
	case <-overlap:
		t.Error("two replicas counted themselves leader at the same time")
	default:
	}
	if elected[first].Load() != 1 || elected[other].Load() != 1 {
		t.Errorf("elections: a %d, b %d", elected[0].Load(), elected[1].Load())
	}
}
