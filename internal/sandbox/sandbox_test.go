package sandbox

import (
	"context"
	"encoding/base64"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	asgtypes "github.com/aws/aws-sdk-go-v2/service/autoscaling/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"

	"github.com/circlebot/circlebot/internal/testenv/faultproxy"
	"github.com/circlebot/circlebot/internal/testenv/motoserver"
)

func TestMain(m *testing.M) { motoserver.Main(m) }

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func seed(t *testing.T, opt Options) (*Install, aws.Config) {
	t.Helper()
	cfg := motoserver.AWSConfig(motoserver.ForTest(t).URL)
	in, err := Seed(ctxT(t), cfg, opt)
	if err != nil {
		t.Fatalf("Seed: %v", err)
	}
	return in, cfg
}

func instancesTagged(t *testing.T, c *ec2.Client, name string) []types.Instance {
	t.Helper()
	out, err := c.DescribeInstances(ctxT(t), &ec2.DescribeInstancesInput{
		Filters: []types.Filter{{Name: aws.String("tag:Name"), Values: []string{name}}},
	})
	if err != nil {
		t.Fatalf("DescribeInstances tag:Name=%s: %v", name, err)
	}
	var all []types.Instance
	for _, r := range out.Reservations {
		all = append(all, r.Instances...)
	}
	return all
}

func one(t *testing.T, c *ec2.Client, name string) types.Instance {
	t.Helper()
	all := instancesTagged(t, c, name)
	if len(all) != 1 {
		t.Fatalf("tag:Name=%s matches %d instances, want 1", name, len(all))
	}
	if all[0].State == nil || all[0].State.Name != types.InstanceStateNameRunning {
		t.Fatalf("%s is %v, want running", name, all[0].State)
	}
	return all[0]
}

// checkVolumes checks that the instance has the three data volumes attached,
// sized as seeded, and that Seed reported them root first.
func checkVolumes(t *testing.T, c *ec2.Client, inst types.Instance, reported []string) {
	t.Helper()
	id := aws.ToString(inst.InstanceId)
	out, err := c.DescribeVolumes(ctxT(t), &ec2.DescribeVolumesInput{
		Filters: []types.Filter{{Name: aws.String("attachment.instance-id"), Values: []string{id}}},
	})
	if err != nil {
		t.Fatalf("DescribeVolumes for %s: %v", id, err)
	}
	if len(out.Volumes) != 3 || len(inst.BlockDeviceMappings) != 3 {
		t.Fatalf("%s: %d attached volumes, %d mappings; want 3", id, len(out.Volumes), len(inst.BlockDeviceMappings))
	}
	sizeByDevice := map[string]int32{}
	idByDevice := map[string]string{}
	for _, v := range out.Volumes {
		if v.State != types.VolumeStateInUse || len(v.Attachments) != 1 || v.Attachments[0].State != types.VolumeAttachmentStateAttached {
			t.Errorf("volume %s: state %s attachments %+v, want in-use and attached", aws.ToString(v.VolumeId), v.State, v.Attachments)
			continue
		}
		dev := aws.ToString(v.Attachments[0].Device)
		sizeByDevice[dev] = aws.ToInt32(v.Size)
		idByDevice[dev] = aws.ToString(v.VolumeId)
	}
	for _, want := range dataVolumes {
		if sizeByDevice[want.device] != want.sizeGiB {
			t.Errorf("%s %s: %d GiB, want %d", id, want.device, sizeByDevice[want.device], want.sizeGiB)
		}
	}
	if want := []string{idByDevice["/dev/sda1"], idByDevice["/dev/sdf"], idByDevice["/dev/sdg"]}; !slices.Equal(reported, want) {
		t.Errorf("reported volumes %v, want root first %v", reported, want)
	}
}

func TestSeed(t *testing.T) {
	in, cfg := seed(t, Options{})
	e := ec2.NewFromConfig(cfg)

	box := one(t, e, "circleci_services")
	if got := aws.ToString(box.InstanceId); got != in.ServicesBox.ID {
		t.Fatalf("tag:Name=circleci_services is %s, Seed reported %s", got, in.ServicesBox.ID)
	}
	if box.InstanceType != types.InstanceTypeM52xlarge || aws.ToString(box.SubnetId) != in.Subnets[0] {
		t.Errorf("box is %s in %s, want m5.2xlarge in %s", box.InstanceType, aws.ToString(box.SubnetId), in.Subnets[0])
	}
	checkVolumes(t, e, box, in.ServicesBox.Volumes)

	var secondary []string
	for _, ni := range box.NetworkInterfaces {
		if aws.ToString(ni.NetworkInterfaceId) != in.ServicesBox.ENI {
			continue
		}
		for _, a := range ni.PrivateIpAddresses {
			if !aws.ToBool(a.Primary) {
				secondary = append(secondary, aws.ToString(a.PrivateIpAddress))
			}
		}
	}
	if !slices.Equal(secondary, []string{ServiceIP}) || in.ServicesBox.SecondaryIP != ServiceIP {
		t.Errorf("box secondary IPs on %s = %v (reported %q), want [%s]", in.ServicesBox.ENI, secondary, in.ServicesBox.SecondaryIP, ServiceIP)
	}

	replica := one(t, e, "circleci_services_replica")
	az := func(i types.Instance) string { return aws.ToString(i.Placement.AvailabilityZone) }
	if az(replica) == az(box) || az(replica) != in.AZs[1] || aws.ToString(replica.SubnetId) != in.Subnets[1] {
		t.Errorf("replica in %s/%s, box in %s; want the replica in %s/%s", az(replica), aws.ToString(replica.SubnetId), az(box), in.AZs[1], in.Subnets[1])
	}
	if in.Replica.AZ != in.AZs[1] || in.ServicesBox.AZ != in.AZs[0] {
		t.Errorf("reported AZs box %s replica %s, want %v", in.ServicesBox.AZ, in.Replica.AZ, in.AZs)
	}
	checkVolumes(t, e, replica, in.Replica.Volumes)

	if _, err := s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true }).HeadBucket(ctxT(t), &s3.HeadBucketInput{Bucket: aws.String("circleci-backups-sandbox")}); err != nil {
		t.Errorf("backup bucket: %v", err)
	}

	g, err := autoscaling.NewFromConfig(cfg).DescribeAutoScalingGroups(ctxT(t), &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{"circleci-builders"}})
	if err != nil || len(g.AutoScalingGroups) != 1 {
		t.Fatalf("builder ASG: %v, %d groups", err, len(g.AutoScalingGroups))
	}
	var inService []string
	for _, i := range g.AutoScalingGroups[0].Instances {
		if i.LifecycleState == asgtypes.LifecycleStateInService {
			inService = append(inService, aws.ToString(i.InstanceId))
		}
	}
	slices.Sort(inService)
	if len(inService) != 3 || !slices.Equal(inService, in.Builders) {
		t.Errorf("InService builders %v, Seed reported %v; want 3", inService, in.Builders)
	}
	builders := instancesTagged(t, e, "circleci-builders")
	if len(builders) != 3 {
		t.Errorf("%d instances tagged circleci-builders, want 3", len(builders))
	}
	for _, b := range builders {
		if b.InstanceType != types.InstanceTypeM5Large {
			t.Errorf("builder %s is %s, want m5.large", aws.ToString(b.InstanceId), b.InstanceType)
		}
	}
	if subnets := aws.ToString(g.AutoScalingGroups[0].VPCZoneIdentifier); subnets != in.Subnets[0]+","+in.Subnets[1] {
		t.Errorf("ASG subnets %q, want both", subnets)
	}

	lt, err := e.DescribeLaunchTemplateVersions(ctxT(t), &ec2.DescribeLaunchTemplateVersionsInput{LaunchTemplateId: aws.String(in.LaunchTemplateID)})
	if err != nil || len(lt.LaunchTemplateVersions) == 0 {
		t.Fatalf("launch template %s: %v", in.LaunchTemplateID, err)
	}
	ud, _ := base64.StdEncoding.DecodeString(aws.ToString(lt.LaunchTemplateVersions[0].LaunchTemplateData.UserData))
	if !strings.Contains(string(ud), "SERVICES_PRIVATE_IP="+ServiceIP+"\n") {
		t.Errorf("builder user data %q does not point at %s", ud, ServiceIP)
	}

	sg, err := e.DescribeSecurityGroups(ctxT(t), &ec2.DescribeSecurityGroupsInput{GroupIds: []string{in.SecurityGroupID}})
	if err != nil || len(sg.SecurityGroups) != 1 {
		t.Fatalf("security group: %v", err)
	}
	var ports []int32
	for _, p := range sg.SecurityGroups[0].IpPermissions {
		if aws.ToString(p.IpProtocol) == "tcp" && len(p.IpRanges) == 1 && aws.ToString(p.IpRanges[0].CidrIp) == VPCCIDR {
			ports = append(ports, aws.ToInt32(p.FromPort))
		}
	}
	slices.Sort(ports)
	if !slices.Equal(ports, []int32{22, 80, 443, 4434}) {
		t.Errorf("ingress from the VPC on %v, want 22 80 443 4434", ports)
	}

	tagged := map[string]bool{}
	tags, err := e.DescribeTags(ctxT(t), &ec2.DescribeTagsInput{
		Filters: []types.Filter{{Name: aws.String("key"), Values: []string{SandboxTagKey}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tg := range tags.Tags {
		tagged[aws.ToString(tg.ResourceId)] = true
	}
	want := []string{in.VPCID, in.Subnets[0], in.Subnets[1], in.SecurityGroupID, in.ServicesBox.ID, in.ServicesBox.ENI, in.Replica.ID, in.Replica.ENI}
	want = append(want, in.ServicesBox.Volumes...)
	want = append(want, in.Builders...)
	for _, id := range want {
		if !tagged[id] {
			t.Errorf("%s lacks the %s tag", id, SandboxTagKey)
		}
	}

	if len(in.Snapshots) != 0 {
		t.Errorf("snapshots %v without WithBackups", in.Snapshots)
	}
}

func TestSeedWithBackups(t *testing.T) {
	before := time.Now().Add(-time.Second)
	in, cfg := seed(t, Options{NameTag: "svc", ReplicaTag: "svc-standby", Bucket: "other-bucket", BuilderASG: "b", Builders: 1, WithBackups: true})
	e := ec2.NewFromConfig(cfg)
	one(t, e, "svc")
	one(t, e, "svc-standby")
	if len(in.Builders) != 1 {
		t.Errorf("builders %v, want 1", in.Builders)
	}

	if len(in.Snapshots) != 3 {
		t.Fatalf("Snapshots = %v, want one per volume", in.Snapshots)
	}
	out, err := e.DescribeSnapshots(ctxT(t), &ec2.DescribeSnapshotsInput{
		// Not OwnerIds=self: moto ignores it (see the package comment).
		Filters: []types.Filter{{Name: aws.String("description"), Values: []string{"CircleCI Services box Backup taken at *"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Snapshots) != 3 {
		t.Fatalf("%d snapshots with the backup description, want 3", len(out.Snapshots))
	}
	byID := map[string]types.Snapshot{}
	for _, sn := range out.Snapshots {
		byID[aws.ToString(sn.SnapshotId)] = sn
	}
	for i, id := range in.Snapshots {
		sn, ok := byID[id]
		if !ok {
			t.Fatalf("reported snapshot %s not found", id)
		}
		if got := aws.ToString(sn.VolumeId); got != in.ServicesBox.Volumes[i] {
			t.Errorf("snapshot %d is of %s, want %s", i, got, in.ServicesBox.Volumes[i])
		}
		desc := aws.ToString(sn.Description)
		ts, err := time.Parse(time.RFC1123, strings.TrimPrefix(desc, "CircleCI Services box Backup taken at "))
		if err != nil || ts.Before(before.Truncate(time.Second)) || ts.After(time.Now()) {
			t.Errorf("description %q: want the runbook's form with an RFC1123 time of the seed (%v)", desc, err)
		}
	}
}

func TestSeedNamesTheFailedStep(t *testing.T) {
	moto := motoserver.ForTest(t)
	p := faultproxy.New(moto.URL, faultproxy.Faults{
		ServerErrorRate: 1,
		Match:           func(c faultproxy.Call) bool { return c.Action == "AssignPrivateIpAddresses" },
	})
	defer p.Close()
	cfg := motoserver.AWSConfig(p.URL)
	cfg.RetryMaxAttempts = 1
	_, err := Seed(ctxT(t), cfg, Options{})
	if err == nil {
		t.Fatal("Seed succeeded although AssignPrivateIpAddresses failed")
	}
	if !strings.HasPrefix(err.Error(), "sandbox: assign service IP: ") || !strings.Contains(err.Error(), ServiceIP) {
		t.Errorf("err = %q, want it to name the step and the IP", err)
	}
	var ae smithy.APIError
	if !errors.As(err, &ae) || ae.ErrorCode() != "InternalError" {
		t.Errorf("err = %v, want the SDK's InternalError wrapped", err)
	}

	if _, err := Seed(ctxT(t), aws.Config{}, Options{}); err == nil || !strings.Contains(err.Error(), "region") {
		t.Errorf("Seed without region: err = %v", err)
	}
	if _, err := Seed(ctxT(t), cfg, Options{Builders: -1}); err == nil || !strings.Contains(err.Error(), "Builders") {
		t.Errorf("Seed with -1 builders: err = %v", err)
	}
}

// Every create's first answer is lost on the way back (it took effect; the
// SDK sees a 500). CI once saw a seed fail with InvalidGroup.Duplicate in
// the VPC it had just made: the SDK had retried a CreateSecurityGroup whose
// answer was lost.
func TestSeedSurvivesLostAnswers(t *testing.T) {
	t.Parallel()
	moto := motoserver.ForTest(t)
	var (
		mu   sync.Mutex
		seen = map[string]bool{}
	)
	p := faultproxy.New(moto.URL, faultproxy.Faults{
		LostAnswerRate: 1,
		Match: func(c faultproxy.Call) bool {
			if !strings.HasPrefix(c.Action, "Create") && !strings.HasPrefix(c.Action, "Authorize") {
				return false
			}
			mu.Lock()
			defer mu.Unlock()
			first := !seen[c.Action]
			seen[c.Action] = true
			return first
		},
	})
	defer p.Close()
	in, err := Seed(ctxT(t), motoserver.AWSConfig(p.URL), Options{WithBackups: true})
	if err != nil {
		t.Fatalf("Seed with lost answers: %v", err)
	}
	var lost []string
	for _, c := range p.Calls() {
		if c.Fault == faultproxy.FaultLostAnswer {
			lost = append(lost, c.Action)
		}
	}
	for _, want := range []string{"CreateVpc", "CreateSubnet", "CreateSecurityGroup", "AuthorizeSecurityGroupIngress", "CreateSnapshots", "CreateLaunchTemplate", "CreateAutoScalingGroup", "CreateBucket"} {
		if !slices.Contains(lost, want) {
			t.Errorf("no lost answer for %s (lost: %v): the test does not cover it", want, lost)
		}
	}

	// One of each, and the install names the ones that exist.
	c := ec2.NewFromConfig(motoserver.AWSConfig(moto.URL))
	vpcs, err := c.DescribeVpcs(ctxT(t), &ec2.DescribeVpcsInput{Filters: []types.Filter{{Name: aws.String("cidr-block"), Values: []string{VPCCIDR}}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(vpcs.Vpcs) != 1 || aws.ToString(vpcs.Vpcs[0].VpcId) != in.VPCID {
		t.Errorf("VPCs with %s: %d, want 1 (%s)", VPCCIDR, len(vpcs.Vpcs), in.VPCID)
	}
	subnets, err := c.DescribeSubnets(ctxT(t), &ec2.DescribeSubnetsInput{Filters: []types.Filter{{Name: aws.String("vpc-id"), Values: []string{in.VPCID}}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(subnets.Subnets) != 3 {
		t.Errorf("subnets in the VPC: %d, want 3 (two AZs and the drills')", len(subnets.Subnets))
	}
	groups, err := c.DescribeSecurityGroups(ctxT(t), &ec2.DescribeSecurityGroupsInput{Filters: []types.Filter{{Name: aws.String("vpc-id"), Values: []string{in.VPCID}}}})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, g := range groups.SecurityGroups {
		names = append(names, aws.ToString(g.GroupName))
		if aws.ToString(g.GroupName) == "circleci-services" && aws.ToString(g.GroupId) != in.SecurityGroupID {
			t.Errorf("install names group %s, the VPC's is %s", in.SecurityGroupID, aws.ToString(g.GroupId))
		}
	}
	slices.Sort(names)
	if want := []string{"circleci-drills", "circleci-services", "default"}; !slices.Equal(names, want) {
		t.Errorf("security groups = %v, want %v", names, want)
	}
	snaps, err := c.DescribeSnapshots(ctxT(t), &ec2.DescribeSnapshotsInput{Filters: []types.Filter{{Name: aws.String("volume-id"), Values: in.ServicesBox.Volumes}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(snaps.Snapshots) != len(in.ServicesBox.Volumes) || len(in.Snapshots) != len(in.ServicesBox.Volumes) {
		t.Errorf("snapshots of the box: %d, install names %d, want one per volume (%d)", len(snaps.Snapshots), len(in.Snapshots), len(in.ServicesBox.Volumes))
	}
}
