// Package slackcreds reads the bot's Slack tokens from one Secrets Manager
// secret (SLACK_SECRET_ARN) and reads them again when they may have been
// rotated: on SIGHUP (Reload), and when Slack rejects a token or a request's
// signature does not match (Refresh, at most once per DefaultMinInterval). So a
// rotation in Secrets Manager needs no restart.
//
// The secret is one JSON object (its SecretString):
//
//	{"bot_token": "xoxb-…", "signing_secret": "…", "app_token": "xapp-…"}
//
// bot_token is required; signing_secret for HTTP mode, app_token for Socket
// Mode (one of the two). Other fields are ignored. Nothing here logs or
// returns a token or any part of the secret's value: errors name the ARN
// and the field.
package slackcreds

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"

	"github.com/circlebot/circlebot/internal/config"
)

// Fields are the secret's JSON field names.
type Fields struct {
	BotToken      *string `json:"bot_token"`
	SigningSecret *string `json:"signing_secret"`
	AppToken      *string `json:"app_token"`
}

// API is the one Secrets Manager call the source makes.
type API interface {
	GetSecretValue(ctx context.Context, in *secretsmanager.GetSecretValueInput, optFns ...func(*secretsmanager.Options)) (*secretsmanager.GetSecretValueOutput, error)
}

// DefaultMinInterval bounds how often a rejection makes the source read
// the secret: a burst of rejected calls (or of forged requests, which
// anybody can send) costs one read, not one each.
const DefaultMinInterval = 10 * time.Second

// Source holds the tokens in force. Create it with New and Load it before
// use.
type Source struct {
	sm          API
	arn         string
	base        config.Secrets
	log         *slog.Logger
	mu          sync.Mutex // one read of the secret at a time; guards the fields below
	minInterval time.Duration
	last        time.Time // when the last read started
	cur         atomic.Pointer[config.Secrets]
}

// New makes a source for the secret arn; base gives what does not come
// from the secret (SLACK_API_URL, BOT_METRICS_TOKEN).
func New(sm API, arn string, base config.Secrets, log *slog.Logger) *Source {
	if log == nil {
		log = slog.Default()
	}
	base.BotToken, base.SigningSecret, base.AppToken = config.Secret{}, config.Secret{}, config.Secret{}
	base.SecretARN = arn
	return &Source{sm: sm, arn: arn, base: base, log: log, minInterval: DefaultMinInterval}
}

// SetMinInterval sets the least time between the reads Refresh makes
// (DefaultMinInterval unless set; tests set 0).
func (s *Source) SetMinInterval(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.minInterval = d
}

// ARN is the secret's ARN.
func (s *Source) ARN() string { return s.arn }

// Slack is the tokens in force (the zero tokens before the first Load).
func (s *Source) Slack() config.Secrets {
	if c := s.cur.Load(); c != nil {
		return *c
	}
	return s.base
}

// Load reads the secret now. On an error the tokens in force stay as they
// were.
func (s *Source) Load(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.load(ctx, "start or reload")
}

// Reload is Load for SIGHUP: it logs what happened instead of returning
// it, since nobody waits for the answer.
func (s *Source) Reload(ctx context.Context) {
	if err := s.Load(ctx); err != nil {
		s.log.Error("Slack secret not reloaded; the tokens in force stay", "secret", s.arn, "err", err)
	}
}

// Refresh reads the secret again after Slack refused a token or a
// signature did not match, unless it was read less than the minimum interval ago.
// Callers compare the tokens they used with Slack() afterwards: concurrent
// rejections wait for one read and all see its result.
func (s *Source) Refresh(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.last.IsZero() && time.Since(s.last) < s.minInterval {
		return
	}
	if err := s.load(ctx, "a token or signature was rejected"); err != nil {
		s.log.Error("Slack secret not re-read after a rejection; the tokens in force stay", "secret", s.arn, "err", err)
	}
}

func (s *Source) load(ctx context.Context, why string) error {
	s.last = time.Now()
	out, err := s.sm.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String(s.arn)})
	if err != nil {
		return fmt.Errorf("read Slack secret %s: %w", s.arn, err)
	}
	next, err := s.parse(out)
	if err != nil {
		return err
	}
	prev := s.Slack()
	s.cur.Store(&next)
	var changed []string
	for _, f := range []struct {
		name string
		a, b config.Secret
	}{{"bot_token", prev.BotToken, next.BotToken}, {"signing_secret", prev.SigningSecret, next.SigningSecret}, {"app_token", prev.AppToken, next.AppToken}} {
		if f.a.Reveal() != f.b.Reveal() {
			changed = append(changed, f.name)
		}
	}
	// The version ID and the field names, never a value.
	s.log.Info("Slack secret read", "secret", s.arn, "version", aws.ToString(out.VersionId), "why", why, "changed", strings.Join(changed, ","))
	if prev.AppToken.Empty() != next.AppToken.Empty() && !prev.BotToken.Empty() {
		s.log.Warn("app_token was added or removed: Socket Mode starts or stops only when the bot restarts", "secret", s.arn)
	}
	return nil
}

func (s *Source) parse(out *secretsmanager.GetSecretValueOutput) (config.Secrets, error) {
	raw := []byte(aws.ToString(out.SecretString))
	if out.SecretString == nil {
		raw = out.SecretBinary
	}
	var f Fields
	// The decoder's own message may quote part of the value: say only
	// what shape was expected.
	var ute *json.UnmarshalTypeError
	if err := json.Unmarshal(raw, &f); err != nil {
		if errors.As(err, &ute) && ute.Field != "" {
			return config.Secrets{}, fmt.Errorf("Slack secret %s: %s must be a string", s.arn, ute.Field)
		}
		return config.Secrets{}, fmt.Errorf("Slack secret %s is not a JSON object (want {\"bot_token\": …, \"signing_secret\": …, \"app_token\": …})", s.arn)
	}
	next := s.base
	str := func(p *string) config.Secret {
		if p == nil {
			return config.Secret{}
		}
		return config.NewSecret(strings.TrimSpace(*p))
	}
	next.BotToken, next.SigningSecret, next.AppToken = str(f.BotToken), str(f.SigningSecret), str(f.AppToken)
	if p := config.CheckSlackTokens(next, "Slack secret "+s.arn); len(p) > 0 {
		return config.Secrets{}, &config.ValidationError{Problems: p}
	}
	return next, nil
}
