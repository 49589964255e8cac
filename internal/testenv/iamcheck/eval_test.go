package iamcheck

import (
	"slices"
	"strings"
	"testing"

	"github.com/circlebot/circlebot/deploy/iam"
	"github.com/circlebot/circlebot/internal/config"
)

const (
	region  = "us-east-1"
	account = MotoAccount
	kmsKey  = "arn:aws:kms:us-east-1:123456789012:key/1111aaaa-2222-3333-4444-555566667777"
	bucket  = "circleci-backups-sandbox"
)

func evaluator(t *testing.T, doc string) *Evaluator {
	t.Helper()
	ev, err := NewEvaluator([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func decide(t *testing.T, ev *Evaluator, c Check) Decision {
	t.Helper()
	d, err := ev.Decide(c)
	if err != nil {
		t.Fatalf("%s: %v", c, err)
	}
	return d
}

func instance(id string) string { return "arn:aws:ec2:us-east-1:123456789012:instance/" + id }

func tags(kv ...string) map[string][]string {
	m := map[string][]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = []string{kv[i+1]}
	}
	return m
}

func TestIAMRules(t *testing.T) {
	ev := evaluator(t, `{"Version": "2012-10-17", "Statement": [
		{"Sid": "Describe", "Effect": "Allow", "Action": "ec2:Describe*", "Resource": "*"},
		{"Sid": "StopTagged", "Effect": "Allow", "Action": ["ec2:StopInstances", "ec2:StartInstances"], "Resource": "arn:aws:ec2:*:*:instance/*",
		 "Condition": {"StringLike": {"aws:ResourceTag/Name": "box*"}}},
		{"Sid": "NoStartOfB", "Effect": "Deny", "Action": "ec2:StartInstances", "Resource": "*",
		 "Condition": {"StringEquals": {"aws:ResourceTag/Name": "box-b"}}},
		{"Sid": "AllButS3", "Effect": "Allow", "NotAction": ["s3:*", "ec2:*", "kms:*"], "Resource": "*"},
		{"Sid": "OneBucket", "Effect": "Allow", "Action": "s3:GetObject", "NotResource": "arn:aws:s3:::secret/*"},
		{"Sid": "TagKeys", "Effect": "Allow", "Action": "ec2:CreateTags", "Resource": "arn:aws:ec2:*:*:volume/*",
		 "Condition": {"ForAllValues:StringEquals": {"aws:TagKeys": ["a", "b"]}}},
		{"Sid": "AnyKey", "Effect": "Allow", "Action": "ec2:CreateTags", "Resource": "arn:aws:ec2:*::snapshot/*",
		 "Condition": {"ForAnyValue:StringEquals": {"aws:TagKeys": ["a"]}}},
		{"Sid": "Untagged", "Effect": "Allow", "Action": "ec2:DeleteVolume", "Resource": "*",
		 "Condition": {"Null": {"aws:ResourceTag/keep": "true"}}},
		{"Sid": "NotKept", "Effect": "Allow", "Action": "ec2:DeleteSnapshot", "Resource": "*",
		 "Condition": {"StringNotEquals": {"aws:ResourceTag/keep": "yes"}}},
		{"Sid": "IfExists", "Effect": "Allow", "Action": "ec2:CreateTags", "Resource": "arn:aws:ec2:*:*:instance/*",
		 "Condition": {"StringEqualsIfExists": {"aws:RequestTag/Name": "box-a"}}},
		{"Sid": "Grant", "Effect": "Allow", "Action": "kms:CreateGrant", "Resource": "*",
		 "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}, "ArnLike": {"kms:GranteePrincipal": "arn:aws:iam::*:role/ebs-*"}}},
		{"Sid": "RequestTagOnEverything", "Effect": "Allow", "Action": "ec2:RunInstances", "Resource": "*",
		 "Condition": {"StringEquals": {"aws:RequestTag/Name": "box-a"}}}
	]}`)
	vol := "arn:aws:ec2:us-east-1:123456789012:volume/vol-1"
	snap := "arn:aws:ec2:us-east-1::snapshot/snap-1"
	for _, tc := range []struct {
		name  string
		check Check
		allow bool
		by    string // the Sid that allows, or the Deny that denies
	}{
		{"wildcard action, no resource type", Check{Action: "ec2:DescribeSubnets", Resource: "*"}, true, "Describe"},
		{"action names are case-insensitive", Check{Action: "EC2:describeinstances", Resource: "*"}, true, "Describe"},
		{"no statement names it", Check{Action: "ec2:TerminateInstances", Type: "instance", Resource: instance("i-1"), Context: tags("aws:ResourceTag/Name", "box-a")}, false, ""},
		{"condition on the resource's tag", Check{Action: "ec2:StopInstances", Type: "instance", Resource: instance("i-1"), Context: tags("aws:ResourceTag/Name", "box-a")}, true, "StopTagged"},
		{"tag absent: StringLike fails", Check{Action: "ec2:StopInstances", Type: "instance", Resource: instance("i-1")}, false, ""},
		{"explicit deny wins over an allow", Check{Action: "ec2:StartInstances", Type: "instance", Resource: instance("i-2"), Context: tags("aws:ResourceTag/Name", "box-b")}, false, "NoStartOfB"},
		{"NotAction", Check{Action: "cloudwatch:GetMetricData", Resource: "*"}, true, "AllButS3"},
		{"NotAction excludes", Check{Action: "s3:PutObject", Type: "object", Resource: "arn:aws:s3:::b/k"}, false, ""},
		{"NotResource", Check{Action: "s3:GetObject", Type: "object", Resource: "arn:aws:s3:::public/k"}, true, "OneBucket"},
		{"NotResource excludes", Check{Action: "s3:GetObject", Type: "object", Resource: "arn:aws:s3:::secret/k"}, false, ""},
		{"ForAllValues: every key listed", Check{Action: "ec2:CreateTags", Type: "volume", Resource: vol, Context: map[string][]string{"aws:TagKeys": {"a", "b"}}}, true, "TagKeys"},
		{"ForAllValues: one key too many", Check{Action: "ec2:CreateTags", Type: "volume", Resource: vol, Context: map[string][]string{"aws:TagKeys": {"a", "c"}}}, false, ""},
		{"ForAnyValue: one key listed", Check{Action: "ec2:CreateTags", Type: "snapshot", Resource: snap, Context: map[string][]string{"aws:TagKeys": {"c", "a"}}}, true, "AnyKey"},
		{"ForAnyValue: no key", Check{Action: "ec2:CreateTags", Type: "snapshot", Resource: snap}, false, ""},
		{"Null true: key absent", Check{Action: "ec2:DeleteVolume", Type: "volume", Resource: vol}, true, "Untagged"},
		{"Null true: key present", Check{Action: "ec2:DeleteVolume", Type: "volume", Resource: vol, Context: tags("aws:ResourceTag/keep", "x")}, false, ""},
		{"negated operator, key absent: holds", Check{Action: "ec2:DeleteSnapshot", Type: "snapshot", Resource: snap}, true, "NotKept"},
		{"negated operator, key matches: fails", Check{Action: "ec2:DeleteSnapshot", Type: "snapshot", Resource: snap, Context: tags("aws:ResourceTag/keep", "yes")}, false, ""},
		{"IfExists, key absent", Check{Action: "ec2:CreateTags", Type: "instance", Resource: instance("i-1"), Context: map[string][]string{"aws:TagKeys": {"x"}}}, true, "IfExists"},
		{"IfExists, key differs", Check{Action: "ec2:CreateTags", Type: "instance", Resource: instance("i-1"), Context: tags("aws:RequestTag/Name", "box-b")}, false, ""},
		{"Bool and ArnLike", Check{Action: "kms:CreateGrant", Type: "key", Resource: kmsKey, Context: map[string][]string{"kms:GrantIsForAWSResource": {"true"}, "kms:GranteePrincipal": {"arn:aws:iam::123456789012:role/ebs-x"}}}, true, "Grant"},
		{"ArnLike: a wildcard does not cross a colon", Check{Action: "kms:CreateGrant", Type: "key", Resource: kmsKey, Context: map[string][]string{"kms:GrantIsForAWSResource": {"true"}, "kms:GranteePrincipal": {"arn:aws:iam:us-east-1:123456789012:role/ebs-x"}}}, false, ""},
		{"Bool false", Check{Action: "kms:CreateGrant", Type: "key", Resource: kmsKey, Context: map[string][]string{"kms:GrantIsForAWSResource": {"false"}}}, false, ""},
		// RunInstances authorizes the instance with its request tags, the
		// subnet without: the Reference gives a subnet no aws:RequestTag.
		{"request tags reach the instance", Check{Action: "ec2:RunInstances", Type: "instance", Resource: "arn:aws:ec2:us-east-1:123456789012:instance/*", Context: tags("aws:RequestTag/Name", "box-a")}, true, "RequestTagOnEverything"},
		{"but not the subnet", Check{Action: "ec2:RunInstances", Type: "subnet", Resource: "arn:aws:ec2:us-east-1:123456789012:subnet/subnet-1", Context: tags("aws:RequestTag/Name", "box-a")}, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := decide(t, ev, tc.check)
			if d.Allowed != tc.allow {
				t.Fatalf("allowed=%v, want %v (%s)", d.Allowed, tc.allow, d.Why)
			}
			if tc.allow && !strings.Contains(strings.Join(d.AllowedBy, ","), tc.by) {
				t.Errorf("allowed by %v, want %s", d.AllowedBy, tc.by)
			}
			if !tc.allow && tc.by != "" && d.DeniedBy != tc.by {
				t.Errorf("denied by %q, want %s", d.DeniedBy, tc.by)
			}
			if !tc.allow && d.Why == "" {
				t.Error("a denial must say why")
			}
		})
	}
}

func TestDenialSaysWhatIsMissing(t *testing.T) {
	ev := evaluator(t, `{"Version": "2012-10-17", "Statement": [
		{"Sid": "StopTheBox", "Effect": "Allow", "Action": "ec2:StopInstances", "Resource": "arn:aws:ec2:*:*:instance/*",
		 "Condition": {"StringEquals": {"aws:ResourceTag/Name": "circleci_services"}}}
	]}`)
	d := decide(t, ev, Check{Action: "ec2:StopInstances", Type: "instance", Resource: instance("i-1"), Context: tags("aws:ResourceTag/Name", "builder")})
	for _, want := range []string{"StopTheBox", "aws:ResourceTag/Name", "circleci_services", "builder"} {
		if !strings.Contains(d.Why, want) {
			t.Errorf("%q does not name %s", d.Why, want)
		}
	}
	d = decide(t, ev, Check{Action: "ec2:DescribeSubnets", Resource: "*"})
	if d.Why != "no statement allows ec2:DescribeSubnets" {
		t.Errorf("why: %q", d.Why)
	}
}

func TestChecksIAMCouldNotMakeAreRefused(t *testing.T) {
	ev := evaluator(t, `{"Version": "2012-10-17", "Statement": [{"Sid": "All", "Effect": "Allow", "Action": "*:*", "Resource": "*"}]}`)
	for _, c := range []Check{
		{Action: "ec2:StopInstance", Type: "instance", Resource: instance("i-1")},                                     // no such action
		{Action: "ec2:StopInstances", Type: "volume", Resource: "arn:aws:ec2:us-east-1:123456789012:volume/vol-1"},    // wrong type
		{Action: "ec2:StopInstances", Type: "instance", Resource: "arn:aws:ec2:us-east-1::instance/i-1"},              // no account
		{Action: "ec2:DeleteSnapshot", Type: "snapshot", Resource: "arn:aws:ec2:us-east-1:123456789012:snapshot/s-1"}, // snapshots have none
		{Action: "ec2:DescribeSubnets", Type: "", Resource: "arn:aws:ec2:us-east-1:123456789012:subnet/subnet-1"},     // has no resource type
	} {
		if _, err := ev.Decide(c); err == nil {
			t.Errorf("%s: no error", c)
		}
	}
	for _, doc := range []string{
		`{"Version": "2012-10-17", "Statement": [{"Sid": "A", "Effect": "Allow", "Action": "ec2:StopInstances", "Resource": "*", "Condition": {"NumericLessThan": {"ec2:VolumeSize": "10"}}}]}`,
		`{"Version": "2012-10-17", "Statement": [{"Sid": "A", "Effect": "Allow", "Action": "ec2:StopInstance", "Resource": "*"}]}`,
		`{"Version": "2012-10-17", "Statement": [{"Sid": "A", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "*", "Condition": {"StringLike": {"s3:prefix": "${aws:username}/*"}}}]}`,
	} {
		if _, err := NewEvaluator([]byte(doc)); err == nil {
			t.Errorf("no error for %s", doc)
		}
	}
}

// Policies of issue 12: the README's policy before it, and policy.json
// rendered for a config like the tests' (moto's account and region).

func oldPolicy(t *testing.T) *Evaluator {
	t.Helper()
	return evaluator(t, string(ReadmePolicyBeforeIssue12()))
}

func testConfig() config.Config {
	c := config.Defaults()
	c.AWS.Region = region
	c.Replica.NameTag = "circleci_services_replica"
	c.Backup.Bucket = bucket
	c.Builders.ASGName = "circleci-builders"
	c.ServicesBox.RoleARN = "arn:aws:iam::123456789012:role/circleci-services"
	return c
}

func newPolicy(t *testing.T, c config.Config) *Evaluator {
	t.Helper()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	v, err := iam.ValuesFor(c, account)
	if err != nil {
		t.Fatal(err)
	}
	doc, _, err := iam.Render(iam.Template, v)
	if err != nil {
		t.Fatal(err)
	}
	return evaluator(t, string(doc))
}

// The secondary-ip failover plan reads the subnets of both boxes; the
// README's policy had no ec2:DescribeSubnets, so every default failover
// was refused at plan time. (TestIAMFailoverPlan in internal/app records
// the plan's real calls.)
func TestIssue12DescribeSubnets(t *testing.T) {
	c := Check{Action: "ec2:DescribeSubnets", Resource: "*"}
	if d := decide(t, oldPolicy(t), c); d.Allowed {
		t.Error("the README's policy allowed DescribeSubnets: this test no longer shows the bug")
	}
	if d := decide(t, newPolicy(t, testConfig()), c); !d.Allowed {
		t.Errorf("policy.json: %s", d.Why)
	}
}

// The tag bypass: with ec2:CreateTags on instance/* unconditioned, the
// role could name any instance circleci_services and then stop or
// terminate it under the statements keyed on that name.
func TestIssue12TagBypass(t *testing.T) {
	other := instance("i-0builder")
	rename := Check{Action: "ec2:CreateTags", Type: "instance", Resource: other,
		Context: merge(resourceTags("ec2", map[string]string{"Name": "circleci-builders"}), requestTags(map[string]string{"Name": "circleci_services"}))}
	stop := Check{Action: "ec2:TerminateInstances", Type: "instance", Resource: other,
		Context: resourceTags("ec2", map[string]string{"Name": "circleci_services"})}
	old := oldPolicy(t)
	if d := decide(t, old, rename); !d.Allowed {
		t.Fatalf("the README's policy refused the rename (%s): this test no longer shows the bug", d.Why)
	}
	if d := decide(t, old, stop); !d.Allowed {
		t.Fatalf("the README's policy refused to terminate the renamed instance (%s)", d.Why)
	}
	ev := newPolicy(t, testConfig())
	d := decide(t, ev, rename)
	if d.Allowed || d.DeniedBy != "NeverNameAnotherInstanceAsABox" {
		t.Errorf("policy.json lets the bot name another instance the Services box: %+v", d)
	}
	// Nor the replica's name, nor a name under the prefix.
	for _, name := range []string{"circleci_services_replica", "circleci_services-fenced"} {
		c := rename
		c.Context = merge(resourceTags("ec2", map[string]string{"Name": "circleci-builders"}), requestTags(map[string]string{"Name": name}))
		if d := decide(t, ev, c); d.Allowed {
			t.Errorf("policy.json lets the bot name another instance %s", name)
		}
	}
	// An untagged instance likewise.
	c := rename
	c.Context = requestTags(map[string]string{"Name": "circleci_services"})
	if d := decide(t, ev, c); d.Allowed {
		t.Error("policy.json lets the bot name an untagged instance the Services box")
	}
	// The failover's hand-over between the boxes stays allowed.
	handover := Check{Action: "ec2:CreateTags", Type: "instance", Resource: instance("i-0replica"),
		Context: merge(resourceTags("ec2", map[string]string{"Name": "circleci_services_replica"}),
			requestTags(map[string]string{"Name": "circleci_services", "circlebot:promoted-by": "op-1"}))}
	if d := decide(t, ev, handover); !d.Allowed {
		t.Errorf("the failover's rename of the replica is refused: %s", d.Why)
	}
	// A box may not be renamed out of the bot's reach, nor given a mark.
	out := handover
	out.Context = merge(resourceTags("ec2", map[string]string{"Name": "circleci_services"}), requestTags(map[string]string{"Name": "web"}))
	if d := decide(t, ev, out); d.Allowed {
		t.Error("policy.json lets the bot rename the box to something else")
	}
	// Tags at creation stay free: a restore launches the new box named.
	launch := Check{Action: "ec2:CreateTags", Type: "instance", Resource: instance("*"), Implied: "TagSpecifications of RunInstances",
		Context: merge(requestTags(map[string]string{"Name": "circleci_services", "circlebot:restore-op": "op-1"}), map[string][]string{"ec2:CreateAction": {"RunInstances"}})}
	if d := decide(t, ev, launch); !d.Allowed {
		t.Errorf("tagging the launched box is refused: %s", d.Why)
	}
	// And what the bot cannot name, it cannot stop.
	if d := decide(t, ev, Check{Action: "ec2:StopInstances", Type: "instance", Resource: other, Context: resourceTags("ec2", map[string]string{"Name": "circleci-builders"})}); d.Allowed {
		t.Error("policy.json lets the bot stop a builder")
	}
}

// The same bypass through the bot's other marks: circlebot:drill opens
// DeleteVolume, DeregisterImage and TerminateInstances, circlebot:backup-id
// DeleteSnapshot.
func TestIssue12MarksOnlyAtCreation(t *testing.T) {
	vol := "arn:aws:ec2:us-east-1:123456789012:volume/vol-0data"
	snap := "arn:aws:ec2:us-east-1::snapshot/snap-0handmade"
	old, ev := oldPolicy(t), newPolicy(t, testConfig())
	for _, c := range []Check{
		{Action: "ec2:CreateTags", Type: "volume", Resource: vol, Context: requestTags(map[string]string{"circlebot:drill": "d-1"})},
		{Action: "ec2:CreateTags", Type: "volume", Resource: vol, Context: requestTags(map[string]string{"circlebot:kept-by": "op-1", "circlebot:drill": "d-1"})},
		{Action: "ec2:CreateTags", Type: "instance", Resource: instance("i-0web"), Context: requestTags(map[string]string{"circlebot:drill": "d-1"})},
		{Action: "ec2:CreateTags", Type: "snapshot", Resource: snap, Context: requestTags(map[string]string{"circlebot:backup-id": "bk-1"})},
	} {
		if d := decide(t, ev, c); d.Allowed {
			t.Errorf("policy.json allows %s", c)
		}
	}
	// The README's policy let the drill mark onto any volume.
	if d := decide(t, old, Check{Action: "ec2:CreateTags", Type: "volume", Resource: vol, Context: requestTags(map[string]string{"circlebot:drill": "d-1"})}); !d.Allowed {
		t.Errorf("the README's policy refused to mark a volume (%s): this test no longer shows the bug", d.Why)
	}
	// What the bot does tag after creation stays allowed.
	for _, c := range []Check{
		{Action: "ec2:CreateTags", Type: "volume", Resource: vol, Context: requestTags(map[string]string{"circlebot:kept-by": "op-1", "circlebot:kept-from": "i-1"})},
		{Action: "ec2:CreateTags", Type: "snapshot", Resource: snap, Context: merge(resourceTags("ec2", map[string]string{"circlebot:backup-id": "bk-1"}), requestTags(map[string]string{"circlebot:volume": "vol-1", "circlebot:device": "/dev/sdf"}))},
	} {
		if d := decide(t, ev, c); !d.Allowed {
			t.Errorf("policy.json refuses %s: %s", c, d.Why)
		}
	}
}

// A customer-managed key on the volumes or the bucket: EC2 and S3 use it
// with the bot's rights, and the README's policy had no KMS statement.
// (TestKMSThroughEC2AndS3 records these checks from real calls.)
func TestIssue12KMS(t *testing.T) {
	via := func(svc string) map[string][]string {
		return map[string][]string{"kms:ViaService": {svc + ".us-east-1.amazonaws.com"}, "kms:CallerAccount": {account}}
	}
	object := "arn:aws:s3:::" + bucket + "/circleci-backups/bk-1/circleci-data-export.tar.bz2"
	checks := []Check{
		{Action: "kms:CreateGrant", Type: "key", Resource: kmsKey, Context: merge(via("ec2"), map[string][]string{"kms:GrantIsForAWSResource": {"true"}})},
		{Action: "kms:Decrypt", Type: "key", Resource: kmsKey, Context: via("ec2")},
		{Action: "kms:GenerateDataKeyWithoutPlaintext", Type: "key", Resource: kmsKey, Context: via("ec2")},
		{Action: "kms:DescribeKey", Type: "key", Resource: kmsKey, Context: via("ec2")},
		{Action: "kms:GenerateDataKey", Type: "key", Resource: kmsKey, Context: merge(via("s3"), map[string][]string{"kms:EncryptionContext:aws:s3:arn": {object}})},
		{Action: "kms:Decrypt", Type: "key", Resource: kmsKey, Context: merge(via("s3"), map[string][]string{"kms:EncryptionContext:aws:s3:arn": {object}})},
	}
	withKey := testConfig()
	withKey.AWS.KMSKeyARNs = []string{kmsKey}
	old, without, with := oldPolicy(t), newPolicy(t, testConfig()), newPolicy(t, withKey)
	for _, c := range checks {
		if d := decide(t, old, c); d.Allowed {
			t.Errorf("the README's policy allowed %s: this test no longer shows the bug", c)
		}
		if d := decide(t, without, c); d.Allowed {
			t.Errorf("with no aws.kms_key_arns, policy.json allows %s", c)
		}
		if d := decide(t, with, c); !d.Allowed {
			t.Errorf("policy.json with the key: %s", d.Why)
		}
	}
	// Only through the services, only for the bucket's backups, only
	// grants for AWS resources, only the configured keys.
	for _, c := range []Check{
		{Action: "kms:Decrypt", Type: "key", Resource: kmsKey, Context: map[string][]string{"kms:CallerAccount": {account}}},
		{Action: "kms:Decrypt", Type: "key", Resource: kmsKey, Context: merge(via("s3"), map[string][]string{"kms:EncryptionContext:aws:s3:arn": {"arn:aws:s3:::other-bucket/x"}})},
		{Action: "kms:CreateGrant", Type: "key", Resource: kmsKey, Context: via("ec2")},
		{Action: "kms:Decrypt", Type: "key", Resource: "arn:aws:kms:us-east-1:123456789012:key/other", Context: via("ec2")},
	} {
		if d := decide(t, with, c); d.Allowed {
			t.Errorf("policy.json allows %s", c)
		}
	}
}

// What Finish reports: each refused call by test, what it needs, and the
// statements nothing exercised that why.json does not explain.
func TestSuiteReportsRefusalsAndIdleStatements(t *testing.T) {
	tpl := []byte(`{"Version": "2012-10-17", "Statement": [
		{"Sid": "Read", "Effect": "Allow", "Action": "ec2:DescribeSubnets", "Resource": "*"},
		{"Sid": "Idle", "Effect": "Allow", "Action": "ec2:DescribeImages", "Resource": "*"},
		{"Sid": "Explained", "Effect": "Allow", "Action": "ec2:DescribeVolumes", "Resource": "*"}
	]}`)
	s := &Suite{}
	ses := &Session{opt: Options{Test: "TestX", Policy: func() ([]byte, error) { return tpl, nil }}}
	ses.reqs = []Request{
		{Test: "TestX", Service: "EC2", Operation: "DescribeSubnets", Checks: []Check{{Action: "ec2:DescribeSubnets", Resource: "*"}}},
		{Test: "TestX", Service: "EC2", Operation: "StopInstances", Checks: []Check{{Action: "ec2:StopInstances", Type: "instance", Resource: instance("i-1")}}},
		{Test: "TestX", Service: "EC2", Operation: "StopInstances", Checks: []Check{{Action: "ec2:StopInstances", Type: "instance", Resource: instance("i-1")}}},
		{Test: "TestX", Service: "EC2", Operation: "AttachVolume", Gaps: []string{"the recorder does not know AttachVolume"}},
	}
	s.add(ses)
	v, err := s.Evaluate()
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Findings) != 2 || v.Findings[0].Count != 2 || !strings.Contains(v.Findings[0].String(), "TestX: EC2 StopInstances: ec2:StopInstances on "+instance("i-1")+": no statement allows ec2:StopInstances (2 times)") ||
		!strings.Contains(v.Findings[1].Why, "not judged") {
		t.Errorf("findings: %v", v.Findings)
	}
	unexplained, stale, err := v.Unexercised(tpl, map[string]string{"Explained": "moto cannot show it", "Gone": "a statement since removed"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(unexplained, []string{"Idle"}) || !slices.Equal(stale, []string{"Gone"}) {
		t.Errorf("unexplained %v, stale %v", unexplained, stale)
	}
	var out strings.Builder
	if code := s.Finish(0, &out, FinishOptions{Template: tpl, Why: map[string]string{"Explained": "moto cannot show it"}}); code == 0 {
		t.Errorf("Finish passed a refused call:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "cannot judge, 2 of the AWS calls") {
		t.Errorf("report:\n%s", out.String())
	}
}
