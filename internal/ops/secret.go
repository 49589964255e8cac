package ops

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
)

// SecretsManager is the one Secrets Manager call `secret` makes.
type SecretsManager interface {
	GetSecretValue(context.Context, *secretsmanager.GetSecretValueInput, ...func(*secretsmanager.Options)) (*secretsmanager.GetSecretValueOutput, error)
}

// Passphrase reads the installation's CIRCLE_SECRET_PASSPHRASE, which new
// builders need to join the Services box. Its value is never logged and
// never part of an error.
type Passphrase struct {
	EC2      EC2
	SSM      SSM
	SM       SecretsManager
	SecretID string // Secrets Manager secret; empty: ask the box
	NameTag  string
	Poll     time.Duration
}

// Source names where the passphrase will be read, for the plan.
func (p *Passphrase) Source(ctx context.Context) (string, error) {
	if p.SecretID != "" {
		return "secretsmanager:" + p.SecretID, nil
	}
	box, err := FindBox(ctx, p.EC2, p.NameTag)
	if err != nil {
		return "", refusef("%s. Without the box (or `secret.secrets_manager_id`) there is nothing to read the passphrase from.", Explain(err))
	}
	if box.State.Name != "running" {
		return "", refusef("the Services box `%s` is %s: `replicated admin get-secret-token` needs it running (or configure `secret.secrets_manager_id`).", aws.ToString(box.InstanceId), box.State.Name)
	}
	return "ssm:" + aws.ToString(box.InstanceId), nil
}

var passphraseLine = regexp.MustCompile(`CIRCLE_SECRET_PASSPHRASE=['"]?([^'"\s]+)['"]?`)

// Read returns the passphrase from source (as Source gave it).
func (p *Passphrase) Read(ctx context.Context, source string) (string, error) {
	kind, id, _ := strings.Cut(source, ":")
	switch kind {
	case "secretsmanager":
		out, err := p.SM.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String(id)})
		if err != nil {
			return "", fmt.Errorf("read secret %s: %w", id, translate(err))
		}
		v := strings.TrimSpace(aws.ToString(out.SecretString))
		if strings.HasPrefix(v, "{") {
			// A key/value secret: only the passphrase goes out, never the
			// other keys.
			var kv map[string]any
			if err := json.Unmarshal([]byte(v), &kv); err != nil {
				return "", fmt.Errorf("secret %s looks like JSON but is not", id)
			}
			pp, _ := kv["CIRCLE_SECRET_PASSPHRASE"].(string)
			if pp == "" {
				return "", fmt.Errorf("secret %s has no CIRCLE_SECRET_PASSPHRASE key", id)
			}
			return pp, nil
		}
		if m := passphraseLine.FindStringSubmatch(v); m != nil {
			v = m[1]
		}
		if v == "" {
			return "", fmt.Errorf("secret %s is empty", id)
		}
		return v, nil
	case "ssm":
		sh := &Shell{SSM: p.SSM, Instance: id, Poll: p.Poll}
		r, err := sh.Run(ctx, "circlebot: read the secret token", "replicated admin get-secret-token", 2*time.Minute)
		if err != nil {
			// The error carries stderr's last line, never stdout (where the
			// token is).
			return "", err
		}
		m := passphraseLine.FindStringSubmatch(r.Stdout)
		if m == nil {
			return "", fmt.Errorf("`replicated admin get-secret-token` on %s printed no CIRCLE_SECRET_PASSPHRASE (SSM command %s)", id, r.CommandID)
		}
		return m[1], nil
	}
	return "", fmt.Errorf("unknown passphrase source %q", source)
}

// Preflight checks what reading the passphrase from source needs and can
// be checked without reading it: through SSM, that the box's agent is
// online (an offline agent would fail the read only after a second person
// approved it). Secrets Manager has no dry run, and GetSecretValue is the
// reveal itself: it is shown as checked by the step.
func (p *Passphrase) Preflight(ctx context.Context, source string) Preflight {
	var pf Preflight
	kind, id, _ := strings.Cut(source, ":")
	switch kind {
	case "ssm":
		pf.checkAgent(ctx, p.SSM, id, "the Services box")
		pf.skipped("ssm:SendCommand", id+" (replicated admin get-secret-token)", "no dry run; the command is the read itself")
	case "secretsmanager":
		pf.skipped("secretsmanager:GetSecretValue", id, "no dry run; the read is the reveal itself, made by the step")
	}
	return pf
}
