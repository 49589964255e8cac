package approvals

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
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
	pending.State = Pending // posted
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
			got := CheckDecision(c.r, Decision{User: c.user, Channel: "C1", Approver: c.isApprover, Approve: c.approve}, c.at)
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

// bob approves in the request's channel.
var bob = Decision{User: "U0BOB", Channel: "C1", Approver: true, Approve: true}

// create saves r and posts it: it is open for decisions.
func create(t *testing.T, s Store, r Request) Request {
	t.Helper()
	if err := s.Create(t.Context(), r); err != nil {
		t.Fatal(err)
	}
	r, err := s.SetMessage(t.Context(), r.ID, "1700000000.000100", nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

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
	d := kv.Dynamo{API: dynamodb.NewFromConfig(motoserver.AWSConfig(motoserver.Serialized(t, moto.URL))), Table: "circlebot-state"}
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
	r := create(t, s, New("backup prune", plan(), "U0ALICE", "C1", t0, time.Hour))
	var wg sync.WaitGroup
	var mu sync.Mutex
	approved, began := 0, 0
	for i := range 20 {
		wg.Go(func() {
			user := []string{"U0BOB", "U0CAROL"}[i%2]
			if _, err := s.Decide(t.Context(), r.ID, Decision{User: user, Channel: "C1", Approver: true, Approve: true}, t0.Add(time.Minute)); err == nil {
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
	r := create(t, s, New("backup prune", plan(), "U0ALICE", "C1", t0, time.Minute))
	_, err = s.Decide(t.Context(), r.ID, bob, t0.Add(2*time.Minute))
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
	if _, err := s.Decide(t.Context(), r.ID, Decision{User: "U0CAROL", Channel: "C1", Approver: true, Approve: true}, t0.Add(3*time.Minute)); !errors.As(err, &ref) {
		t.Fatalf("an expired request was revived after a restart: %v", err)
	}
}

func TestUnknownRequest(t *testing.T) {
	s, _ := newStore(t)
	if _, err := s.Decide(t.Context(), "req-00000000", bob, t0); !errors.Is(err, ErrNotFound) {
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
	r = create(t, s, r)
	if _, err := s.Decide(ctx, r.ID, bob, t0.Add(time.Minute)); !errors.Is(err, context.Canceled) {
		t.Fatalf("decide: %v", err)
	}
	if got, _ := s.Get(t.Context(), r.ID); got.State != Pending {
		t.Fatalf("decided on a cancelled context: %s", got.State)
	}
	if _, err := s.Decide(t.Context(), r.ID, bob, t0.Add(time.Minute)); err != nil {
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

// A decision counts only where the request's plan was shown: its own
// channel, or a channel it was copied to (approvals.channel). A request
// still being posted, or never posted, cannot be decided at all.
func TestCheckDecisionWhere(t *testing.T) {
	pending := New("backup prune", plan(), "U0ALICE", "C1", t0, 30*time.Minute)
	pending.State = Pending
	copied := pending
	copied.Copies = []Copy{{Channel: "C2", TS: "1.2"}}
	posting := New("backup prune", plan(), "U0ALICE", "C1", t0, 30*time.Minute)
	unposted := posting
	unposted.State, unposted.Note = Unposted, "not_in_channel"
	expired := pending
	expired.State = Expired
	cases := []struct {
		name    string
		r       Request
		channel string
		approve bool
		want    string
	}{
		{"in the request's channel", pending, "C1", true, ""},
		{"in another channel", pending, "C9", true, "only in <#C1>, where its plan was shown"},
		{"denied in another channel", pending, "C9", false, "only in <#C1>"},
		{"no channel", pending, "", true, "only in <#C1>"},
		{"in the copy's channel", copied, "C2", true, ""},
		{"copied, from a third channel", copied, "C9", true, "only in <#C1> or <#C2>"},
		{"elsewhere, even when expired", expired, "C9", true, "only in <#C1>"},
		{"still being posted", posting, "C1", true, "still being posted"},
		{"withdrawn while being posted", posting, "C1", false, "still being posted"},
		{"never posted", unposted, "C1", true, "never shown in full (not_in_channel)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := CheckDecision(c.r, Decision{User: "U0BOB", Channel: c.channel, Approver: true, Approve: c.approve}, t0.Add(time.Minute))
			switch {
			case c.want == "" && got != nil:
				t.Fatalf("refused: %s", got.Reason)
			case c.want != "" && (got == nil || !strings.Contains(got.Reason, c.want)):
				t.Fatalf("got %v, want a refusal containing %q", got, c.want)
			}
		})
	}
}

// A decision from the wrong channel writes nothing: the request stays
// pending (even past its expiry, it is not marked by a stranger) and the
// approver in the right channel can still decide it.
func TestDecisionElsewhereChangesNothing(t *testing.T) {
	s, _ := newStore(t)
	r := New("backup prune", plan(), "U0ALICE", "C1", t0, 30*time.Minute)
	if err := s.Create(t.Context(), r); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetMessage(t.Context(), r.ID, "1.1", []Copy{{Channel: "C2", TS: "2.1"}}); err != nil {
		t.Fatal(err)
	}
	before, _ := s.Get(t.Context(), r.ID)
	var ref *Refusal
	for _, at := range []time.Time{t0.Add(time.Minute), t0.Add(time.Hour)} {
		_, err := s.Decide(t.Context(), r.ID, Decision{User: "U0BOB", Channel: "C9", Approver: true, Approve: true}, at)
		if !errors.As(err, &ref) || !strings.Contains(ref.Reason, "<#C1> or <#C2>") {
			t.Fatalf("decided from another channel: %v", err)
		}
		if after, _ := s.Get(t.Context(), r.ID); after.State != Pending || after.Decider != "" || !after.Decided.IsZero() || after.Note != before.Note {
			t.Fatalf("a refused decision changed the request: %+v", after)
		}
	}
	got, err := s.Decide(t.Context(), r.ID, Decision{User: "U0BOB", Channel: "C2", Approver: true, Approve: true}, t0.Add(time.Minute))
	if err != nil || got.State != Approved || got.Decider != "U0BOB" {
		t.Fatalf("approval in the copy's channel: %+v, %v", got, err)
	}
}

// Until its message is posted a request cannot be decided, on any replica
// sharing the store; once given up as unposted it never can be, and it
// cannot be opened afterwards.
func TestUnpostedRequestIsNeverDecided(t *testing.T) {
	for name, s := range stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := t.Context()
			r := New("backup prune", plan(), "U0ALICE", "C1", t0, time.Hour)
			if err := s.Create(ctx, r); err != nil {
				t.Fatal(err)
			}
			var ref *Refusal
			if _, err := s.Decide(ctx, r.ID, bob, t0.Add(time.Minute)); !errors.As(err, &ref) || !strings.Contains(ref.Reason, "still being posted") {
				t.Fatalf("decided while being posted: %v", err)
			}
			if _, err := s.Void(ctx, r.ID, "the message could not be posted: not_in_channel"); err != nil {
				t.Fatal(err)
			}
			if _, err := s.SetMessage(ctx, r.ID, "1.1", nil); !errors.Is(err, kv.ErrConflict) {
				t.Fatalf("a voided request was opened: %v", err)
			}
			for _, d := range []Decision{bob, {User: "U0ALICE", Channel: "C1", Approve: false}} {
				if _, err := s.Decide(ctx, r.ID, d, t0.Add(time.Minute)); !errors.As(err, &ref) || !strings.Contains(ref.Reason, "never shown in full") {
					t.Fatalf("decided an unposted request: %v", err)
				}
			}
			if got, _ := s.Get(ctx, r.ID); got.State != Unposted {
				t.Fatalf("state %s", got.State)
			}
			// A decided request is not voided after the fact.
			d := create(t, s, New("backup prune", plan(), "U0ALICE", "C1", t0, time.Hour))
			if _, err := s.Decide(ctx, d.ID, bob, t0.Add(time.Minute)); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Void(ctx, d.ID, "late"); !errors.Is(err, kv.ErrConflict) {
				t.Fatalf("an approved request was voided: %v", err)
			}
		})
	}
}

// bigPlan is a prune of n restore points with three snapshots each.
func bigPlan(n int) Plan {
	var pts, snaps, changes []string
	for i := range n {
		id := fmt.Sprintf("bk-%06d", i)
		pts = append(pts, id)
		for j := range 3 {
			snaps = append(snaps, fmt.Sprintf("snap-%014x%03d", i, j))
		}
		changes = append(changes, fmt.Sprintf("delete `%s` (2026-01-01 00:00, 3 snapshots, 8 GiB) — past keep_last", id))
	}
	return Plan{Action: "backup prune", Facts: map[string]string{"policy": "keep_last=1 keep_daily=0 keep_weekly=0", "delete": strings.Join(pts, ","), "snapshots": strings.Join(snaps, ",")},
		Changes: changes, Keeps: []string{"`bk-999999`, the newest completed restore point"}, Undo: []string{"deleted EBS snapshots cannot be recovered"}}
}

func TestSummaryCountsAndFullHasEveryItem(t *testing.T) {
	p := bigPlan(2500)
	text, complete := Summary(p, 20, 5000)
	if complete || len(text) > 5000 {
		t.Fatalf("complete %v, %d bytes", complete, len(text))
	}
	for _, want := range []string{"*What changes* (2,500; the first 20 shown)", "… and 2,480 more", "delete: `2,500 items: bk-000000, …, bk-002499`", "snapshots: `7,500 items:", "bk-000019", "newest completed restore point", "cannot be recovered"} {
		if !strings.Contains(text, want) {
			t.Errorf("summary lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "bk-000020`") {
		t.Error("the summary shows more than 20 changes")
	}
	// A budget too small for 20 lines shows fewer, never more bytes.
	if small, _ := Summary(p, 20, 1500); len(small) > 1500 || !strings.Contains(small, "2,500") {
		t.Errorf("small summary (%d bytes):\n%s", len(small), small)
	}

	full := Full(p)
	for _, id := range append(strings.Split(p.Facts["delete"], ","), strings.Split(p.Facts["snapshots"], ",")...) {
		if !strings.Contains(full, id) {
			t.Fatalf("the full plan lacks %s", id)
		}
	}
	for _, c := range p.Changes {
		if !strings.Contains(full, c) {
			t.Fatalf("the full plan lacks %q", c)
		}
	}
	// Each long fact is there exactly, broken after commas.
	for _, k := range []string{"delete", "snapshots"} {
		parts := commaLines(p.Facts[k], factLine)
		if strings.Join(parts, "") != p.Facts[k] {
			t.Fatalf("%s does not join back to its value", k)
		}
		for _, part := range parts {
			if len(part) > factLine || !strings.Contains(full, "`"+part+"`") {
				t.Fatalf("%s line of %d bytes, or not in the full plan", k, len(part))
			}
		}
	}

	doc := Document(p)
	_, rest, _ := strings.Cut(doc, "-----BEGIN PLAN-----\n")
	hashed, _, _ := strings.Cut(rest, "-----END PLAN-----\n")
	sum := sha256.Sum256([]byte(hashed))
	if hex.EncodeToString(sum[:]) != p.Hash() || !strings.Contains(doc, p.Hash()) {
		t.Fatal("the document's marked lines do not hash to the plan hash")
	}
}

func TestSmallPlanSummaryIsComplete(t *testing.T) {
	p := plan()
	p.Changes = []string{"delete `bk-1`", "delete `bk-2`"}
	text, complete := Summary(p, 20, 5000)
	if !complete || text != Render(p) {
		t.Fatalf("complete %v:\n%s", complete, text)
	}
}

// A plan whose pre-flight AWS refused is shown, never approved: approve
// says which call and why, the requester may still withdraw it, and the
// table does not change the hash (it is run again before the plan runs).
func TestRefusedPreflightBlocksApprovalOnly(t *testing.T) {
	now := time.Now()
	plan := Plan{Action: "restore", Facts: map[string]string{"source": "bk-1"}}
	hash := plan.Hash()
	plan.Preflight = []Check{{Call: "ec2:RunInstances", Status: "ok"}, {Call: "ec2:TerminateInstances", On: "i-1", Status: CheckRefused, Reason: "UnauthorizedOperation: no", Denied: true}}
	if plan.Hash() != hash {
		t.Fatal("the pre-flight table changed the plan hash")
	}
	r := New("restore latest", plan, "U0ALICE", "C1", now, time.Hour)
	r.State = Pending
	ref := CheckDecision(r, Decision{User: "U0BOB", Channel: "C1", Approver: true, Approve: true}, now)
	if ref == nil || !strings.Contains(ref.Reason, "cannot be approved") || !strings.Contains(ref.Reason, "ec2:TerminateInstances") {
		t.Fatalf("approve of a blocked plan: %v", ref)
	}
	if ref := CheckDecision(r, Decision{User: "U0ALICE", Channel: "C1", Approve: false}, now); ref != nil {
		t.Fatalf("the requester cannot withdraw a blocked request: %v", ref)
	}
	plan.Preflight[1].Status = "ok"
	if plan.Blocked() != "" {
		t.Fatal("an all-ok pre-flight blocks")
	}
}
