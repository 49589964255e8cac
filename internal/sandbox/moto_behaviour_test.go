package sandbox

import (
	"errors"
	"slices"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// TestMotoBehaviourRelied pins down the moto behaviour listed in the package
// comment, which other packages' tests build on. When a moto upgrade makes
// this fail, update the comment and tell its readers.
func TestMotoBehaviourRelied(t *testing.T) {
	in, cfg := seed(t, Options{})
	e := ec2.NewFromConfig(cfg)
	// A missing moto API answers 500; one attempt keeps that quick.
	oneShot := cfg.Copy()
	oneShot.RetryMaxAttempts = 1
	e1 := ec2.NewFromConfig(oneShot)

	describe := func(t *testing.T, id string) types.Instance {
		t.Helper()
		out, err := e.DescribeInstances(ctxT(t), &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
		if err != nil || len(out.Reservations) != 1 || len(out.Reservations[0].Instances) != 1 {
			t.Fatalf("DescribeInstances %s: %v", id, err)
		}
		return out.Reservations[0].Instances[0]
	}
	status500 := func(t *testing.T, err error) {
		t.Helper()
		var re *smithyhttp.ResponseError
		if !errors.As(err, &re) || re.HTTPStatusCode() != 500 {
			t.Fatalf("err = %v, want HTTP 500", err)
		}
	}

	t.Run("status checks ok at once", func(t *testing.T) {
		out, err := e.DescribeInstanceStatus(ctxT(t), &ec2.DescribeInstanceStatusInput{InstanceIds: []string{in.ServicesBox.ID}})
		if err != nil || len(out.InstanceStatuses) != 1 {
			t.Fatalf("DescribeInstanceStatus: %v %+v", err, out)
		}
		st := out.InstanceStatuses[0]
		if st.InstanceStatus.Status != types.SummaryStatusOk || st.SystemStatus.Status != types.SummaryStatusOk {
			t.Errorf("fresh instance status %s/%s, documented ok/ok", st.InstanceStatus.Status, st.SystemStatus.Status)
		}
	})

	t.Run("stop is immediate", func(t *testing.T) {
		id := in.Replica.ID
		out, err := e.StopInstances(ctxT(t), &ec2.StopInstancesInput{InstanceIds: []string{id}})
		if err != nil {
			t.Fatal(err)
		}
		if got := out.StoppingInstances[0].CurrentState.Name; got != types.InstanceStateNameStopping {
			t.Errorf("StopInstances answered %s, documented stopping", got)
		}
		if got := describe(t, id).State.Name; got != types.InstanceStateNameStopped {
			t.Errorf("next DescribeInstances: %s, documented stopped", got)
		}
		st, err := e.DescribeInstanceStatus(ctxT(t), &ec2.DescribeInstanceStatusInput{InstanceIds: []string{id}, IncludeAllInstances: aws.Bool(true)})
		if err != nil || len(st.InstanceStatuses) != 1 || st.InstanceStatuses[0].InstanceStatus.Status != types.SummaryStatusNotApplicable {
			t.Errorf("stopped instance status: %v %+v, documented not-applicable", err, st)
		}
		if _, err := e.StartInstances(ctxT(t), &ec2.StartInstancesInput{InstanceIds: []string{id}}); err != nil {
			t.Fatal(err)
		}
		if got := describe(t, id).State.Name; got != types.InstanceStateNameRunning {
			t.Errorf("after StartInstances: %s, documented running", got)
		}
	})

	t.Run("CreateSnapshots multi-volume, completed at once", func(t *testing.T) {
		out, err := e.CreateSnapshots(ctxT(t), &ec2.CreateSnapshotsInput{
			InstanceSpecification: &types.InstanceSpecification{InstanceId: aws.String(in.ServicesBox.ID)},
			Description:           aws.String("behaviour"),
		})
		if err != nil || len(out.Snapshots) != 3 {
			t.Fatalf("CreateSnapshots: %v, %d snapshots, documented 3", err, len(out.Snapshots))
		}
		var ids []string
		for i, sn := range out.Snapshots {
			ids = append(ids, aws.ToString(sn.SnapshotId))
			if aws.ToString(sn.VolumeId) != in.ServicesBox.Volumes[i] {
				t.Errorf("snapshot %d of %s, documented device order %v", i, aws.ToString(sn.VolumeId), in.ServicesBox.Volumes)
			}
			if sn.State != "" || aws.ToString(sn.Progress) != "100%" {
				t.Errorf("CreateSnapshots item State %q Progress %q, documented no State and 100%%", sn.State, aws.ToString(sn.Progress))
			}
		}
		d, err := e.DescribeSnapshots(ctxT(t), &ec2.DescribeSnapshotsInput{SnapshotIds: ids})
		if err != nil {
			t.Fatal(err)
		}
		for _, sn := range d.Snapshots {
			if sn.State != types.SnapshotStateCompleted || aws.ToString(sn.Progress) != "100%" {
				t.Errorf("snapshot %s: %s %s, documented completed 100%%", aws.ToString(sn.SnapshotId), sn.State, aws.ToString(sn.Progress))
			}
		}
		ex, err := e.CreateSnapshots(ctxT(t), &ec2.CreateSnapshotsInput{
			InstanceSpecification: &types.InstanceSpecification{InstanceId: aws.String(in.ServicesBox.ID), ExcludeBootVolume: aws.Bool(true)},
		})
		if err != nil || len(ex.Snapshots) != 2 {
			t.Errorf("ExcludeBootVolume: %v, %d snapshots, documented 2", err, len(ex.Snapshots))
		}
	})

	t.Run("OwnerIds self ignored", func(t *testing.T) {
		out, err := e.DescribeSnapshots(ctxT(t), &ec2.DescribeSnapshotsInput{OwnerIds: []string{"self"}})
		if err != nil {
			t.Fatal(err)
		}
		owners := map[string]bool{}
		for _, sn := range out.Snapshots {
			owners[aws.ToString(sn.OwnerId)] = true
		}
		if len(owners) < 2 {
			t.Errorf("OwnerIds=self returned owners %v, documented: every owner", owners)
		}
	})

	t.Run("private IP assignment is unchecked", func(t *testing.T) {
		ips := func(eni string) []string {
			out, err := e.DescribeNetworkInterfaces(ctxT(t), &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{eni}})
			if err != nil || len(out.NetworkInterfaces) != 1 {
				t.Fatalf("DescribeNetworkInterfaces %s: %v", eni, err)
			}
			var a []string
			for _, p := range out.NetworkInterfaces[0].PrivateIpAddresses {
				a = append(a, aws.ToString(p.PrivateIpAddress))
			}
			return a
		}
		// The replica's ENI is in the other subnet and the IP is the box's.
		if _, err := e.AssignPrivateIpAddresses(ctxT(t), &ec2.AssignPrivateIpAddressesInput{
			NetworkInterfaceId: aws.String(in.Replica.ENI),
			PrivateIpAddresses: []string{ServiceIP},
		}); err != nil {
			t.Fatalf("documented: moto accepts an in-use, out-of-subnet address; got %v", err)
		}
		if !slices.Contains(ips(in.Replica.ENI), ServiceIP) || !slices.Contains(ips(in.ServicesBox.ENI), ServiceIP) {
			t.Errorf("documented: %s on both ENIs; box %v replica %v", ServiceIP, ips(in.ServicesBox.ENI), ips(in.Replica.ENI))
		}
		if _, err := e.UnassignPrivateIpAddresses(ctxT(t), &ec2.UnassignPrivateIpAddressesInput{
			NetworkInterfaceId: aws.String(in.Replica.ENI),
			PrivateIpAddresses: []string{ServiceIP},
		}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("RunInstances volumes and tags", func(t *testing.T) {
		out, err := e.RunInstances(ctxT(t), &ec2.RunInstancesInput{
			ImageId: aws.String(in.ImageID), MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
			SubnetId:            aws.String(in.Subnets[1]),
			PrivateIpAddress:    aws.String("10.0.2.50"),
			BlockDeviceMappings: []types.BlockDeviceMapping{{DeviceName: aws.String("/dev/sda1"), Ebs: &types.EbsBlockDevice{VolumeSize: aws.Int32(8)}}},
			TagSpecifications: []types.TagSpecification{{
				ResourceType: types.ResourceTypeNetworkInterface,
				Tags:         []types.Tag{{Key: aws.String("Name"), Value: aws.String("eni")}},
			}},
		})
		if err != nil {
			t.Fatal(err)
		}
		run := out.Instances[0]
		id := aws.ToString(run.InstanceId)
		if run.State.Name != types.InstanceStateNamePending || describe(t, id).State.Name != types.InstanceStateNameRunning {
			t.Errorf("documented pending in the answer, running right after")
		}
		got := describe(t, id)
		if len(got.BlockDeviceMappings) != 1 || aws.ToBool(got.BlockDeviceMappings[0].Ebs.DeleteOnTermination) {
			t.Errorf("root mapping %+v, documented DeleteOnTermination false", got.BlockDeviceMappings)
		}
		eni, err := e.DescribeNetworkInterfaces(ctxT(t), &ec2.DescribeNetworkInterfacesInput{
			NetworkInterfaceIds: []string{aws.ToString(got.NetworkInterfaces[0].NetworkInterfaceId)},
		})
		if err != nil || len(eni.NetworkInterfaces) != 1 {
			t.Fatalf("DescribeNetworkInterfaces: %v", err)
		}
		if tags := eni.NetworkInterfaces[0].TagSet; len(tags) != 0 {
			t.Errorf("ENI tags %v, documented: network-interface TagSpecifications ignored", tags)
		}

		if _, err := e.TerminateInstances(ctxT(t), &ec2.TerminateInstancesInput{InstanceIds: []string{id}}); err != nil {
			t.Fatal(err)
		}
		if got := describe(t, id).State.Name; got != types.InstanceStateNameTerminated {
			t.Errorf("after TerminateInstances: %s, documented terminated", got)
		}
		vol := aws.ToString(got.BlockDeviceMappings[0].Ebs.VolumeId)
		v, err := e.DescribeVolumes(ctxT(t), &ec2.DescribeVolumesInput{VolumeIds: []string{vol}})
		if err != nil || len(v.Volumes) != 1 || v.Volumes[0].State != types.VolumeStateAvailable {
			t.Errorf("root volume after terminate: %v %+v, documented available", err, v)
		}
		_, err = e1.RunInstances(ctxT(t), &ec2.RunInstancesInput{
			ImageId: aws.String(in.ImageID), MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
			SubnetId: aws.String(in.Subnets[1]), PrivateIpAddress: aws.String("10.0.2.50"),
		})
		status500(t, err)
	})

	t.Run("Auto Scaling places builders in the first subnet", func(t *testing.T) {
		out, err := e.DescribeInstances(ctxT(t), &ec2.DescribeInstancesInput{InstanceIds: in.Builders})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range out.Reservations {
			for _, i := range r.Instances {
				if aws.ToString(i.SubnetId) != in.Subnets[0] || i.State.Name != types.InstanceStateNameRunning {
					t.Errorf("builder %s running=%s in %s, documented running in %s", aws.ToString(i.InstanceId), i.State.Name, aws.ToString(i.SubnetId), in.Subnets[0])
				}
			}
		}
		_, err = autoscaling.NewFromConfig(oneShot).StartInstanceRefresh(ctxT(t), &autoscaling.StartInstanceRefreshInput{AutoScalingGroupName: aws.String(in.BuilderASG)})
		status500(t, err)
	})
}
