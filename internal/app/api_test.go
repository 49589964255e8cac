package app_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/circlebot/circlebot/internal/app"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/engine"
	"github.com/circlebot/circlebot/internal/store"
	"github.com/circlebot/circlebot/internal/testenv/motoserver"
)

const (
	apiToken      = "test-api-token-0123456789"
	reportChannel = "C0REPORT"
)

func newAPIEnv(t *testing.T) *env {
	t.Helper()
	return newEnvOn(t, motoserver.ForTest(t), func(c *config.Config) {
		c.Secrets.APIToken = config.NewSecret(apiToken)
		c.Slack.ReportChannel = reportChannel
	})
}

// api sends one request to the bot's listener and decodes its JSON answer.
func (e *env) api(method, path, token, key, body string) (int, map[string]any) {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.http.URL+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusNotFound && ct != "application/json" {
		e.t.Errorf("%s %s: Content-Type %q, want JSON: %s", method, path, ct, raw)
	}
	out := map[string]any{}
	if err := json.Unmarshal(raw, &out); err != nil && resp.StatusCode != http.StatusNotFound {
		e.t.Errorf("%s %s: answer is not JSON: %s", method, path, raw)
	}
	return resp.StatusCode, out
}

// waitBackupState polls GET /api/v1/backups/<id> until the state is final.
func (e *env) waitBackupState(id string) map[string]any {
	e.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		code, st := e.api("GET", "/api/v1/backups/"+id, apiToken, "", "")
		if code != http.StatusOK {
			e.t.Fatalf("GET %s: HTTP %d %v", id, code, st)
		}
		switch st["state"] {
		case "completed", "failed", "interrupted":
			return st
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.t.Fatalf("backup %s did not end", id)
	return nil
}

// The backup API: the bearer token is required (missing or wrong: 401,
// and nothing runs); a bad body is a 400 that says what is wrong; a good
// request is a 202 with the backup's ID, announced in the report channel
// with the reason and the caller, and GET follows it to completed. The
// same Idempotency-Key gives the same backup, and another request under
// it is refused.
func TestBackupAPIAuthenticatesValidatesAndReplays(t *testing.T) {
	e := newAPIEnv(t)
	good := `{"reason": "before the upgrade to 2.x", "method": "ebs", "caller": "ci-job-42"}`
	for _, tok := range []string{"", "wrong-token", apiToken + "x"} {
		if code, out := e.api("POST", "/api/v1/backups", tok, "", good); code != http.StatusUnauthorized || out["error"] == nil {
			t.Errorf("token %q: HTTP %d %v, want 401 with an error", tok, code, out)
		}
	}
	if code, _ := e.api("GET", "/api/v1/backups/bk-20260101-000000-abcd", "nope", "", ""); code != http.StatusUnauthorized {
		t.Errorf("GET with a wrong token: HTTP %d", code)
	}
	for body, want := range map[string]string{
		`not json`:                             "must be JSON",
		`{"method": "ebs"}`:                    `"reason" is required`,
		`{"reason": "x", "method": "zfs"}`:     `"method" "zfs" must be "ebs" or "tarball"`,
		`{"reason": "x", "method": "tarball"}`: "backup.bucket",
		`{"reason": "x", "extra": 1}`:          "unknown field",
		`{"reason": "two\nlines"}`:             "one line",
		`{"reason": "x"} {"reason": "y"}`:      "one JSON object",
	} {
		code, out := e.api("POST", "/api/v1/backups", apiToken, "", body)
		if msg, _ := out["error"].(string); code != http.StatusBadRequest || !strings.Contains(msg, want) {
			t.Errorf("%s: HTTP %d %v, want 400 saying %q", body, code, out, want)
		}
	}
	if code, out := e.api("GET", "/api/v1/backups/snap-1", apiToken, "", ""); code != http.StatusBadRequest {
		t.Errorf("GET of a malformed ID: HTTP %d %v", code, out)
	}
	if code, _ := e.api("GET", "/api/v1/backups/bk-20260101-000000-abcd", apiToken, "", ""); code != http.StatusNotFound {
		t.Errorf("GET of an unknown backup: HTTP %d", code)
	}
	if n := countCalls(e.proxy.Calls(), "CreateSnapshots"); n != 0 {
		t.Fatalf("refused requests made %d snapshot sets", n)
	}

	code, out := e.api("POST", "/api/v1/backups", apiToken, "deploy-7", good)
	id, _ := out["id"].(string)
	if code != http.StatusAccepted || !strings.HasPrefix(id, "bk-") {
		t.Fatalf("POST: HTTP %d %v", code, out)
	}
	st := e.waitBackupState(id)
	if st["state"] != "completed" || st["reason"] != "before the upgrade to 2.x" || st["method"] != "ebs" {
		t.Errorf("state: %v", st)
	}
	ann := e.waitPost(reportChannel, "announcement", func(s string) bool {
		return strings.Contains(s, id) && strings.Contains(s, "requested through the API")
	})
	if txt := e.slack.Text(ann); !strings.Contains(txt, "ci-job-42") || !strings.Contains(txt, "before the upgrade to 2.x") {
		t.Errorf("announcement: %s", txt)
	}

	// Replayed: the same backup, nothing new in AWS.
	e.proxy.Reset()
	code, again := e.api("POST", "/api/v1/backups", apiToken, "deploy-7", good)
	if code != http.StatusAccepted || again["id"] != id || again["replayed"] != true || again["state"] != "completed" {
		t.Errorf("replay: HTTP %d %v, want 202 with %s", code, again, id)
	}
	if code, other := e.api("POST", "/api/v1/backups", apiToken, "deploy-7", `{"reason": "something else"}`); code != http.StatusUnprocessableEntity || !strings.Contains(other["error"].(string), id) {
		t.Errorf("the key with another request: HTTP %d %v", code, other)
	}
	e.server.Wait()
	if n := countCalls(e.proxy.Calls(), "CreateSnapshots"); n != 0 {
		t.Errorf("a replayed key made %d more snapshot sets", n)
	}
	recs, err := e.app.Backups.Records.Backups(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range recs {
		if r.Trigger == "api" {
			n++
			if r.Reason != "before the upgrade to 2.x" || !strings.Contains(r.Requester, "ci-job-42") {
				t.Errorf("record: reason %q, requester %q", r.Reason, r.Requester)
			}
		}
	}
	if n != 1 {
		t.Errorf("%d API backups recorded, want 1", n)
	}
}

// While another operation holds the Services box the API answers 409
// with what holds it, and nothing runs; the Idempotency-Key of a refused
// request is free again, and the same request succeeds once the box is.
func TestBackupAPIConflictWhileTheBoxIsHeld(t *testing.T) {
	e := newAPIEnv(t)
	unlock, err := e.app.Store.TryLock(t.Context(), store.Lock{Key: engine.BoxLock(e.app.Config.ServicesBox.NameTag), OpID: "op-20260101-000000-beef", What: "restore", Requester: alice, Process: e.app.Store.Process()})
	if err != nil {
		t.Fatal(err)
	}
	body := `{"reason": "terraform apply"}`
	code, out := e.api("POST", "/api/v1/backups", apiToken, "tf-1", body)
	if msg, _ := out["error"].(string); code != http.StatusConflict || !strings.Contains(msg, "op-20260101-000000-beef") {
		t.Errorf("while held: HTTP %d %v, want 409 naming the operation", code, out)
	}
	if n := countCalls(e.proxy.Calls(), "CreateSnapshots"); n != 0 {
		t.Errorf("a refused backup made %d snapshot sets", n)
	}
	if err := unlock(); err != nil {
		t.Fatal(err)
	}
	code, out = e.api("POST", "/api/v1/backups", apiToken, "tf-1", body)
	if code != http.StatusAccepted || out["replayed"] == true {
		t.Fatalf("after the box is free: HTTP %d %v", code, out)
	}
	if st := e.waitBackupState(out["id"].(string)); st["state"] != "completed" {
		t.Errorf("state %v", st)
	}
	e.server.Wait()
}

// Without BOT_API_TOKEN the API is not served at all.
func TestBackupAPIOffWithoutAToken(t *testing.T) {
	e := newEnv(t, nil)
	if code, _ := e.api("POST", "/api/v1/backups", "", "", `{"reason": "x"}`); code != http.StatusNotFound {
		t.Errorf("POST without a configured token: HTTP %d, want 404", code)
	}
}

// An Idempotency-Key is kept for a day: after that it names a new
// request (a new backup, not a 422 for "another request"), and the
// leader's sweep deletes the API's records past their day — none sooner.
func TestBackupAPIRecordsExpireAfterADay(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	ctx := t.Context()
	kvs := e.app.Store.KV()
	ref := sha256.Sum256([]byte("deploy-old"))
	stale, _ := json.Marshal(map[string]any{"id": "bk-20250101-000000-abcd", "request": "another request", "created": time.Now().Add(-25 * time.Hour)})
	if _, err := kvs.Put(ctx, "api-idempotency", hex.EncodeToString(ref[:]), stale, 0); err != nil {
		t.Fatal(err)
	}
	code, out := e.api("POST", "/api/v1/backups", apiToken, "deploy-old", `{"reason": "nightly"}`)
	id, _ := out["id"].(string)
	if code != http.StatusAccepted || id == "" || id == "bk-20250101-000000-abcd" || out["replayed"] == true {
		t.Fatalf("a day-old key: HTTP %d %v, want 202 with a new backup", code, out)
	}
	if st := e.waitBackupState(id); st["state"] != "completed" {
		t.Errorf("state: %v", st)
	}
	e.server.Wait()
	if n, err := app.SweepAPIRecords(ctx, kvs, time.Now()); err != nil || n != 0 {
		t.Fatalf("a sweep now deleted %d records (%v), want none", n, err)
	}
	if code, again := e.api("POST", "/api/v1/backups", apiToken, "deploy-old", `{"reason": "nightly"}`); code != http.StatusAccepted || again["id"] != id || again["replayed"] != true {
		t.Errorf("replay within the day: HTTP %d %v", code, again)
	}
	n, err := app.SweepAPIRecords(ctx, kvs, time.Now().Add(25*time.Hour))
	if err != nil || n != 2 {
		t.Fatalf("a sweep a day later deleted %d records (%v), want 2 (the key and the API's backup record)", n, err)
	}
	for _, table := range []string{"api-idempotency", "api-backups"} {
		if items, err := kvs.List(ctx, table); err != nil || len(items) != 0 {
			t.Errorf("%s after the sweep: %d items (%v)", table, len(items), err)
		}
	}
	// The backup itself is still there to GET, from its own record.
	if code, st := e.api("GET", "/api/v1/backups/"+id, apiToken, "", ""); code != http.StatusOK || st["state"] != "completed" {
		t.Errorf("GET after the sweep: HTTP %d %v", code, st)
	}
}
