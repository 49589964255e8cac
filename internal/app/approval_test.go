package app_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/slackio"
	"github.com/circlebot/circlebot/internal/testenv/slackfake"
)

var reqIDRE = regexp.MustCompile(`/circleci approve (req-[0-9a-f]{8})`)

// pruneEnv has two completed bot backups, so keep_last 1 leaves one to
// prune. edits change the config further.
func pruneEnv(t *testing.T, edits ...func(*config.Config)) (*env, *atomic.Int64, []*ops.Backup) {
	t.Helper()
	e := newEnv(t, func(c *config.Config) {
		c.Roles.Viewers = []string{vera}
		c.Backup.Retention.KeepLast = 1
		for _, edit := range edits {
			edit(c)
		}
	})
	var skew atomic.Int64
	e.app.Approvals.Now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	var made []*ops.Backup
	for range 2 {
		before := len(e.slack.Messages(incident))
		e.slash(alice, incident, "backup now")
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if recs, _ := e.app.Backups.Records.Backups(t.Context()); len(recs) == len(made)+1 && recs[0].State == ops.StateCompleted {
				made = append(made, recs[0])
				break
			}
		}
		e.server.Wait()
		if len(e.slack.Messages(incident)) == before {
			t.Fatal("no backup message")
		}
	}
	if len(made) != 2 {
		t.Fatalf("made %d backups", len(made))
	}
	return e, &skew, made
}

// requestPrune asks for a prune and returns the request ID from the message.
func (e *env) requestPrune() string {
	e.t.Helper()
	seen := map[string]bool{}
	for _, c := range e.slack.Calls() {
		if m := reqIDRE.FindStringSubmatch(e.slack.Text(c)); m != nil {
			seen[m[1]] = true
		}
	}
	e.slash(alice, incident, "backup prune")
	c := e.waitPost(incident, "approval request", func(s string) bool {
		m := reqIDRE.FindStringSubmatch(s)
		return strings.Contains(s, "Approval needed") && m != nil && !seen[m[1]]
	})
	e.server.Wait()
	return reqIDRE.FindStringSubmatch(e.slack.Text(c))[1]
}

// approvalButtonID is the action ID of the request message's button that
// carries value ("approve req-…" or "deny req-…").
func approvalButtonID(value string) string {
	verb, _, _ := strings.Cut(value, " ")
	return slackio.ButtonID(verb)
}

func (e *env) click(user, value, trigger string) {
	e.t.Helper()
	payload, _ := json.Marshal(map[string]any{
		"type": "block_actions", "trigger_id": trigger,
		"user": map[string]string{"id": user}, "channel": map[string]string{"id": incident}, "team": map[string]string{"id": "T0001"},
		"response_url": e.slack.ResponseURL(trigger),
		"actions":      []map[string]string{{"action_id": approvalButtonID(value), "block_id": "approval", "value": value, "type": "button"}},
	})
	if r := e.post("/slack/interactions", url.Values{"payload": {string(payload)}}.Encode(), time.Now(), signingSecret); r.StatusCode != http.StatusOK {
		e.t.Fatalf("click: HTTP %d", r.StatusCode)
	}
}

func TestPruneNeedsASecondPersonAndRunsOnce(t *testing.T) {
	t.Parallel()
	e, _, made := pruneEnv(t)
	older, newer := made[0], made[1]

	rid := e.slash(alice, incident, "backup prune --dry-run")
	dry := e.slack.Text(e.waitResponse(rid, "dry run"))
	if !strings.Contains(dry, "Dry run") || !strings.Contains(dry, older.ID) || strings.Contains(dry, "approve req-") {
		t.Errorf("dry run: %s", dry)
	}
	id := e.requestPrune()

	rid = e.slash(alice, incident, "approve "+id)
	if s := e.slack.Text(e.waitResponse(rid, "self-approval")); !strings.Contains(s, "approver role") && !strings.Contains(s, "second person") {
		t.Errorf("self approval: %s", s)
	}
	rid = e.slash(vera, incident, "approve "+id)
	if s := e.slack.Text(e.waitResponse(rid, "viewer approval")); !strings.Contains(s, "approver role") {
		t.Errorf("viewer approval: %s", s)
	}
	e.server.Wait()
	if n := len(e.snapshotsOf(older.ID)); n != 3 {
		t.Fatalf("refused approvals deleted snapshots: %d left", n)
	}

	// Two approvers' clicks race; one runs.
	e.click(bob, "approve "+id, "trig.a")
	e.click(bob, "approve "+id, "trig.b")
	e.server.Wait()
	if n := len(e.snapshotsOf(older.ID)); n != 0 {
		t.Errorf("approved prune left %d snapshots of %s", n, older.ID)
	}
	if n := len(e.snapshotsOf(newer.ID)); n != 3 {
		t.Errorf("the newest restore point lost snapshots: %d left", n)
	}
	if n := realCount(e.proxy, "DeleteSnapshot"); n != 3 {
		t.Errorf("DeleteSnapshot called %d times, want 3 (one execution)", n)
	}
	e.slack.WaitFor(t, 30*time.Second, "second click refused", func(c slackfake.Call) bool {
		return c.Method == "response_url" && strings.Contains(e.slack.Text(c), "one decision per request")
	})
	e.slack.WaitFor(t, 30*time.Second, "request message updated", func(c slackfake.Call) bool {
		return c.Method == "chat.update" && strings.Contains(e.slack.Text(c), "Approved by <@"+bob+">")
	})
	hist, _ := e.app.Store.History(t.Context(), 50)
	decisions := 0
	for _, h := range hist {
		if strings.HasPrefix(h.Command, "approve ") {
			decisions++
		}
	}
	if decisions != 4 {
		t.Errorf("want 4 audited approve attempts, got %d", decisions)
	}
}

func TestApprovalIsRefusedWhenThePlanChangedOrExpired(t *testing.T) {
	t.Parallel()
	e, skew, made := pruneEnv(t)
	id := e.requestPrune()
	// A newer backup changes what retention would delete.
	e.slash(alice, incident, "backup now")
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if recs, _ := e.app.Backups.Records.Backups(t.Context()); len(recs) == 3 && recs[0].State == ops.StateCompleted {
			break
		}
	}
	e.server.Wait()
	e.slash(bob, incident, "approve "+id)
	e.waitPost(incident, "plan-changed refusal", func(s string) bool { return strings.Contains(s, "the plan changed since it was approved") })
	e.server.Wait()
	for _, b := range made {
		if n := len(e.snapshotsOf(b.ID)); n != 3 {
			t.Errorf("a refused plan deleted snapshots of %s", b.ID)
		}
	}

	id2 := e.requestPrune()
	skew.Store(int64(31 * time.Minute))
	rid := e.slash(bob, incident, "approve "+id2)
	if s := e.slack.Text(e.waitResponse(rid, "expired")); !strings.Contains(s, "expired") {
		t.Errorf("expired approval: %s", s)
	}
	rid = e.slash(bob, incident, "deny "+id2)
	if s := e.slack.Text(e.waitResponse(rid, "expired deny")); !strings.Contains(s, "cannot be revived") {
		t.Errorf("deny after expiry: %s", s)
	}
	e.server.Wait()
	if n := realCount(e.proxy, "DeleteSnapshot"); n != 0 {
		t.Errorf("%d snapshots deleted by refused requests", n)
	}
}
