package iam

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/circlebot/circlebot/internal/config"
)

// fullConfig sets every setting the policy reads.
func fullConfig() config.Config {
	c := config.Defaults()
	c.AWS.Region = "eu-west-1"
	c.AWS.KMSKeyARNs = []string{"arn:aws:kms:eu-west-1:111122223333:key/1111aaaa-2222-3333-4444-555566667777"}
	c.ServicesBox.RoleARN = "arn:aws:iam::111122223333:role/circleci-services"
	c.Replica.NameTag = "ci-standby"
	c.Backup.Bucket = "acme-circleci-backups"
	c.Builders.ASGName = "circleci-builders"
	c.Store.Backend = "dynamodb"
	c.Store.Table = "circlebot-state"
	c.Secret.SecretsManagerID = "circleci/passphrase"
	c.Secrets.SecretARN = "arn:aws:secretsmanager:eu-west-1:111122223333:secret:circlebot/slack-AbCdEf"
	c.Ops.RoleARN = "arn:aws:iam::111122223333:role/circlebot-operations"
	c.Failover.Discovery = "load-balancer"
	c.Failover.TargetGroupARNs = []string{
		"arn:aws:elasticloadbalancing:eu-west-1:111122223333:targetgroup/circleci-80/0123456789abcdef",
		"arn:aws:elasticloadbalancing:eu-west-1:111122223333:targetgroup/circleci-443/0123456789abcdef",
	}
	return c
}

func render(t *testing.T, c config.Config, account string) (Policy, string, []Omitted) {
	t.Helper()
	if err := c.Validate(); err != nil {
		t.Fatalf("config: %v", err)
	}
	v, err := ValuesFor(c, account)
	if err != nil {
		t.Fatal(err)
	}
	doc, omitted, err := Render(Template, v)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Parse(doc)
	if err != nil {
		t.Fatalf("rendered policy does not parse: %v\n%s", err, doc)
	}
	return p, string(doc), omitted
}

func TestEveryPlaceholderHasASettingAndAValue(t *testing.T) {
	v, err := ValuesFor(config.Defaults(), "")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range Placeholders(Template) {
		if _, ok := v[name]; !ok {
			t.Errorf("${%s} is in policy.json but ValuesFor does not fill it", name)
		}
		if Needs[name] == "" {
			t.Errorf("${%s}: Needs does not say which setting gives it", name)
		}
	}
	for name := range v {
		if !slices.Contains(Placeholders(Template), name) {
			t.Errorf("ValuesFor fills ${%s}, which policy.json does not use", name)
		}
	}
}

func TestAFullConfigRendersEveryStatement(t *testing.T) {
	p, doc, omitted := render(t, fullConfig(), "111122223333")
	if len(omitted) > 0 {
		t.Errorf("left out with every setting set: %+v", omitted)
	}
	tpl, _ := Parse(Template)
	if len(p.Statement) != len(tpl.Statement) {
		t.Errorf("%d statements, the template has %d", len(p.Statement), len(tpl.Statement))
	}
	if strings.Contains(doc, "${") && !strings.Contains(doc, "${aws:") {
		t.Errorf("a placeholder is left:\n%s", doc)
	}
	for _, want := range []string{
		`"arn:aws:s3:::acme-circleci-backups/circleci-backups/*"`,
		`"arn:aws:s3:::acme-circleci-backups/*"`,
		`"arn:aws:autoscaling:eu-west-1:111122223333:autoScalingGroup:*:autoScalingGroupName/circleci-builders"`,
		`"arn:aws:dynamodb:eu-west-1:111122223333:table/circlebot-state"`,
		// Secrets Manager adds six characters to a name: match exactly those.
		`"arn:aws:secretsmanager:eu-west-1:111122223333:secret:circleci/passphrase-??????"`,
		`"arn:aws:iam::111122223333:role/circleci-services"`,
		`"arn:aws:kms:eu-west-1:111122223333:key/1111aaaa-2222-3333-4444-555566667777"`,
		`"arn:aws:elasticloadbalancing:eu-west-1:111122223333:targetgroup/circleci-443/0123456789abcdef"`,
		`"ec2.eu-west-1.amazonaws.com"`,
		`"circleci_services*"`, `"ci-standby"`,
		`"arn:aws:ec2:eu-west-1::snapshot/*"`, // snapshots and images have no account in their ARN
		`"arn:aws:ec2:eu-west-1:111122223333:instance/*"`,
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("rendered policy lacks %s", want)
		}
	}
}

func TestUnsetSettingsLeaveTheirStatementsOut(t *testing.T) {
	p, doc, omitted := render(t, config.Defaults(), "")
	var left []string
	for _, o := range omitted {
		left = append(left, o.Sid)
	}
	want := []string{"TarballBackupsGoUnderTheirPrefix", "TarballRestoresReadTheBucket", "DoctorReadsTheBucketEncryption", "BuilderRotation", "FailoverMovesLoadBalancerTargets", "PassphraseFromSecretsManager",
		"SlackTokensFromSecretsManager", "SharedState", "LaunchWithTheServicesBoxRole", "KmsKeysReadable", "KmsForEncryptedVolumes", "KmsGrantsForEncryptedVolumes", "KmsForTheTarballBucket", "AssumeTheOperationsRole",
		"RenameTheRetiredReplica", "NameTheVerifiedReplica", "NeverNameAnotherInstanceAsTheReplica"} // they name the replica: no replica, no statement
	slices.Sort(left)
	slices.Sort(want)
	if !slices.Equal(left, want) {
		t.Errorf("left out %v, want %v", left, want)
	}
	for _, s := range p.Statement {
		if slices.Contains(want, s.Sid) {
			t.Errorf("%s rendered without its setting", s.Sid)
		}
	}
	// Any account and region; no replica: the name list shrinks, the
	// statement stays.
	for _, want := range []string{`"arn:aws:ec2:*:*:instance/*"`, `"ec2:DescribeSubnets"`, `"circleci_services*"`} {
		if !strings.Contains(doc, want) {
			t.Errorf("rendered policy lacks %s", want)
		}
	}
	for _, s := range p.Statement {
		if s.Sid == "StopStartAndReplaceOnlyTheBoxes" {
			if got := s.Condition["StringLike"]["aws:ResourceTag/Name"].Values; !slices.Equal(got, []string{"circleci_services*"}) {
				t.Errorf("the boxes without a replica: %v", got)
			}
		}
	}
	if strings.Contains(doc, "${") {
		t.Errorf("a placeholder is left:\n%s", doc)
	}
}

func TestRenderRules(t *testing.T) {
	tpl := []byte(`{"Version": "2012-10-17", "Statement": [
		{"Sid": "List", "Effect": "Allow", "Action": "s3:GetObject", "Resource": ["${Keys}", "arn:aws:s3:::${Bucket}/*"]},
		{"Sid": "Embedded", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::${Bucket}/${Prefix}*"},
		{"Sid": "EmptyList", "Effect": "Allow", "Action": "kms:Decrypt", "Resource": ["${None}"]},
		{"Sid": "EmptyCondition", "Effect": "Allow", "Action": "ec2:StopInstances", "Resource": "*",
		 "Condition": {"StringEquals": {"aws:ResourceTag/Name": ["${None}"]}}},
		{"Sid": "ShrunkCondition", "Effect": "Allow", "Action": "ec2:StopInstances", "Resource": "*",
		 "Condition": {"StringEquals": {"aws:ResourceTag/Name": ["${Bucket}", "${None}"]}}},
		{"Sid": "PolicyVariable", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::${Bucket}/${aws:username}/*"}
	]}`)
	v := Values{"Keys": {"k1", "k2"}, "Bucket": {"b"}, "Prefix": nil, "None": nil}
	p, omitted, err := RenderPolicy(tpl, v)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Statement{}
	for _, s := range p.Statement {
		got[s.Sid] = s
	}
	if r := got["List"].Resource.Values; !slices.Equal(r, []string{"k1", "k2", "arn:aws:s3:::b/*"}) {
		t.Errorf("List: %v", r)
	}
	if c := got["ShrunkCondition"].Condition["StringEquals"]["aws:ResourceTag/Name"].Values; !slices.Equal(c, []string{"b"}) {
		t.Errorf("ShrunkCondition: %v", c)
	}
	if r := got["PolicyVariable"].Resource.Values; !slices.Equal(r, []string{"arn:aws:s3:::b/${aws:username}/*"}) {
		t.Errorf("PolicyVariable: %v", r)
	}
	want := map[string][]string{"Embedded": {"Prefix"}, "EmptyList": {"None"}, "EmptyCondition": {"None"}}
	if len(omitted) != len(want) {
		t.Errorf("omitted %+v, want %v", omitted, want)
	}
	for _, o := range omitted {
		if !slices.Equal(o.Needs, want[o.Sid]) {
			t.Errorf("omitted %s needing %v, want %v", o.Sid, o.Needs, want[o.Sid])
		}
	}
	// A misspelt placeholder, or a list where one value must go, is an error.
	for _, bad := range []string{
		`{"Version": "2012-10-17", "Statement": [{"Sid": "A", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "${Bukcet}"}]}`,
		`{"Version": "2012-10-17", "Statement": [{"Sid": "A", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:kms:::${Keys}"}]}`,
		`{"Version": "2012-10-17", "Statement": [{"Sid": "A", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "*", "Principal": "*"}]}`,
		`{"Version": "2012-10-17", "Statement": [{"Sid": "A", "Effect": "Allow", "Action": "s3:GetObject", "NotAction": "s3:PutObject", "Resource": "*"}]}`,
		`{"Version": "2008-10-17", "Statement": []}`,
	} {
		if _, _, err := RenderPolicy([]byte(bad), v); err == nil {
			t.Errorf("no error for %s", bad)
		}
	}
}

func TestStringsKeepTheirShape(t *testing.T) {
	doc := []byte(`{"Version":"2012-10-17","Statement":[{"Sid":"A","Effect":"Allow","Action":"ec2:CreateTags","Resource":["*"],"Condition":{"Bool":{"kms:GrantIsForAWSResource":true}}}]}`)
	p, err := Parse(doc)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(p)
	for _, want := range []string{`"Action":"ec2:CreateTags"`, `"Resource":["*"]`, `"kms:GrantIsForAWSResource":"true"`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("%s lacks %s", out, want)
		}
	}
}

func TestWildcardsInNamesAreRefused(t *testing.T) {
	c := config.Defaults()
	c.ServicesBox.NameTag = "circleci*"
	if _, err := ValuesFor(c, ""); err == nil {
		t.Error("a name tag with * must not reach a StringLike condition")
	}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "services_box.name_tag") {
		t.Errorf("Validate: %v", err)
	}
	if _, err := ValuesFor(config.Defaults(), "12345"); err == nil {
		t.Error("a bad account ID must be refused")
	}
}

func TestWhyNamesStatementsOfThePolicy(t *testing.T) {
	why, err := Why()
	if err != nil {
		t.Fatal(err)
	}
	p, err := Parse(Template)
	if err != nil {
		t.Fatal(err)
	}
	for sid, reason := range why {
		if !slices.ContainsFunc(p.Statement, func(s Statement) bool { return s.Sid == sid }) {
			t.Errorf("why.json explains %s, which policy.json does not have", sid)
		}
		if len(strings.TrimSpace(reason)) < 20 {
			t.Errorf("why.json: %s: %q says too little", sid, reason)
		}
	}
	for _, s := range p.Statement {
		if s.Sid == "" {
			t.Error("every statement needs a Sid: why.json and the test reports name statements by it")
		}
	}
}
