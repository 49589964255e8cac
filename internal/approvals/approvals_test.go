package approvals

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/circlebot/circlebot/internal/kv"
	"github.com/circlebot/circlebot/internal/store"
	"github.com/circlebot/circlebot/internal/testenv/motoserver"
)

var t0 = time.Date(2026, 11, 28, 3, 0, 0, 0, time.UTC)

func plan() Plan {
	return Plan{Action: "backup prune", Facts: map[string]string{"region": "us-east-1", "delete": "bk-1,bk-2"}}
}

func TestPlanHashBindsFactsNotProse(t *testing.T) {
	a, b := plan(), plan()
	b.Changes = []string{"prose differs"}
	if a.Hash() != b.Hash() {
		t.Fatal("prose changed the hash")
	}
	b.Facts = map[string]string{"delete": "bk-1,bk-2", "region": "us-east-1"}
	if a.Hash() != b.Hash() {
		t.Fatal("map order changed the hash")
	}
	b.Facts["delete"] = "bk-1,bk-2,bk-3"
	if a.Hash() == b.Hash() {
		t.Fatal("a different resource kept the hash")
	}
}

func TestCheckDecision(t *testing.T) {
	pending := New("backup prune", plan(), "U0ALICE", "C1", t0, 30*time.Minute)
	decided := pending
	decided.State, decided.Decider = Approved, "U0BOB"
	denied := pending
	denied.State, denied.Decider = Denied, "U0BOB"
	cases := []struct {
		name       string
		r          Request
		user       string
		isApprover bool
		approve    bool
		at         time.Time
		want       string // "" = allowed
	}{
		{"approver approves", pending, "U0BOB", true, true, t0.Add(time.Minute), ""},
		{"requester approves own", pending, "U0ALICE", true, true, t0.Add(time.Minute), "second person"},
		{"viewer approves", pending, "U0VERA", false, true, t0.Add(time.Minute), "only approvers"},
		{"after expiry", pending, "U0BOB", true, true, t0.Add(31 * time.Minute), "expired"},
		{"exactly at expiry", pending, "U0BOB", true, true, t0.Add(30 * time.Minute), "expired"},
		{"second decision", decided, "U0CAROL", true, true, t0.Add(time.Minute), "one decision per request"},
		{"denied is not revived", denied, "U0CAROL", true, true, t0.Add(time.Minute), "cannot be revived"},
		{"requester withdraws", pending, "U0ALICE", false, false, t0.Add(time.Minute), ""},
		{"viewer denies", pending, "U0VERA", false, false, t0.Add(time.Minute), "only approvers"},
		{"approver denies", pending, "U0BOB", true, false, t0.Add(time.Minute), ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := CheckDecision(c.r, c.user, c.isApprover, c.approve, c.at)
			switch {
			case c.want == "" && got != nil:
				t.Fatalf("refused: %s", got.Reason)
			case c.want != "" && (got == nil || !strings.Contains(got.Reason, c.want)):
				t.Fatalf("got %v, want a refusal containing %q", got, c.want)
			}
		})
	}
}

func TestMain(m *testing.M) { motoserver.Main(m) }

func newStore(t *testing.T) (Store, *store.Store) {
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return Store{KV: kv.Bolt{DB: st.DB()}}, st
}

// stores are the two backends: the embedded bbolt one and DynamoDB (in
// moto), which two replicas share.
func stores(t *testing.T) map[string]Store {
	s, _ := newStore(t)
	moto := motoserver.ForTest(t)
	d := kv.Dynamo{API: dynamodb.NewFromConfig(motoserver.AWSConfig(moto.URL)), Table: "circlebot-state"}
	if err := d.EnsureTable(context.Background()); err != nil {
		t.Fatal(err)
	}
	return map[string]Store{"bbolt": s, "dynamodb": {KV: d}}
}

// Twenty approvals racing (as from two replicas sharing DynamoDB): one
// decision, one execution, on either backend.
func TestRacingApprovalsGiveOneExecution(t *testing.T) {
	for name, s := range stores(t) {
		t.Run(name, func(t *testing.T) { racingApprovals(t, s) })
	}
}

func racingApprovals(t *testing.T, s Store) {
	r := New("backup prune", plan(), "U0ALICE", "C1", t0, time.Hour)
	if err := s.Create(t.Context(), r); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	approved, began := 0, 0
	for i := range 20 {
		wg.Go(func() {
			user := []string{"U0BOB", "U0CAROL"}[i%2]
			if _, err := s.Decide(t.Context(), r.ID, user, true, true, t0.Add(time.Minute)); err == nil {
				mu.Lock()
				approved++
				mu.Unlock()
			}
			if _, err := s.Begin(t.Context(), r.ID, "p1"); err == nil {
				mu.Lock()
				began++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if approved != 1 || began != 1 {
		t.Fatalf("approved %d times, began %d times; want 1 and 1", approved, began)
	}
}

func TestExpiredRequestIsMarkedAndStaysDeadAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s := Store{KV: kv.Bolt{DB: st.DB()}}
	r := New("backup prune", plan(), "U0ALICE", "C1", t0, time.Minute)
	s.Create(t.Context(), r)
	_, err = s.Decide(t.Context(), r.ID, "U0BOB", true, true, t0.Add(2*time.Minute))
	var ref *Refusal
	if !errors.As(err, &ref) || !strings.Contains(ref.Reason, "expired") {
		t.Fatalf("got %v", err)
	}
	got, _ := s.Get(t.Context(), r.ID)
	if got.State != Expired {
		t.Fatalf("state %s", got.State)
	}
	st.Close()
	st, err = store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	s = Store{KV: kv.Bolt{DB: st.DB()}}
	if _, err := s.Decide(t.Context(), r.ID, "U0CAROL", true, true, t0.Add(3*time.Minute)); !errors.As(err, &ref) {
		t.Fatalf("an expired request was revived after a restart: %v", err)
	}
}

func TestUnknownRequest(t *testing.T) {
	s, _ := newStore(t)
	if _, err := s.Decide(t.Context(), "req-00000000", "U0BOB", true, true, t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("got %v", err)
	}
}

// An approval call on a cancelled context returns its error and decides
// nothing: a request stays pending, and an approved one is not begun.
func TestCancelledContextDecidesNothing(t *testing.T) {
	_, st := newStore(t)
	s := Store{KV: st.KV()} // behind the store's guard, as in the bot
	r := New("backup prune", plan(), "U0ALICE", "C1", t0, time.Hour)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := s.Create(ctx, r); !errors.Is(err, context.Canceled) {
		t.Fatalf("create: %v", err)
	}
	if _, err := s.Get(t.Context(), r.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a request created on a cancelled context exists: %v", err)
	}
	if err := s.Create(t.Context(), r); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Decide(ctx, r.ID, "U0BOB", true, true, t0.Add(time.Minute)); !errors.Is(err, context.Canceled) {
		t.Fatalf("decide: %v", err)
	}
	if got, _ := s.Get(t.Context(), r.ID); got.State != Pending {
		t.Fatalf("decided on a cancelled context: %s", got.State)
	}
	if _, err := s.Decide(t.Context(), r.ID, "U0BOB", true, true, t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Begin(ctx, r.ID, "p1"); !errors.Is(err, context.Canceled) {
		t.Fatalf("begin: %v", err)
	}
	if _, err := s.Finish(ctx, r.ID, Done, ""); !errors.Is(err, context.Canceled) {
		t.Fatalf("finish: %v", err)
	}
	if got, _ := s.Get(t.Context(), r.ID); got.State != Approved {
		t.Fatalf("changed on a cancelled context: %s", got.State)
	}
}
