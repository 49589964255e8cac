package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/circlebot/circlebot/internal/app"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/slackio"
	"github.com/circlebot/circlebot/internal/testenv/slackfake"
)

// socketSlack plays Slack's Socket Mode side: apps.connections.open hands
// out a WebSocket URL, the socket says hello and then delivers envelopes;
// every other Web API call goes on to the Slack fake.
type socketSlack struct {
	srv    *httptest.Server
	conns  chan *websocket.Conn
	appTok chan string
}

func newSocketSlack(t *testing.T, fake *slackfake.Server) *socketSlack {
	s := &socketSlack{conns: make(chan *websocket.Conn, 4), appTok: make(chan string, 4)}
	target, _ := url.Parse(fake.APIURL())
	proxy := httputil.NewSingleHostReverseProxy(target)
	// slack-go dials with Origin https://api.slack.com, which gorilla's
	// default same-origin check would refuse.
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	mux := http.NewServeMux()
	mux.HandleFunc("/apps.connections.open", func(w http.ResponseWriter, r *http.Request) {
		select {
		case s.appTok <- strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "):
		default: // reconnects after the first are not asserted on
		}
		json.NewEncoder(w).Encode(map[string]any{"ok": true, "url": "ws" + strings.TrimPrefix(s.srv.URL, "http") + "/link"})
	})
	mux.HandleFunc("/link", func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		c.WriteJSON(map[string]any{"type": "hello", "num_connections": 1})
		select {
		case s.conns <- c:
		default:
			c.Close()
		}
	})
	mux.Handle("/", proxy)
	s.srv = httptest.NewServer(mux)
	t.Cleanup(s.srv.Close)
	return s
}

func TestSocketModeAcksAndAnswers(t *testing.T) {
	t.Parallel()
	fake := slackfake.New()
	t.Cleanup(fake.Close)
	slack := newSocketSlack(t, fake)
	e := newEnv(t, nil) // seeds moto; its HTTP server is not used here
	cfg := e.app.Config
	cfg.DataDir = t.TempDir()
	cfg.Secrets = config.SecretsFromEnv(func(k string) string {
		return map[string]string{"SLACK_BOT_TOKEN": botToken, "SLACK_APP_TOKEN": "xapp-test", "SLACK_API_URL": slack.srv.URL + "/"}[k]
	})
	a, err := app.New(context.Background(), app.Options{Config: cfg, Version: "test", AWS: botAWS(t, e.moto.URL, e.aws, &cfg), Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()

	if tok := <-slack.appTok; tok != "xapp-test" {
		t.Fatalf("apps.connections.open with %q", tok)
	}
	var conn *websocket.Conn
	select {
	case conn = <-slack.conns:
	case <-time.After(30 * time.Second):
		t.Fatal("bot never opened the socket")
	}
	defer conn.Close()
	envelope := func(id, text string) {
		payload, _ := json.Marshal(map[string]string{
			"command": "/circleci", "text": text, "user_id": alice, "channel_id": incident, "team_id": "T0001",
			"trigger_id": "trig." + id, "response_url": fake.ResponseURL(id),
		})
		if err := conn.WriteJSON(map[string]any{"envelope_id": id, "type": "slash_commands", "payload": json.RawMessage(payload), "accepts_response_payload": true}); err != nil {
			t.Fatal(err)
		}
	}
	// Socket Mode without a signing secret serves no HTTP Slack endpoint:
	// a request signed with the empty key is not a way in.
	forged := "command=%2Fcircleci&text=status&user_id=" + alice + "&channel_id=" + incident
	req, _ := http.NewRequest(http.MethodPost, "http://"+ln.Addr().String()+"/slack/commands", strings.NewReader(forged))
	ts := fmt.Sprint(time.Now().Unix())
	req.Header.Set("X-Slack-Request-Timestamp", ts)
	req.Header.Set("X-Slack-Signature", slackio.SignatureHeader(nil, ts, []byte(forged)))
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode == http.StatusOK {
		t.Fatalf("forged HTTP command with no signing secret: %v %v", resp, err)
	}

	envelope("env-1", "status")
	envelope("env-1", "status") // Slack redelivers an envelope it saw no ack for in time

	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	acked := map[string]int{}
	for len(acked) < 1 || acked["env-1"] < 2 {
		var ack struct {
			EnvelopeID string `json:"envelope_id"`
		}
		if err := conn.ReadJSON(&ack); err != nil {
			t.Fatalf("waiting for acks: %v (got %v)", err, acked)
		}
		acked[ack.EnvelopeID]++
	}
	fake.WaitFor(t, 30*time.Second, "status posted after a Socket Mode slash command", func(c slackfake.Call) bool {
		return c.Method == "chat.postMessage" && strings.Contains(fake.Text(c), e.inst.ServicesBox.ID)
	})
	envelope("env-2", "restore snap-xyz")
	fake.WaitFor(t, 30*time.Second, "usage error through the response_url", func(c slackfake.Call) bool {
		return c.Method == "response_url" && c.ResponseID == "env-2" && strings.Contains(fake.Text(c), "is not a snapshot ID")
	})
	posts := 0
	for _, c := range fake.Calls() {
		if c.Method == "chat.postMessage" {
			posts++
		}
	}
	if posts != 1 {
		t.Errorf("a redelivered envelope ran %d times", posts)
	}
}
