package slackio

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/slack-go/slack"

	"github.com/circlebot/circlebot/internal/config"
)

// rotating is Keys whose Refresh moves to the next token.
type rotating struct {
	mu        sync.Mutex
	tokens    []string
	i         int
	refreshes int
}

func (r *rotating) Slack() config.Secrets {
	r.mu.Lock()
	defer r.mu.Unlock()
	return config.Secrets{BotToken: config.NewSecret(r.tokens[r.i])}
}

func (r *rotating) Refresh(context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refreshes++
	if r.i < len(r.tokens)-1 {
		r.i++
	}
}

// The token in force reaches Slack in the form body and in the
// Authorization header (slack-go uses each, by method), never the
// stand-in; a rejected token is refreshed and the call sent once more.
func TestTheTokenInForceReplacesTheStandIn(t *testing.T) {
	var mu sync.Mutex
	accept := "xoxb-one"
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		if tok == "" {
			r.Body = io.NopCloser(strings.NewReader(string(body)))
			r.ParseForm()
			tok = r.PostForm.Get("token")
		}
		mu.Lock()
		seen = append(seen, tok)
		ok := tok == accept
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if !ok {
			io.WriteString(w, `{"ok": false, "error": "invalid_auth"}`)
			return
		}
		io.WriteString(w, `{"ok": true, "channel": "C1", "ts": "1.2", "user_id": "U1", "team_id": "T1"}`)
	}))
	defer srv.Close()
	keys := &rotating{tokens: []string{"xoxb-one", "xoxb-two"}}
	web := NewWebWith(keys, srv.URL+"/", slog.New(slog.NewTextHandler(io.Discard, nil)))

	if _, err := web.API.AuthTestContext(context.Background()); err != nil {
		t.Fatalf("auth.test with the token in force: %v", err)
	}
	if _, _, err := web.API.PostMessageContext(context.Background(), "C1", slack.MsgOptionText("hi", false)); err != nil {
		t.Fatalf("chat.postMessage: %v", err)
	}
	// Slack now takes only the next token: one refused call, then the same
	// call with the new token.
	mu.Lock()
	accept = "xoxb-two"
	mu.Unlock()
	if _, _, err := web.API.PostMessageContext(context.Background(), "C1", slack.MsgOptionText("again", false)); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	// A token nobody has: refused, refreshed to the same token, not sent
	// again; slack-go sees Slack's error.
	mu.Lock()
	accept = "xoxb-three"
	mu.Unlock()
	if _, _, err := web.API.PostMessageContext(context.Background(), "C1", slack.MsgOptionText("once more", false)); err == nil || !strings.Contains(err.Error(), "invalid_auth") {
		t.Errorf("with no good token: %v, want invalid_auth", err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{"xoxb-one", "xoxb-one", "xoxb-one", "xoxb-two", "xoxb-two"}
	if strings.Join(seen, ",") != strings.Join(want, ",") || keys.refreshes != 2 {
		t.Errorf("tokens sent %v (want %v), %d refreshes", seen, want, keys.refreshes)
	}
	for _, s := range seen {
		if strings.Contains(s, "in-force") {
			t.Errorf("the stand-in reached Slack: %s", s)
		}
	}
}
