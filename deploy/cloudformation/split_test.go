package cloudformation

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/circlebot/circlebot/deploy/iam"
	"github.com/circlebot/circlebot/deploy/systemd"
)

// grown is policy.json with its statements n times over (Sids made
// unique), as if the policy had grown that much.
func grown(t *testing.T, n int) []byte {
	t.Helper()
	p, err := iam.Parse(iam.Template)
	if err != nil {
		t.Fatal(err)
	}
	var all []iam.Statement
	for i := range n {
		for _, s := range p.Statement {
			if i > 0 {
				s.Sid = fmt.Sprintf("%sCopy%d", s.Sid, i)
			}
			all = append(all, s)
		}
	}
	p.Statement = all
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var partComment = regexp.MustCompile(`(?m)^  # deploy/iam/policy.json, part (\d+) of (\d+): .* \(at most (\d+) characters filled in\)\.$`)

// The generator splits a growing policy into more managed policies, each
// within IAM's size at the parameters' longest values, every statement
// once and whole, until the role's quota of managed policies is reached:
// then it says so rather than write a stack IAM would refuse.
func TestThePolicySplitsAsItGrows(t *testing.T) {
	prev := 0
	for n := 1; ; n++ {
		policy := grown(t, n)
		out, err := Generate(Skeleton, policy, systemd.Unit)
		if err != nil {
			if !strings.Contains(err.Error(), "quota of 10 per role") {
				t.Fatalf("x%d: %v", n, err)
			}
			if n == 1 {
				t.Fatal("policy.json as committed does not fit")
			}
			t.Logf("x%d: %v", n, err)
			return
		}
		parts := partComment.FindAllStringSubmatch(string(out), -1)
		if len(parts) <= prev && n > 1 {
			t.Errorf("x%d: %d managed policies, no more than x%d's %d", n, len(parts), n-1, prev)
		}
		prev = len(parts)
		if len(parts)+otherManagedPolicies > ManagedPoliciesQuota {
			t.Errorf("x%d: %d managed policies and HostPolicy, over the quota", n, len(parts))
		}
		for _, p := range parts {
			if est, _ := strconv.Atoi(p[3]); est > ManagedPolicySize {
				t.Errorf("x%d: part %s can be %d characters", n, p[1], est)
			}
		}
		// Every statement once, in order.
		stmts, _, err := policyStatements(policy)
		if err != nil {
			t.Fatal(err)
		}
		sids := regexp.MustCompile(`"Sid": "([^"]+)"`).FindAllStringSubmatch(string(out), -1)
		var got []string
		for _, s := range sids {
			got = append(got, s[1])
		}
		var want []string
		for _, s := range stmts {
			want = append(want, s.sid)
		}
		// HostPolicy's statements are in the skeleton as YAML, not JSON.
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("x%d: statements %v, want %v", n, got, want)
		}
		t.Logf("x%d: %d managed policies", n, len(parts))
		if n > 10 {
			t.Fatal("the quota was never reached")
		}
	}
}

// A statement that alone could pass IAM's size is refused with its Sid.
func TestAStatementTooBigForAManagedPolicyIsRefused(t *testing.T) {
	actions := make([]string, 600)
	for i := range actions {
		actions[i] = fmt.Sprintf("ec2:Describe%04d", i)
	}
	b, _ := json.Marshal(map[string]any{"Version": "2012-10-17", "Statement": []any{
		map[string]any{"Sid": "Huge", "Effect": "Allow", "Action": actions, "Resource": "*"},
		map[string]any{"Sid": "SlackTokensFromSecretsManager", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": "${SlackSecret}"},
	}})
	_, err := Generate(Skeleton, b, systemd.Unit)
	if err == nil || !strings.Contains(err.Error(), "statement Huge") {
		t.Fatalf("want the Huge statement refused, got %v", err)
	}
}

// A managed policy whose statements all have conditions exists only when
// one holds: IAM refuses a document with no statement.
func TestAPolicyOfOnlyConditionalStatementsHasACondition(t *testing.T) {
	conds := map[string]obj{}
	out, err := managedPolicies([][]statement{
		{{sid: "A", v: obj{"Sid": "A"}, est: 100}},
		{{sid: "B", v: obj{}, cond: "HasBackupBucket", est: 100}, {sid: "C", v: obj{}, cond: "HasOpsRoleArn", est: 100}},
		{{sid: "D", v: obj{}, cond: "HasOpsRoleArn", est: 100}},
	}, conds)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"  BotPolicy1:\n    Type: AWS::IAM::ManagedPolicy\n    Properties:", "  BotPolicy2:\n    Type: AWS::IAM::ManagedPolicy\n    Condition: HasBotPolicy2\n", "  BotPolicy3:\n    Type: AWS::IAM::ManagedPolicy\n    Condition: HasOpsRoleArn\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in\n%s", want, out)
		}
	}
	or, _ := json.Marshal(conds["HasBotPolicy2"])
	if string(or) != `{"Fn::Or":[{"Condition":"HasBackupBucket"},{"Condition":"HasOpsRoleArn"}]}` {
		t.Errorf("HasBotPolicy2 is %s", or)
	}
}
