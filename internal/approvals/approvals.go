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
	// Preflight is what AWS answered when the plan's calls were tried
	// without effect (the engine's pre-flight). It is not hashed: it is
	// run again before the plan runs. A refused row blocks approval.
	Preflight []Check `json:"preflight,omitempty"`
}

// Check is one row of a plan's pre-flight: a call, what it acts on, ok,
// refused or skipped, and AWS's reason.
type Check struct {
	Call   string `json:"call"`
	On     string `json:"on,omitempty"`
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"`
	Denied bool   `json:"denied,omitempty"` // refused by IAM
}

// CheckRefused is the status of a pre-flight row AWS would refuse.
const CheckRefused = "refused"

// Blocked is why the plan cannot be approved ("" when it can): the calls
// its pre-flight found AWS would refuse.
func (p Plan) Blocked() string {
	var parts []string
	for _, c := range p.Preflight {
		if c.Status == CheckRefused {
			s := "`" + c.Call + "`"
			if c.On != "" {
				s += " on " + c.On
			}
			parts = append(parts, s+" ("+c.Reason+")")
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return "AWS would refuse " + strings.Join(parts, "; ")
}

// Hash is stable across runs: facts are sorted by key. It is the SHA-256
// of Canonical, so anyone holding the full plan can check it.
func (p Plan) Hash() string {
	sum := sha256.Sum256([]byte(p.Canonical()))
	return hex.EncodeToString(sum[:])
}

// Canonical is exactly what the hash covers: the action, then every fact
// in key order, one "key=value" line each.
func (p Plan) Canonical() string {
	var b strings.Builder
	fmt.Fprintf(&b, "action=%s\n", p.Action)
	for _, k := range p.factKeys() {
		fmt.Fprintf(&b, "%s=%s\n", k, p.Facts[k])
	}
	return b.String()
}

func (p Plan) factKeys() []string {
	keys := make([]string, 0, len(p.Facts))
	for k := range p.Facts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Short is the first 12 hex digits, for messages.
func Short(hash string) string { return hash[:min(12, len(hash))] }

type State string

const (
	// Posting: created, its message not yet (completely) posted. Nobody
	// can decide it until SetMessage records the message: a request
	// exists for people only once they can see it.
	Posting State = "posting"
	// Unposted: its message could not be posted; it can never be decided.
	Unposted  State = "unposted"
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
	// Copies are further posts of the request message, with its full
	// plan, in other channels (approvals.channel); it may be decided there
	// too.
	Copies  []Copy `json:"copies,omitempty"`
	Process string `json:"process,omitempty"` // the bot process that started executing it
}

// Copy is one further post of a request message.
type Copy struct {
	Channel string `json:"channel"`
	TS      string `json:"ts"`
}

// Channels are where the request's plan was shown, and so where it may
// be approved or denied: its own channel first, then its copies.
func (r Request) Channels() []string {
	out := []string{r.Channel}
	for _, c := range r.Copies {
		if !slices.Contains(out, c.Channel) {
			out = append(out, c.Channel)
		}
	}
	return out
}

// NewID makes "req-" + 8 hex digits: short enough to type at 3 a.m.
func NewID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "req-" + hex.EncodeToString(b[:])
}

// New binds a request to plan. It starts Posting: nobody can decide it
// until its message is posted (Store.SetMessage).
func New(cmd string, plan Plan, requester, channel string, now time.Time, ttl time.Duration) Request {
	return Request{ID: NewID(), Command: cmd, Plan: plan, PlanHash: plan.Hash(), Requester: requester, Channel: channel,
		Created: now, Expires: now.Add(ttl), State: Posting}
}

// Decision is one person's approve or deny, and where it was given.
type Decision struct {
	User     string
	Channel  string // where the command was typed or the button clicked
	Approver bool   // the user is in roles.approvers
	Approve  bool   // false: deny
}

// Refusal is a user-facing reason a decision was not taken.
type Refusal struct{ Reason string }

func (r *Refusal) Error() string { return r.Reason }

func refuse(format string, a ...any) *Refusal { return &Refusal{Reason: fmt.Sprintf(format, a...)} }

// CheckDecision applies the two-person rule to one decision (approve or
// deny) at now. It is pure; Store.Decide calls it inside the conditional
// write that records the decision.
func CheckDecision(r Request, d Decision, now time.Time) *Refusal {
	user, approve := d.User, d.Approve
	verb := "deny"
	if approve {
		verb = "approve"
	}
	if ref := CheckChannel(r, d.Channel); ref != nil {
		return ref
	}
	switch r.State {
	case Posting:
		return refuse("request `%s` cannot be decided yet: its message is still being posted. Try again in a moment.", r.ID)
	case Unposted:
		return refuse("request `%s` was never shown in full (%s), so it cannot be approved or denied. Make a new request.", r.ID, r.Note)
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
	// A plan AWS would refuse is shown, never approved: the requester may
	// still withdraw it.
	if b := r.Plan.Blocked(); approve && b != "" {
		return refuse("request `%s` cannot be approved: its pre-flight failed: %s. Nothing was changed; fix that, then make a new request.", r.ID, b)
	}
	// The requester may withdraw their own request; nobody may approve it.
	if !approve && user == r.Requester {
		return nil
	}
	if !d.Approver {
		return refuse("only approvers (`roles.approvers`) may %s `%s`.", verb, r.ID)
	}
	if approve && user == r.Requester {
		return refuse("you requested `%s`; a second person must approve it.", r.ID)
	}
	return nil
}

// CheckChannel refuses a decision given anywhere but where the request's
// plan was shown: an approver approves what they can see, and the
// request's channel sees who decided it.
func CheckChannel(r Request, channel string) *Refusal {
	chans := r.Channels()
	if slices.Contains(chans, channel) {
		return nil
	}
	where := make([]string, len(chans))
	for i, c := range chans {
		where[i] = "<#" + c + ">"
	}
	return refuse("request `%s` can be approved or denied only in %s, where its plan was shown, not here. Nothing was changed.", r.ID, strings.Join(where, " or "))
}

// Expire reports whether a pending request is past its time.
func Expire(r Request, now time.Time) bool { return r.State == Pending && !now.Before(r.Expires) }

func encode(r Request) ([]byte, error) { return json.Marshal(r) }
