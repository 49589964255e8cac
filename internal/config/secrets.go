package config

import (
	"log/slog"
	"strings"
)

// Secret holds a credential. Every way of printing it prints a mask, so a
// Secret that reaches a log line, an error or a Slack message leaks nothing.
type Secret struct{ v string }

func NewSecret(v string) Secret { return Secret{v: v} }

// Reveal is the one way to read the value; grep for it to audit uses.
func (s Secret) Reveal() string { return s.v }
func (s Secret) Empty() bool    { return s.v == "" }

func (s Secret) String() string {
	if s.v == "" {
		return "(unset)"
	}
	return "(set)"
}
func (s Secret) GoString() string             { return s.String() }
func (s Secret) LogValue() slog.Value         { return slog.StringValue(s.String()) }
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Secrets are read from the environment only: the Slack tokens themselves,
// or SLACK_SECRET_ARN, the Secrets Manager secret that holds them (read by
// internal/slackcreds when the bot starts, on SIGHUP, and when Slack
// rejects a token, so that rotating them needs no restart).
type Secrets struct {
	BotToken      Secret // SLACK_BOT_TOKEN
	SigningSecret Secret // SLACK_SIGNING_SECRET
	AppToken      Secret // SLACK_APP_TOKEN: Socket Mode when set
	// SecretARN is SLACK_SECRET_ARN: the tokens above come from this
	// Secrets Manager secret (one JSON object, see slackcreds) instead of
	// the environment. An ARN is not a secret.
	SecretARN string
	APIURL    string // SLACK_API_URL: not secret, but lives with them
	// MetricsToken, when set, is the bearer token GET /metrics requires
	// (BOT_METRICS_TOKEN).
	MetricsToken Secret
	// APIToken, when set, turns on the backup API (POST /api/v1/backups
	// on `listen`) and is the bearer token it requires (BOT_API_TOKEN).
	APIToken Secret
}

const DefaultSlackAPIURL = "https://slack.com/api/"

func SecretsFromEnv(env func(string) string) Secrets {
	s := Secrets{
		BotToken:      NewSecret(strings.TrimSpace(env("SLACK_BOT_TOKEN"))),
		SigningSecret: NewSecret(strings.TrimSpace(env("SLACK_SIGNING_SECRET"))),
		AppToken:      NewSecret(strings.TrimSpace(env("SLACK_APP_TOKEN"))),
		SecretARN:     strings.TrimSpace(env("SLACK_SECRET_ARN")),
		APIURL:        strings.TrimSpace(env("SLACK_API_URL")),
		MetricsToken:  NewSecret(strings.TrimSpace(env("BOT_METRICS_TOKEN"))),
		APIToken:      NewSecret(strings.TrimSpace(env("BOT_API_TOKEN"))),
	}
	if s.APIURL == "" {
		s.APIURL = DefaultSlackAPIURL
	}
	if !strings.HasSuffix(s.APIURL, "/") {
		s.APIURL += "/"
	}
	return s
}
