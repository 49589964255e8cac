package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"

	"github.com/circlebot/circlebot/internal/slackio"
	"github.com/circlebot/circlebot/internal/testenv/motoserver"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Issue 17: `bot serve` with SLACK_SECRET_ARN and no Slack token in the
// environment starts on the secret's tokens; after the secret is rotated,
// a SIGHUP makes the running process read it again (its log says so) and
// verify requests with the new signing secret, without a restart. No
// token or secret is ever in its output.
func TestServeReadsTheSlackSecretAndReloadsItOnSIGHUP(t *testing.T) {
	moto := motoserver.ForTest(t)
	awsAtMoto(t, moto)
	sm := secretsmanager.NewFromConfig(motoserver.AWSConfig(moto.URL))
	doc := func(bot, signing string) *string {
		b, _ := json.Marshal(map[string]string{"bot_token": bot, "signing_secret": signing})
		return aws.String(string(b))
	}
	created, err := sm.CreateSecret(t.Context(), &secretsmanager.CreateSecretInput{Name: aws.String("circlebot/slack"), SecretString: doc("xoxb-first-token", "first-signing-secret")})
	if err != nil {
		t.Fatal(err)
	}
	arn := aws.ToString(created.ARN)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	public := ln.Addr().String()
	ln.Close()
	cfg := filepath.Join(t.TempDir(), "bot.yaml")
	raw := "listen: " + public + "\nmetrics:\n  listen: \"\"\ndata_dir: " + filepath.Join(t.TempDir(), "data") +
		"\nslack:\n  allowed_channels: [C0INCIDENT]\nroles:\n  viewers: [U0ALICE]\n"
	if err := os.WriteFile(cfg, []byte(raw), 0o600); err != nil {
		t.Fatal(err)
	}
	env := func(k string) string {
		switch k {
		case "SLACK_SECRET_ARN":
			return arn
		case "SLACK_API_URL":
			return "http://127.0.0.1:1/" // nothing is posted
		case "SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN":
			return ""
		}
		return os.Getenv(k)
	}
	var out bytes.Buffer
	errOut := &syncBuffer{}
	if err := checkConfig(cfg, env, &out); err != nil || !strings.Contains(out.String(), arn) {
		t.Fatalf("check-config with SLACK_SECRET_ARN alone: %v\n%s", err, out.String())
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"serve", "--config", cfg}, env, nil, &out, errOut) }()

	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	// Only whether the signature is taken matters: the reply goes to a
	// response_url that points nowhere.
	signed := func(secret string) int {
		body := url.Values{"command": {"/circleci"}, "text": {"help"}, "user_id": {"U0ALICE"}, "channel_id": {"C0INCIDENT"},
			"team_id": {"T0001"}, "trigger_id": {strconv.FormatInt(time.Now().UnixNano(), 10)}}.Encode()
		req, _ := http.NewRequest(http.MethodPost, "http://"+public+"/slack/commands", strings.NewReader(body))
		ts := strconv.FormatInt(time.Now().Unix(), 10)
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("X-Slack-Request-Timestamp", ts)
		req.Header.Set("X-Slack-Signature", slackio.SignatureHeader([]byte(secret), ts, []byte(body)))
		resp, err := client.Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	deadline := time.Now().Add(60 * time.Second)
	for signed("first-signing-secret") != http.StatusOK {
		select {
		case err := <-done:
			t.Fatalf("serve ended: %v\n%s", err, errOut.String())
		case <-time.After(20 * time.Millisecond): // poll interval
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve never took a request signed with the secret's signing secret\n%s", errOut.String())
		}
	}

	if _, err := sm.PutSecretValue(t.Context(), &secretsmanager.PutSecretValueInput{SecretId: aws.String(arn), SecretString: doc("xoxb-second-token", "second-signing-secret")}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(30 * time.Second)
	// The second read (the first was at start) with both fields changed.
	reread := func() bool {
		lines := strings.Split(errOut.String(), "\n")
		n := 0
		for _, l := range lines {
			if strings.Contains(l, `"msg":"Slack secret read"`) {
				n++
				if n == 2 {
					return strings.Contains(l, `"changed":"bot_token,signing_secret"`)
				}
			}
		}
		return false
	}
	for !reread() {
		if time.Now().After(deadline) {
			t.Fatalf("no second read of the secret after SIGHUP:\n%s", errOut.String())
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
	if code := signed("second-signing-secret"); code != http.StatusOK {
		t.Errorf("signed with the rotated secret after SIGHUP: HTTP %d", code)
	}
	if code := signed("first-signing-secret"); code != http.StatusUnauthorized {
		t.Errorf("signed with the old secret after SIGHUP: HTTP %d, want 401", code)
	}
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v\n%s", err, errOut.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("serve did not stop")
	}
	for _, s := range []string{"xoxb-first-token", "first-signing-secret", "xoxb-second-token", "second-signing-secret"} {
		if strings.Contains(errOut.String()+out.String(), s) {
			t.Errorf("output shows a Slack secret (%s…)", s[:5])
		}
	}
}
