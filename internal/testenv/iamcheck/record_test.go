package iamcheck

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/circlebot/circlebot/internal/testenv/motoserver"
)

func TestMain(m *testing.M) { motoserver.Main(m) }

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// world is moto with a subnet, a security group and two instances: the
// Services box and a builder.
type world struct {
	direct   aws.Config // unrecorded: the test's own setup
	rec      aws.Config // recorded: what "the bot" sends
	ses      *Session
	image    string
	subnet   string
	sg       string
	box      string
	builder  string
	boxVols  []string
	nameOf   map[string]string
	ec2      *ec2.Client // recorded
	ec2Setup *ec2.Client
}

func newWorld(t *testing.T) *world {
	t.Helper()
	srv := motoserver.ForTest(t)
	w := &world{direct: motoserver.AWSConfig(srv.URL), rec: motoserver.AWSConfig(srv.URL)}
	// A suite of its own: these sessions are judged here, not by Finish.
	w.ses = (&Suite{}).Record(&w.rec, Options{Test: t.Name(), Lookup: w.direct})
	w.ec2, w.ec2Setup = ec2.NewFromConfig(w.rec), ec2.NewFromConfig(w.direct)
	ctx := ctxT(t)
	imgs, err := w.ec2Setup.DescribeImages(ctx, &ec2.DescribeImagesInput{Filters: []ec2types.Filter{{Name: aws.String("architecture"), Values: []string{"x86_64"}}}})
	if err != nil || len(imgs.Images) == 0 {
		t.Fatalf("images: %v", err)
	}
	w.image = aws.ToString(imgs.Images[0].ImageId)
	vpc, err := w.ec2Setup.CreateVpc(ctx, &ec2.CreateVpcInput{CidrBlock: aws.String("10.0.0.0/16")})
	if err != nil {
		t.Fatal(err)
	}
	sub, err := w.ec2Setup.CreateSubnet(ctx, &ec2.CreateSubnetInput{VpcId: vpc.Vpc.VpcId, CidrBlock: aws.String("10.0.1.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	w.subnet = aws.ToString(sub.Subnet.SubnetId)
	sg, err := w.ec2Setup.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{GroupName: aws.String("box"), Description: aws.String("box"), VpcId: vpc.Vpc.VpcId})
	if err != nil {
		t.Fatal(err)
	}
	w.sg = aws.ToString(sg.GroupId)
	w.box, w.boxVols = w.launch(t, "circleci_services")
	w.builder, _ = w.launch(t, "circleci-builders")
	return w
}

func (w *world) launch(t *testing.T, name string) (string, []string) {
	t.Helper()
	out, err := w.ec2Setup.RunInstances(ctxT(t), &ec2.RunInstancesInput{
		ImageId: aws.String(w.image), InstanceType: ec2types.InstanceTypeT3Micro, MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
		SubnetId: aws.String(w.subnet), SecurityGroupIds: []string{w.sg},
		BlockDeviceMappings: []ec2types.BlockDeviceMapping{
			{DeviceName: aws.String("/dev/sda1"), Ebs: &ec2types.EbsBlockDevice{VolumeSize: aws.Int32(8)}},
			{DeviceName: aws.String("/dev/sdf"), Ebs: &ec2types.EbsBlockDevice{VolumeSize: aws.Int32(10)}},
		},
		TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance, Tags: []ec2types.Tag{{Key: aws.String("Name"), Value: aws.String(name)}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	id := aws.ToString(out.Instances[0].InstanceId)
	desc, err := w.ec2Setup.DescribeInstances(ctxT(t), &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	if err != nil {
		t.Fatal(err)
	}
	var vols []string
	for _, m := range desc.Reservations[0].Instances[0].BlockDeviceMappings {
		vols = append(vols, aws.ToString(m.Ebs.VolumeId))
	}
	return id, vols
}

// last returns the last recorded request of an operation.
func (w *world) last(t *testing.T, op string) Request {
	t.Helper()
	reqs := w.ses.Requests()
	for i := len(reqs) - 1; i >= 0; i-- {
		if reqs[i].Operation == op {
			return reqs[i]
		}
	}
	t.Fatalf("no %s recorded (have %v)", op, reqs)
	return Request{}
}

func findCheck(r Request, action, resource string) (Check, bool) {
	for _, c := range r.Checks {
		if c.Action == action && c.Resource == resource {
			return c, true
		}
	}
	return Check{}, false
}

func TestRecorderNamesWhatIAMAuthorizes(t *testing.T) {
	w := newWorld(t)
	ctx := ctxT(t)
	_, err := w.ec2.CreateSnapshots(ctx, &ec2.CreateSnapshotsInput{
		InstanceSpecification: &ec2types.InstanceSpecification{InstanceId: aws.String(w.box)},
		TagSpecifications:     []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeSnapshot, Tags: []ec2types.Tag{{Key: aws.String("circlebot:backup-id"), Value: aws.String("bk-1")}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	r := w.last(t, "CreateSnapshots")
	if len(r.Gaps) > 0 {
		t.Fatalf("gaps: %v", r.Gaps)
	}
	c, ok := findCheck(r, "ec2:CreateSnapshots", instance(w.box))
	if !ok || c.Context["aws:ResourceTag/Name"][0] != "circleci_services" || c.Context["ec2:ResourceTag/Name"][0] != "circleci_services" {
		t.Errorf("the instance with its tags: %+v in %v", c, r.Checks)
	}
	for _, v := range w.boxVols {
		if _, ok := findCheck(r, "ec2:CreateSnapshots", "arn:aws:ec2:us-east-1:123456789012:volume/"+v); !ok {
			t.Errorf("volume %s not checked: %v", v, r.Checks)
		}
	}
	c, ok = findCheck(r, "ec2:CreateSnapshots", "arn:aws:ec2:us-east-1::snapshot/*")
	if !ok || c.Context["aws:RequestTag/circlebot:backup-id"][0] != "bk-1" {
		t.Errorf("the new snapshots with their request tags: %+v", c)
	}
	c, ok = findCheck(r, "ec2:CreateTags", "arn:aws:ec2:us-east-1::snapshot/*")
	if !ok || c.Context["ec2:CreateAction"][0] != "CreateSnapshots" || c.Implied == "" {
		t.Errorf("the tagging at creation: %+v", c)
	}

	// Keeping a volume past termination acts on the instance and that volume.
	if _, err := w.ec2.ModifyInstanceAttribute(ctx, &ec2.ModifyInstanceAttributeInput{InstanceId: aws.String(w.box),
		BlockDeviceMappings: []ec2types.InstanceBlockDeviceMappingSpecification{{DeviceName: aws.String("/dev/sdf"), Ebs: &ec2types.EbsInstanceBlockDeviceSpecification{DeleteOnTermination: aws.Bool(false)}}},
	}); err != nil {
		t.Fatal(err)
	}
	r = w.last(t, "ModifyInstanceAttribute")
	var modified []string
	for _, c := range r.Checks {
		modified = append(modified, c.Resource)
	}
	if want := []string{instance(w.box), "arn:aws:ec2:us-east-1:123456789012:volume/" + w.boxVols[1]}; !slices.Equal(modified, want) || len(r.Gaps) > 0 {
		t.Errorf("ModifyInstanceAttribute checked on %v (gaps %v), want %v", modified, r.Gaps, want)
	}

	// A launch: the image, what it creates, where, and the role it passes.
	w.ses.opt.ProfileRoles = map[string]string{"box-profile": "arn:aws:iam::123456789012:role/circleci-services"}
	_, err = w.ec2.RunInstances(ctx, &ec2.RunInstancesInput{
		ImageId: aws.String(w.image), InstanceType: ec2types.InstanceTypeT3Micro, MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
		SubnetId: aws.String(w.subnet), SecurityGroupIds: []string{w.sg}, KeyName: aws.String("ops"),
		IamInstanceProfile: &ec2types.IamInstanceProfileSpecification{Name: aws.String("box-profile")},
		TagSpecifications: []ec2types.TagSpecification{
			{ResourceType: ec2types.ResourceTypeInstance, Tags: []ec2types.Tag{{Key: aws.String("Name"), Value: aws.String("circleci_services")}}},
			{ResourceType: ec2types.ResourceTypeVolume, Tags: []ec2types.Tag{{Key: aws.String("circlebot:restore-op"), Value: aws.String("op-1")}}},
		},
	})
	_ = err // moto has no key pair "ops": what was asked is what is judged
	r = w.last(t, "RunInstances")
	var got []string
	for _, c := range r.Checks {
		got = append(got, c.Action+" "+c.Resource)
	}
	for _, want := range []string{
		"ec2:RunInstances arn:aws:ec2:us-east-1::image/" + w.image,
		"ec2:RunInstances arn:aws:ec2:us-east-1:123456789012:instance/*",
		"ec2:RunInstances arn:aws:ec2:us-east-1:123456789012:volume/*",
		"ec2:RunInstances arn:aws:ec2:us-east-1:123456789012:network-interface/*",
		"ec2:RunInstances arn:aws:ec2:us-east-1:123456789012:subnet/" + w.subnet,
		"ec2:RunInstances arn:aws:ec2:us-east-1:123456789012:security-group/" + w.sg,
		"ec2:RunInstances arn:aws:ec2:us-east-1:123456789012:key-pair/ops",
		"ec2:CreateTags arn:aws:ec2:us-east-1:123456789012:instance/*",
		"ec2:CreateTags arn:aws:ec2:us-east-1:123456789012:volume/*",
		"iam:PassRole arn:aws:iam::123456789012:role/circleci-services",
	} {
		if !slices.Contains(got, want) {
			t.Errorf("RunInstances: no check %s in\n%s", want, strings.Join(got, "\n"))
		}
	}
	// Every check is one IAM could make, against the Reference.
	ev := newPolicy(t, testConfig())
	for _, req := range w.ses.Requests() {
		for _, c := range req.Checks {
			if err := ev.Validate(c); err != nil {
				t.Errorf("%s: %v", req, err)
			}
		}
	}
}

// The bypass, sent for real: the recorder reads the builder's tags, the
// policy refuses the rename (the README's allowed it).
func TestRecordedRenameOfAnotherInstanceIsDenied(t *testing.T) {
	w := newWorld(t)
	ctx := ctxT(t)
	if _, err := w.ec2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{w.builder}, Tags: []ec2types.Tag{{Key: aws.String("Name"), Value: aws.String("circleci_services")}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.ec2.StopInstances(ctx, &ec2.StopInstancesInput{InstanceIds: []string{w.builder}}); err != nil {
		t.Fatal(err)
	}
	rename, stop := w.last(t, "CreateTags"), w.last(t, "StopInstances")
	old := oldPolicy(t)
	if f := old.Judge(rename); len(f) > 0 {
		t.Fatalf("the README's policy refused the rename (%v): this test no longer shows the bug", f)
	}
	if f := old.Judge(stop); len(f) > 0 {
		t.Fatalf("the README's policy refused to stop the renamed builder (%v)", f)
	}
	ev := newPolicy(t, testConfig())
	f := ev.Judge(rename)
	if len(f) != 1 || !strings.Contains(f[0].Why, "NeverNameAnotherInstanceAsABox") || !strings.Contains(f[0].Check, w.builder) {
		t.Errorf("policy.json on the rename: %v", f)
	}
	// The stop was judged on the tags as they were when it was sent:
	// renamed (moto let the rename through), so allowed — which is why the
	// rename must be what is refused.
	if f := ev.Judge(stop); len(f) > 0 {
		t.Errorf("stop of an instance named as the box: %v", f)
	}
}

// KMS on the bot's behalf, from real calls: a launch whose volumes are
// encrypted under a customer-managed key, and an upload into a bucket
// whose default encryption is SSE-KMS.
func TestKMSThroughEC2AndS3(t *testing.T) {
	w := newWorld(t)
	ctx := ctxT(t)
	_, _ = w.ec2.RunInstances(ctx, &ec2.RunInstancesInput{
		ImageId: aws.String(w.image), InstanceType: ec2types.InstanceTypeT3Micro, MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
		SubnetId: aws.String(w.subnet), SecurityGroupIds: []string{w.sg},
		BlockDeviceMappings: []ec2types.BlockDeviceMapping{{DeviceName: aws.String("/dev/sdf"), Ebs: &ec2types.EbsBlockDevice{
			VolumeSize: aws.Int32(10), Encrypted: aws.Bool(true), KmsKeyId: aws.String(kmsKey)}}},
	})
	launch := w.last(t, "RunInstances")

	s3setup := s3.NewFromConfig(w.direct, func(o *s3.Options) { o.UsePathStyle = true })
	if _, err := s3setup.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s3setup.PutBucketEncryption(ctx, &s3.PutBucketEncryptionInput{Bucket: aws.String(bucket), ServerSideEncryptionConfiguration: &s3types.ServerSideEncryptionConfiguration{
		Rules: []s3types.ServerSideEncryptionRule{{ApplyServerSideEncryptionByDefault: &s3types.ServerSideEncryptionByDefault{SSEAlgorithm: s3types.ServerSideEncryptionAwsKms, KMSMasterKeyID: aws.String(kmsKey)}}},
	}}); err != nil {
		t.Fatal(err)
	}
	s3c := s3.NewFromConfig(w.rec, func(o *s3.Options) { o.UsePathStyle = true })
	key := "circleci-backups/bk-1/circleci-data-export.tar.bz2"
	mp, err := s3c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		t.Fatal(err)
	}
	// The box sends the part with a presigned URL: signed with the bot's
	// credentials, so S3 asks KMS with the bot's rights.
	part, err := s3.NewPresignClient(s3c).PresignUploadPart(ctx, &s3.UploadPartInput{Bucket: aws.String(bucket), Key: aws.String(key), UploadId: mp.UploadId, PartNumber: aws.Int32(1)})
	if err != nil {
		t.Fatal(err)
	}
	if req, err := http.NewRequestWithContext(ctx, http.MethodPut, part.URL, strings.NewReader("data")); err == nil {
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}
	create, upload := w.last(t, "CreateMultipartUpload"), w.last(t, "UploadPart")

	object := "arn:aws:s3:::" + bucket + "/" + key
	for _, tc := range []struct {
		req  Request
		want []string // action, kms:ViaService
	}{
		{launch, []string{"kms:CreateGrant ec2", "kms:Decrypt ec2", "kms:DescribeKey ec2", "kms:GenerateDataKeyWithoutPlaintext ec2"}},
		{create, []string{"kms:GenerateDataKey s3"}},
		{upload, []string{"kms:Decrypt s3"}},
	} {
		var got []string
		for _, c := range tc.req.Checks {
			if strings.HasPrefix(c.Action, "kms:") {
				svc, _, _ := strings.Cut(c.Context["kms:ViaService"][0], ".")
				got = append(got, c.Action+" "+svc)
				if c.Resource != kmsKey {
					t.Errorf("%s on %s", c.Action, c.Resource)
				}
				if svc == "s3" && c.Context["kms:EncryptionContext:aws:s3:arn"][0] != object {
					t.Errorf("%s: encryption context %v", c.Action, c.Context)
				}
			}
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: KMS checks %v, want %v", tc.req, got, tc.want)
		}
	}
	withKey := testConfig()
	withKey.AWS.KMSKeyARNs = []string{kmsKey}
	old, ev := oldPolicy(t), newPolicy(t, withKey)
	for _, r := range []Request{launch, create, upload} {
		kmsDenied := 0
		for _, f := range old.Judge(r) {
			if strings.Contains(f.Check, "kms:") {
				kmsDenied++
			}
		}
		if kmsDenied == 0 {
			t.Errorf("the README's policy allowed the KMS use of %s: this test no longer shows the bug", r)
		}
		for _, f := range ev.Judge(r) {
			if strings.Contains(f.Check, "kms:") || strings.Contains(f.Why, "not judged") {
				t.Errorf("policy.json with aws.kms_key_arns: %s", f)
			}
		}
	}
}
