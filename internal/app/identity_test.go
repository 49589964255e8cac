package app_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/slackio"
	"github.com/circlebot/circlebot/internal/testenv/faultproxy"
	"github.com/circlebot/circlebot/internal/testenv/motoserver"
)

// opsRole is in moto's default account: moto serves a role session's
// calls from the account of the role it was assumed from.
const opsRole = "arn:aws:iam::123456789012:role/circlebot-ops"

// baseKey is what the tests' own credentials sign with
// (motoserver.AWSConfig).
const baseKey = "test"

// mutating says whether an EC2 action changes something.
func mutating(action string) bool {
	return !strings.HasPrefix(action, "Describe") && !strings.HasPrefix(action, "Get")
}

// sessionOf asks moto which principal an access key belongs to.
func sessionOf(t *testing.T, moto *motoserver.Server, key string) string {
	t.Helper()
	cfg := motoserver.AWSConfig(moto.URL)
	cfg.Credentials = credentials.NewStaticCredentialsProvider(key, "unchecked", "")
	out, err := sts.NewFromConfig(cfg).GetCallerIdentity(context.Background(), &sts.GetCallerIdentityInput{})
	if err != nil {
		t.Fatal(err)
	}
	return aws.ToString(out.Arn)
}

// With ops.role_arn, an approved restore's AWS calls are made in a role
// session whose SourceIdentity is the requester and whose tags name the
// approver and the operation; the scheduled backup and its retention
// before it, which nobody approved, use the bot's own credentials.
func TestApprovedRestoreRunsInARoleSessionNamingItsPeople(t *testing.T) {
	r := newRestoreEnv(t, func(c *config.Config) {
		c.Ops.RoleARN = opsRole
		c.Slack.ReportChannel = incident
		c.Backup.Retention.KeepLast = 1
	})
	ctx := context.Background()

	// The scheduler: a backup, then retention pruning the setup's backup.
	r.proxy.Reset()
	poster := slackio.NewWeb(botToken, r.slack.APIURL(), slog.New(slog.NewTextHandler(io.Discard, nil))).For(chat.Request{ChannelID: incident})
	if err := r.app.ScheduledBackup(ctx, poster); err != nil {
		t.Fatal(err)
	}
	scheduled := r.proxy.Calls()
	if n := r.proxy.Count("CreateSnapshots") + r.proxy.Count("CreateSnapshot"); n == 0 {
		t.Fatal("the scheduled backup made no snapshot")
	}
	if realCount(r.proxy, "DeleteSnapshot") == 0 {
		t.Fatal("retention deleted nothing; the test proves nothing about it")
	}
	for _, c := range scheduled {
		if c.AccessKey != baseKey || c.Service == "sts" {
			t.Errorf("scheduled work: %s %s signed with %q", c.Service, c.Action, c.AccessKey)
		}
	}
	r.backup = r.lastBackup(ops.StateCompleted)

	req := r.request(alice, "restore latest --rebuild")
	r.proxy.Reset()
	r.slash(bob, incident, "approve "+req)
	r.waitText("summary", "Restored `"+r.backup.ID+"`")
	r.server.Wait()
	r.checkRestored()
	op, err := r.app.Journal.ByRequest(ctx, req)
	if err != nil {
		t.Fatal(err)
	}

	var assume []faultproxy.Call
	roleKeys := map[string]bool{}
	for _, c := range r.proxy.Calls() {
		switch {
		case c.Service == "sts":
			assume = append(assume, c)
		case c.AccessKey != baseKey:
			roleKeys[c.AccessKey] = true
		case c.Service == "ec2" && mutating(c.Action):
			t.Errorf("%s was signed with the bot's own key", c.Action)
		}
	}
	if len(assume) != 1 {
		t.Fatalf("%d STS calls, want one AssumeRole for the operation", len(assume))
	}
	a := assume[0]
	want := map[string]string{
		"Action": "AssumeRole", "RoleArn": opsRole, "RoleSessionName": "circlebot-" + op.ID,
		"SourceIdentity":    alice,
		"Tags.member.1.Key": "circlebot:approver", "Tags.member.1.Value": bob,
		"Tags.member.2.Key": "circlebot:op", "Tags.member.2.Value": op.ID,
	}
	for k, v := range want {
		if got := a.Params.Get(k); got != v {
			t.Errorf("AssumeRole %s = %q, want %q", k, got, v)
		}
	}
	if a.AccessKey != baseKey {
		t.Errorf("AssumeRole signed with %q, want the bot's own key", a.AccessKey)
	}
	if len(roleKeys) != 1 {
		t.Fatalf("the operation's calls were signed with %d other keys (%v), want one role session", len(roleKeys), roleKeys)
	}
	for key := range roleKeys {
		if got, want := sessionOf(t, r.moto, key), "arn:aws:sts::123456789012:assumed-role/circlebot-ops/circlebot-"+op.ID; got != want {
			t.Errorf("the operation's key %s is %s, want %s", key, got, want)
		}
		for _, action := range []string{"RunInstances", "StopInstances", "TerminateInstances", "RegisterImage", "ModifyInstanceAttribute"} {
			n := 0
			for _, c := range r.proxy.Calls() {
				if c.Action == action {
					n++
					if c.AccessKey != key {
						t.Errorf("%s signed with %q, want the role session's %s", action, c.AccessKey, key)
					}
				}
			}
			if n == 0 {
				t.Errorf("no %s seen; the restore did not run as expected", action)
			}
		}
	}
}

// A role that cannot be assumed stops the approved operation at its
// pre-flight, which runs in the operation's role session just before the
// first step, with a message naming ops.role_arn and STS's answer; nothing
// is journaled and no EC2 call of the operation is sent, with the bot's
// own credentials or any.
func TestARoleThatCannotBeAssumedStopsTheStepAndChangesNothing(t *testing.T) {
	r := newRestoreEnv(t, func(c *config.Config) { c.Ops.RoleARN = opsRole })
	ctx := context.Background()
	r.proxy.SetFaults(faultproxy.Faults{Deny: func(c faultproxy.Call) bool { return c.Service == "sts" && c.Action == "AssumeRole" }})

	req := r.request(alice, "restore latest --rebuild")
	r.proxy.Reset()
	r.slash(bob, incident, "approve "+req)
	r.waitText("stop", req, "approved but not run", "cannot assume ops.role_arn "+opsRole+" for op-", "AccessDenied", "Nothing was changed")
	r.server.Wait()
	if op, err := r.app.Journal.ByRequest(ctx, req); err == nil {
		t.Errorf("journaled although the role was refused: %s at step %d: %s", op.State, op.Next()+1, op.Why)
	}
	denied := 0
	for _, c := range r.proxy.Calls() {
		switch {
		case c.Service == "sts":
			if c.Fault == faultproxy.FaultDenied {
				denied++
			}
		case c.AccessKey != baseKey:
			t.Errorf("%s %s signed with %q", c.Service, c.Action, c.AccessKey)
		case c.Service == "ec2" && mutating(c.Action):
			t.Errorf("%s sent although the role was refused", c.Action)
		}
	}
	if denied == 0 {
		t.Error("no AssumeRole was refused; the test proves nothing")
	}
	if n := len(r.restored()); n != 0 {
		t.Errorf("%d instances launched", n)
	}
	if s := r.instance(r.inst.ServicesBox.ID).State.Name; s != ec2types.InstanceStateNameRunning {
		t.Errorf("the Services box is %s", s)
	}
}
