package store_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/circlebot/circlebot/internal/kv"
	"github.com/circlebot/circlebot/internal/store"
	"github.com/circlebot/circlebot/internal/testenv/motoserver"
)

func TestMain(m *testing.M) { motoserver.Main(m) }

func sharedTable(t *testing.T) kv.Dynamo {
	t.Helper()
	moto := motoserver.ForTest(t)
	d := kv.Dynamo{API: dynamodb.NewFromConfig(motoserver.AWSConfig(motoserver.Serialized(t, moto.URL))), Table: "circlebot-state"}
	if err := d.EnsureTable(context.Background()); err != nil {
		t.Fatal(err)
	}
	return d
}

func openShared(t *testing.T, d kv.Dynamo, name string, ttl time.Duration) *store.Store {
	t.Helper()
	s, err := store.OpenShared(context.Background(), d, store.SharedOptions{TTL: ttl, Name: name, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// A replica sees the other alive while it beats; a crashed one (no
// renewal) is dead once its heartbeat expires, a cleanly stopped one at
// once.
//
// Parallel with TestSecondOpenFailsClearly, which only waits: most of
// this test is waiting out TTLs too.
func TestHeartbeatsSayWhichReplicaIsAlive(t *testing.T) {
	t.Parallel()
	d := sharedTable(t)
	const ttl = 1500 * time.Millisecond
	a, b, c := openShared(t, d, "a", ttl), openShared(t, d, "b", ttl), openShared(t, d, "c", ttl)
	if !b.Alive(t.Context(), a.Process()) || !a.Alive(t.Context(), b.Process()) {
		t.Fatal("fresh replicas are not alive to each other")
	}
	if b.Alive(t.Context(), "never-was") {
		t.Fatal("an unknown process is alive")
	}
	// Alive across several renewals.
	for deadline := time.Now().Add(3 * ttl); time.Now().Before(deadline); time.Sleep(ttl / 10) {
		if !b.Alive(t.Context(), a.Process()) {
			t.Fatal("a beating replica was taken for dead")
		}
	}
	a.Kill()
	deadline := time.Now().Add(3 * ttl)
	for b.Alive(t.Context(), a.Process()) {
		if time.Now().After(deadline) {
			t.Fatal("a crashed replica stayed alive past its TTL")
		}
		time.Sleep(ttl / 20)
	}
	if err := a.Ping(); err == nil {
		// its own health says so once the TTL passed without a beat
		t.Error("a crashed replica reports itself healthy")
	}
	cp := c.Process()
	c.Close()
	if b.Alive(t.Context(), cp) {
		t.Error("a replica that stopped cleanly is still alive")
	}
	if err := b.Ping(); err != nil {
		t.Errorf("live replica unhealthy: %v", err)
	}
	reps, err := b.Replicas(t.Context())
	if err != nil || len(reps) != 2 { // b, and a's stale heartbeat
		t.Errorf("replicas: %+v %v", reps, err)
	}
}

// The same Slack delivery handed to two replicas at once runs on one.
func TestClaimOnceAcrossReplicas(t *testing.T) {
	d := sharedTable(t)
	a, b, c := openShared(t, d, "a", 5*time.Second), openShared(t, d, "b", 5*time.Second), openShared(t, d, "c", 5*time.Second)
	ctx := context.Background()
	for i := range 20 {
		key := "cmd" + time.Now().Format("150405.000000") + string(rune('a'+i))
		var wins atomic.Int32
		var wg sync.WaitGroup
		for _, s := range []*store.Store{a, b, c} {
			wg.Go(func() {
				ok, err := s.ClaimOnce(ctx, key, time.Minute)
				if err != nil {
					t.Error(err)
				}
				if ok {
					wins.Add(1)
				}
			})
		}
		wg.Wait()
		if n := wins.Load(); n != 1 {
			t.Fatalf("delivery %s claimed %d times", key, n)
		}
	}
	// An expired claim is swept and the key may be claimed again.
	if ok, _ := a.ClaimOnce(ctx, "short", time.Nanosecond); !ok {
		t.Fatal("first claim refused")
	}
	if n, err := b.SweepClaims(ctx); err != nil || n != 1 {
		t.Errorf("swept %d, %v; want the one expired claim", n, err)
	}
	if ok, _ := b.ClaimOnce(ctx, "short", time.Minute); !ok {
		t.Error("an expired key could not be claimed again")
	}
}

// The shared duplicate check sits on Slack's 3-second ack path:
//
//	go test -run '^$' -bench ClaimOnce ./internal/store/
func BenchmarkClaimOnce(b *testing.B) {
	moto, err := motoserver.Start(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	defer moto.Close()
	d := kv.Dynamo{API: dynamodb.NewFromConfig(motoserver.AWSConfig(motoserver.Serialized(b, moto.URL))), Table: "circlebot-state"}
	if err := d.EnsureTable(context.Background()); err != nil {
		b.Fatal(err)
	}
	s, err := store.OpenShared(context.Background(), d, store.SharedOptions{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	b.ResetTimer()
	for i := range b.N {
		if ok, err := s.ClaimOnce(ctx, "trig."+strconv.Itoa(i), time.Minute); !ok || err != nil {
			b.Fatal(ok, err)
		}
	}
}

type unreachable struct {
	kv.Store
	down atomic.Bool
}

func (u *unreachable) Put(ctx context.Context, table, key string, value []byte, version int64) (int64, error) {
	if u.down.Load() {
		return 0, errors.New("dial tcp: i/o timeout")
	}
	return u.Store.Put(ctx, table, key, value, version)
}

// A replica cut off from the shared state stops its work (the work
// context ends, with ErrHeartbeatLost) while the others still take it for
// alive: nothing it runs overlaps a takeover.
func TestCutOffReplicaStopsItsWorkBeforeOthersTakeOver(t *testing.T) {
	d := sharedTable(t)
	const ttl = 1500 * time.Millisecond
	link := &unreachable{Store: d}
	a, err := store.OpenShared(context.Background(), link, store.SharedOptions{TTL: ttl, Name: "a", Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b := openShared(t, d, "b", ttl)
	work, cancel := a.WorkContext(context.Background())
	defer cancel()
	link.down.Store(true)
	select {
	case <-work.Done():
	case <-time.After(2 * ttl):
		t.Fatal("the cut-off replica's work went on")
	}
	if !errors.Is(context.Cause(work), store.ErrHeartbeatLost) {
		t.Errorf("cause: %v", context.Cause(work))
	}
	if !b.Alive(t.Context(), a.Process()) {
		t.Error("the others took the replica for dead before its work stopped")
	}
	if a.Ping() == nil {
		// healthz goes red once the TTL has passed without a beat
		deadline := time.Now().Add(2 * ttl)
		for a.Ping() == nil && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if a.Ping() == nil {
			t.Error("a replica without heartbeats reports itself healthy")
		}
	}
	link.down.Store(false)
	deadline := time.Now().Add(2 * ttl)
	for a.Ping() != nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	fresh, cancel2 := a.WorkContext(context.Background())
	defer cancel2()
	if fresh.Err() != nil {
		t.Error("work cannot start again after the heartbeat came back")
	}
}
