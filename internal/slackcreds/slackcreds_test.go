package slackcreds

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"

	"github.com/circlebot/circlebot/internal/config"
)

type fakeSM struct {
	doc   string
	err   error
	calls int
}

func (f *fakeSM) GetSecretValue(_ context.Context, in *secretsmanager.GetSecretValueInput, _ ...func(*secretsmanager.Options)) (*secretsmanager.GetSecretValueOutput, error) {
	f.calls++
	if f.err != nil {
		return nil, f.err
	}
	return &secretsmanager.GetSecretValueOutput{ARN: in.SecretId, SecretString: aws.String(f.doc), VersionId: aws.String("v1")}, nil
}

const arn = "arn:aws:secretsmanager:eu-west-1:111122223333:secret:circlebot/slack-AbCdEf"

// A secret of the wrong shape is refused with the field named and no part
// of its value in the error; the tokens in force stay.
func TestBadSecretsAreRefusedWithoutTheirValue(t *testing.T) {
	sm := &fakeSM{doc: `{"bot_token": "xoxb-good", "signing_secret": "sig-good"}`}
	s := New(sm, arn, config.Secrets{APIURL: "https://slack.example/api/"}, nil)
	if err := s.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := s.Slack(); got.BotToken.Reveal() != "xoxb-good" || got.SigningSecret.Reveal() != "sig-good" || got.APIURL != "https://slack.example/api/" || got.SecretARN != arn {
		t.Fatalf("loaded %+v", got)
	}
	for doc, want := range map[string]string{
		`not json xoxb-leak`:                            "is not a JSON object",
		`{"bot_token": 12345678}`:                       "bot_token must be a string",
		`{"signing_secret": "sig-leak"}`:                "bot_token: is not set",
		`{"bot_token": "xoxb-leak"}`:                    "signing_secret: is not set",
		`{"bot_token": "xoxb-leak", "app_token": "ab"}`: "app_token: must be an app-level token",
	} {
		sm.doc = doc
		err := s.Load(context.Background())
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), arn) {
			t.Errorf("%s: %v, want %q", doc, err, want)
		}
		if err != nil && (strings.Contains(err.Error(), "leak") || strings.Contains(err.Error(), "12345678")) {
			t.Errorf("%s: the error shows the value: %v", doc, err)
		}
		if s.Slack().BotToken.Reveal() != "xoxb-good" {
			t.Errorf("%s: the tokens in force changed", doc)
		}
	}
	sm.err = errors.New("AccessDeniedException: not authorized")
	if err := s.Load(context.Background()); err == nil || !strings.Contains(err.Error(), arn) {
		t.Errorf("read error: %v", err)
	}
}

// Refresh reads at most once per interval; Load always reads.
func TestRefreshIsRateLimited(t *testing.T) {
	sm := &fakeSM{doc: `{"bot_token": "xoxb-1", "app_token": "xapp-1"}`}
	s := New(sm, arn, config.Secrets{}, nil)
	if err := s.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		s.Refresh(context.Background())
	}
	if sm.calls != 1 {
		t.Errorf("%d reads, want 1 (the load; refreshes within the interval read nothing)", sm.calls)
	}
	s.SetMinInterval(0)
	sm.doc = `{"bot_token": "xoxb-2", "app_token": "xapp-2"}`
	s.Refresh(context.Background())
	if sm.calls != 2 || s.Slack().BotToken.Reveal() != "xoxb-2" || s.Slack().AppToken.Reveal() != "xapp-2" {
		t.Errorf("after a refresh: %d reads, tokens %q", sm.calls, s.Slack().BotToken.Reveal())
	}
}
