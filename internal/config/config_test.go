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

func TestMetricsListenerSettings(t *testing.T) {
	cfg := Defaults()
	if cfg.Metrics.Listen != "127.0.0.1:9090" {
		t.Fatalf("metrics.listen defaults to %q, want this host only", cfg.Metrics.Listen)
	}
	for _, tc := range []struct {
		listen, metrics string
		bad             bool
	}{
		{":8080", "127.0.0.1:9090", false},
		{":8080", "", false}, // not served
		{":8080", ":9090", false},
		{":8080", "nonsense", true},
		{":8080", "127.0.0.1:", true},
		{":8080", ":8080", true},
		{":8080", "127.0.0.1:8080", true}, // listen takes every interface
		{"10.0.0.5:8080", "0.0.0.0:8080", true},
		{"10.0.0.5:8080", "127.0.0.1:8080", false},
		{"127.0.0.1:0", "127.0.0.1:0", false}, // two ephemeral ports
	} {
		cfg, err := Parse([]byte("listen: \"" + tc.listen + "\"\nmetrics:\n  listen: \"" + tc.metrics + "\"\n"))
		if err != nil {
			t.Fatal(err)
		}
		err = cfg.Validate()
		if !tc.bad {
			if err != nil {
				t.Errorf("listen %q, metrics.listen %q: %v", tc.listen, tc.metrics, err)
			}
			continue
		}
		if p := problems(t, err); len(p) != 1 || p[0].Key != "metrics.listen" {
			t.Errorf("listen %q, metrics.listen %q: want one problem naming metrics.listen, got %+v", tc.listen, tc.metrics, p)
		}
	}
}

func TestMetricsTokenFromEnvAndWarning(t *testing.T) {
	cfg, err := Parse([]byte("metrics:\n  listen: \":9090\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	warned := func() bool {
		for _, w := range cfg.Warnings() {
			if w.Key == "metrics.listen" && strings.Contains(w.Why, "BOT_METRICS_TOKEN") {
				return true
			}
		}
		return false
	}
	if !warned() {
		t.Errorf("metrics on every interface without a token must be warned about: %+v", cfg.Warnings())
	}
	cfg.Secrets = SecretsFromEnv(func(k string) string { return map[string]string{"BOT_METRICS_TOKEN": " scrape-me \n"}[k] })
	if cfg.Secrets.MetricsToken.Reveal() != "scrape-me" || strings.Contains(cfg.Secrets.MetricsToken.String(), "scrape") {
		t.Fatalf("token: %q / %q", cfg.Secrets.MetricsToken.Reveal(), cfg.Secrets.MetricsToken)
	}
	if warned() {
		t.Error("with a token the metrics listener may be reachable")
	}
	cfg = Defaults()
	if warned() {
		t.Error("the loopback default needs no token")
	}
}

func TestConsoleUserOnASharedStore(t *testing.T) {
	cfg, err := Parse([]byte("store:\n  backend: dynamodb\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("serving needs no console.user: %v", err)
	}
	if p := problems(t, cfg.ValidateConsole()); len(p) != 1 || p[0].Key != "console.user" || !strings.Contains(p[0].Why, "dynamodb") {
		t.Fatalf("console on a shared store without console.user: %+v", p)
	}
	var warned bool
	for _, w := range cfg.Warnings() {
		warned = warned || w.Key == "console.user"
	}
	if !warned {
		t.Error("check-config must say the console would refuse to start")
	}
	cfg.Console.User = "U0ALICE"
	if err := cfg.ValidateConsole(); err != nil {
		t.Fatal(err)
	}
	cfg.Console.User = "alice"
	if p := problems(t, cfg.Validate()); len(p) != 1 || p[0].Key != "console.user" {
		t.Fatalf("console.user must be a user ID: %+v", p)
	}
	if def := Defaults(); def.ValidateConsole() != nil {
		t.Fatal("bbolt: the console needs no console.user")
	}
}

func TestOpsRoleARN(t *testing.T) {
	for _, ok := range []string{
		"",
		"arn:aws:iam::123456789012:role/circlebot-ops",
		"arn:aws:iam::123456789012:role/ops/circlebot/circlebot-ops",
		"arn:aws-us-gov:iam::123456789012:role/circlebot_ops.v2",
	} {
		cfg, err := Parse([]byte("ops:\n  role_arn: \"" + ok + "\"\n"))
		if err != nil {
			t.Fatal(err)
		}
		if err := cfg.Validate(); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
		if cfg.Ops.RoleARN != ok {
			t.Errorf("read %q as %q", ok, cfg.Ops.RoleARN)
		}
	}
	for _, bad := range []string{
		"circlebot-ops",
		"arn:aws:iam::123456789012:user/circlebot",
		"arn:aws:iam::123456789012:role/",
		"arn:aws:iam::12345:role/circlebot-ops",
		"arn:aws:sts::123456789012:assumed-role/circlebot-ops/s",
		"arn:aws:iam::123456789012:role/has space",
	} {
		cfg, err := Parse([]byte("ops:\n  role_arn: \"" + bad + "\"\n"))
		if err != nil {
			t.Fatal(err)
		}
		if p := problems(t, cfg.Validate()); len(p) != 1 || p[0].Key != "ops.role_arn" || !strings.Contains(p[0].Why, "IAM role ARN") {
			t.Errorf("%q: %+v", bad, p)
		}
	}
	if _, err := Parse([]byte("ops:\n  rolearn: x\n")); err == nil || !strings.Contains(err.Error(), "ops.rolearn") {
		t.Errorf("a misspelt key: %v", err)
	}
}

// approvals.channel is a shared channel's ID, and one where the bot takes
// commands: an approval there must not be refused by the channel list.
func TestApprovalsChannel(t *testing.T) {
	for _, c := range []struct{ yaml, want string }{
		{"approvals:\n  channel: C0APPROVE\n", ""},
		{"slack:\n  allowed_channels: [C0INCIDENT, C0APPROVE]\napprovals:\n  channel: C0APPROVE\n", ""},
		{"slack:\n  allowed_channels: [C0INCIDENT]\napprovals:\n  channel: C0APPROVE\n", "not in slack.allowed_channels"},
		{"approvals:\n  channel: \"#approvals\"\n", "not a Slack channel ID"},
		{"approvals:\n  channel: D0DIRECT\n", "not a direct message"},
	} {
		cfg, err := Parse([]byte(c.yaml))
		if err != nil {
			t.Fatal(err)
		}
		err = cfg.Validate()
		if c.want == "" {
			if err != nil {
				t.Errorf("%q: %v", c.yaml, err)
			}
			continue
		}
		p := problems(t, err)
		if len(p) != 1 || p[0].Key != "approvals.channel" || !strings.Contains(p[0].Why, c.want) {
			t.Errorf("%q: %+v", c.yaml, p)
		}
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

// Issue 17: SLACK_SECRET_ARN alone is ready to serve (the tokens are read
// at start); a malformed ARN, or a token in the environment as well, is
// refused by name.
func TestValidateServeWithASlackSecret(t *testing.T) {
	const arn = "arn:aws:secretsmanager:eu-west-1:111122223333:secret:circlebot/slack-AbCdEf"
	c := Defaults()
	c.Secrets = SecretsFromEnv(func(k string) string { return map[string]string{"SLACK_SECRET_ARN": arn}[k] })
	if err := c.ValidateServe(); err != nil {
		t.Fatalf("SLACK_SECRET_ARN alone: %v", err)
	}
	c.Secrets = SecretsFromEnv(func(k string) string {
		return map[string]string{"SLACK_SECRET_ARN": "circlebot/slack", "SLACK_BOT_TOKEN": "xoxb-x"}[k]
	})
	var ve *ValidationError
	if err := c.ValidateServe(); !errors.As(err, &ve) || len(ve.Problems) != 2 || ve.Problems[0].Key != "SLACK_SECRET_ARN" || ve.Problems[1].Key != "SLACK_BOT_TOKEN" {
		t.Fatalf("a name for an ARN and a token beside it: %v", err)
	}
	if strings.Contains(c.ValidateServe().Error(), "xoxb-x") {
		t.Error("the error shows the token")
	}
}

// failover.os_address_command takes the bot's placeholders only, and
// failover.health_url's {service_ip} needs an address that moves.
func TestFailoverOSAddressAndServiceIPProbe(t *testing.T) {
	for _, c := range []struct{ yaml, key, want string }{
		{"failover:\n  os_address_command: none\n", "", ""},
		{"replica:\n  max_lag: 2s\n", "", ""},
		{"replica:\n  max_lag: 2h\n", "replica.max_lag", "between 0 and 1h"},
		{"failover:\n  os_address_command: \"/usr/local/bin/own-ip {service_ip}/{prefix} {mac} {mode}\"\n", "", ""},
		{"failover:\n  health_url: \"http://{service_ip}/\"\n", "", ""},
		{"failover:\n  health_url: \"http://{ip}:8800/\"\n  discovery: none\n", "", ""},
		{"failover:\n  os_address_command: \"own-ip {service_ip} on {interface}\"\n", "failover.os_address_command", "unknown placeholder {interface}"},
		{"failover:\n  os_address_command: \"netplan apply\"\n", "failover.os_address_command", "must use {service_ip}"},
		{"failover:\n  health_url: \"http://{service_ip}/\"\n  discovery: load-balancer\n  target_group_arns: [\"arn:aws:elasticloadbalancing:us-east-1:1:targetgroup/x/1\"]\n", "failover.health_url", "with discovery load-balancer there is none"},
	} {
		cfg, err := Parse([]byte(c.yaml))
		if err != nil {
			t.Fatal(err)
		}
		err = cfg.Validate()
		if c.want == "" {
			if err != nil {
				t.Errorf("%q: %v", c.yaml, err)
			}
			continue
		}
		p := problems(t, err)
		if len(p) != 1 || p[0].Key != c.key || !strings.Contains(p[0].Why, c.want) {
			t.Errorf("%q: %+v", c.yaml, p)
		}
	}
}
