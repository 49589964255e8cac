package iamcheck

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	elb "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/servicequotas"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"
)

// MotoAccount is the account moto answers as.
const MotoAccount = "123456789012"

// Request is one recorded SDK call and the checks IAM makes for it.
type Request struct {
	Test      string // who made it
	Service   string // the SDK's service ID: "EC2"
	Operation string // "RunInstances"
	Checks    []Check
	// Gaps are what the recorder could not work out (an operation it does
	// not know, tags it could not read): they fail the check too, so that
	// an unknown is never taken for an allowed.
	Gaps []string
	// Err is the call's error code ("" when it succeeded).
	Err string
}

func (r Request) String() string { return r.Service + " " + r.Operation }

// Options configure a recording Session.
type Options struct {
	// Test names the caller in reports (a test's name).
	Test string
	// Account is the account ARNs name (default MotoAccount).
	Account string
	// Lookup reads the state IAM would see — resources' tags, an
	// instance's volumes, a bucket's default encryption — before each call,
	// straight from moto (not through a fault proxy). Zero: not read, and
	// a check that needs it reports a gap.
	Lookup aws.Config
	// Policy renders the policy the calls are judged by, when they are
	// judged (at the end of the run, so a test may change its config
	// after the bot started).
	Policy func() ([]byte, error)
	// ProfileRoles maps an instance profile (name or ARN) to the role it
	// holds, for the iam:PassRole of a launch (moto's boxes have none).
	ProfileRoles map[string]string
}

// Session records the calls of one aws.Config.
type Session struct {
	opt    Options
	look   *lookup
	mu     sync.Mutex
	reqs   []Request
	suite  *Suite
	closed bool
}

// Record installs the recorder on cfg, in the default suite.
func Record(cfg *aws.Config, o Options) *Session { return Default.Record(cfg, o) }

// Record installs the recorder on cfg: every call made with it (and with
// clients made from it, presign clients included) is recorded.
func (s *Suite) Record(cfg *aws.Config, o Options) *Session {
	if o.Account == "" {
		o.Account = MotoAccount
	}
	ses := &Session{opt: o, suite: s}
	if o.Lookup.Region != "" {
		ses.look = newLookup(o.Lookup)
	}
	s.add(ses)
	cfg.APIOptions = append(cfg.APIOptions, func(st *middleware.Stack) error {
		// Initialize runs once per call, outside the retry loop.
		return st.Initialize.Add(middleware.InitializeMiddlewareFunc("circlebotIAMRecord",
			func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
				req := ses.describe(ctx, awsmiddleware.GetServiceID(ctx), awsmiddleware.GetOperationName(ctx), awsmiddleware.GetRegion(ctx), in.Parameters)
				out, md, err := next.HandleInitialize(ctx, in)
				if err != nil {
					req.Err = errorCode(err)
				}
				ses.mu.Lock()
				ses.reqs = append(ses.reqs, req)
				ses.mu.Unlock()
				return out, md, err
			}), middleware.After)
	})
	return ses
}

// Requests returns what was recorded so far.
func (ses *Session) Requests() []Request {
	ses.mu.Lock()
	defer ses.mu.Unlock()
	return slices.Clone(ses.reqs)
}

func errorCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return "error"
}

// describe turns one call into IAM's checks. It reads what it needs from
// Lookup before the call changes it.
func (ses *Session) describe(ctx context.Context, service, op, region string, params any) Request {
	// The lookups outlive a call whose context ended: what matters is
	// what IAM would have seen.
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	d := &describer{ctx: lctx, region: region, account: ses.opt.Account, partition: "aws", look: ses.look, profileRoles: ses.opt.ProfileRoles}
	d.req = Request{Test: ses.opt.Test, Service: service, Operation: op}
	d.run(service, op, params)
	return d.req
}

// Actions lists the IAM actions the recorder can emit (for gensar).
func Actions() []string {
	out := slices.Clone(knownActions)
	for _, a := range operationActions {
		out = append(out, a)
	}
	out = append(out, impliedActions...)
	sort.Strings(out)
	return slices.Compact(out)
}

// knownActions are the actions of the operations run knows, named as
// prefix:Operation.
var knownActions = []string{
	"ec2:CreateTags", "ec2:StopInstances", "ec2:StartInstances", "ec2:TerminateInstances", "ec2:RebootInstances",
	"ec2:ModifyInstanceAttribute", "ec2:DeleteSnapshot", "ec2:DeleteVolume", "ec2:DeregisterImage",
	"ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses", "ec2:AttachNetworkInterface", "ec2:DetachNetworkInterface",
	"ec2:CreateSnapshot", "ec2:CreateSnapshots", "ec2:RegisterImage", "ec2:CreateImage", "ec2:RunInstances",
	"ec2:CreateVolume", "ec2:AttachVolume", "ec2:DetachVolume",
	"ec2:DescribeInstances", "ec2:DescribeInstanceStatus", "ec2:DescribeVolumes", "ec2:DescribeSnapshots", "ec2:DescribeImages",
	"ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets", "ec2:DescribeTags", "ec2:DescribeVpcs", "ec2:DescribeSecurityGroups",
	"ec2:DescribeAvailabilityZones", "ec2:DescribeInstanceTypes", "ec2:DescribeInstanceTypeOfferings", "ec2:DescribeLaunchTemplateVersions",
	"servicequotas:GetServiceQuota",
	"ssm:SendCommand", "ssm:GetCommandInvocation", "ssm:CancelCommand", "ssm:ListCommandInvocations", "ssm:ListCommands",
	"ssm:DescribeInstanceInformation",
	"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:UpdateItem", "dynamodb:Query", "dynamodb:Scan",
	"dynamodb:DescribeTable", "dynamodb:CreateTable",
	"autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeAutoScalingInstances", "autoscaling:DescribeScalingActivities",
	"autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup",
	"elasticloadbalancing:RegisterTargets", "elasticloadbalancing:DeregisterTargets",
	"elasticloadbalancing:DescribeTargetHealth", "elasticloadbalancing:DescribeTargetGroups",
	"cloudwatch:GetMetricData", "cloudwatch:ListMetrics", "secretsmanager:GetSecretValue",
}

// operationActions maps SDK "Service Operation" to its IAM action where
// the name differs or the service prefix is not the lower-cased service
// ID; everything else is prefix:Operation.
var operationActions = map[string]string{
	"S3 HeadObject":              "s3:GetObject",
	"S3 GetObject":               "s3:GetObject",
	"S3 PutObject":               "s3:PutObject",
	"S3 CreateMultipartUpload":   "s3:PutObject",
	"S3 UploadPart":              "s3:PutObject",
	"S3 CompleteMultipartUpload": "s3:PutObject",
	"S3 AbortMultipartUpload":    "s3:AbortMultipartUpload",
	"S3 GetBucketEncryption":     "s3:GetEncryptionConfiguration",
}

// impliedActions are what AWS checks on the caller's behalf.
var impliedActions = []string{
	"ec2:CreateTags", "iam:PassRole",
	"kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext", "kms:GenerateDataKey",
}

// servicePrefix is the IAM service prefix of an SDK service ID.
var servicePrefix = map[string]string{
	"EC2": "ec2", "S3": "s3", "SSM": "ssm", "Auto Scaling": "autoscaling",
	"Elastic Load Balancing v2": "elasticloadbalancing", "CloudWatch": "cloudwatch",
	"DynamoDB": "dynamodb", "Secrets Manager": "secretsmanager", "KMS": "kms", "IAM": "iam", "STS": "sts",
	"Service Quotas": "servicequotas",
}

type describer struct {
	ctx                        context.Context
	region, account, partition string
	look                       *lookup
	profileRoles               map[string]string
	req                        Request
}

func (d *describer) gap(format string, args ...any) {
	d.req.Gaps = append(d.req.Gaps, fmt.Sprintf(format, args...))
}

func (d *describer) add(c Check) { d.req.Checks = append(d.req.Checks, c) }

func (d *describer) action(service, op string) string {
	if a, ok := operationActions[service+" "+op]; ok {
		return a
	}
	p, ok := servicePrefix[service]
	if !ok {
		d.gap("service %q has no known IAM prefix", service)
		p = strings.ToLower(service)
	}
	return p + ":" + op
}

// ec2ARN: snapshots and images are named without an account.
func (d *describer) ec2ARN(typ, id string) string {
	acct := d.account
	if typ == "snapshot" || typ == "image" {
		acct = ""
	}
	return fmt.Sprintf("arn:%s:ec2:%s:%s:%s/%s", d.partition, d.region, acct, typ, id)
}

// ec2Type is the resource type of an EC2 ID.
func ec2Type(id string) string {
	prefix, _, _ := strings.Cut(id, "-")
	switch prefix {
	case "i":
		return "instance"
	case "vol":
		return "volume"
	case "snap":
		return "snapshot"
	case "ami":
		return "image"
	case "eni":
		return "network-interface"
	case "subnet":
		return "subnet"
	case "sg":
		return "security-group"
	case "vpc":
		return "vpc"
	case "lt":
		return "launch-template"
	}
	return ""
}

// resourceTags: what a resource carries, under aws:ResourceTag/ and the
// service's own prefix (ec2:ResourceTag/, ssm:resourceTag/, …).
func resourceTags(service string, tags map[string]string) map[string][]string {
	ctx := map[string][]string{}
	for k, v := range tags {
		ctx["aws:ResourceTag/"+k] = []string{v}
		switch service {
		case "ec2", "autoscaling", "elasticloadbalancing", "secretsmanager":
			ctx[service+":ResourceTag/"+k] = []string{v}
		case "ssm":
			ctx["ssm:resourceTag/"+k] = []string{v}
		}
	}
	return ctx
}

// requestTags: what a request sets, under aws:RequestTag/ and aws:TagKeys.
func requestTags(tags map[string]string) map[string][]string {
	ctx := map[string][]string{}
	var keys []string
	for k, v := range tags {
		ctx["aws:RequestTag/"+k] = []string{v}
		keys = append(keys, k)
	}
	if len(keys) > 0 {
		sort.Strings(keys)
		ctx["aws:TagKeys"] = keys
	}
	return ctx
}

func merge(ms ...map[string][]string) map[string][]string {
	out := map[string][]string{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

func ec2Tags(tags []ec2types.Tag) map[string]string {
	m := map[string]string{}
	for _, t := range tags {
		m[aws.ToString(t.Key)] = aws.ToString(t.Value)
	}
	return m
}

// existing adds one check per EC2 resource ID, with its tags.
func (d *describer) existing(action string, ids []string, extra map[string][]string) {
	tags := d.ec2Tags(ids)
	for _, id := range ids {
		typ := ec2Type(id)
		if typ == "" {
			d.gap("%s: cannot tell the resource type of %q", action, id)
			continue
		}
		d.add(Check{Action: action, Type: typ, Resource: d.ec2ARN(typ, id), Context: merge(resourceTags("ec2", tags[id]), extra)})
	}
}

// ec2Tags reads the tags of EC2 resources as they are now.
func (d *describer) ec2Tags(ids []string) map[string]map[string]string {
	if len(ids) == 0 {
		return nil
	}
	if d.look == nil {
		d.gap("tags of %s unknown: no Lookup", strings.Join(ids, ", "))
		return nil
	}
	tags, err := d.look.ec2Tags(d.ctx, ids)
	if err != nil {
		d.gap("tags of %s unknown: %v", strings.Join(ids, ", "), err)
	}
	return tags
}

// created adds the checks for resources a call creates (ARN .../type/*)
// with the tags its TagSpecifications give them, and the ec2:CreateTags
// AWS checks for those tags with ec2:CreateAction.
func (d *describer) created(action, op string, types []string, specs []ec2types.TagSpecification) {
	byType := map[string]map[string]string{}
	for _, s := range specs {
		rt := string(s.ResourceType)
		byType[rt] = merge2(byType[rt], ec2Tags(s.Tags))
	}
	for _, typ := range types {
		d.add(Check{Action: action, Type: typ, Resource: d.ec2ARN(typ, "*"), Context: requestTags(byType[typ])})
	}
	for _, s := range specs {
		rt := string(s.ResourceType)
		if !slices.Contains(types, rt) {
			d.gap("%s: TagSpecifications for %q, which this call does not create", op, rt)
			continue
		}
		d.add(Check{
			Action: "ec2:CreateTags", Type: rt, Resource: d.ec2ARN(rt, "*"),
			Context: merge(requestTags(ec2Tags(s.Tags)), map[string][]string{"ec2:CreateAction": {op}}),
			Implied: "TagSpecifications of " + op,
		})
	}
}

func merge2(a, b map[string]string) map[string]string {
	if a == nil {
		a = map[string]string{}
	}
	for k, v := range b {
		a[k] = v
	}
	return a
}

// star is the check of an action that has no resource type.
func (d *describer) star(action string) {
	d.add(Check{Action: action, Resource: "*"})
}

func (d *describer) run(service, op string, params any) {
	if service == "STS" {
		// sts:AssumeRole and GetCallerIdentity are decided by the policy
		// of the identity that calls them (and the role's trust policy),
		// not by the policy the bot acts under.
		return
	}
	action := d.action(service, op)
	switch in := params.(type) {
	// EC2
	case *ec2.CreateTagsInput:
		d.existing(action, in.Resources, requestTags(ec2Tags(in.Tags)))
	case *ec2.StopInstancesInput:
		d.existing(action, in.InstanceIds, nil)
	case *ec2.StartInstancesInput:
		d.existing(action, in.InstanceIds, nil)
	case *ec2.TerminateInstancesInput:
		d.existing(action, in.InstanceIds, nil)
	case *ec2.RebootInstancesInput:
		d.existing(action, in.InstanceIds, nil)
	case *ec2.ModifyInstanceAttributeInput:
		id := aws.ToString(in.InstanceId)
		ids := []string{id}
		if len(in.BlockDeviceMappings) > 0 {
			// Changing a mapping (DeleteOnTermination) acts on the volume
			// too, which the Reference lists as a resource of the action.
			vols, err := d.instanceVolumes(id, false, devices(in.BlockDeviceMappings)...)
			if err != nil {
				d.gap("volumes of %s unknown: %v", id, err)
			}
			ids = append(ids, vols...)
		}
		d.existing(action, ids, nil)
	case *ec2.DeleteSnapshotInput:
		d.existing(action, []string{aws.ToString(in.SnapshotId)}, nil)
	case *ec2.DeleteVolumeInput:
		d.existing(action, []string{aws.ToString(in.VolumeId)}, nil)
	case *ec2.DeregisterImageInput:
		d.existing(action, []string{aws.ToString(in.ImageId)}, nil)
	case *ec2.AssignPrivateIpAddressesInput:
		d.existing(action, []string{aws.ToString(in.NetworkInterfaceId)}, nil)
	case *ec2.UnassignPrivateIpAddressesInput:
		d.existing(action, []string{aws.ToString(in.NetworkInterfaceId)}, nil)
	case *ec2.AttachNetworkInterfaceInput:
		d.existing(action, []string{aws.ToString(in.InstanceId), aws.ToString(in.NetworkInterfaceId)}, nil)
	case *ec2.DetachNetworkInterfaceInput:
		eni, inst, err := d.lookAttachment(aws.ToString(in.AttachmentId))
		if err != nil {
			d.gap("attachment %s: %v", aws.ToString(in.AttachmentId), err)
			return
		}
		d.existing(action, []string{inst, eni}, nil)
	case *ec2.CreateSnapshotInput:
		d.existing(action, []string{aws.ToString(in.VolumeId)}, nil)
		d.created(action, op, []string{"snapshot"}, in.TagSpecifications)
	case *ec2.CreateSnapshotsInput:
		id := aws.ToString(in.InstanceSpecification.InstanceId)
		vols, err := d.instanceVolumes(id, aws.ToBool(in.InstanceSpecification.ExcludeBootVolume))
		if err != nil {
			d.gap("volumes of %s unknown: %v", id, err)
		}
		d.existing(action, append([]string{id}, vols...), nil)
		d.created(action, op, []string{"snapshot"}, in.TagSpecifications)
	case *ec2.RegisterImageInput:
		var snaps []string
		for _, m := range in.BlockDeviceMappings {
			if m.Ebs != nil && m.Ebs.SnapshotId != nil {
				snaps = append(snaps, aws.ToString(m.Ebs.SnapshotId))
			}
		}
		d.existing(action, snaps, nil)
		d.created(action, op, []string{"image"}, in.TagSpecifications)
	case *ec2.CreateImageInput:
		// The instance imaged, and what the call makes: the image and a
		// snapshot per volume, each tagged as its TagSpecifications say.
		d.existing(action, []string{aws.ToString(in.InstanceId)}, nil)
		d.created(action, op, []string{"image", "snapshot"}, in.TagSpecifications)
	case *ec2.RunInstancesInput:
		d.runInstances(action, op, in)
	case *ec2.CreateVolumeInput:
		// From a snapshot, the snapshot is a resource of the call too.
		if in.SnapshotId != nil {
			d.existing(action, []string{aws.ToString(in.SnapshotId)}, nil)
		}
		d.created(action, op, []string{"volume"}, in.TagSpecifications)
	case *ec2.AttachVolumeInput:
		d.existing(action, []string{aws.ToString(in.InstanceId), aws.ToString(in.VolumeId)}, nil)
	case *ec2.DetachVolumeInput:
		ids := []string{aws.ToString(in.VolumeId)}
		if in.InstanceId != nil {
			ids = append([]string{aws.ToString(in.InstanceId)}, ids...)
		}
		d.existing(action, ids, nil)
	case *ec2.DescribeInstancesInput, *ec2.DescribeInstanceStatusInput, *ec2.DescribeVolumesInput,
		*ec2.DescribeSnapshotsInput, *ec2.DescribeImagesInput, *ec2.DescribeNetworkInterfacesInput,
		*ec2.DescribeSubnetsInput, *ec2.DescribeTagsInput, *ec2.DescribeVpcsInput, *ec2.DescribeSecurityGroupsInput,
		*ec2.DescribeAvailabilityZonesInput, *ec2.DescribeInstanceTypesInput, *ec2.DescribeInstanceTypeOfferingsInput,
		*ec2.DescribeLaunchTemplateVersionsInput:
		d.star(action)

	// Service Quotas: a resize reads the vCPU quota of the new type's family.
	case *servicequotas.GetServiceQuotaInput:
		d.add(Check{Action: action, Type: "quota", Resource: fmt.Sprintf("arn:%s:servicequotas:%s:%s:%s/%s", d.partition, d.region, d.account, aws.ToString(in.ServiceCode), aws.ToString(in.QuotaCode))})

	// Systems Manager
	case *ssm.SendCommandInput:
		doc := aws.ToString(in.DocumentName)
		acct := d.account
		if strings.HasPrefix(doc, "AWS-") { // documents AWS owns are named without an account
			acct = ""
		}
		d.add(Check{Action: action, Type: "document", Resource: fmt.Sprintf("arn:%s:ssm:%s:%s:document/%s", d.partition, d.region, acct, doc)})
		if len(in.Targets) > 0 {
			d.gap("SendCommand with Targets: the instances are not named in the request")
		}
		tags := d.ec2Tags(in.InstanceIds)
		for _, id := range in.InstanceIds {
			d.add(Check{Action: action, Type: "instance", Resource: d.ec2ARN("instance", id), Context: resourceTags("ssm", tags[id])})
		}
	case *ssm.GetCommandInvocationInput, *ssm.CancelCommandInput, *ssm.ListCommandInvocationsInput, *ssm.ListCommandsInput,
		*ssm.DescribeInstanceInformationInput:
		d.star(action)

	// S3
	case *s3.HeadObjectInput:
		d.object(action, op, aws.ToString(in.Bucket), aws.ToString(in.Key), "")
	case *s3.GetObjectInput:
		d.object(action, op, aws.ToString(in.Bucket), aws.ToString(in.Key), "")
	case *s3.PutObjectInput:
		d.object(action, op, aws.ToString(in.Bucket), aws.ToString(in.Key), aws.ToString(in.SSEKMSKeyId))
	case *s3.CreateMultipartUploadInput:
		d.object(action, op, aws.ToString(in.Bucket), aws.ToString(in.Key), aws.ToString(in.SSEKMSKeyId))
	case *s3.UploadPartInput:
		d.object(action, op, aws.ToString(in.Bucket), aws.ToString(in.Key), "")
	case *s3.CompleteMultipartUploadInput:
		d.object(action, op, aws.ToString(in.Bucket), aws.ToString(in.Key), "")
	case *s3.AbortMultipartUploadInput:
		d.object(action, op, aws.ToString(in.Bucket), aws.ToString(in.Key), "")
	case *s3.GetBucketEncryptionInput:
		d.add(Check{Action: action, Type: "bucket", Resource: fmt.Sprintf("arn:%s:s3:::%s", d.partition, aws.ToString(in.Bucket))})

	// DynamoDB
	case *dynamodb.GetItemInput:
		d.table(action, aws.ToString(in.TableName))
	case *dynamodb.PutItemInput:
		d.table(action, aws.ToString(in.TableName))
	case *dynamodb.DeleteItemInput:
		d.table(action, aws.ToString(in.TableName))
	case *dynamodb.UpdateItemInput:
		d.table(action, aws.ToString(in.TableName))
	case *dynamodb.QueryInput:
		d.table(action, aws.ToString(in.TableName))
		if in.IndexName != nil {
			d.gap("Query on index %s: the index ARN is not modelled", aws.ToString(in.IndexName))
		}
	case *dynamodb.ScanInput:
		d.table(action, aws.ToString(in.TableName))
	case *dynamodb.DescribeTableInput:
		d.table(action, aws.ToString(in.TableName))
	case *dynamodb.CreateTableInput:
		d.table(action, aws.ToString(in.TableName))

	// Auto Scaling
	case *autoscaling.DescribeAutoScalingGroupsInput, *autoscaling.DescribeAutoScalingInstancesInput, *autoscaling.DescribeScalingActivitiesInput:
		d.star(action)
	case *autoscaling.SetDesiredCapacityInput:
		d.group(action, aws.ToString(in.AutoScalingGroupName), "")
	case *autoscaling.TerminateInstanceInAutoScalingGroupInput:
		d.group(action, "", aws.ToString(in.InstanceId))

	// Elastic Load Balancing
	case *elb.RegisterTargetsInput:
		d.targetGroup(action, aws.ToString(in.TargetGroupArn))
	case *elb.DeregisterTargetsInput:
		d.targetGroup(action, aws.ToString(in.TargetGroupArn))
	case *elb.DescribeTargetHealthInput, *elb.DescribeTargetGroupsInput:
		d.star(action)

	// CloudWatch: GetMetricData and ListMetrics name no dataset.
	case *cloudwatch.GetMetricDataInput, *cloudwatch.ListMetricsInput:
		d.star(action)

	// KMS: the key named.
	case *kms.DescribeKeyInput:
		d.add(Check{Action: action, Type: "key", Resource: d.kmsKeyARN(aws.ToString(in.KeyId))})

	// Secrets Manager
	case *secretsmanager.GetSecretValueInput:
		d.secret(action, aws.ToString(in.SecretId))

	default:
		d.gap("the recorder does not know the resources of %s %s (%T): teach internal/testenv/iamcheck", service, op, params)
	}
}

func (d *describer) table(action, name string) {
	d.add(Check{Action: action, Type: "table", Resource: fmt.Sprintf("arn:%s:dynamodb:%s:%s:table/%s", d.partition, d.region, d.account, name)})
}

func (d *describer) targetGroup(action, arn string) {
	tags, err := d.look.elbTags(d.ctx, arn)
	if err != nil {
		d.gap("tags of %s unknown: %v", arn, err)
	}
	d.add(Check{Action: action, Type: "targetgroup", Resource: arn, Context: resourceTags("elasticloadbalancing", tags)})
}

func (d *describer) secret(action, id string) {
	arn := id
	if !strings.HasPrefix(id, "arn:") {
		var err error
		if arn, err = d.look.secretARN(d.ctx, id); err != nil {
			d.gap("the ARN of secret %s is unknown: %v", id, err)
			return
		}
	}
	d.add(Check{Action: action, Type: "Secret", Resource: arn})
}

// group: the Auto Scaling group by name, or the group of an instance.
func (d *describer) group(action, name, instance string) {
	arn, tags, err := d.look.group(d.ctx, name, instance)
	if err != nil {
		d.gap("Auto Scaling group %s%s unknown: %v", name, instance, err)
		return
	}
	d.add(Check{Action: action, Type: "autoScalingGroup", Resource: arn, Context: resourceTags("autoscaling", tags)})
}

// object: an S3 object, and what S3 asks KMS on the caller's behalf when
// the bucket encrypts with a KMS key (SSE-KMS).
func (d *describer) object(action, op, bucket, key, keyID string) {
	arn := fmt.Sprintf("arn:%s:s3:::%s/%s", d.partition, bucket, key)
	d.add(Check{Action: action, Type: "object", Resource: arn})
	var kmsActions []string
	switch op {
	case "PutObject", "CreateMultipartUpload":
		kmsActions = []string{"kms:GenerateDataKey"}
	case "UploadPart", "CompleteMultipartUpload":
		// Each part is encrypted under the upload's data key, which S3
		// decrypts with the caller's rights.
		kmsActions = []string{"kms:Decrypt"}
	case "GetObject":
		kmsActions = []string{"kms:Decrypt"}
	default:
		return // HEAD and abort read no data
	}
	bucketKey := false
	if keyID == "" {
		enc, err := d.look.bucketEncryption(d.ctx, bucket)
		if err != nil {
			d.gap("default encryption of bucket %s unknown: %v", bucket, err)
			return
		}
		keyID, bucketKey = enc.key, enc.bucketKey
	}
	if keyID == "" {
		return
	}
	keyARN := d.kmsKeyARN(keyID)
	// S3 names the object (or, with an S3 Bucket Key, the bucket) in the
	// encryption context.
	ec := arn
	if bucketKey {
		ec = fmt.Sprintf("arn:%s:s3:::%s", d.partition, bucket)
	}
	for _, a := range kmsActions {
		d.add(Check{Action: a, Type: "key", Resource: keyARN, Implied: "SSE-KMS of " + op,
			Context: map[string][]string{
				"kms:ViaService":                   {"s3." + d.region + ".amazonaws.com"},
				"kms:CallerAccount":                {d.account},
				"kms:EncryptionContext:aws:s3:arn": {ec},
			}})
	}
}

func (d *describer) kmsKeyARN(id string) string {
	if strings.HasPrefix(id, "arn:") {
		return id
	}
	return fmt.Sprintf("arn:%s:kms:%s:%s:key/%s", d.partition, d.region, d.account, id)
}

func (d *describer) runInstances(action, op string, in *ec2.RunInstancesInput) {
	image := aws.ToString(in.ImageId)
	if image == "" {
		d.gap("RunInstances without ImageId (a launch template?) is not modelled")
	} else {
		d.existing(action, []string{image}, nil)
	}
	created := []string{"instance", "volume", "network-interface"}
	d.created(action, op, created, in.TagSpecifications)
	subnet := aws.ToString(in.SubnetId)
	sgs := slices.Clone(in.SecurityGroupIds)
	for _, ni := range in.NetworkInterfaces {
		if ni.NetworkInterfaceId != nil {
			d.existing(action, []string{aws.ToString(ni.NetworkInterfaceId)}, nil)
			// Launched on an existing interface: its subnet and security
			// groups are the instance's, and are judged as such.
			sub, groups, err := d.look.iface(d.ctx, aws.ToString(ni.NetworkInterfaceId))
			if err != nil {
				d.gap("interface %s of RunInstances unknown: %v", aws.ToString(ni.NetworkInterfaceId), err)
			} else {
				if subnet == "" {
					subnet = sub
				}
				sgs = append(sgs, groups...)
			}
		}
		if subnet == "" {
			subnet = aws.ToString(ni.SubnetId)
		}
		sgs = append(sgs, ni.Groups...)
	}
	if subnet == "" {
		d.gap("RunInstances in the default subnet: its ID is not in the request")
	} else {
		d.existing(action, []string{subnet}, nil)
	}
	if len(sgs) == 0 {
		d.gap("RunInstances with the default security group: its ID is not in the request")
	}
	if len(in.SecurityGroups) > 0 {
		d.gap("RunInstances with security group names: their IDs are not in the request")
	}
	d.existing(action, sgs, nil)
	if k := aws.ToString(in.KeyName); k != "" {
		d.add(Check{Action: action, Type: "key-pair", Resource: d.ec2ARN("key-pair", k)})
	}
	if p := in.IamInstanceProfile; p != nil {
		prof := aws.ToString(p.Arn)
		if prof == "" {
			prof = aws.ToString(p.Name)
		}
		role, ok := d.profileRoles[prof]
		if !ok {
			d.gap("RunInstances passes instance profile %s: give its role in Options.ProfileRoles", prof)
		} else {
			d.add(Check{Action: "iam:PassRole", Type: "role", Resource: role, Implied: "instance profile of " + op,
				Context: map[string][]string{"iam:PassedToService": {"ec2.amazonaws.com"}}})
		}
	}
	// Volumes made from snapshots encrypted under a customer-managed key:
	// EC2 uses the key with the caller's rights (a grant for the volume's
	// life, and the data key).
	keys := map[string]bool{}
	for _, m := range in.BlockDeviceMappings {
		if m.Ebs != nil && aws.ToString(m.Ebs.KmsKeyId) != "" {
			keys[aws.ToString(m.Ebs.KmsKeyId)] = true
		}
	}
	if image != "" {
		// An EBS-backed image launches from its snapshots: the launch is
		// authorized against them too, and their keys are used.
		snaps, ks, err := d.look.imageSnapshots(d.ctx, image)
		if err != nil {
			d.gap("snapshots of image %s unknown: %v", image, err)
		}
		d.existing(action, snaps, nil)
		for _, k := range ks {
			keys[k] = true
		}
	}
	for _, k := range slices.Sorted(mapKeys(keys)) {
		arn := d.kmsKeyARN(k)
		via := map[string][]string{"kms:ViaService": {"ec2." + d.region + ".amazonaws.com"}, "kms:CallerAccount": {d.account}}
		d.add(Check{Action: "kms:CreateGrant", Type: "key", Resource: arn, Implied: "EBS encryption of " + op,
			Context: merge(via, map[string][]string{"kms:GrantIsForAWSResource": {"true"}})})
		for _, a := range []string{"kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext"} {
			d.add(Check{Action: a, Type: "key", Resource: arn, Implied: "EBS encryption of " + op, Context: via})
		}
	}
}

func mapKeys(m map[string]bool) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// instanceVolumes: the volumes attached to an instance (only those at
// the given devices, when some are given).
func (d *describer) instanceVolumes(id string, excludeRoot bool, devices ...string) ([]string, error) {
	if d.look == nil {
		return nil, errors.New("no Lookup")
	}
	return d.look.instanceVolumes(d.ctx, id, excludeRoot, devices)
}

func devices(ms []ec2types.InstanceBlockDeviceMappingSpecification) []string {
	var out []string
	for _, m := range ms {
		out = append(out, aws.ToString(m.DeviceName))
	}
	return out
}

func (d *describer) lookAttachment(id string) (eni, instance string, err error) {
	if d.look == nil {
		return "", "", errors.New("no Lookup")
	}
	return d.look.attachment(d.ctx, id)
}

// lookup reads state straight from the endpoint, unrecorded.
type lookup struct {
	ec2 *ec2.Client
	asg *autoscaling.Client
	elb *elb.Client
	s3  *s3.Client
	sm  *secretsmanager.Client

	mu      sync.Mutex
	buckets map[string]bucketEnc
}

type bucketEnc struct {
	key       string
	bucketKey bool
}

func newLookup(cfg aws.Config) *lookup {
	return &lookup{
		ec2: ec2.NewFromConfig(cfg), asg: autoscaling.NewFromConfig(cfg), elb: elb.NewFromConfig(cfg),
		s3: s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true }), sm: secretsmanager.NewFromConfig(cfg),
		buckets: map[string]bucketEnc{},
	}
}

func (l *lookup) ec2Tags(ctx context.Context, ids []string) (map[string]map[string]string, error) {
	out := map[string]map[string]string{}
	for _, id := range ids {
		out[id] = map[string]string{}
	}
	p := ec2.NewDescribeTagsPaginator(l.ec2, &ec2.DescribeTagsInput{Filters: []ec2types.Filter{{Name: aws.String("resource-id"), Values: ids}}})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, err
		}
		for _, t := range page.Tags {
			id := aws.ToString(t.ResourceId)
			if out[id] == nil {
				out[id] = map[string]string{}
			}
			out[id][aws.ToString(t.Key)] = aws.ToString(t.Value)
		}
	}
	return out, nil
}

func (l *lookup) instanceVolumes(ctx context.Context, id string, excludeRoot bool, devices []string) ([]string, error) {
	out, err := l.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	if err != nil {
		return nil, err
	}
	var vols []string
	for _, r := range out.Reservations {
		for _, in := range r.Instances {
			for _, m := range in.BlockDeviceMappings {
				if m.Ebs == nil || (excludeRoot && aws.ToString(m.DeviceName) == aws.ToString(in.RootDeviceName)) {
					continue
				}
				if len(devices) > 0 && !slices.Contains(devices, aws.ToString(m.DeviceName)) {
					continue
				}
				vols = append(vols, aws.ToString(m.Ebs.VolumeId))
			}
		}
	}
	return vols, nil
}

// iface: an interface's subnet and security groups.
func (l *lookup) iface(ctx context.Context, id string) (string, []string, error) {
	out, err := l.ec2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{id}})
	if err != nil {
		return "", nil, err
	}
	if len(out.NetworkInterfaces) != 1 {
		return "", nil, errors.New("no such interface")
	}
	ni := out.NetworkInterfaces[0]
	var groups []string
	for _, g := range ni.Groups {
		groups = append(groups, aws.ToString(g.GroupId))
	}
	return aws.ToString(ni.SubnetId), groups, nil
}

func (l *lookup) attachment(ctx context.Context, id string) (string, string, error) {
	out, err := l.ec2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{Filters: []ec2types.Filter{{Name: aws.String("attachment.attachment-id"), Values: []string{id}}}})
	if err != nil {
		return "", "", err
	}
	for _, ni := range out.NetworkInterfaces {
		if ni.Attachment != nil && aws.ToString(ni.Attachment.AttachmentId) == id {
			return aws.ToString(ni.NetworkInterfaceId), aws.ToString(ni.Attachment.InstanceId), nil
		}
	}
	return "", "", errors.New("no interface has it")
}

// imageSnapshots: an image's snapshots, and the KMS keys of those
// encrypted under one.
func (l *lookup) imageSnapshots(ctx context.Context, image string) (snaps, keys []string, err error) {
	if l == nil {
		return nil, nil, errors.New("no Lookup")
	}
	out, err := l.ec2.DescribeImages(ctx, &ec2.DescribeImagesInput{ImageIds: []string{image}})
	if err != nil {
		return nil, nil, err
	}
	for _, im := range out.Images {
		for _, m := range im.BlockDeviceMappings {
			if m.Ebs == nil {
				continue
			}
			if k := aws.ToString(m.Ebs.KmsKeyId); k != "" {
				keys = append(keys, k)
			}
			if s := aws.ToString(m.Ebs.SnapshotId); s != "" {
				snaps = append(snaps, s)
			}
		}
	}
	if len(snaps) == 0 {
		return nil, keys, nil
	}
	so, err := l.ec2.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: snaps})
	if err != nil {
		// A public image's snapshots may not be readable: the launch is
		// still checked against them, their keys stay unknown.
		return snaps, keys, nil
	}
	for _, s := range so.Snapshots {
		if aws.ToBool(s.Encrypted) && aws.ToString(s.KmsKeyId) != "" {
			keys = append(keys, aws.ToString(s.KmsKeyId))
		}
	}
	return snaps, keys, nil
}

func (l *lookup) bucketEncryption(ctx context.Context, bucket string) (bucketEnc, error) {
	if l == nil {
		return bucketEnc{}, errors.New("no Lookup")
	}
	l.mu.Lock()
	enc, ok := l.buckets[bucket]
	l.mu.Unlock()
	if ok {
		return enc, nil
	}
	out, err := l.s3.GetBucketEncryption(ctx, &s3.GetBucketEncryptionInput{Bucket: aws.String(bucket)})
	var ae smithy.APIError
	switch {
	case errors.As(err, &ae) && ae.ErrorCode() == "ServerSideEncryptionConfigurationNotFoundError":
	case err != nil:
		return bucketEnc{}, err
	default:
		for _, r := range out.ServerSideEncryptionConfiguration.Rules {
			if d := r.ApplyServerSideEncryptionByDefault; d != nil && (d.SSEAlgorithm == s3types.ServerSideEncryptionAwsKms || d.SSEAlgorithm == s3types.ServerSideEncryptionAwsKmsDsse) {
				enc = bucketEnc{key: aws.ToString(d.KMSMasterKeyID), bucketKey: aws.ToBool(r.BucketKeyEnabled)}
				if enc.key == "" {
					enc.key = "alias/aws/s3" // the AWS managed key: no CMK to grant
				}
			}
		}
	}
	if enc.key == "alias/aws/s3" {
		enc = bucketEnc{}
	}
	l.mu.Lock()
	l.buckets[bucket] = enc
	l.mu.Unlock()
	return enc, nil
}

func (l *lookup) group(ctx context.Context, name, instance string) (string, map[string]string, error) {
	if l == nil {
		return "", nil, errors.New("no Lookup")
	}
	if name == "" {
		out, err := l.asg.DescribeAutoScalingInstances(ctx, &autoscaling.DescribeAutoScalingInstancesInput{InstanceIds: []string{instance}})
		if err != nil {
			return "", nil, err
		}
		if len(out.AutoScalingInstances) == 0 {
			return "", nil, fmt.Errorf("%s is in no group", instance)
		}
		name = aws.ToString(out.AutoScalingInstances[0].AutoScalingGroupName)
	}
	out, err := l.asg.DescribeAutoScalingGroups(ctx, &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{name}})
	if err != nil {
		return "", nil, err
	}
	if len(out.AutoScalingGroups) == 0 {
		return "", nil, fmt.Errorf("no group %s", name)
	}
	g := out.AutoScalingGroups[0]
	tags := map[string]string{}
	for _, t := range g.Tags {
		tags[aws.ToString(t.Key)] = aws.ToString(t.Value)
	}
	return aws.ToString(g.AutoScalingGroupARN), tags, nil
}

func (l *lookup) elbTags(ctx context.Context, arn string) (map[string]string, error) {
	if l == nil {
		return nil, errors.New("no Lookup")
	}
	out, err := l.elb.DescribeTags(ctx, &elb.DescribeTagsInput{ResourceArns: []string{arn}})
	if err != nil {
		return nil, err
	}
	tags := map[string]string{}
	for _, td := range out.TagDescriptions {
		for _, t := range td.Tags {
			tags[aws.ToString(t.Key)] = aws.ToString(t.Value)
		}
	}
	return tags, nil
}

func (l *lookup) secretARN(ctx context.Context, id string) (string, error) {
	if l == nil {
		return "", errors.New("no Lookup")
	}
	out, err := l.sm.DescribeSecret(ctx, &secretsmanager.DescribeSecretInput{SecretId: aws.String(id)})
	if err != nil {
		return "", err
	}
	return aws.ToString(out.ARN), nil
}
