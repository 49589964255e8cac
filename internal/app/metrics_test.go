package app_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/slackio"
)

// /metrics is not served where Slack reaches the bot (that listener is
// public in HTTP mode): it has a listener of its own, metrics.listen,
// which asks for BOT_METRICS_TOKEN when set, counts the commands that came
// in on the public one, and shuts down with the rest.
func TestMetricsOnTheirOwnListener(t *testing.T) {
	e := newEnv(t, nil)
	cfg := e.app.Config
	cfg.DataDir = t.TempDir()
	cfg.Listen, cfg.Metrics.Listen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Secrets.MetricsToken = config.NewSecret("scrape-token")
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	a := reopen(t, e, cfg)

	// A metrics address that cannot be had fails start-up, naming the key.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a.Config.Metrics.Listen = busy.Addr().String()
	if _, err := a.Listen(); err == nil || !strings.Contains(err.Error(), "metrics.listen") {
		t.Fatalf("busy metrics.listen: %v", err)
	}
	busy.Close()
	a.Config.Metrics.Listen = cfg.Metrics.Listen

	ls, err := a.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	served := make(chan error, 1)
	go func() { served <- a.ServeAll(ctx, ls) }()
	public := "http://" + ls.Slack.Addr().String()
	metrics := "http://" + ls.Metrics.Addr().String()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	do := func(method, url, token, body string) (int, string, error) {
		req, _ := http.NewRequest(method, url, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		if method == http.MethodPost {
			ts := strconv.FormatInt(time.Now().Unix(), 10)
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("X-Slack-Request-Timestamp", ts)
			req.Header.Set("X-Slack-Signature", slackio.SignatureHeader([]byte(signingSecret), ts, []byte(body)))
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	want := func(method, url, token, body string, code int) string {
		t.Helper()
		got, text, err := do(method, url, token, body)
		if err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
		if got != code {
			t.Fatalf("%s %s (token %q): HTTP %d, want %d: %s", method, url, token, got, code, text)
		}
		return text
	}

	// The public listener: Slack's endpoints and /healthz, no metrics.
	want("GET", public+"/healthz", "", "", http.StatusOK)
	want("GET", public+"/metrics", "", "", http.StatusNotFound)
	want("GET", public+"/metrics", "scrape-token", "", http.StatusNotFound)
	form, _ := e.slashForm(alice, incident, "help")
	want("POST", public+"/slack/commands", "", form.Encode(), http.StatusOK)

	// The metrics listener: /metrics alone, with the token.
	want("GET", metrics+"/metrics", "", "", http.StatusUnauthorized)
	want("GET", metrics+"/metrics", "scrape-tokeN", "", http.StatusUnauthorized)
	want("GET", metrics+"/metrics", "scrape-token-and-more", "", http.StatusUnauthorized)
	want("GET", metrics+"/healthz", "", "", http.StatusNotFound)
	want("POST", metrics+"/slack/commands", "", form.Encode(), http.StatusNotFound)
	count := `circlebot_commands_total{command="help",outcome="ok"} 1`
	deadline := time.Now().Add(30 * time.Second)
	for text := want("GET", metrics+"/metrics", "scrape-token", "", http.StatusOK); !strings.Contains(text, count); {
		if time.Now().After(deadline) {
			t.Fatalf("the metrics listener never counted the help command from the public one:\n%s", text)
		}
		time.Sleep(20 * time.Millisecond) // poll interval
		text = want("GET", metrics+"/metrics", "scrape-token", "", http.StatusOK)
	}

	stop()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("serve did not return after its context ended")
	}
	for _, u := range []string{public + "/healthz", metrics + "/metrics"} {
		if _, _, err := do("GET", u, "scrape-token", ""); err == nil {
			t.Errorf("%s still answers after shutdown", u)
		}
	}
}
