package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestExampleConfigIsValid(t *testing.T) {
	cfg, err := Load("../../bot.example.yaml", func(string) string { return "" })
	if err != nil {
		t.Fatalf("bot.example.yaml must stay valid: %v", err)
	}
	if cfg.ServicesBox.NameTag != "circleci_services" || cfg.Approvals.TTL.D() != 30*time.Minute {
		t.Fatalf("unexpected values: %+v", cfg)
	}
}

func TestEmptyFileGivesDefaults(t *testing.T) {
	cfg, err := Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("defaults must validate: %v", err)
	}
	if cfg.Slack.Command != "/circleci" || cfg.ServicesBox.NameTag != "circleci_services" {
		t.Fatalf("defaults: %+v", cfg)
	}
}

func problems(t *testing.T, err error) []Problem {
	t.Helper()
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("want *ValidationError, got %v", err)
	}
	return ve.Problems
}

func TestUnknownKeysNamedWithPathAndSuggestion(t *testing.T) {
	_, err := Parse([]byte("roles:\n  aprovers: [U1]\nslack:\n  command: /x\nbogus: 1\n"))
	p := problems(t, err)
	if len(p) != 2 {
		t.Fatalf("want 2 problems, got %+v", p)
	}
	if p[0].Key != "roles.aprovers" || !strings.Contains(p[0].Why, `did you mean "approvers"`) || !strings.Contains(p[0].Why, "line 2") {
		t.Fatalf("first problem: %+v", p[0])
	}
	if p[1].Key != "bogus" {
		t.Fatalf("second problem: %+v", p[1])
	}
}

func TestValidateNamesEachBadKey(t *testing.T) {
	raw := `
listen: "nonsense"
slack:
  command: circleci
  allowed_channels: ["#ops"]
roles:
  operators: [alice, U0A, U0A]
approvals:
  ttl: 72h
services_box:
  name_tag: ""
backup:
  method: rsync
  schedule: "every day"
  retention:
    keep_last: -1
report:
  schedule: "@daily"
`
	cfg, err := Parse([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	p := problems(t, cfg.Validate())
	want := []string{"listen", "slack.command", "slack.allowed_channels[0]", "roles.operators[0]", "roles.operators[2]",
		"approvals.ttl", "services_box.name_tag", "backup.method", "backup.schedule", "backup.retention.keep_last", "slack.report_channel"}
	got := map[string]bool{}
	for _, pr := range p {
		got[pr.Key] = true
	}
	for _, k := range want {
		if !got[k] {
			t.Errorf("no problem reported for %s; got %+v", k, p)
		}
	}
}

func TestBadDurationSaysWhich(t *testing.T) {
	_, err := Parse([]byte("approvals:\n  ttl: soon\n"))
	if err == nil || !strings.Contains(err.Error(), `"soon" is not a duration`) {
		t.Fatalf("got %v", err)
	}
}

func TestSecretsNeverPrint(t *testing.T) {
	s := SecretsFromEnv(func(k string) string {
		return map[string]string{"SLACK_BOT_TOKEN": "xoxb-very-secret", "SLACK_SIGNING_SECRET": "shh"}[k]
	})
	for _, out := range []string{s.BotToken.String(), s.SigningSecret.GoString(), s.AppToken.String()} {
		if strings.Contains(out, "secret") || strings.Contains(out, "shh") {
			t.Fatalf("secret leaked: %q", out)
		}
	}
	if s.BotToken.Reveal() != "xoxb-very-secret" || s.APIURL != DefaultSlackAPIURL {
		t.Fatalf("secrets: %+v", s)
	}
	cfg := Defaults()
	cfg.Secrets = s
	if err := cfg.ValidateServe(); err != nil {
		t.Fatalf("bot token + signing secret is enough to serve: %v", err)
	}
}

func TestServeNeedsSecrets(t *testing.T) {
	cfg := Defaults()
	p := problems(t, cfg.ValidateServe())
	if len(p) != 2 || p[0].Key != "SLACK_BOT_TOKEN" || p[1].Key != "SLACK_SIGNING_SECRET" {
		t.Fatalf("got %+v", p)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"), os.Getenv)
	if err == nil || !strings.Contains(err.Error(), "nope.yaml") {
		t.Fatalf("got %v", err)
	}
}

// A typo inside a list of settings blocks is found too, with its index.
func TestUnknownKeyInAListItem(t *testing.T) {
	_, err := Parse([]byte("monitor:\n  checks:\n    - name: disk\n      treshold: 80\n"))
	if err == nil || !strings.Contains(err.Error(), "monitor.checks[0].treshold") || !strings.Contains(err.Error(), `"threshold"`) {
		t.Fatalf("err = %v", err)
	}
}

func TestSharedStoreSettings(t *testing.T) {
	cfg, err := Parse([]byte("store:\n  backend: dynamo\n"))
	if err != nil {
		t.Fatal(err)
	}
	if p := problems(t, cfg.Validate()); len(p) != 1 || p[0].Key != "store.backend" || !strings.Contains(p[0].Why, "bbolt") {
		t.Errorf("bad backend: %+v", p)
	}
	cfg, _ = Parse([]byte("store:\n  backend: dynamodb\n  table: \"no spaces\"\n  lease_ttl: 200ms\n"))
	got := map[string]bool{}
	for _, pr := range problems(t, cfg.Validate()) {
		got[pr.Key] = true
	}
	if !got["store.table"] || !got["store.lease_ttl"] || got["store.heartbeat_ttl"] {
		t.Errorf("problems: %v", got)
	}
	cfg, _ = Parse([]byte("store:\n  backend: dynamodb\ndata_dir: \"\"\n"))
	if err := cfg.Validate(); err != nil {
		t.Errorf("dynamodb needs no data_dir: %v", err)
	}
}

// The settings only `bot iam-policy` reads: KMS keys by ARN (an alias
// cannot be granted), the box's role by ARN, names with no IAM wildcard.
func TestIAMPolicySettings(t *testing.T) {
	cfg, err := Parse([]byte(`
aws:
  kms_key_arns:
    - arn:aws:kms:us-east-1:111122223333:key/1111aaaa-2222-3333-4444-555566667777
    - arn:aws:kms:us-east-1:111122223333:alias/backups
    - 1111aaaa-2222-3333-4444-555566667777
    - arn:aws:kms:us-east-1:111122223333:key/1111aaaa-2222-3333-4444-555566667777
services_box:
  name_tag: "circleci_*"
  role_arn: arn:aws:iam::111122223333:instance-profile/circleci
replica:
  name_tag: standby?
`))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, pr := range problems(t, cfg.Validate()) {
		got[pr.Key] = pr.Why
	}
	for key, why := range map[string]string{
		"aws.kms_key_arns[1]":   "is an alias",
		"aws.kms_key_arns[2]":   "not a KMS key ARN",
		"aws.kms_key_arns[3]":   "listed twice",
		"services_box.name_tag": "wildcard",
		"replica.name_tag":      "wildcard",
		"services_box.role_arn": "not an IAM role ARN",
	} {
		if !strings.Contains(got[key], why) {
			t.Errorf("%s: %q, want %q", key, got[key], why)
		}
	}
	if _, ok := got["aws.kms_key_arns[0]"]; ok {
		t.Errorf("a key ARN refused: %s", got["aws.kms_key_arns[0]"])
	}
}
