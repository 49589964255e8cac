package cloudformation_test

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	cfn "github.com/aws/aws-sdk-go-v2/service/cloudformation"
	cfntypes "github.com/aws/aws-sdk-go-v2/service/cloudformation/types"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	cwschemas "github.com/aws/aws-sdk-go-v2/service/cloudwatch/schemas"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/transport/http/protocol/awsquery"

	"github.com/circlebot/circlebot/deploy/cloudformation"
	botiam "github.com/circlebot/circlebot/deploy/iam"
	"github.com/circlebot/circlebot/deploy/systemd"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/testenv/motoserver"
)

func TestMain(m *testing.M) { motoserver.Main(m) }

const motoAccount = "123456789012"

// circlebot.yaml is what `go generate` makes of circlebot.in.yaml, the
// policy and the unit as committed: the policy has one copy.
func TestTheTemplateIsGeneratedFromThePolicyAndTheUnit(t *testing.T) {
	got, err := cloudformation.Generate(cloudformation.Skeleton, botiam.Template, systemd.Unit)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(cloudformation.Committed) {
		t.Fatal("deploy/cloudformation/circlebot.yaml is stale: run `go generate ./deploy/cloudformation/` and commit it")
	}
	// Every placeholder of the policy has a template parameter.
	for _, name := range botiam.Placeholders(botiam.Template) {
		if _, ok := cloudformation.Params[name]; !ok {
			t.Errorf("${%s} has no entry in cloudformation.Params", name)
		}
	}
}

// world is what the stack is created into: a VPC with two subnets in two
// zones, the Slack secret, an AMI behind an SSM parameter.
type world struct {
	aws      aws.Config
	subnets  []string
	vpc      string
	secret   string
	amiParam string
}

func newWorld(t *testing.T) world {
	t.Helper()
	ctx := t.Context()
	moto := motoserver.ForTest(t, motoserver.WithPatchedSnapshots())
	c := motoserver.AWSConfig(moto.URL)
	e := ec2.NewFromConfig(c)
	vpc, err := e.CreateVpc(ctx, &ec2.CreateVpcInput{CidrBlock: aws.String("10.20.0.0/16")})
	if err != nil {
		t.Fatal(err)
	}
	w := world{aws: c, vpc: aws.ToString(vpc.Vpc.VpcId)}
	for i, az := range []string{"us-east-1a", "us-east-1b"} {
		sn, err := e.CreateSubnet(ctx, &ec2.CreateSubnetInput{VpcId: vpc.Vpc.VpcId, AvailabilityZone: aws.String(az), CidrBlock: aws.String(fmt.Sprintf("10.20.%d.0/24", i+1))})
		if err != nil {
			t.Fatal(err)
		}
		w.subnets = append(w.subnets, aws.ToString(sn.Subnet.SubnetId))
	}
	sec, err := secretsmanager.NewFromConfig(c).CreateSecret(ctx, &secretsmanager.CreateSecretInput{
		Name: aws.String("circlebot/slack"), SecretString: aws.String(`{"bot_token": "xoxb-x", "app_token": "xapp-x"}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	w.secret = aws.ToString(sec.ARN)
	imgs, err := e.DescribeImages(ctx, &ec2.DescribeImagesInput{})
	if err != nil || len(imgs.Images) == 0 {
		t.Fatalf("no AMI in moto: %v", err)
	}
	w.amiParam = "/circlebot-test/ami"
	if _, err := ssm.NewFromConfig(c).PutParameter(ctx, &ssm.PutParameterInput{Name: aws.String(w.amiParam), Type: "String", Value: imgs.Images[0].ImageId}); err != nil {
		t.Fatal(err)
	}
	return w
}

func (w world) params(extra map[string]string) []cfntypes.Parameter {
	p := map[string]string{
		"VpcId":           w.vpc,
		"SubnetIds":       strings.Join(w.subnets, ","),
		"ReleaseBucket":   "acme-releases",
		"Version":         "v1.2.3",
		"BinarySha256":    strings.Repeat("ab", 32),
		"ImageId":         w.amiParam,
		"SlackSecretArn":  w.secret,
		"AllowedChannels": "C0INCIDENT,C0OPS",
		"Operators":       "U0ALICE",
		"Approvers":       "U0BOB,U0CAROL",
		// moto splits a CommaDelimitedList only when it is passed.
		"KmsKeyArns":      "",
		"TargetGroupArns": "",
	}
	for k, v := range extra {
		p[k] = v
	}
	var out []cfntypes.Parameter
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range p {
			if !yield(k) {
				return
			}
		}
	}) {
		out = append(out, cfntypes.Parameter{ParameterKey: aws.String(k), ParameterValue: aws.String(p[k])})
	}
	return out
}

// stack is a created stack: its resources by logical ID, its outputs.
type stack struct {
	name      string
	resources map[string]string
	outputs   map[string]string
}

func create(t *testing.T, w world, name string, body []byte, params []cfntypes.Parameter) stack {
	t.Helper()
	s, err := tryCreate(t, w, name, body, params)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// tryCreate creates the stack; an error is a stack that did not come up.
func tryCreate(t *testing.T, w world, name string, body []byte, params []cfntypes.Parameter) (stack, error) {
	t.Helper()
	ctx := t.Context()
	// One attempt: a retried CreateStack would only find the stack exists.
	c := cfn.NewFromConfig(w.aws, func(o *cfn.Options) { o.RetryMaxAttempts = 1 })
	if _, err := c.CreateStack(ctx, &cfn.CreateStackInput{
		StackName: aws.String(name), TemplateBody: aws.String(string(body)), Parameters: params,
		Capabilities: []cfntypes.Capability{cfntypes.CapabilityCapabilityIam},
	}); err != nil {
		return stack{}, fmt.Errorf("create stack %s: %w", name, err)
	}
	deadline := time.Now().Add(60 * time.Second)
	var st cfntypes.Stack
	for {
		out, err := c.DescribeStacks(ctx, &cfn.DescribeStacksInput{StackName: aws.String(name)})
		if err != nil {
			return stack{}, err
		}
		st = out.Stacks[0]
		if st.StackStatus == cfntypes.StackStatusCreateComplete {
			break
		}
		if !strings.HasSuffix(string(st.StackStatus), "_IN_PROGRESS") {
			return stack{}, fmt.Errorf("stack %s: %s %s", name, st.StackStatus, aws.ToString(st.StackStatusReason))
		}
		if time.Now().After(deadline) {
			return stack{}, fmt.Errorf("stack %s still %s", name, st.StackStatus)
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}
	s := stack{name: name, resources: map[string]string{}, outputs: map[string]string{}}
	res, err := c.ListStackResources(ctx, &cfn.ListStackResourcesInput{StackName: aws.String(name)})
	if err != nil {
		return stack{}, err
	}
	for _, r := range res.StackResourceSummaries {
		s.resources[aws.ToString(r.LogicalResourceId)] = aws.ToString(r.PhysicalResourceId)
	}
	for _, o := range st.Outputs {
		s.outputs[aws.ToString(o.OutputKey)] = aws.ToString(o.OutputValue)
	}
	return s, nil
}

// check reads back every resource the stack made and returns what is not
// as it must be.
func check(t *testing.T, w world, s stack) []string {
	t.Helper()
	ctx := t.Context()
	var bad []string
	fail := func(f string, a ...any) { bad = append(bad, fmt.Sprintf(f, a...)) }
	need := func(logical string) string {
		id := s.resources[logical]
		if id == "" {
			fail("the stack made no %s", logical)
		}
		return id
	}

	// The config: an SSM parameter `bot check-config` passes.
	var cfg config.Config
	if id := need("Config"); id != "" {
		p, err := ssm.NewFromConfig(w.aws).GetParameter(ctx, &ssm.GetParameterInput{Name: aws.String(id)})
		if err != nil {
			fail("config parameter %s: %v", id, err)
		} else {
			path := filepath.Join(t.TempDir(), "bot.yaml")
			os.WriteFile(path, []byte(aws.ToString(p.Parameter.Value)), 0o600)
			env := map[string]string{"SLACK_SECRET_ARN": w.secret}
			// What `bot check-config` does: load (parse, validate), then
			// what serve needs.
			if cfg, err = config.Load(path, func(k string) string { return env[k] }); err != nil {
				fail("the rendered config: %v\n%s", err, aws.ToString(p.Parameter.Value))
			} else if err := cfg.ValidateServe(); err != nil {
				fail("the rendered config is not ready to serve: %v", err)
			} else {
				// The warnings a stack's config has by design, and no
				// other: console.user is a person's identity for `bot
				// console` (the replicas run `serve`; one shared user
				// would let every shell act as that person), and
				// replica.name_tag is unset when ReplicaNameTag is.
				want := []string{"console.user"}
				if !strings.Contains(aws.ToString(p.Parameter.Value), "replica:") {
					want = append(want, "replica.name_tag")
				}
				var got []string
				for _, w := range cfg.Warnings() {
					got = append(got, w.Key)
				}
				slices.Sort(got)
				slices.Sort(want)
				if !slices.Equal(got, want) {
					fail("check-config warns about %v, want exactly %v: %+v", got, want, cfg.Warnings())
				}
			}
		}
	}

	// The table: internal/kv's key schema, on demand, PITR; the config's.
	ddb := dynamodb.NewFromConfig(w.aws)
	if table := need("StateTable"); table != "" {
		d, err := ddb.DescribeTable(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(table)})
		switch {
		case err != nil:
			fail("table %s: %v", table, err)
		default:
			var keys []string
			for _, k := range d.Table.KeySchema {
				keys = append(keys, aws.ToString(k.AttributeName)+"="+string(k.KeyType))
			}
			if !slices.Equal(keys, []string{"t=HASH", "k=RANGE"}) {
				fail("table key schema %v, want t HASH, k RANGE (internal/kv)", keys)
			}
			if d.Table.BillingModeSummary == nil || d.Table.BillingModeSummary.BillingMode != ddbtypes.BillingModePayPerRequest {
				fail("table is not on demand: %+v", d.Table.BillingModeSummary)
			}
			cb, err := ddb.DescribeContinuousBackups(ctx, &dynamodb.DescribeContinuousBackupsInput{TableName: aws.String(table)})
			if err != nil || cb.ContinuousBackupsDescription.PointInTimeRecoveryDescription.PointInTimeRecoveryStatus != ddbtypes.PointInTimeRecoveryStatusEnabled {
				fail("table has no point-in-time recovery: %v", err)
			}
			if cfg.Store.Backend != "dynamodb" || cfg.Store.Table != table {
				fail("config store %s/%s, want dynamodb/%s", cfg.Store.Backend, cfg.Store.Table, table)
			}
			if s.outputs["Table"] != table {
				fail("output Table %q, want %q", s.outputs["Table"], table)
			}
		}
	}

	// The role: trusted by EC2, its managed policies together exactly what
	// `bot iam-policy` renders for the stack's config and secret.
	im := iam.NewFromConfig(w.aws)
	role := need("BotRole")
	if role != "" {
		r, err := im.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(role)})
		if err != nil {
			fail("role %s: %v", role, err)
		} else {
			trust, _ := url.QueryUnescape(aws.ToString(r.Role.AssumeRolePolicyDocument))
			if !strings.Contains(trust, "ec2.amazonaws.com") {
				fail("the role does not trust EC2: %s", trust)
			}
			if s.outputs["RoleArn"] != aws.ToString(r.Role.Arn) {
				fail("output RoleArn %q, want %q", s.outputs["RoleArn"], aws.ToString(r.Role.Arn))
			}
		}
		bad = append(bad, checkPolicies(t, w, s, role, cfg)...)
	}

	// The replicas: two, in the two subnets of two zones, from a launch
	// template with the role's profile, no inbound, IMDSv2, and user data
	// that installs the unit as committed with the Slack secret's ARN.
	group := need("Replicas")
	if group != "" {
		g, err := autoscaling.NewFromConfig(w.aws).DescribeAutoScalingGroups(ctx, &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{group}})
		if err != nil || len(g.AutoScalingGroups) != 1 {
			fail("group %s: %v", group, err)
		} else {
			asg := g.AutoScalingGroups[0]
			if aws.ToInt32(asg.MinSize) != 2 || aws.ToInt32(asg.MaxSize) != 2 || aws.ToInt32(asg.DesiredCapacity) != 2 || len(asg.Instances) != 2 {
				fail("group min/max/desired %d/%d/%d with %d instances, want 2 replicas", aws.ToInt32(asg.MinSize), aws.ToInt32(asg.MaxSize), aws.ToInt32(asg.DesiredCapacity), len(asg.Instances))
			}
			subnets := strings.Split(aws.ToString(asg.VPCZoneIdentifier), ",")
			sn, err := ec2.NewFromConfig(w.aws).DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{SubnetIds: subnets})
			zones := map[string]bool{}
			if err == nil {
				for _, s := range sn.Subnets {
					zones[aws.ToString(s.AvailabilityZone)] = true
				}
			}
			if len(subnets) != 2 || len(zones) != 2 {
				fail("group subnets %v in zones %v, want two subnets in two zones", subnets, zones)
			}
			if asg.LaunchTemplate == nil {
				fail("group has no launch template")
			} else {
				bad = append(bad, checkLaunchTemplate(t, w, s, aws.ToString(asg.LaunchTemplate.LaunchTemplateId))...)
			}
		}
	}

	// The log group and the alarm on the health metric the replicas put.
	if lg := need("LogGroup"); lg != "" {
		out, err := cloudwatchlogs.NewFromConfig(w.aws).DescribeLogGroups(ctx, &cloudwatchlogs.DescribeLogGroupsInput{LogGroupNamePrefix: aws.String(lg)})
		if err != nil || len(out.LogGroups) != 1 || aws.ToInt32(out.LogGroups[0].RetentionInDays) != 90 {
			fail("log group %s: %v %+v", lg, err, out)
		}
	}
	if alarm := need("NoHealthyReplica"); alarm != "" {
		// moto speaks CloudWatch's query protocol only (the SDK's default
		// is CBOR), as in internal/app.
		cw := cloudwatch.NewFromConfig(w.aws, func(o *cloudwatch.Options) { o.Protocol = awsquery.New(cwschemas.GraniteServiceVersion20100801) })
		out, err := cw.DescribeAlarms(ctx, &cloudwatch.DescribeAlarmsInput{AlarmNames: []string{alarm}})
		if err != nil || len(out.MetricAlarms) != 1 {
			fail("alarm %s: %v", alarm, err)
		} else {
			a := out.MetricAlarms[0]
			dims := ""
			for _, d := range a.Dimensions {
				dims += aws.ToString(d.Name) + "=" + aws.ToString(d.Value)
			}
			if aws.ToString(a.Namespace) != "Circlebot" || aws.ToString(a.MetricName) != "HealthyReplicas" || dims != "Stack="+s.name ||
				aws.ToFloat64(a.Threshold) != 1 || a.ComparisonOperator != "LessThanThreshold" || aws.ToString(a.TreatMissingData) != "breaching" {
				fail("alarm is not 'no replica healthy': %s/%s %s %v %s missing=%s", aws.ToString(a.Namespace), aws.ToString(a.MetricName), dims, aws.ToFloat64(a.Threshold), a.ComparisonOperator, aws.ToString(a.TreatMissingData))
			}
		}
	}
	if !strings.Contains(s.outputs["SlackMode"], "Socket Mode") {
		fail("output SlackMode %q", s.outputs["SlackMode"])
	}
	return bad
}

// checkPolicies reads back every managed policy attached to the bot's
// role: HostPolicy and BotPolicy1…N, the latter together (their default
// versions' statements in order) exactly `bot iam-policy` for cfg, each
// within IAM's size quota and all within the role's attachment quota.
func checkPolicies(t *testing.T, w world, s stack, role string, cfg config.Config) []string {
	t.Helper()
	ctx := t.Context()
	var bad []string
	fail := func(f string, a ...any) { bad = append(bad, fmt.Sprintf(f, a...)) }
	im := iam.NewFromConfig(w.aws)
	att, err := im.ListAttachedRolePolicies(ctx, &iam.ListAttachedRolePoliciesInput{RoleName: aws.String(role)})
	if err != nil {
		return []string{fmt.Sprintf("the role's managed policies: %v", err)}
	}
	attached := map[string]bool{}
	for _, a := range att.AttachedPolicies {
		attached[aws.ToString(a.PolicyArn)] = true
	}
	if n := len(attached); n > cloudformation.ManagedPoliciesQuota {
		fail("the role has %d managed policies; IAM allows %d by default", n, cloudformation.ManagedPoliciesQuota)
	}
	if host := s.resources["HostPolicy"]; host == "" || !attached[host] {
		fail("the role's host policy is not attached: %v", attached)
	}
	var ids []string
	for id := range s.resources {
		if strings.HasPrefix(id, "BotPolicy") {
			ids = append(ids, id)
		}
	}
	// BotPolicy1, BotPolicy2, …, BotPolicy10: by number.
	num := func(id string) int { n, _ := strconv.Atoi(strings.TrimPrefix(id, "BotPolicy")); return n }
	slices.SortFunc(ids, func(a, b string) int { return num(a) - num(b) })
	if len(ids) == 0 {
		fail("the role has no BotPolicy: the stack carries no policy of the bot")
		return bad
	}
	var gotP botiam.Policy
	for _, id := range ids {
		arn := s.resources[id]
		if !attached[arn] {
			fail("%s (%s) is not attached to the role", id, arn)
		}
		p, err := im.GetPolicy(ctx, &iam.GetPolicyInput{PolicyArn: aws.String(arn)})
		if err != nil {
			fail("%s: %v", id, err)
			continue
		}
		v, err := im.GetPolicyVersion(ctx, &iam.GetPolicyVersionInput{PolicyArn: aws.String(arn), VersionId: p.Policy.DefaultVersionId})
		if err != nil {
			fail("%s default version: %v", id, err)
			continue
		}
		doc, _ := url.QueryUnescape(aws.ToString(v.PolicyVersion.Document))
		part, err := botiam.Parse([]byte(doc))
		if err != nil {
			fail("%s does not parse: %v\n%s", id, err, doc)
			continue
		}
		if len(part.Statement) == 0 {
			fail("%s has no statements (IAM refuses that)", id)
		}
		n := len(compact(doc))
		t.Logf("%s: %s is %d characters (IAM allows %d)", s.name, id, n, cloudformation.ManagedPolicySize)
		if n > cloudformation.ManagedPolicySize {
			fail("%s is %d characters; IAM allows %d per managed policy", id, n, cloudformation.ManagedPolicySize)
		}
		gotP.Version = part.Version
		gotP.Statement = append(gotP.Statement, part.Statement...)
	}
	if cfg.Store.Table == "" {
		return bad // the config failed, said above
	}
	v, err := botiam.ValuesFor(cfg, motoAccount)
	if err != nil {
		t.Fatal(err)
	}
	wantP, _, err := botiam.RenderPolicy(botiam.Template, v)
	if err != nil {
		t.Fatal(err)
	}
	g, _ := json.MarshalIndent(gotP, "", " ")
	wnt, _ := json.MarshalIndent(wantP, "", " ")
	if string(g) != string(wnt) {
		fail("the role's policies differ from `bot iam-policy` for the stack's config:\n%s", diff(string(wnt), string(g)))
	}
	if !strings.Contains(string(g), `"Sid": "SlackTokensFromSecretsManager"`) || !strings.Contains(string(g), `"`+w.secret+`"`) {
		fail("the role may not read the Slack secret %s", w.secret)
	}
	return bad
}

func checkLaunchTemplate(t *testing.T, w world, s stack, id string) []string {
	ctx := t.Context()
	var bad []string
	fail := func(f string, a ...any) { bad = append(bad, fmt.Sprintf(f, a...)) }
	e := ec2.NewFromConfig(w.aws)
	v, err := e.DescribeLaunchTemplateVersions(ctx, &ec2.DescribeLaunchTemplateVersionsInput{LaunchTemplateId: aws.String(id), Versions: []string{"$Latest"}})
	if err != nil || len(v.LaunchTemplateVersions) != 1 {
		return []string{fmt.Sprintf("launch template %s: %v", id, err)}
	}
	d := v.LaunchTemplateVersions[0].LaunchTemplateData
	ip, err := iam.NewFromConfig(w.aws).GetInstanceProfile(ctx, &iam.GetInstanceProfileInput{InstanceProfileName: aws.String(s.resources["InstanceProfile"])})
	if err != nil || d.IamInstanceProfile == nil || aws.ToString(d.IamInstanceProfile.Arn) != aws.ToString(ip.InstanceProfile.Arn) ||
		len(ip.InstanceProfile.Roles) != 1 || aws.ToString(ip.InstanceProfile.Roles[0].RoleName) != s.resources["BotRole"] {
		fail("the replicas do not run as the bot's role: %v", err)
	}
	if d.MetadataOptions == nil || d.MetadataOptions.HttpTokens != ec2types.LaunchTemplateHttpTokensStateRequired {
		fail("the replicas allow IMDSv1")
	}
	sg, err := e.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{GroupIds: d.SecurityGroupIds})
	if err != nil || len(sg.SecurityGroups) != 1 || len(sg.SecurityGroups[0].IpPermissions) != 0 {
		fail("the replicas' security group lets something in: %v %+v", err, sg)
	}
	raw, err := base64.StdEncoding.DecodeString(aws.ToString(d.UserData))
	ud := string(raw)
	if err != nil {
		fail("user data: %v", err)
	}
	for _, want := range []string{
		"SLACK_SECRET_ARN=%s", // the env file
		w.secret,
		`--name "` + s.resources["Config"] + `"`,
		strings.TrimRight(string(systemd.Unit), "\n") + "\nUNIT\n",
		"check-config",
		"systemctl enable --now circlebot.service circlebot-health.timer",
		"--namespace Circlebot --metric-name HealthyReplicas --dimensions Stack=" + s.name + " --value 1",
		`"log_group_name": "` + s.resources["LogGroup"] + `"`,
		"s3://acme-releases/circlebot/v1.2.3/bot",
	} {
		if !strings.Contains(ud, want) {
			fail("user data lacks %q", want)
		}
	}
	if strings.Contains(ud, "${") {
		fail("user data has an unresolved ${…}")
	}
	return bad
}

// The stack in moto's CloudFormation: with every optional setting empty,
// and with every one set (so each condition is taken both ways). Every
// resource is read back and checked; the config it renders passes
// check-config and the role's policy is `bot iam-policy`'s for it.
func TestTheStackInMoto(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	full := map[string]string{
		"ReplicaNameTag":      "circleci_services_replica",
		"BackupBucket":        "acme-circleci-backups",
		"BuilderGroup":        "circleci-builders",
		"ServicesBoxRoleArn":  "arn:aws:iam::123456789012:role/circleci-services",
		"KmsKeyArns":          "arn:aws:kms:us-east-1:123456789012:key/1111aaaa-2222-3333-4444-555566667777,arn:aws:kms:us-east-1:123456789012:key/2222aaaa-2222-3333-4444-555566667777",
		"PassphraseSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:circleci/passphrase-AbCdEf",
		"OpsRoleArn":          "arn:aws:iam::123456789012:role/circlebot-operations",
		"TargetGroupArns":     "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/circleci-80/0123456789abcdef",
		"ReportChannel":       "C0REPORTS",
		"BackupSchedule":      "0 3 * * *",
		"AlarmTopicArn":       "arn:aws:sns:us-east-1:123456789012:oncall",
	}
	for _, tc := range []struct {
		name   string
		params map[string]string
	}{
		{"minimal", nil},
		{"full", full},
	} {
		s := create(t, w, "circlebot-"+tc.name, cloudformation.Committed, w.params(tc.params))
		for _, b := range check(t, w, s) {
			t.Errorf("%s: %s", tc.name, b)
		}
	}
}

// A template that lost the table or a part of the role's policy fails: the stack
// does not come up (the table is referenced), or the checks say what is
// missing.
func TestTheChecksCatchADroppedTableOrPolicy(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	noTable := regexp.MustCompile(`(?s)\n  StateTable:\n.*?\n\n`).ReplaceAllString(string(cloudformation.Committed), "\n")
	noPolicy := regexp.MustCompile(`(?s)\n  # deploy/iam/policy.json, part 2 of .*?\n\n`).ReplaceAllString(string(cloudformation.Committed), "\n")
	for name, body := range map[string]string{"no-table": noTable, "no-policy": noPolicy} {
		if body == string(cloudformation.Committed) {
			t.Fatalf("%s: the edit changed nothing", name)
		}
		s, err := tryCreate(t, w, "circlebot-"+name, []byte(body), w.params(nil))
		if err != nil {
			t.Logf("%s: %v", name, err)
			continue
		}
		bad := strings.Join(check(t, w, s), "\n")
		want := map[string]string{"no-table": "StateTable", "no-policy": "differ from `bot iam-policy`"}[name]
		if !strings.Contains(bad, want) {
			t.Errorf("%s: the checks did not notice (want %q):\n%s", name, want, bad)
		}
	}
}

func compact(doc string) string {
	var v any
	if json.Unmarshal([]byte(doc), &v) != nil {
		return doc
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// diff is the lines of b not in a and of a not in b.
func diff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	var out []string
	for _, l := range al {
		if !slices.Contains(bl, l) {
			out = append(out, "- "+l)
		}
	}
	for _, l := range bl {
		if !slices.Contains(al, l) {
			out = append(out, "+ "+l)
		}
	}
	return strings.Join(out, "\n")
}

// moto (patched, as AWS) refuses a managed policy over 6,144 characters
// and an 11th managed policy on a role, so the stack test would see a
// template IAM refuses.
func TestIAMsManagedPolicyQuotasHoldInMoto(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	role := "Resources:\n  R:\n    Type: AWS::IAM::Role\n    Properties:\n      AssumeRolePolicyDocument: {Version: \"2012-10-17\", Statement: [{Effect: Allow, Principal: {Service: ec2.amazonaws.com}, Action: \"sts:AssumeRole\"}]}\n"
	policy := func(name string, actions int) string {
		var a []string
		for i := range actions {
			a = append(a, fmt.Sprintf("\"ec2:Describe%04d\"", i))
		}
		return fmt.Sprintf("  %s:\n    Type: AWS::IAM::ManagedPolicy\n    Properties:\n      Roles: [{Ref: R}]\n      PolicyDocument: {Version: \"2012-10-17\", Statement: [{Effect: Allow, Resource: \"*\", Action: [%s]}]}\n", name, strings.Join(a, ", "))
	}
	// 340 actions of 19 characters with quotes and comma: about 6,500.
	tooBig := role + policy("P", 340)
	tenFine, eleven := role, role
	for i := range 11 {
		if i < 10 {
			tenFine += policy(fmt.Sprintf("P%d", i), 1)
		}
		eleven += policy(fmt.Sprintf("P%d", i), 1)
	}
	for _, tc := range []struct {
		name, body string
		ok         bool
	}{
		{"under", role + policy("P", 250), true},
		{"ten", tenFine, true},
		{"too-big", tooBig, false},
		{"eleven", eleven, false},
	} {
		_, err := tryCreate(t, w, "quota-"+tc.name, []byte(tc.body), nil)
		switch {
		case tc.ok && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case !tc.ok && err == nil:
			t.Errorf("%s: the stack came up", tc.name)
		case !tc.ok:
			var api smithy.APIError
			if !errors.As(err, &api) || api.ErrorCode() != "LimitExceeded" {
				t.Errorf("%s: %v, want IAM's LimitExceeded", tc.name, err)
			}
		}
	}
}
