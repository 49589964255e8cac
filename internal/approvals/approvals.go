// Package approvals owns the two-person rule: a destructive command becomes
// a request bound to the hash of the exact plan it will run, a second
// person who is an approver decides once before it expires, and the
// decision is durable. The rules are pure functions; Store persists them in
// bbolt with every check-and-set in one transaction.
package approvals

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Plan is what a destructive command will do, with every resource named.
// Its hash covers Action and Facts; the prose is for people.
type Plan struct {
	Action string            `json:"action"` // e.g. "backup prune", "restore"
	Facts  map[string]string `json:"facts"`  // exact IDs: region, instance, snapshots, IP …
	// For the message: what changes, what is kept, what cannot be undone.
	Changes []string `json:"changes"`
	Keeps   []string `json:"keeps"`
	Undo    []string `json:"undo"`
}

// Hash is stable across runs: facts are sorted by key.
func (p Plan) Hash() string {
	keys := make([]string, 0, len(p.Facts))
	for k := range p.Facts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	h := sha256.New()
	fmt.Fprintf(h, "action=%s\n", p.Action)
	for _, k := range keys {
		fmt.Fprintf(h, "%s=%s\n", k, p.Facts[k])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Short is the first 12 hex digits, for messages.
func Short(hash string) string { return hash[:min(12, len(hash))] }

type State string

const (
	Pending   State = "pending"
	Approved  State = "approved" // decided; about to run
	Denied    State = "denied"
	Expired   State = "expired"
	Executing State = "executing"
	Done      State = "done"
	Failed    State = "failed"
	Refused   State = "refused" // approved, but the live plan no longer matched
)

// Request is one destructive command waiting for, or past, its decision.
type Request struct {
	ID        string    `json:"id"`
	Command   string    `json:"command"` // canonical text, run again on approval
	Plan      Plan      `json:"plan"`
	PlanHash  string    `json:"plan_hash"`
	Requester string    `json:"requester"`
	Channel   string    `json:"channel"`
	Created   time.Time `json:"created"`
	Expires   time.Time `json:"expires"`
	State     State     `json:"state"`
	Decider   string    `json:"decider,omitempty"`
	Decided   time.Time `json:"decided,omitzero"`
	Note      string    `json:"note,omitempty"`
	MessageTS string    `json:"message_ts,omitempty"`
	Process   string    `json:"process,omitempty"` // the bot process that started executing it
}

// NewID makes "req-" + 8 hex digits: short enough to type at 3 a.m.
func NewID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "req-" + hex.EncodeToString(b[:])
}

// New binds a request to plan.
func New(cmd string, plan Plan, requester, channel string, now time.Time, ttl time.Duration) Request {
	return Request{ID: NewID(), Command: cmd, Plan: plan, PlanHash: plan.Hash(), Requester: requester, Channel: channel,
		Created: now, Expires: now.Add(ttl), State: Pending}
}

// Refusal is a user-facing reason a decision was not taken.
type Refusal struct{ Reason string }

func (r *Refusal) Error() string { return r.Reason }

func refuse(format string, a ...any) *Refusal { return &Refusal{Reason: fmt.Sprintf(format, a...)} }

// CheckDecision applies the two-person rule to one decision (approve or
// deny) by user at now. It is pure; Store.Decide calls it inside the
// transaction that records the decision.
func CheckDecision(r Request, user string, isApprover bool, approve bool, now time.Time) *Refusal {
	verb := "deny"
	if approve {
		verb = "approve"
	}
	switch r.State {
	case Pending:
	case Denied:
		return refuse("request `%s` was denied by <@%s>; it cannot be revived. Make a new request.", r.ID, r.Decider)
	case Expired:
		return refuse("request `%s` expired at %s UTC; it cannot be revived. Make a new request.", r.ID, r.Expires.UTC().Format("15:04"))
	default:
		return refuse("request `%s` was already %s by <@%s>; one decision per request.", r.ID, r.State, r.Decider)
	}
	if !now.Before(r.Expires) {
		return refuse("request `%s` expired at %s UTC; it cannot be revived. Make a new request.", r.ID, r.Expires.UTC().Format("15:04"))
	}
	// The requester may withdraw their own request; nobody may approve it.
	if !approve && user == r.Requester {
		return nil
	}
	if !isApprover {
		return refuse("only approvers (`roles.approvers`) may %s `%s`.", verb, r.ID)
	}
	if approve && user == r.Requester {
		return refuse("you requested `%s`; a second person must approve it.", r.ID)
	}
	return nil
}

// Expire reports whether a pending request is past its time.
func Expire(r Request, now time.Time) bool { return r.State == Pending && !now.Before(r.Expires) }

// Render is the plan as Slack text: what changes, what is kept, what cannot
// be undone, and the facts it is bound to.
func Render(p Plan) string {
	var b strings.Builder
	section := func(title string, lines []string) {
		if len(lines) == 0 {
			return
		}
		b.WriteString("*" + title + "*\n")
		for _, l := range lines {
			b.WriteString("• " + l + "\n")
		}
	}
	section("What changes", p.Changes)
	section("What is kept", p.Keeps)
	section("Cannot be undone", p.Undo)
	keys := make([]string, 0, len(p.Facts))
	for k := range p.Facts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var facts []string
	for _, k := range keys {
		facts = append(facts, k+": `"+abridge(p.Facts[k])+"`")
	}
	if len(facts) > 0 {
		b.WriteString("*Bound to* " + strings.Join(facts, ", ") + "\n")
	}
	return b.String()
}

func encode(r Request) ([]byte, error) { return json.Marshal(r) }

// abridge keeps a long list readable in the request message; the hash still
// covers every item, and the plan's changes name each restore point.
func abridge(v string) string {
	items := strings.Split(v, ",")
	if len(v) <= 120 || len(items) < 3 {
		return v
	}
	return fmt.Sprintf("%d items: %s, …, %s", len(items), items[0], items[len(items)-1])
}
