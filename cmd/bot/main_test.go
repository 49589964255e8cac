package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/circlebot/circlebot/deploy/iam"
	"github.com/circlebot/circlebot/internal/sandbox"
	"github.com/circlebot/circlebot/internal/testenv/faultproxy"
	"github.com/circlebot/circlebot/internal/testenv/motoserver"
	"github.com/circlebot/circlebot/internal/testenv/ssmbox"
)

func TestMain(m *testing.M) { motoserver.Main(m) }

func noEnv(string) string { return "" }

func TestVersionAndUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"version"}, noEnv, nil, &out, &errOut); err != nil || !strings.HasPrefix(out.String(), "circlebot ") {
		t.Fatalf("version: %q %v", out.String(), err)
	}
	err := run(context.Background(), []string{"frobnicate"}, noEnv, nil, &out, &errOut)
	if _, ok := err.(usageError); !ok || !strings.Contains(err.Error(), `unknown command "frobnicate"`) {
		t.Fatalf("unknown subcommand: %v", err)
	}
}

func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("roles:\n  aprovers: [U0BOB]\napprovals:\n  ttl: 90h\n"), 0o600)
	var out bytes.Buffer
	err := run(context.Background(), []string{"check-config", "--config", bad}, noEnv, nil, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "roles.aprovers") || !strings.Contains(err.Error(), `did you mean "approvers"`) {
		t.Fatalf("bad config: %v", err)
	}

	env := func(k string) string {
		return map[string]string{"SLACK_BOT_TOKEN": "xoxb-secret-value", "SLACK_SIGNING_SECRET": "signing-secret-value"}[k]
	}
	out.Reset()
	if err := run(context.Background(), []string{"--config", "../../bot.example.yaml", "check-config"}, env, nil, &out, &out); err != nil {
		t.Fatalf("example config: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "ok;") || strings.Contains(out.String(), "secret-value") {
		t.Fatalf("check-config output: %s", out.String())
	}
	out.Reset()
	err = run(context.Background(), []string{"check-config", "--config", "../../bot.example.yaml"}, noEnv, nil, &out, &out)
	if err == nil || !strings.Contains(out.String(), "SLACK_BOT_TOKEN") {
		t.Fatalf("missing secrets must be named: %v %s", err, out.String())
	}
}

// The demo as a new user runs it: `bot console` against a seeded moto,
// help and status answered with the seeded box, a second user switched to.
func TestConsoleAgainstSandbox(t *testing.T) {
	moto := motoserver.ForTest(t)
	inst, err := sandbox.Seed(context.Background(), motoserver.AWSConfig(moto.URL), sandbox.Options{WithBackups: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_ENDPOINT_URL", moto.URL)
	t.Setenv("AWS_ACCESS_KEY_ID", "test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test")
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_CONFIG_FILE", "/dev/null")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
	cfg := filepath.Join(t.TempDir(), "bot.yaml")
	os.WriteFile(cfg, []byte(`data_dir: `+filepath.Join(t.TempDir(), "data")+`
slack:
  allowed_channels: [C0INCIDENT]
roles:
  operators: [U0ALICE]
  approvers: [U0BOB]
replica:
  name_tag: circleci_services_replica
builders:
  asg_name: `+inst.BuilderASG+"\n"), 0o600)

	in := strings.NewReader("/circleci help\n/circleci status\n/circleci restore snap-xyz\n/as U0BOB\n/circleci failover\n/circleci history\n/quit\n")
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"console", "--config", cfg}, os.Getenv, in, &out, &errOut); err != nil {
		t.Fatalf("console: %v\n%s", err, errOut.String())
	}
	got := out.String()
	for _, want := range []string{
		"You are U0ALICE (viewer, operator)",
		"/circleci backup now",            // help lists operator commands
		inst.ServicesBox.ID,               // status found the seeded box
		inst.ServicesBox.PrivateIP,        //
		`"snap-xyz" is not a snapshot ID`, // usage error
		"you are now U0BOB (viewer, approver)",
		"`failover` needs the operator role", // bob may approve, not request
		"→ *refused*",                        // history shows the refusal
	} {
		if !strings.Contains(got, want) {
			t.Errorf("console output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("console output:\n%s\nstderr:\n%s", got, errOut.String())
	}
}

// awsAtMoto points the SDK's default chain (what `bot` uses) at moto.
func awsAtMoto(t *testing.T, moto *motoserver.Server) {
	t.Setenv("AWS_ENDPOINT_URL", moto.URL)
	t.Setenv("AWS_ACCESS_KEY_ID", "test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test")
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_CONFIG_FILE", "/dev/null")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
}

// sharedConfig writes a config whose state lives in moto's DynamoDB, as
// the production replicas' does.
func sharedConfig(t *testing.T, consoleUser string) string {
	cfg := filepath.Join(t.TempDir(), "bot.yaml")
	raw := `store:
  backend: dynamodb
  table: circlebot-state
slack:
  allowed_channels: [C0INCIDENT]
roles:
  operators: [U0ALICE]
  approvers: [U0BOB]
`
	if consoleUser != "" {
		raw += "console:\n  user: " + consoleUser + "\n"
	}
	if err := os.WriteFile(cfg, []byte(raw), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// On the state the replicas share, the console is console.user and
// nobody else: it does not start without it, --user cannot pick someone
// else, /as is refused and changes nothing (the next command is still
// console.user's), and the audit trail shows the console as the source of
// its commands and of the refused /as.
func TestConsoleOnASharedStoreActsAsConsoleUser(t *testing.T) {
	awsAtMoto(t, motoserver.ForTest(t))
	t.Setenv("CIRCLEBOT_SANDBOX", "")
	var out, errOut bytes.Buffer

	err := run(context.Background(), []string{"console", "--config", sharedConfig(t, "")}, os.Getenv, strings.NewReader("/quit\n"), &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "console.user") || !strings.Contains(err.Error(), "dynamodb") {
		t.Fatalf("console on a shared store without console.user: %v", err)
	}
	cfg := sharedConfig(t, "U0ALICE")
	err = run(context.Background(), []string{"console", "--config", cfg, "--user", "U0BOB"}, os.Getenv, strings.NewReader("/quit\n"), &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "console.user (U0ALICE)") {
		t.Fatalf("--user someone else on a shared store: %v", err)
	}
	if out.Len() != 0 {
		t.Fatalf("a refused console said something: %s", out.String())
	}

	in := strings.NewReader("/as U0BOB\n/whoami\n/circleci approve req-7f3a9c\n/circleci help\n/circleci history\n/quit\n")
	if err := run(context.Background(), []string{"console", "--config", cfg}, os.Getenv, in, &out, &errOut); err != nil {
		t.Fatalf("console: %v\n%s", err, errOut.String())
	}
	got := out.String()
	for _, want := range []string{
		"/as              off: you are U0ALICE (console.user)", // the banner says so
		"/as is off",
		"U0ALICE (viewer, operator) in #C0INCIDENT", // /whoami after /as
		"`approve` needs the approver role",         // the bot still sees U0ALICE
		"@U0ALICE in #C0INCIDENT (console): `help` → *ok*",
		"@U0ALICE in #C0INCIDENT (console): `approve req-7f3a9c` → *refused*",
		"@U0ALICE in #C0INCIDENT (console): `/as U0BOB` → *refused*",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("console output lacks %q", want)
		}
	}
	if strings.Contains(got, "you are now") || strings.Contains(got, "@U0BOB in") {
		t.Error("/as switched users on the shared store")
	}
	if t.Failed() {
		t.Logf("console output:\n%s\nstderr:\n%s", got, errOut.String())
	}
}

// The demo's launcher (cmd/sandbox) sets CIRCLEBOT_SANDBOX to its moto:
// there /as switches users even on a shared store.
func TestConsoleInTheSandboxMaySwitchUsers(t *testing.T) {
	moto := motoserver.ForTest(t)
	awsAtMoto(t, moto)
	t.Setenv("CIRCLEBOT_SANDBOX", moto.URL)
	in := strings.NewReader("/as U0BOB\n/circleci approve req-7f3a9c\n/circleci history\n/quit\n")
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"console", "--config", sharedConfig(t, "U0ALICE")}, os.Getenv, in, &out, &errOut); err != nil {
		t.Fatalf("console: %v\n%s", err, errOut.String())
	}
	got := out.String()
	for _, want := range []string{
		"/as <user-id>     act as another Slack user",
		"you are now U0BOB (viewer, approver)",
		"@U0BOB in #C0INCIDENT (console): `approve req-7f3a9c`", // as bob, past the role check
	} {
		if !strings.Contains(got, want) {
			t.Errorf("console output lacks %q", want)
		}
	}
	if strings.Contains(got, "/as is off") {
		t.Error("/as refused in the sandbox")
	}
	if t.Failed() {
		t.Logf("console output:\n%s\nstderr:\n%s", got, errOut.String())
	}

	// The variable outside the sandbox (AWS elsewhere) stops the console.
	t.Setenv("AWS_ENDPOINT_URL", "")
	err := run(context.Background(), []string{"console", "--config", sharedConfig(t, "U0ALICE")}, os.Getenv, strings.NewReader("/quit\n"), &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "CIRCLEBOT_SANDBOX") {
		t.Fatalf("CIRCLEBOT_SANDBOX without the sandbox's moto: %v", err)
	}
}

// `bot serve` answers Slack and /healthz on listen and /metrics on
// metrics.listen only, and closes both when it stops.
func TestServeKeepsMetricsOffThePublicListener(t *testing.T) {
	awsAtMoto(t, motoserver.ForTest(t))
	free := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().String()
	}
	public, metrics := free(), free()
	cfg := filepath.Join(t.TempDir(), "bot.yaml")
	os.WriteFile(cfg, []byte("listen: "+public+"\nmetrics:\n  listen: "+metrics+"\ndata_dir: "+filepath.Join(t.TempDir(), "data")+"\n"), 0o600)
	env := func(k string) string {
		switch k {
		case "SLACK_BOT_TOKEN":
			return "xoxb-test"
		case "SLACK_SIGNING_SECRET":
			return "signing-secret"
		case "SLACK_API_URL":
			return "http://127.0.0.1:1/" // nothing is posted
		}
		return os.Getenv(k)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var out, errOut bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"serve", "--config", cfg}, env, nil, &out, &errOut) }()

	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	get := func(url string) (int, string, error) {
		resp, err := client.Get(url)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if code, _, err := get("http://" + public + "/healthz"); err == nil && code == http.StatusOK {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("serve ended: %v\n%s", err, errOut.String())
		case <-time.After(20 * time.Millisecond): // poll interval
		}
		if time.Now().After(deadline) {
			t.Fatal("serve never answered /healthz")
		}
	}
	if code, _, err := get("http://" + public + "/metrics"); err != nil || code != http.StatusNotFound {
		t.Errorf("/metrics on listen: HTTP %d %v, want 404", code, err)
	}
	if code, body, err := get("http://" + metrics + "/metrics"); err != nil || code != http.StatusOK || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics on metrics.listen: HTTP %d %v", code, err)
	}
	if code, _, err := get("http://" + metrics + "/healthz"); err != nil || code != http.StatusNotFound {
		t.Errorf("/healthz on metrics.listen: HTTP %d %v, want 404", code, err)
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
	for _, u := range []string{"http://" + public + "/healthz", "http://" + metrics + "/metrics"} {
		if _, _, err := get(u); err == nil {
			t.Errorf("%s still answers after serve stopped", u)
		}
	}
}

// `bot iam-policy` prints the policy for the config, filled in, on stdout
// (and only JSON there); what it left out, and why, on stderr.
func TestIAMPolicy(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "bot.yaml")
	os.WriteFile(cfg, []byte(`aws:
  region: eu-west-1
  kms_key_arns: [arn:aws:kms:eu-west-1:111122223333:key/1111aaaa-2222-3333-4444-555566667777]
services_box:
  name_tag: ci_services
  role_arn: arn:aws:iam::111122223333:role/ci-services
backup:
  bucket: acme-ci-backups
builders:
  asg_name: ci-builders
`), 0o600)
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"iam-policy", "--config", cfg, "--account", "111122223333"}, noEnv, nil, &out, &errOut); err != nil {
		t.Fatalf("iam-policy: %v\n%s", err, errOut.String())
	}
	p, err := iam.Parse(out.Bytes())
	if err != nil {
		t.Fatalf("stdout is not a policy: %v\n%s", err, out.String())
	}
	if len(p.Statement) < 10 {
		t.Errorf("%d statements", len(p.Statement))
	}
	for _, want := range []string{
		`"arn:aws:s3:::acme-ci-backups/circleci-backups/*"`,
		`"arn:aws:autoscaling:eu-west-1:111122223333:autoScalingGroup:*:autoScalingGroupName/ci-builders"`,
		`"arn:aws:iam::111122223333:role/ci-services"`,
		`"arn:aws:kms:eu-west-1:111122223333:key/1111aaaa-2222-3333-4444-555566667777"`,
		`"ci_services*"`,
		`"ec2:DescribeSubnets"`,
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("policy lacks %s", want)
		}
	}
	for _, want := range []string{"left out SharedState: it needs store.backend: dynamodb", "left out PassphraseFromSecretsManager: it needs secret.secrets_manager_id"} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut.String())
		}
	}
	if strings.Contains(errOut.String(), "any account") || strings.Contains(errOut.String(), "any region") {
		t.Errorf("account and region were given:\n%s", errOut.String())
	}

	err = run(context.Background(), []string{"iam-policy", "--config", cfg, "--account", "1111"}, noEnv, nil, &out, &errOut)
	if _, ok := err.(usageError); !ok || !strings.Contains(err.Error(), "12-digit") {
		t.Errorf("bad account: %v", err)
	}
	os.WriteFile(cfg, []byte("aws:\n  kms_key_arns: [alias/backups]\n"), 0o600)
	if err := run(context.Background(), []string{"iam-policy", "--config", cfg}, noEnv, nil, &out, &errOut); err == nil || !strings.Contains(err.Error(), "aws.kms_key_arns[0]") {
		t.Errorf("an alias for a key: %v", err)
	}
}

// doctorSandbox is a sandbox as `make demo` seeds it, an SSM stand-in on
// which the Services box and the replica are online, a fault proxy in
// front of moto, and a config for it (discovery none: the seeded replica
// is in the other zone, which a secondary IP cannot reach).
func doctorSandbox(t *testing.T) (string, *faultproxy.Proxy) {
	moto := motoserver.ForTest(t)
	inst, err := sandbox.Seed(context.Background(), motoserver.AWSConfig(moto.URL), sandbox.Options{WithBackups: true})
	if err != nil {
		t.Fatal(err)
	}
	proxy := faultproxy.New(moto.URL, faultproxy.Faults{})
	t.Cleanup(proxy.Close)
	ssmSrv := ssmbox.New(t)
	ssmSrv.AddBox(inst.ServicesBox.ID)
	ssmSrv.AddBox(inst.Replica.ID)
	awsAtMoto(t, moto)
	t.Setenv("AWS_ENDPOINT_URL", proxy.URL)
	t.Setenv("AWS_ENDPOINT_URL_SSM", ssmSrv.URL)
	cfg := filepath.Join(t.TempDir(), "bot.yaml")
	os.WriteFile(cfg, []byte(`data_dir: `+filepath.Join(t.TempDir(), "data")+`
slack:
  allowed_channels: [C0INCIDENT]
roles:
  operators: [U0ALICE]
  approvers: [U0BOB]
replica:
  name_tag: circleci_services_replica
failover:
  discovery: none
backup:
  bucket: `+inst.Bucket+`
builders:
  asg_name: `+inst.BuilderASG+"\n"), 0o600)
	return cfg, proxy
}

// `bot doctor` against the sandbox: every check passes, each operation's
// pre-flight made its dry runs, nothing changed, and the exit is zero.
func TestDoctorAgainstTheSandboxIsGreen(t *testing.T) {
	cfg, proxy := doctorSandbox(t)
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"doctor", "--config", cfg}, os.Getenv, nil, &out, &errOut)
	t.Logf("doctor:\n%s", out.String())
	if err != nil {
		t.Fatalf("doctor: %v\n%s", err, errOut.String())
	}
	got := out.String()
	for _, want := range []string{"Recovery readiness: ready", "Services box", "SSM agent on the Services box", "SSM agent on the replica",
		"Backup (EBS)", "Backup (tarball): bucket", "restore latest", "failover", "builders rotate", "Newest restore point", "within the RPO",
		"Replica age"} {
		if !strings.Contains(got, want) {
			t.Errorf("the table lacks %q", want)
		}
	}
	if strings.Contains(got, "FAIL") {
		t.Errorf("a check failed against the sandbox")
	}
	dry := 0
	for _, c := range proxy.Calls() {
		if c.Params.Get("DryRun") == "true" {
			dry++
			continue
		}
		if !strings.HasPrefix(c.Action, "Describe") && !strings.HasPrefix(c.Action, "Get") && !strings.HasPrefix(c.Action, "List") && c.Service != "dynamodb" {
			t.Errorf("the doctor sent %s %s, which is not a read", c.Service, c.Action)
		}
	}
	if dry < 5 {
		t.Errorf("%d dry runs", dry)
	}
}

// With the policy missing ec2:CreateSnapshots and ec2:StopInstances (AWS
// answers UnauthorizedOperation to their dry runs), the doctor names them
// and how to fix it, and exits non-zero.
func TestDoctorNamesAMissingPermission(t *testing.T) {
	cfg, proxy := doctorSandbox(t)
	proxy.SetFaults(faultproxy.Faults{Deny: func(c faultproxy.Call) bool {
		return (c.Action == "CreateSnapshots" || c.Action == "StopInstances") && c.Params.Get("DryRun") == "true"
	}})
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"doctor", "--config", cfg}, os.Getenv, nil, &out, &errOut)
	got := out.String()
	if !errors.Is(err, errNotReady) {
		t.Fatalf("doctor with a missing permission: %v\n%s", err, got)
	}
	for _, want := range []string{"NOT READY", "FAIL  Backup (EBS)", "ec2:CreateSnapshots", "UnauthorizedOperation", "fix: allow ec2:CreateSnapshots in the bot's IAM policy",
		"ec2:StopInstances", "fix: allow ec2:StopInstances"} {
		if !strings.Contains(got, want) {
			t.Errorf("the table lacks %q:\n%s", want, got)
		}
	}
}
