package app_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"

	"github.com/circlebot/circlebot/internal/app"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/slackcreds"
	"github.com/circlebot/circlebot/internal/testenv/motoserver"
	"github.com/circlebot/circlebot/internal/testenv/slackfake"
)

// lockedBuffer is a log sink the bot's goroutines and the test share.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func slackSecretJSON(t *testing.T, bot, signing string) string {
	t.Helper()
	b, err := json.Marshal(map[string]string{"bot_token": bot, "signing_secret": signing})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Issue 17: with SLACK_SECRET_ARN the bot takes its Slack tokens from that
// Secrets Manager secret (moto's, read with the bot's own credentials and
// judged by iamcheck against SlackTokensFromSecretsManager), and a
// rotation needs no restart: a request signed with the new signing secret
// makes it read the secret again and is taken; a bot token Slack rejects
// (invalid_auth from slackfake, the old token revoked) makes it read the
// secret again and send the call once more with the new token. No token
// reaches the log.
func TestSlackTokensFromSecretsManagerRotateWithoutRestart(t *testing.T) {
	t.Parallel()
	moto := motoserver.ForTest(t)
	sm := secretsmanager.NewFromConfig(motoserver.AWSConfig(moto.URL))
	created, err := sm.CreateSecret(t.Context(), &secretsmanager.CreateSecretInput{
		Name: aws.String("circlebot/slack"), SecretString: aws.String(slackSecretJSON(t, botToken, signingSecret)),
	})
	if err != nil {
		t.Fatal(err)
	}
	arn := aws.ToString(created.ARN)
	logs := &lockedBuffer{}
	e := newEnvOn(t, moto, func(c *config.Config) {
		c.Secrets.BotToken, c.Secrets.SigningSecret = config.Secret{}, config.Secret{}
		c.Secrets.SecretARN = arn
	}, func(o *app.Options) {
		o.Log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	if err := e.app.Config.ValidateServe(); err != nil {
		t.Fatalf("SLACK_SECRET_ARN alone should be ready to serve: %v", err)
	}
	src, ok := e.app.SlackKeys.(*slackcreds.Source)
	if !ok {
		t.Fatalf("SlackKeys is %T, want the Secrets Manager source", e.app.SlackKeys)
	}
	src.SetMinInterval(0)
	status := func(secret string) *http.Response {
		form, _ := e.slashForm(alice, incident, "status")
		return e.post("/slack/commands", form.Encode(), time.Now(), secret)
	}
	posted := func(n int) []slackfake.Call {
		var out []slackfake.Call
		for _, c := range e.slack.Calls() {
			if c.Method == "chat.postMessage" && c.Channel == incident {
				out = append(out, c)
			}
		}
		return out
	}
	waitPosts := func(n int, what string) slackfake.Call {
		e.slack.WaitFor(t, 30*time.Second, what, func(slackfake.Call) bool { return len(posted(n)) >= n })
		return posted(n)[n-1]
	}

	// Started with the secret's tokens.
	if r := status(signingSecret); r.StatusCode != http.StatusOK {
		t.Fatalf("request signed with the secret's signing secret: HTTP %d", r.StatusCode)
	}
	if c := waitPosts(1, "status posted with the secret's bot token"); c.Token != botToken || c.Error != "" {
		t.Fatalf("first post: token %q error %q", c.Token, c.Error)
	}
	e.server.Wait()

	// Both rotated in Secrets Manager; Slack now signs with the new secret
	// and accepts only the new token.
	const bot2, signing2 = "xoxb-rotated-once", "rotated-signing-secret"
	if _, err := sm.PutSecretValue(t.Context(), &secretsmanager.PutSecretValueInput{SecretId: aws.String(arn), SecretString: aws.String(slackSecretJSON(t, bot2, signing2))}); err != nil {
		t.Fatal(err)
	}
	e.slack.SetToken(bot2)
	if r := status(signing2); r.StatusCode != http.StatusOK {
		t.Fatalf("request signed with the rotated signing secret: HTTP %d", r.StatusCode)
	}
	if c := waitPosts(2, "status posted with the rotated bot token"); c.Token != bot2 || c.Error != "" {
		t.Fatalf("after rotation: token %q error %q", c.Token, c.Error)
	}
	e.server.Wait()
	if r := status(signingSecret); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("request signed with the old signing secret after rotation: HTTP %d, want 401", r.StatusCode)
	}

	// Only the bot token rotated: the first post is refused (invalid_auth),
	// the bot reads the secret and posts again with the new token.
	const bot3 = "xoxb-rotated-twice"
	if _, err := sm.PutSecretValue(t.Context(), &secretsmanager.PutSecretValueInput{SecretId: aws.String(arn), SecretString: aws.String(slackSecretJSON(t, bot3, signing2))}); err != nil {
		t.Fatal(err)
	}
	e.slack.SetToken(bot3)
	before := len(e.slack.Calls())
	if r := status(signing2); r.StatusCode != http.StatusOK {
		t.Fatalf("HTTP %d", r.StatusCode)
	}
	var ok3 slackfake.Call
	e.slack.WaitFor(t, 30*time.Second, "status posted with the twice-rotated token", func(c slackfake.Call) bool {
		if c.Method == "chat.postMessage" && c.Token == bot3 && c.Error == "" {
			ok3 = c
			return true
		}
		return false
	})
	e.server.Wait()
	var rejected int
	for _, c := range e.slack.Calls()[before:] {
		if c.Method == "chat.postMessage" && c.Error == "invalid_auth" {
			rejected++
			if c.Token != bot2 {
				t.Errorf("the rejected post carried %q, want the old token", c.Token)
			}
		}
	}
	if rejected != 1 || ok3.Channel != incident {
		t.Errorf("want one rejected post with the old token, then the post with the new: %d rejected", rejected)
	}
	// Three commands ran; the one signed with the old secret never reached the bot.
	if hist, _ := e.app.Store.History(t.Context(), 5); len(hist) != 3 || hist[0].Outcome != "ok" {
		t.Errorf("audit after rotations: %+v", hist)
	}

	out := logs.String()
	for _, secret := range []string{botToken, signingSecret, bot2, signing2, bot3} {
		if strings.Contains(out, secret) {
			t.Errorf("the log shows a Slack secret (%s…)", secret[:4])
		}
	}
	if n := strings.Count(out, "Slack secret read"); n < 3 {
		t.Errorf("the log says %d reads of the secret, want at least 3 (start, signature, rejected token):\n%s", n, out)
	}
}
