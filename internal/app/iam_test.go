package app_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"

	"github.com/circlebot/circlebot/deploy/iam"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/testenv/iamcheck"
	"github.com/circlebot/circlebot/internal/testenv/motoserver"
)

// botAWS is the aws.Config a test's bot talks to AWS with: the endpoint
// (moto, or a fault proxy in front of it), with every call recorded. When
// the package's tests have run, TestMain judges each against
// deploy/iam/policy.json as `bot iam-policy` renders it for *cfg (read
// then, so a test may still change it), and fails the run if the policy
// refuses one. direct reaches moto without faults: the recorder reads
// the tags IAM would see there.
func botAWS(t testing.TB, endpoint string, direct aws.Config, cfg *config.Config) *aws.Config {
	c, _ := recordedAWS(t, endpoint, direct, cfg)
	return c
}

func recordedAWS(t testing.TB, endpoint string, direct aws.Config, cfg *config.Config) (*aws.Config, *iamcheck.Session) {
	c := motoserver.AWSConfig(endpoint)
	// The SDK's own retries wait 50 ms instead of its jittered backoff:
	// the fault tests retry often, and the backoff is the SDK's, not ours.
	c.Retryer = func() aws.Retryer {
		return retry.NewStandard(func(o *retry.StandardOptions) {
			o.Backoff = retry.BackoffDelayerFunc(func(int, error) (time.Duration, error) { return 50 * time.Millisecond, nil })
		})
	}
	ses := iamcheck.Record(&c, iamcheck.Options{
		Test:   t.Name(),
		Lookup: direct,
		Policy: func() ([]byte, error) { return policyFor(*cfg) },
	})
	return &c, ses
}

// policyFor is what `bot iam-policy --account <moto's>` prints for cfg.
func policyFor(cfg config.Config) ([]byte, error) {
	v, err := iam.ValuesFor(cfg, iamcheck.MotoAccount)
	if err != nil {
		return nil, err
	}
	doc, _, err := iam.Render(iam.Template, v)
	return doc, err
}

// judge returns what a policy refuses of the calls the bot made so far.
func (e *env) judge(policy []byte) []iamcheck.Finding {
	e.t.Helper()
	ev, err := iamcheck.NewEvaluator(policy)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []iamcheck.Finding
	for _, r := range e.iamSes.Requests() {
		out = append(out, ev.Judge(r)...)
	}
	return out
}

// Issue 12: the default (secondary-ip) failover's plan reads the subnets;
// the README's policy had no ec2:DescribeSubnets, so on a real account
// every failover was refused before anyone could approve it.
func TestIAMFailoverPlanNeedsDescribeSubnets(t *testing.T) {
	f := newFailoverEnv(t, nil)
	f.request(alice, "failover --to "+f.standby) // the plan, up for approval
	f.server.Wait()
	var subnets []string
	for _, x := range f.judge(iamcheck.ReadmePolicyBeforeIssue12()) {
		if strings.Contains(x.Check, "ec2:DescribeSubnets") {
			subnets = append(subnets, x.String())
		}
	}
	if len(subnets) == 0 {
		t.Error("the README's policy allowed the plan's calls: this test no longer shows the bug")
	}
	doc, err := policyFor(*f.iamCfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := f.judge(doc); len(got) > 0 {
		t.Errorf("policy.json refuses the failover plan: %v", got)
	}
}

// The passphrase from Secrets Manager: the policy names the configured
// secret (the other secret test reads it from the box through SSM).
func TestIAMSecretFromSecretsManager(t *testing.T) {
	const value = "passphrase-from-secrets-manager"
	e := newEnv(t, func(c *config.Config) { c.Secret.SecretsManagerID = "circleci/passphrase" })
	if _, err := secretsmanager.NewFromConfig(e.aws).CreateSecret(context.Background(), &secretsmanager.CreateSecretInput{
		Name: aws.String("circleci/passphrase"), SecretString: aws.String(value),
	}); err != nil {
		t.Fatal(err)
	}
	req := e.request(alice, "secret")
	e.click(bob, "approve "+req, "sm.1")
	e.waitText("notice", "shown to <@"+alice+"> only")
	e.server.Wait()
	shown := false
	for _, c := range e.slack.Calls() {
		shown = shown || (c.Method == "chat.postEphemeral" && strings.Contains(e.slack.Text(c)+c.BlocksJSON, value))
	}
	if !shown {
		t.Error("the passphrase from Secrets Manager did not reach the requester")
	}
	doc, err := policyFor(*e.iamCfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := e.judge(doc); len(got) > 0 {
		t.Errorf("policy.json refuses: %v", got)
	}
}
