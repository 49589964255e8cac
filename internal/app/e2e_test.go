package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/circlebot/circlebot/internal/app"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/engine"
	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/sandbox"
	"github.com/circlebot/circlebot/internal/slackio"
	"github.com/circlebot/circlebot/internal/testenv/faultproxy"
	"github.com/circlebot/circlebot/internal/testenv/iamcheck"
	"github.com/circlebot/circlebot/internal/testenv/motoserver"
	"github.com/circlebot/circlebot/internal/testenv/slackfake"
)

// TestMain runs the tests, then judges every AWS call they made the bot
// send against the IAM policy (see botAWS).
func TestMain(m *testing.M) {
	os.Exit(iamcheck.Default.Finish(motoserver.Main(m), os.Stderr, iamcheck.FinishOptions{}))
}

const (
	signingSecret = "test-signing-secret"
	botToken      = "xoxb-test-token"
	incident      = "C0INCIDENT"
	alice         = "U0ALICE" // operator
	bob           = "U0BOB"   // approver
	dave          = "U0DAVE"  // no role
	vera          = "U0VERA"  // viewer
)

type env struct {
	t       *testing.T
	moto    *motoserver.Server
	lag     *motoserver.LagProxy // nil: reads are consistent
	inst    *sandbox.Install
	aws     aws.Config // straight to moto, for the test's own setup
	proxy   *faultproxy.Proxy
	slack   *slackfake.Server
	app     *app.App
	server  *app.Server
	http    *httptest.Server
	trigger atomic.Int64
	// iamCfg is the config the bot's AWS calls are judged by (botAWS),
	// iamSes their record.
	iamCfg *config.Config
	iamSes *iamcheck.Session
}

func newEnv(t *testing.T, edit func(*config.Config)) *env {
	t.Helper()
	return newEnvOn(t, motoserver.ForTest(t), edit)
}

// patchedMoto is a moto of the test's own whose snapshots stay pending
// until the test moves them.
func patchedMoto(t *testing.T) *motoserver.Server {
	t.Helper()
	return motoserver.ForTest(t, motoserver.WithPatchedSnapshots())
}

func newEnvOn(t *testing.T, moto *motoserver.Server, edit func(*config.Config), opts ...func(*app.Options)) *env {
	t.Helper()
	ctx := context.Background()
	direct := motoserver.AWSConfig(moto.URL)
	inst, err := sandbox.Seed(ctx, direct, sandbox.Options{WithBackups: true})
	if err != nil {
		t.Fatalf("seed: %v", err)
	}
	target, lag := moto.URL, lagFor(t)
	var lagged *motoserver.LagProxy
	if lag > 0 {
		// The bot's calls only: the test's own setup and checks read moto
		// as it is.
		lagged = motoserver.Lagged(moto.URL, lag)
		t.Cleanup(lagged.Close)
		target = lagged.URL
	}
	proxy := faultproxy.New(target, faultproxy.Faults{})
	t.Cleanup(proxy.Close)
	fake := slackfake.New()
	fake.SetToken(botToken)
	t.Cleanup(fake.Close)

	cfg := config.Defaults()
	cfg.DataDir = t.TempDir()
	cfg.Slack.AllowedChannels = []string{incident}
	cfg.Roles = config.Roles{Operators: []string{alice}, Approvers: []string{bob}}
	cfg.Replica.NameTag = "circleci_services_replica"
	cfg.Builders.ASGName = inst.BuilderASG
	cfg.Secrets = config.SecretsFromEnv(func(k string) string {
		return map[string]string{"SLACK_BOT_TOKEN": botToken, "SLACK_SIGNING_SECRET": signingSecret, "SLACK_API_URL": fake.APIURL()}[k]
	})
	if edit != nil {
		edit(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("test config: %v", err)
	}
	iamCfg := new(config.Config)
	viaProxy, iamSes := recordedAWS(t, proxy.URL, direct, iamCfg)
	ao := app.Options{Config: cfg, Version: "test", AWS: viaProxy, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, o := range opts {
		o(&ao)
	}
	*iamCfg = ao.Config
	a, err := app.New(ctx, ao)
	if err != nil {
		t.Fatal(err)
	}
	testSpeed(a)
	ctx, cancel := context.WithCancel(ctx)
	srv := a.NewServer(ctx)
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		hs.Close()
		srv.Wait()
		cancel()
		a.Close()
	})
	proxy.Reset()
	return &env{t: t, moto: moto, lag: lagged, inst: inst, aws: direct, proxy: proxy, slack: fake, app: a, server: srv, http: hs, iamCfg: iamCfg, iamSes: iamSes}
}

// lagEnvVar names the environment variable that runs every end-to-end
// test with AWS's read lag (motoserver.Lagged): CIRCLEBOT_TEST_LAG=2s
// go test ./internal/app/.
const lagEnvVar = "CIRCLEBOT_TEST_LAG"

// forcedLag holds the tests that always run with lag (withLag).
var forcedLag sync.Map // testing.TB -> time.Duration

// withLag makes the environments t builds serve reads with lag: for lag
// after each mutation, a read answered before it is answered the same.
func withLag(t *testing.T, lag time.Duration) {
	forcedLag.Store(t, lag)
	t.Cleanup(func() { forcedLag.Delete(t) })
}

func lagFor(t *testing.T) time.Duration {
	if v, ok := forcedLag.Load(t); ok {
		return v.(time.Duration)
	}
	if s := os.Getenv(lagEnvVar); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("$%s=%q: %v", lagEnvVar, s, err)
		}
		return d
	}
	return 0
}

// settle waits out the read lag after the bot's last change, so that the
// bot sees what the test changed behind its back (no lag: at once).
func (e *env) settle() {
	e.t.Helper()
	if e.lag != nil {
		if err := e.lag.Settle(e.t.Context()); err != nil {
			e.t.Fatal(err)
		}
	}
}

// staleReads is how many reads the lag proxy answered with a state from
// before a mutation (0 without lag).
func (e *env) staleReads() int {
	if e.lag == nil {
		return 0
	}
	n := 0
	for _, v := range e.lag.Stale() {
		n += v
	}
	return n
}

// testSpeed sets an app's polling and progress pacing to test speed;
// Slack's pacing is tested in progress.
func testSpeed(a *app.App) {
	if a.Backups.Tarball != nil {
		a.Backups.Tarball.Poll = 20 * time.Millisecond
	}
	a.Engine.MinInterval = 20 * time.Millisecond
	a.Backups.EBS.PollMin, a.Backups.EBS.PollMax = 20*time.Millisecond, 100*time.Millisecond
	a.Backups.EBS.Retry = 10 * time.Millisecond
}

// web is the Slack Web API client the bot would use, for calls a test
// makes outside a request (resume at start-up, a direct Handle).
func (e *env) web() *slackio.Web {
	return slackio.NewWeb(botToken, e.slack.APIURL(), slog.New(slog.NewTextHandler(io.Discard, nil)))
}

// post sends a request signed as Slack would, at the given time.
func (e *env) post(path string, body string, at time.Time, secret string) *http.Response {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.http.URL+path, strings.NewReader(body))
	ts := strconv.FormatInt(at.Unix(), 10)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("X-Slack-Request-Timestamp", ts)
	req.Header.Set("X-Slack-Signature", slackio.SignatureHeader([]byte(secret), ts, []byte(body)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func (e *env) slashForm(user, channel, text string) (url.Values, string) {
	n := e.trigger.Add(1)
	rid := fmt.Sprintf("r%d", n)
	return url.Values{
		"command":      {"/circleci"},
		"text":         {text},
		"user_id":      {user},
		"user_name":    {strings.ToLower(user)},
		"channel_id":   {channel},
		"team_id":      {"T0001"},
		"trigger_id":   {fmt.Sprintf("trig.%d", n)},
		"response_url": {e.slack.ResponseURL(rid)},
	}, rid
}

// slash sends a signed slash command and requires the 200 ack.
func (e *env) slash(user, channel, text string) string {
	e.t.Helper()
	form, rid := e.slashForm(user, channel, text)
	if resp := e.post("/slack/commands", form.Encode(), time.Now(), signingSecret); resp.StatusCode != http.StatusOK {
		e.t.Fatalf("%q: HTTP %d", text, resp.StatusCode)
	}
	return rid
}

func (e *env) waitResponse(rid, what string) slackfake.Call {
	return e.slack.WaitFor(e.t, 30*time.Second, what, func(c slackfake.Call) bool {
		return c.Method == "response_url" && c.ResponseID == rid
	})
}

func (e *env) waitPost(channel, what string, pred func(text string) bool) slackfake.Call {
	return e.slack.WaitFor(e.t, 30*time.Second, what, func(c slackfake.Call) bool {
		return c.Method == "chat.postMessage" && c.Channel == channel && pred(e.slack.Text(c))
	})
}

func TestSignedStatusPostsTheBoxFromMoto(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.slash(alice, incident, "status")
	box := e.inst.ServicesBox
	c := e.waitPost(incident, "status message naming the Services box", func(s string) bool {
		return strings.Contains(s, box.ID)
	})
	text := e.slack.Text(c)
	for _, want := range []string{box.ID, box.PrivateIP, box.SecondaryIP, e.inst.Replica.ID, "running", box.AZ, "Newest restore point", e.inst.BuilderASG} {
		if !strings.Contains(text, want) {
			t.Errorf("status message lacks %q:\n%s", want, text)
		}
	}
	for _, v := range box.Volumes {
		if !strings.Contains(text, v) {
			t.Errorf("status message lacks volume %s", v)
		}
	}
	if c.Token != botToken {
		t.Errorf("posted with token %q", c.Token)
	}
	if n := e.proxy.Count("DescribeInstances"); n == 0 {
		t.Error("status did not read EC2 through the SDK")
	}
	e.server.Wait()
	hist, err := e.app.Store.History(t.Context(), 5)
	if err != nil || len(hist) != 1 || hist[0].Command != "status" || hist[0].Outcome != "ok" || hist[0].UserID != alice {
		t.Fatalf("audit: %+v %v", hist, err)
	}
}

func TestRefusedRequestsRunNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	form, _ := e.slashForm(alice, incident, "status")
	body := form.Encode()

	if r := e.post("/slack/commands", body, time.Now(), "forged-secret"); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("forged signature: HTTP %d, want 401", r.StatusCode)
	}
	if r := e.post("/slack/commands", body, time.Now().Add(-6*time.Minute), signingSecret); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("stale timestamp: HTTP %d, want 401", r.StatusCode)
	}
	big := body + "&pad=" + strings.Repeat("x", slackio.MaxBody)
	if r := e.post("/slack/commands", big, time.Now(), signingSecret); r.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized body: HTTP %d, want 413", r.StatusCode)
	}
	unsigned, _ := http.Post(e.http.URL+"/slack/commands", "application/x-www-form-urlencoded", strings.NewReader(body))
	unsigned.Body.Close()
	if unsigned.StatusCode != http.StatusUnauthorized {
		t.Errorf("unsigned: HTTP %d, want 401", unsigned.StatusCode)
	}

	rid := e.slash(alice, incident, "frobnicate the box")
	c := e.waitResponse(rid, "usage reply to an unknown subcommand")
	text := e.slack.Text(c)
	if c.ResponseType != "ephemeral" || !strings.Contains(text, `unknown command "frobnicate"`) || !strings.Contains(text, "/circleci status") {
		t.Errorf("usage reply (%s): %s", c.ResponseType, text)
	}
	e.server.Wait()
	if n := e.proxy.Count(""); n != 0 {
		t.Errorf("refused requests made %d AWS calls: %+v", n, e.proxy.Calls())
	}
	for _, c := range e.slack.Calls() {
		if c.Method == "chat.postMessage" {
			t.Errorf("a refused request posted to the channel: %s", e.slack.Text(c))
		}
	}
	hist, _ := e.app.Store.History(t.Context(), 10)
	if len(hist) != 1 || hist[0].Outcome != "usage" {
		t.Errorf("only the unknown subcommand reaches the bot and is audited: %+v", hist)
	}
}

func TestRolesAndChannels(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *config.Config) { c.Roles.Viewers = []string{vera} })

	rid := e.slash(dave, incident, "status")
	c := e.waitResponse(rid, "refusal for a user with no role")
	if s := e.slack.Text(c); c.ResponseType != "ephemeral" || !strings.Contains(s, "viewer role") || !strings.Contains(s, "Nothing was run") {
		t.Errorf("refusal: %s", s)
	}
	rid = e.slash(vera, incident, "restore latest")
	c = e.waitResponse(rid, "refusal of a destructive command for a viewer")
	if s := e.slack.Text(c); !strings.Contains(s, "operator role") {
		t.Errorf("refusal: %s", s)
	}
	rid = e.slash(alice, "C0RANDOM", "status")
	c = e.waitResponse(rid, "refusal in a channel not allowed")
	if s := e.slack.Text(c); !strings.Contains(s, "only take commands in") || !strings.Contains(s, incident) {
		t.Errorf("channel refusal: %s", s)
	}

	rid = e.slash(vera, incident, "help")
	help := e.slack.Text(e.waitResponse(rid, "help for a viewer"))
	if !strings.Contains(help, "status") || strings.Contains(help, "restore") || strings.Contains(help, "approve") {
		t.Errorf("viewer help lists what a viewer cannot run:\n%s", help)
	}
	rid = e.slash(bob, incident, "help")
	help = e.slack.Text(e.waitResponse(rid, "help for an approver"))
	if !strings.Contains(help, "approve") || strings.Contains(help, "failover") {
		t.Errorf("approver help:\n%s", help)
	}

	e.server.Wait()
	if n := e.proxy.Count(""); n != 0 {
		t.Errorf("refusals made %d AWS calls", n)
	}
	hist, _ := e.app.Store.History(t.Context(), 10)
	refused := 0
	for _, h := range hist {
		if h.Outcome == "refused" {
			refused++
		}
	}
	if refused != 3 {
		t.Errorf("want 3 audited refusals, got %+v", hist)
	}
}

func TestStatusExplainsMissingDuplicateAndBrokenAWS(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := context.Background()
	api := ec2.NewFromConfig(e.aws)

	// A second instance carrying the Services box tag.
	desc, err := api.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{e.inst.ServicesBox.ID}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = api.RunInstances(ctx, &ec2.RunInstancesInput{
		ImageId: desc.Reservations[0].Instances[0].ImageId, InstanceType: ec2types.InstanceTypeM5Large, MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
		SubnetId: aws.String(e.inst.Subnets[1]),
		TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance,
			Tags: []ec2types.Tag{{Key: aws.String("Name"), Value: aws.String("circleci_services")}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	e.slash(alice, incident, "status")
	e.waitPost(incident, "a warning about two tagged instances", func(s string) bool {
		return strings.Contains(s, "2 instances are tagged `Name=circleci_services`") || strings.Contains(s, "2 instances are tagged Name=circleci_services")
	})

	// AWS refusing every call: one clear sentence, no stack trace.
	e.proxy.SetFaults(faultproxy.Faults{ThrottleRate: 1})
	e.slash(alice, incident, "status")
	c := e.waitPost(incident, "an AWS error in words", func(s string) bool { return strings.Contains(s, "RequestLimitExceeded") })
	if s := e.slack.Text(c); strings.Contains(s, "goroutine") || strings.Contains(s, "StatusCode:") {
		t.Errorf("error leaks internals: %s", s)
	}
	e.proxy.SetFaults(faultproxy.Faults{})
	e.server.Wait()
	if n := testutil.ToFloat64(e.app.Metrics.AWSErrors.WithLabelValues("EC2", "DescribeInstances", "RequestLimitExceeded")); n < 1 {
		t.Errorf("AWS errors metric: %v", n)
	}

	// No box at all.
	out, err := api.DescribeInstances(ctx, &ec2.DescribeInstancesInput{Filters: []ec2types.Filter{{Name: aws.String("tag:Name"), Values: []string{"circleci_services"}}}})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range out.Reservations {
		for _, in := range r.Instances {
			ids = append(ids, aws.ToString(in.InstanceId))
		}
	}
	if _, err := api.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: ids}); err != nil {
		t.Fatal(err)
	}
	e.slash(alice, incident, "status")
	e.waitPost(incident, "a sentence saying the box is missing", func(s string) bool {
		return strings.Contains(s, "No instance tagged `Name=circleci_services`")
	})
}

func TestButtonsRunAsTheClickerAndRetriesRunOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *config.Config) { c.Roles.Viewers = []string{vera} })
	payload, _ := json.Marshal(map[string]any{
		"type":         "block_actions",
		"trigger_id":   "trig.button.1",
		"user":         map[string]string{"id": alice, "name": "alice"},
		"channel":      map[string]string{"id": incident},
		"team":         map[string]string{"id": "T0001"},
		"response_url": e.slack.ResponseURL("btn"),
		"container":    map[string]string{"type": "message", "message_ts": "1.0001"},
		"actions":      []map[string]string{{"action_id": slackio.ButtonActionID, "block_id": "actions", "value": "status", "type": "button", "action_ts": "1.1"}},
	})
	body := url.Values{"payload": {string(payload)}}.Encode()
	for range 2 { // Slack's retry of the same click
		if r := e.post("/slack/interactions", body, time.Now(), signingSecret); r.StatusCode != http.StatusOK {
			t.Fatalf("interaction: HTTP %d", r.StatusCode)
		}
	}
	e.waitPost(incident, "status from a button", func(s string) bool { return strings.Contains(s, e.inst.ServicesBox.ID) })
	e.server.Wait()
	posts := 0
	for _, c := range e.slack.Calls() {
		if c.Method == "chat.postMessage" {
			posts++
		}
	}
	if posts != 1 {
		t.Errorf("a retried click ran %d times", posts)
	}

	// The same command text under another user's click is authorised again.
	payload2 := strings.Replace(string(payload), alice, dave, 1)
	payload2 = strings.Replace(payload2, "trig.button.1", "trig.button.2", 1)
	e.post("/slack/interactions", url.Values{"payload": {payload2}}.Encode(), time.Now(), signingSecret)
	e.slack.WaitFor(t, 30*time.Second, "refusal of a click by a user with no role", func(c slackfake.Call) bool {
		return c.Method == "response_url" && strings.Contains(e.slack.Text(c), "Sorry <@"+dave+">")
	})
}

func TestHealthAndMetrics(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.slash(alice, incident, "status")
	e.waitPost(incident, "status", func(s string) bool { return strings.Contains(s, e.inst.ServicesBox.ID) })
	e.server.Wait()

	resp, err := http.Get(e.http.URL + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("healthz: %v %v", resp, err)
	}
	resp.Body.Close()
	// Not on the Slack-facing listener: it is public in HTTP mode.
	resp, err = http.Get(e.http.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("/metrics on the public listener: HTTP %d, want 404", resp.StatusCode)
	}
	ms := httptest.NewServer(e.app.MetricsHandler())
	defer ms.Close()
	resp, err = http.Get(ms.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`circlebot_commands_total{command="status",outcome="ok"} 1`, `circlebot_ack_seconds_count{transport="http"} 1`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// destructiveOps are the journaled operations of a, without the backups
// and drills the tests take to have a restore point (the engine journals
// those too).
func destructiveOps(ctx context.Context, a *app.App) ([]*journal.Op, error) {
	all, err := a.Journal.All(ctx)
	return slices.DeleteFunc(all, func(op *journal.Op) bool {
		return op.Kind == engine.KindBackupEBS || op.Kind == engine.KindBackupTarball || op.Kind == engine.KindDrill
	}), err
}
