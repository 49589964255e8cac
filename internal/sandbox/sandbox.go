// Package sandbox seeds an AWS endpoint (moto) with what a self-hosted
// CircleCI Enterprise install looks like, for the demo and for tests: a
// Services box with its data volumes and service IP, a standby replica in the
// other AZ, a builder Auto Scaling group, and a backup bucket.
//
// Moto behaviour relied on (moto 5.2.1, measured through the Go SDK; see
// TestMotoBehaviourRelied, which fails when a moto upgrade changes it):
//
//   - RunInstances with BlockDeviceMappings creates and attaches every
//     volume (size and type as asked, state in-use/attached), so no
//     CreateVolume/AttachVolume is needed. DeleteOnTermination defaults to
//     false for all of them, root included (AWS defaults the root to true);
//     terminated instances leave their volumes "available".
//   - RunInstances answers "pending"; the very next DescribeInstances says
//     "running". TagSpecifications for instance and volume are applied, for
//     network-interface silently ignored (so Seed tags the ENI itself).
//   - DescribeInstanceStatus on a freshly run instance already reports
//     InstanceStatus and SystemStatus "ok" (reachability "passed"); it never
//     shows "initializing". A stopped instance (with IncludeAllInstances)
//     reports "not-applicable".
//   - StopInstances answers "stopping"; the next DescribeInstances already
//     says "stopped" (StateReason Client.UserInitiatedShutdown). Start is
//     "pending" then at once "running"; terminate "shutting-down" then at
//     once "terminated". No transition can be observed in between.
//   - CreateSnapshots with InstanceSpecification works: one snapshot per
//     attached volume, in device order, ExcludeBootVolume honoured,
//     TagSpecifications applied, CopyTagsFromSource ignored. Its response
//     items carry no State, only Progress "100%".
//   - Every snapshot (CreateSnapshot or CreateSnapshots) is "completed" with
//     Progress "100%" immediately; "pending" needs a patched moto
//     (motoserver.WithLauncher).
//   - DescribeSnapshots ignores OwnerIds=self and returns about a thousand
//     snapshots backing moto's stock AMIs (other owners); filter by
//     description, tag, or the owner-id filter (which does work).
//   - AssignPrivateIpAddresses with an explicit address works and the ENI
//     then lists it as a non-primary private IP. Moto checks nothing else:
//     an address held by another ENI is assigned again without
//     AllowReassignment (AWS: InvalidParameterValue, in use) and then sits on
//     both ENIs, and an address outside the ENI's subnet is accepted (AWS
//     refuses it), so in moto a cross-AZ failover that "keeps the IP"
//     wrongly succeeds. Checks for either must be the bot's own.
//   - A terminated instance never releases its private IP: RunInstances with
//     that PrivateIpAddress fails with HTTP 500 (a bare "IP already in use"
//     exception), not InvalidIPAddress.InUse.
//   - Auto Scaling launches the desired instances at once, InService and
//     running, but all in the first subnet of VPCZoneIdentifier: moto does
//     not balance across AZs. StartInstanceRefresh is HTTP 500 (not
//     implemented).
package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	asgtypes "github.com/aws/aws-sdk-go-v2/service/autoscaling/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// Fixed addresses keep the demo's output the same from run to run.
const (
	VPCCIDR = "10.0.0.0/16"
	// ServiceIP is the Services box's secondary private IP, the address the
	// builders are configured with.
	ServiceIP = "10.0.1.100"

	// SandboxTagKey marks everything Seed creates.
	SandboxTagKey = "circlebot:sandbox"

	servicesType = "m5.2xlarge"
	builderType  = "m5.large"
	// CircleCI's Services box AMIs were Ubuntu with the root on /dev/sda1,
	// which the runbook's register-image step assumes.
	preferredImage = "ubuntu/images/hvm-ssd/ubuntu-xenial-16.04-amd64-server-*"

	pollTimeout  = 30 * time.Second
	pollInterval = 100 * time.Millisecond
)

var (
	subnetCIDRs = [2]string{"10.0.1.0/24", "10.0.2.0/24"}
	primaryIPs  = [2]string{"10.0.1.10", "10.0.2.10"}
	// Ports CircleCI builders use to reach the Services box, plus SSH.
	servicePorts = []int32{80, 443, 4434, 22}
	dataVolumes  = []struct {
		device  string
		sizeGiB int32
	}{{"/dev/sda1", 30}, {"/dev/sdf", 100}, {"/dev/sdg", 50}}
)

// Options chooses names and extras; zero values take the defaults.
type Options struct {
	NameTag    string // default "circleci_services"
	ReplicaTag string // default "circleci_services_replica"
	Bucket     string // default "circleci-backups-sandbox"
	BuilderASG string // default "circleci-builders"
	Builders   int    // default 3
	// WithBackups also takes one EBS backup set of the box's volumes, with
	// the runbook's description "CircleCI Services box Backup taken at <RFC1123 time>".
	WithBackups bool
}

func (o *Options) defaults() {
	if o.NameTag == "" {
		o.NameTag = "circleci_services"
	}
	if o.ReplicaTag == "" {
		o.ReplicaTag = "circleci_services_replica"
	}
	if o.Bucket == "" {
		o.Bucket = "circleci-backups-sandbox"
	}
	if o.BuilderASG == "" {
		o.BuilderASG = "circleci-builders"
	}
	if o.Builders == 0 {
		o.Builders = 3
	}
}

// Instance is one seeded EC2 instance.
type Instance struct {
	ID, PrivateIP, SecondaryIP, ENI, SubnetID, AZ, Type string
	Volumes                                             []string // volume IDs, root first
}

// Install is what Seed created.
type Install struct {
	Region, VPCID   string
	Subnets         [2]string
	AZs             [2]string
	SecurityGroupID string
	ImageID         string
	// ServicesBox is in subnet 0 with three volumes and SecondaryIP
	// (ServiceIP) on its primary ENI.
	ServicesBox Instance
	// Replica is the same shape in subnet 1, the other AZ. It has no
	// secondary IP: a secondary IP cannot leave its subnet, so a standby
	// there cannot hold the service address.
	Replica          Instance
	Bucket           string
	BuilderASG       string
	LaunchTemplateID string
	Builders         []string // instance IDs, sorted
	Snapshots        []string // the seeded backup set, in ServicesBox.Volumes order, if WithBackups
	// DrillSubnet (10.0.9.0/24) and DrillSecurityGroup (no ingress) are
	// where restore drills run, apart from production.
	DrillSubnet, DrillSecurityGroup string
}

// BackupDescription is the description the runbook's backup script gives a
// snapshot taken at t.
func BackupDescription(t time.Time) string {
	return "CircleCI Services box Backup taken at " + t.UTC().Format(time.RFC1123)
}

type seeder struct {
	ec2 *ec2.Client
	asg *autoscaling.Client
	s3  *s3.Client
	opt Options
	in  *Install
	// seed tells what this Seed made from what another left (seedTagKey).
	seed string
}

// seedTagKey's value is one Seed's own, on the resources it must find
// again by tag after a lost answer.
const seedTagKey = "circlebot:sandbox-seed"

// Seed creates the install in a fresh account (moto after a reset). It is
// not idempotent. An error names the step that failed.
func Seed(ctx context.Context, cfg aws.Config, opt Options) (*Install, error) {
	opt.defaults()
	if cfg.Region == "" {
		return nil, errors.New("sandbox: aws.Config has no region")
	}
	if opt.Builders < 0 {
		return nil, fmt.Errorf("sandbox: Builders = %d, want at least 1 (0 means 3)", opt.Builders)
	}
	s := &seeder{
		ec2: ec2.NewFromConfig(cfg),
		asg: autoscaling.NewFromConfig(cfg),
		// moto on 127.0.0.1 cannot serve virtual-hosted bucket names.
		s3:   s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true }),
		opt:  opt,
		seed: rand.Text(),
		in: &Install{
			Region:     cfg.Region,
			AZs:        [2]string{cfg.Region + "a", cfg.Region + "b"},
			Bucket:     opt.Bucket,
			BuilderASG: opt.BuilderASG,
		},
	}
	steps := []struct {
		name string
		run  func(context.Context) error
	}{
		{"find AMI", s.findImage},
		{"create VPC", s.createVPC},
		{"create subnets", s.createSubnets},
		{"create security group", s.createSecurityGroup},
		{"create the drill subnet and security group", s.createDrillNetwork},
		{"launch Services box", func(ctx context.Context) error {
			inst, err := s.launch(ctx, 0, opt.NameTag)
			s.in.ServicesBox = inst
			return err
		}},
		{"assign service IP", s.assignServiceIP},
		{"launch replica", func(ctx context.Context) error {
			inst, err := s.launch(ctx, 1, opt.ReplicaTag)
			s.in.Replica = inst
			return err
		}},
		{"create backup bucket", s.createBucket},
		{"create builder launch template", s.createLaunchTemplate},
		{"create builder Auto Scaling group", s.createBuilderASG},
	}
	if opt.WithBackups {
		steps = append(steps, struct {
			name string
			run  func(context.Context) error
		}{"take backup snapshots", s.takeBackup})
	}
	for _, st := range steps {
		if err := st.run(ctx); err != nil {
			return nil, fmt.Errorf("sandbox: %s: %w", st.name, err)
		}
	}
	return s.in, nil
}

func (s *seeder) tags(name string) []types.Tag {
	return []types.Tag{
		{Key: aws.String("Name"), Value: aws.String(name)},
		{Key: aws.String(SandboxTagKey), Value: aws.String("true")},
	}
}

func (s *seeder) tagSpec(rt types.ResourceType, name string) types.TagSpecification {
	return types.TagSpecification{ResourceType: rt, Tags: s.tags(name)}
}

func (s *seeder) findImage(ctx context.Context) error {
	out, err := s.ec2.DescribeImages(ctx, &ec2.DescribeImagesInput{
		Filters: []types.Filter{
			{Name: aws.String("name"), Values: []string{preferredImage}},
			{Name: aws.String("architecture"), Values: []string{"x86_64"}},
		},
	})
	if err != nil {
		return fmt.Errorf("describe images %s: %w", preferredImage, err)
	}
	images := out.Images
	if len(images) == 0 {
		// Any Amazon-owned x86_64 Linux HVM image will do for a sandbox.
		out, err = s.ec2.DescribeImages(ctx, &ec2.DescribeImagesInput{
			Owners: []string{"amazon"},
			Filters: []types.Filter{
				{Name: aws.String("architecture"), Values: []string{"x86_64"}},
				{Name: aws.String("virtualization-type"), Values: []string{"hvm"}},
			},
		})
		if err != nil {
			return fmt.Errorf("describe Amazon x86_64 images: %w", err)
		}
		images = slices.DeleteFunc(out.Images, func(im types.Image) bool { return im.Platform == types.PlatformValuesWindows })
	}
	if len(images) == 0 {
		return errors.New("no x86_64 Linux AMI in this account/region; moto loads its stock AMIs unless MOTO_EC2_LOAD_DEFAULT_AMIS=false")
	}
	// Sorted by name so every run picks the same image.
	sort.Slice(images, func(i, j int) bool { return aws.ToString(images[i].Name) < aws.ToString(images[j].Name) })
	s.in.ImageID = aws.ToString(images[0].ImageId)
	return nil
}

func (s *seeder) createVPC(ctx context.Context) error {
	// A tag of this seed's own tells its VPC from any other with the CIDR.
	spec := s.tagSpec(types.ResourceTypeVpc, "circleci")
	spec.Tags = append(spec.Tags, types.Tag{Key: aws.String(seedTagKey), Value: aws.String(s.seed)})
	err := createOnce(ctx, func(ctx context.Context) error {
		out, err := s.ec2.CreateVpc(ctx, &ec2.CreateVpcInput{CidrBlock: aws.String(VPCCIDR), TagSpecifications: []types.TagSpecification{spec}}, noRetry)
		if err == nil {
			s.in.VPCID = aws.ToString(out.Vpc.VpcId)
		}
		return err
	}, func(ctx context.Context) (bool, error) {
		out, err := s.ec2.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{Filters: []types.Filter{
			{Name: aws.String("tag:" + seedTagKey), Values: []string{s.seed}}}})
		if err != nil || len(out.Vpcs) != 1 {
			return false, err
		}
		s.in.VPCID = aws.ToString(out.Vpcs[0].VpcId)
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("%s: %w", VPCCIDR, err)
	}
	return nil
}

func (s *seeder) createSubnets(ctx context.Context) error {
	for i := range 2 {
		id, err := s.subnet(ctx, subnetCIDRs[i], s.in.AZs[i], "circleci-"+s.in.AZs[i])
		if err != nil {
			return fmt.Errorf("%s in %s: %w", subnetCIDRs[i], s.in.AZs[i], err)
		}
		s.in.Subnets[i] = id
	}
	return nil
}

// subnet creates a subnet of the seed's VPC, or finds the one a try whose
// answer was lost made.
func (s *seeder) subnet(ctx context.Context, cidr, az, name string) (string, error) {
	var id string
	err := createOnce(ctx, func(ctx context.Context) error {
		out, err := s.ec2.CreateSubnet(ctx, &ec2.CreateSubnetInput{
			VpcId:             aws.String(s.in.VPCID),
			CidrBlock:         aws.String(cidr),
			AvailabilityZone:  aws.String(az),
			TagSpecifications: []types.TagSpecification{s.tagSpec(types.ResourceTypeSubnet, name)},
		}, noRetry)
		if err == nil {
			id = aws.ToString(out.Subnet.SubnetId)
		}
		return err
	}, func(ctx context.Context) (bool, error) {
		out, err := s.ec2.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{Filters: []types.Filter{
			{Name: aws.String("vpc-id"), Values: []string{s.in.VPCID}}, {Name: aws.String("cidr-block"), Values: []string{cidr}}}})
		if err != nil || len(out.Subnets) != 1 {
			return false, err
		}
		id = aws.ToString(out.Subnets[0].SubnetId)
		return true, nil
	})
	return id, err
}

// securityGroup creates a security group in the seed's VPC, or finds the
// one a try whose answer was lost made.
func (s *seeder) securityGroup(ctx context.Context, name, description string) (string, error) {
	var id string
	err := createOnce(ctx, func(ctx context.Context) error {
		out, err := s.ec2.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{
			GroupName:         aws.String(name),
			Description:       aws.String(description),
			VpcId:             aws.String(s.in.VPCID),
			TagSpecifications: []types.TagSpecification{s.tagSpec(types.ResourceTypeSecurityGroup, name)},
		}, noRetry)
		if err == nil {
			id = aws.ToString(out.GroupId)
		}
		return err
	}, func(ctx context.Context) (bool, error) {
		out, err := s.ec2.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{Filters: []types.Filter{
			{Name: aws.String("vpc-id"), Values: []string{s.in.VPCID}}, {Name: aws.String("group-name"), Values: []string{name}}}})
		if err != nil || len(out.SecurityGroups) != 1 {
			return false, err
		}
		id = aws.ToString(out.SecurityGroups[0].GroupId)
		return true, nil
	})
	return id, err
}

func (s *seeder) createDrillNetwork(ctx context.Context) error {
	sub, err := s.subnet(ctx, "10.0.9.0/24", s.in.AZs[0], "circleci-drills")
	if err != nil {
		return fmt.Errorf("subnet: %w", err)
	}
	s.in.DrillSubnet = sub
	sg, err := s.securityGroup(ctx, "circleci-drills", "Restore drills: no ingress")
	if err != nil {
		return fmt.Errorf("security group: %w", err)
	}
	s.in.DrillSecurityGroup = sg
	return nil
}

func (s *seeder) createSecurityGroup(ctx context.Context) error {
	id, err := s.securityGroup(ctx, "circleci-services", "CircleCI Services box: builders and users from the VPC")
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	s.in.SecurityGroupID = id
	perms := make([]types.IpPermission, 0, len(servicePorts))
	for _, p := range servicePorts {
		perms = append(perms, types.IpPermission{
			IpProtocol: aws.String("tcp"),
			FromPort:   aws.Int32(p),
			ToPort:     aws.Int32(p),
			IpRanges:   []types.IpRange{{CidrIp: aws.String(VPCCIDR)}},
		})
	}
	if _, err := s.ec2.AuthorizeSecurityGroupIngress(ctx, &ec2.AuthorizeSecurityGroupIngressInput{
		GroupId:       aws.String(s.in.SecurityGroupID),
		IpPermissions: perms,
	}); err != nil && errorCode(err) != "InvalidPermission.Duplicate" { // a retry of a lost answer
		return fmt.Errorf("authorize ingress on %s: %w", s.in.SecurityGroupID, err)
	}
	return nil
}

func (s *seeder) launch(ctx context.Context, subnet int, name string) (Instance, error) {
	bdm := make([]types.BlockDeviceMapping, 0, len(dataVolumes))
	for _, v := range dataVolumes {
		bdm = append(bdm, types.BlockDeviceMapping{
			DeviceName: aws.String(v.device),
			Ebs: &types.EbsBlockDevice{
				VolumeSize: aws.Int32(v.sizeGiB),
				VolumeType: types.VolumeTypeGp3,
				// The data outlives the instance, as on a real Services box
				// that is restored or failed over rather than rebuilt.
				DeleteOnTermination: aws.Bool(false),
			},
		})
	}
	out, err := s.ec2.RunInstances(ctx, &ec2.RunInstancesInput{
		ImageId:             aws.String(s.in.ImageID),
		InstanceType:        types.InstanceType(servicesType),
		MinCount:            aws.Int32(1),
		MaxCount:            aws.Int32(1),
		SubnetId:            aws.String(s.in.Subnets[subnet]),
		PrivateIpAddress:    aws.String(primaryIPs[subnet]),
		SecurityGroupIds:    []string{s.in.SecurityGroupID},
		BlockDeviceMappings: bdm,
		TagSpecifications: []types.TagSpecification{
			s.tagSpec(types.ResourceTypeInstance, name),
			s.tagSpec(types.ResourceTypeVolume, name),
		},
	})
	if err != nil {
		return Instance{}, fmt.Errorf("run %s %s in %s: %w", servicesType, name, s.in.Subnets[subnet], err)
	}
	if len(out.Instances) != 1 {
		return Instance{}, fmt.Errorf("run %s: got %d instances, want 1", name, len(out.Instances))
	}
	id := aws.ToString(out.Instances[0].InstanceId)

	var got types.Instance
	err = poll(ctx, "instance "+id+" running", func(ctx context.Context) (bool, error) {
		d, err := s.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
		if err != nil {
			return false, fmt.Errorf("describe %s: %w", id, err)
		}
		if len(d.Reservations) != 1 || len(d.Reservations[0].Instances) != 1 {
			return false, nil
		}
		got = d.Reservations[0].Instances[0]
		return got.State != nil && got.State.Name == types.InstanceStateNameRunning, nil
	})
	if err != nil {
		return Instance{}, err
	}

	inst := Instance{
		ID:        id,
		PrivateIP: aws.ToString(got.PrivateIpAddress),
		SubnetID:  aws.ToString(got.SubnetId),
		Type:      string(got.InstanceType),
		Volumes:   volumeIDs(got),
	}
	if got.Placement != nil {
		inst.AZ = aws.ToString(got.Placement.AvailabilityZone)
	}
	for _, ni := range got.NetworkInterfaces {
		if ni.Attachment != nil && aws.ToInt32(ni.Attachment.DeviceIndex) == 0 {
			inst.ENI = aws.ToString(ni.NetworkInterfaceId)
		}
	}
	if inst.ENI == "" {
		return inst, fmt.Errorf("instance %s has no primary network interface", id)
	}
	if len(inst.Volumes) != len(dataVolumes) {
		return inst, fmt.Errorf("instance %s has %d attached volumes, want %d from its block-device mappings", id, len(inst.Volumes), len(dataVolumes))
	}
	// moto drops network-interface TagSpecifications on RunInstances.
	if _, err := s.ec2.CreateTags(ctx, &ec2.CreateTagsInput{
		Resources: []string{inst.ENI},
		Tags:      s.tags(name),
	}); err != nil {
		return inst, fmt.Errorf("tag network interface %s: %w", inst.ENI, err)
	}
	return inst, nil
}

// volumeIDs lists an instance's EBS volumes root first, then by device.
func volumeIDs(in types.Instance) []string {
	root := aws.ToString(in.RootDeviceName)
	bdm := slices.Clone(in.BlockDeviceMappings)
	sort.SliceStable(bdm, func(i, j int) bool {
		di, dj := aws.ToString(bdm[i].DeviceName), aws.ToString(bdm[j].DeviceName)
		if (di == root) != (dj == root) {
			return di == root
		}
		return di < dj
	})
	var ids []string
	for _, m := range bdm {
		if m.Ebs != nil && m.Ebs.VolumeId != nil {
			ids = append(ids, *m.Ebs.VolumeId)
		}
	}
	return ids
}

func (s *seeder) assignServiceIP(ctx context.Context) error {
	box := &s.in.ServicesBox
	if _, err := s.ec2.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{
		NetworkInterfaceId: aws.String(box.ENI),
		PrivateIpAddresses: []string{ServiceIP},
	}); err != nil {
		return fmt.Errorf("%s to %s: %w", ServiceIP, box.ENI, err)
	}
	box.SecondaryIP = ServiceIP
	return nil
}

func (s *seeder) createBucket(ctx context.Context) error {
	// us-east-1 takes no LocationConstraint; every other region needs one.
	in := &s3.CreateBucketInput{Bucket: aws.String(s.opt.Bucket)}
	if s.in.Region != "us-east-1" {
		in.CreateBucketConfiguration = &s3types.CreateBucketConfiguration{
			LocationConstraint: s3types.BucketLocationConstraint(s.in.Region),
		}
	}
	if _, err := s.s3.CreateBucket(ctx, in); err != nil && errorCode(err) != "BucketAlreadyOwnedByYou" { // a retry of a lost answer
		return fmt.Errorf("%s: %w", s.opt.Bucket, err)
	}
	if _, err := s.s3.PutBucketTagging(ctx, &s3.PutBucketTaggingInput{
		Bucket: aws.String(s.opt.Bucket),
		Tagging: &s3types.Tagging{TagSet: []s3types.Tag{
			{Key: aws.String("Name"), Value: aws.String(s.opt.Bucket)},
			{Key: aws.String(SandboxTagKey), Value: aws.String("true")},
		}},
	}); err != nil {
		return fmt.Errorf("tag %s: %w", s.opt.Bucket, err)
	}
	return nil
}

// BuilderUserData is the builders' boot script: like real CircleCI builders
// they find the Services box by the IP in SERVICES_PRIVATE_IP.
func BuilderUserData(serviceIP string) string {
	return "#!/bin/bash\n" +
		"# CircleCI Enterprise builder (circlebot sandbox: nothing runs here)\n" +
		"export SERVICES_PRIVATE_IP=" + serviceIP + "\n"
}

func (s *seeder) createLaunchTemplate(ctx context.Context) error {
	name := s.opt.BuilderASG + "-lt"
	out, err := s.ec2.CreateLaunchTemplate(ctx, &ec2.CreateLaunchTemplateInput{
		LaunchTemplateName: aws.String(name),
		LaunchTemplateData: &types.RequestLaunchTemplateData{
			ImageId:          aws.String(s.in.ImageID),
			InstanceType:     types.InstanceType(builderType),
			SecurityGroupIds: []string{s.in.SecurityGroupID},
			UserData:         aws.String(base64.StdEncoding.EncodeToString([]byte(BuilderUserData(ServiceIP)))),
		},
		TagSpecifications: []types.TagSpecification{s.tagSpec(types.ResourceTypeLaunchTemplate, name)},
	})
	if errorCode(err) == "InvalidLaunchTemplateName.AlreadyExistsException" { // a retry of a lost answer
		found, derr := s.ec2.DescribeLaunchTemplates(ctx, &ec2.DescribeLaunchTemplatesInput{LaunchTemplateNames: []string{name}})
		if derr == nil && len(found.LaunchTemplates) == 1 {
			s.in.LaunchTemplateID = aws.ToString(found.LaunchTemplates[0].LaunchTemplateId)
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	s.in.LaunchTemplateID = aws.ToString(out.LaunchTemplate.LaunchTemplateId)
	return nil
}

func (s *seeder) createBuilderASG(ctx context.Context) error {
	name := s.opt.BuilderASG
	want := s.opt.Builders
	if _, err := s.asg.CreateAutoScalingGroup(ctx, &autoscaling.CreateAutoScalingGroupInput{
		AutoScalingGroupName: aws.String(name),
		LaunchTemplate: &asgtypes.LaunchTemplateSpecification{
			LaunchTemplateId: aws.String(s.in.LaunchTemplateID),
			Version:          aws.String("$Latest"),
		},
		MinSize:         aws.Int32(0),
		MaxSize:         aws.Int32(int32(2 * want)), // room to rotate the fleet
		DesiredCapacity: aws.Int32(int32(want)),
		// Comma-separated, as the API wants it.
		VPCZoneIdentifier: aws.String(strings.Join(s.in.Subnets[:], ",")),
		Tags: []asgtypes.Tag{
			{Key: aws.String("Name"), Value: aws.String(name), PropagateAtLaunch: aws.Bool(true)},
			{Key: aws.String(SandboxTagKey), Value: aws.String("true"), PropagateAtLaunch: aws.Bool(true)},
		},
	}); err != nil && errorCode(err) != "AlreadyExists" { // a retry of a lost answer
		return fmt.Errorf("%s: %w", name, err)
	}
	return poll(ctx, fmt.Sprintf("%d builders InService in %s", want, name), func(ctx context.Context) (bool, error) {
		out, err := s.asg.DescribeAutoScalingGroups(ctx, &autoscaling.DescribeAutoScalingGroupsInput{
			AutoScalingGroupNames: []string{name},
		})
		if err != nil {
			return false, fmt.Errorf("describe %s: %w", name, err)
		}
		if len(out.AutoScalingGroups) != 1 {
			return false, nil
		}
		var ids []string
		for _, i := range out.AutoScalingGroups[0].Instances {
			if i.LifecycleState == asgtypes.LifecycleStateInService {
				ids = append(ids, aws.ToString(i.InstanceId))
			}
		}
		if len(ids) != want {
			return false, nil
		}
		sort.Strings(ids)
		s.in.Builders = ids
		return true, nil
	})
}

func (s *seeder) takeBackup(ctx context.Context) error {
	box := s.in.ServicesBox
	desc := BackupDescription(time.Now())
	var snaps []types.SnapshotInfo
	err := createOnce(ctx, func(ctx context.Context) error {
		out, err := s.ec2.CreateSnapshots(ctx, &ec2.CreateSnapshotsInput{
			InstanceSpecification: &types.InstanceSpecification{InstanceId: aws.String(box.ID)},
			Description:           aws.String(desc),
			TagSpecifications:     []types.TagSpecification{s.tagSpec(types.ResourceTypeSnapshot, s.opt.NameTag)},
		}, noRetry)
		if err == nil {
			snaps = out.Snapshots
		}
		return err
	}, func(ctx context.Context) (bool, error) {
		out, err := s.ec2.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{Filters: []types.Filter{
			{Name: aws.String("description"), Values: []string{desc}},
			{Name: aws.String("volume-id"), Values: box.Volumes}}})
		if err != nil || len(out.Snapshots) != len(box.Volumes) {
			return false, err
		}
		snaps = snaps[:0]
		for _, sn := range out.Snapshots {
			snaps = append(snaps, types.SnapshotInfo{SnapshotId: sn.SnapshotId, VolumeId: sn.VolumeId})
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("of %s: %w", box.ID, err)
	}
	byVolume := make(map[string]string, len(snaps))
	for _, sn := range snaps {
		byVolume[aws.ToString(sn.VolumeId)] = aws.ToString(sn.SnapshotId)
	}
	for _, v := range box.Volumes {
		id, ok := byVolume[v]
		if !ok {
			return fmt.Errorf("of %s: no snapshot of volume %s in %d returned", box.ID, v, len(snaps))
		}
		s.in.Snapshots = append(s.in.Snapshots, id)
	}
	return nil
}

// poll checks cond until it holds, it fails, or pollTimeout (or ctx) ends.
// Moto answers at once; the polling is for the same code on slower fakes.
func poll(ctx context.Context, what string, cond func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, pollTimeout)
	defer cancel()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		ok, err := cond(ctx)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-tick.C:
		}
	}
}
