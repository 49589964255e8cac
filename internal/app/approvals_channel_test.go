package app_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/circlebot/circlebot/internal/approvals"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/testenv/slackfake"
)

const (
	ops_      = "C0OPS"     // another channel the bot serves
	approveCh = "C0APPROVE" // approvals.channel, when set
)

// alsoIn lets the bot take commands in the other channels too.
func alsoIn(c *config.Config) {
	c.Slack.AllowedChannels = []string{incident, ops_, approveCh}
}

// clickIn clicks a request's button on the message in channel.
func (e *env) clickIn(user, channel, value, trigger string) {
	e.t.Helper()
	payload, _ := json.Marshal(map[string]any{
		"type": "block_actions", "trigger_id": trigger,
		"user": map[string]string{"id": user}, "channel": map[string]string{"id": channel}, "team": map[string]string{"id": "T0001"},
		"response_url": e.slack.ResponseURL(trigger),
		"actions":      []map[string]string{{"action_id": approvalButtonID(value), "block_id": "approval", "value": value, "type": "button"}},
	})
	if r := e.post("/slack/interactions", url.Values{"payload": {string(payload)}}.Encode(), time.Now(), signingSecret); r.StatusCode != http.StatusOK {
		e.t.Fatalf("click: HTTP %d", r.StatusCode)
	}
}

func (e *env) requestState(id string) approvals.State {
	e.t.Helper()
	r, err := e.app.Approvals.Store.Get(e.t.Context(), id)
	if err != nil {
		e.t.Fatal(err)
	}
	return r.State
}

// An approval (or denial) from a channel where the plan was not shown is
// refused, naming the request's channel, and changes nothing: the request
// stays pending, nothing is deleted, the refusals are audited, and the
// approver in the request's channel can still approve it.
func TestApprovalFromAnotherChannelIsRefusedAndChangesNothing(t *testing.T) {
	e, _, made := pruneEnv(t, alsoIn)
	older := made[0]
	id := e.requestPrune()

	rid := e.slash(bob, ops_, "approve "+id)
	if s := e.slack.Text(e.waitResponse(rid, "approval from #ops")); !strings.Contains(s, "only in <#"+incident+">") || !strings.Contains(s, "Nothing was changed") {
		t.Errorf("approval from another channel: %s", s)
	}
	e.clickIn(bob, ops_, "approve "+id, "elsewhere.1")
	if s := e.slack.Text(e.waitResponse("elsewhere.1", "click in #ops")); !strings.Contains(s, "only in <#"+incident+">") {
		t.Errorf("click in another channel: %s", s)
	}
	rid = e.slash(bob, ops_, "deny "+id)
	if s := e.slack.Text(e.waitResponse(rid, "denial from #ops")); !strings.Contains(s, "only in <#"+incident+">") {
		t.Errorf("denial from another channel: %s", s)
	}
	e.server.Wait()
	if st := e.requestState(id); st != approvals.Pending {
		t.Fatalf("a refused decision moved the request to %s", st)
	}
	if n := realCount(e.proxy, "DeleteSnapshot"); n != 0 {
		t.Fatalf("%d snapshots deleted by decisions from another channel", n)
	}
	for _, c := range e.slack.Calls() {
		if c.Method == "chat.update" && strings.Contains(e.slack.Text(c), id) {
			t.Errorf("the request message changed: %s", e.slack.Text(c))
		}
	}
	hist, _ := e.app.Store.History(t.Context(), 50)
	refused := 0
	for _, h := range hist {
		if h.Channel == ops_ && (h.Command == "approve "+id || h.Command == "deny "+id) && h.Outcome == "refused" && strings.Contains(h.Detail, "<#"+incident+">") {
			refused++
		}
	}
	if refused != 3 {
		t.Errorf("want 3 audited refusals from #ops, got %d", refused)
	}

	e.slash(bob, incident, "approve "+id)
	e.server.Wait()
	if n := len(e.snapshotsOf(older.ID)); n != 0 {
		t.Errorf("the approval in the request's channel left %d snapshots", n)
	}
}

// With approvals.channel set, the request is shown there too (with its
// buttons) and approved there; its progress and result go to the
// request's channel, and both request messages say how it ended.
func TestApprovalsChannelApprovesAndTheResultGoesToTheRequestChannel(t *testing.T) {
	e, _, made := pruneEnv(t, alsoIn, func(c *config.Config) { c.Approvals.Channel = approveCh })
	older := made[0]
	id := e.requestPrune()
	e.waitPost(approveCh, "the request shown in the approvals channel", func(s string) bool {
		return strings.Contains(s, "/circleci approve "+id) && strings.Contains(s, older.ID)
	})
	rid := e.slash(bob, ops_, "approve "+id)
	if s := e.slack.Text(e.waitResponse(rid, "approval from #ops")); !strings.Contains(s, "only in <#"+incident+"> or <#"+approveCh+">") {
		t.Errorf("approval from a third channel: %s", s)
	}
	e.server.Wait()
	before := len(e.slack.Calls())

	e.clickIn(bob, approveCh, "approve "+id, "approvers.1")
	e.server.Wait()
	if n := len(e.snapshotsOf(older.ID)); n != 0 {
		t.Fatalf("approved in the approvals channel, %d snapshots left", n)
	}
	e.slack.WaitFor(t, 30*time.Second, "the result in the request's channel", func(c slackfake.Call) bool {
		return c.Channel == incident && (c.Method == "chat.postMessage" || c.Method == "chat.update") && strings.Contains(e.slack.Text(c), "Retention pruned "+older.ID)
	})
	after := e.slack.Calls()[before:]
	updated := map[string]bool{}
	for _, c := range after {
		txt := e.slack.Text(c)
		switch c.Method {
		case "chat.postMessage":
			if c.Channel != incident {
				t.Errorf("posted in %s after the approval: %s", c.Channel, txt)
			}
		case "chat.update":
			if strings.Contains(txt, "`"+id+"`") && strings.Contains(txt, "Approved by <@"+bob+">") {
				updated[c.Channel] = true
			}
			if c.Channel != incident && strings.Contains(txt, "Retention pruned") {
				t.Errorf("the result went to %s", c.Channel)
			}
		}
	}
	if !updated[incident] || !updated[approveCh] {
		t.Errorf("request messages updated in %v, want both channels", updated)
	}
	if st := e.requestState(id); st != approvals.Done {
		t.Errorf("request %s", st)
	}
}

// A request whose message cannot be posted is never open: the requester
// is told, and an approval finds nothing to approve.
func TestUnpostedRequestLeavesNothingApprovable(t *testing.T) {
	e, _, _ := pruneEnv(t)
	e.slack.FailNext("chat.postMessage", 1, 0, 0, "msg_too_long")
	rid := e.slash(alice, incident, "backup prune")
	told := e.slack.Text(e.waitResponse(rid, "the requester told"))
	e.server.Wait()
	all, err := e.app.Approvals.Store.All(t.Context())
	if err != nil || len(all) != 1 {
		t.Fatalf("%d requests, %v", len(all), err)
	}
	r := all[0]
	if r.State != approvals.Unposted || !strings.Contains(told, r.ID) || !strings.Contains(told, "msg_too_long") || !strings.Contains(told, "Nobody can approve it") {
		t.Fatalf("request %s; the requester was told: %s", r.State, told)
	}
	rid = e.slash(bob, incident, "approve "+r.ID)
	if s := e.slack.Text(e.waitResponse(rid, "approval of an unposted request")); !strings.Contains(s, "never shown in full") {
		t.Errorf("approval of an unposted request: %s", s)
	}
	e.server.Wait()
	if n := realCount(e.proxy, "DeleteSnapshot"); n != 0 || e.requestState(r.ID) != approvals.Unposted {
		t.Fatalf("%d snapshots deleted; request %s", n, e.requestState(r.ID))
	}
}

// `secret` approved in the approvals channel is shown to the requester
// only, in the channel they asked in; the approvals channel gets nothing
// of it.
func TestSecretApprovedElsewhereReachesTheRequesterInTheirChannel(t *testing.T) {
	f := newFailoverEnv(t, func(c *config.Config) {
		alsoIn(c)
		c.Approvals.Channel = approveCh
	})
	token := f.ssm.Box(f.inst.ServicesBox.ID).SecretToken()
	req := f.request(alice, "secret")
	f.clickIn(bob, approveCh, "approve "+req, "sec.elsewhere")
	f.waitText("notice in the request's channel", "shown to <@"+alice+"> only")
	f.server.Wait()
	got := 0
	for _, c := range f.slack.Calls() {
		if !strings.Contains(f.slack.Text(c)+c.BlocksJSON, token) {
			continue
		}
		if c.Method != "chat.postEphemeral" || c.User != alice || c.Channel != incident {
			t.Errorf("the passphrase went to %s (user %q, channel %s)", c.Method, c.User, c.Channel)
		}
		got++
	}
	if got != 1 {
		t.Errorf("the requester got the passphrase %d times, want 1", got)
	}
}
