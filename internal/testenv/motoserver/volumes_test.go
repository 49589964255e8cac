package motoserver

import (
	"errors"
	"fmt"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"
)

func codeOf(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// The launcher keeps what RegisterImage and RunInstances say about each
// volume and refuses what AWS refuses, with AWS's codes (moto alone keeps
// only the snapshot and makes every volume gp2 without IOPS or throughput).
func TestLauncherKeepsBlockDeviceSettings(t *testing.T) {
	t.Parallel()
	srv, c := patchedServer(t)
	ctx := ctxT(t)
	const key = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555"
	amis, err := c.DescribeImages(ctx, &ec2.DescribeImagesInput{Owners: []string{"amazon"}})
	if err != nil || len(amis.Images) == 0 {
		t.Fatalf("stock AMIs: %v", err)
	}
	run, err := c.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: amis.Images[0].ImageId, MinCount: aws.Int32(1), MaxCount: aws.Int32(1), InstanceType: types.InstanceTypeM5Large,
		BlockDeviceMappings: []types.BlockDeviceMapping{
			{DeviceName: aws.String("/dev/sda1"), Ebs: &types.EbsBlockDevice{VolumeSize: aws.Int32(30), VolumeType: types.VolumeTypeGp3, Throughput: aws.Int32(250)}},
			{DeviceName: aws.String("/dev/sdf"), Ebs: &types.EbsBlockDevice{VolumeSize: aws.Int32(100), VolumeType: types.VolumeTypeIo2, Iops: aws.Int32(4000)}},
			{DeviceName: aws.String("/dev/sdg"), Ebs: &types.EbsBlockDevice{VolumeSize: aws.Int32(50), VolumeType: types.VolumeTypeGp2, Encrypted: aws.Bool(true), KmsKeyId: aws.String(key)}},
		}})
	if err != nil {
		t.Fatal(err)
	}
	box := aws.ToString(run.Instances[0].InstanceId)
	volumes := func(instance string) map[string]string {
		out, err := c.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{Filters: []types.Filter{{Name: aws.String("attachment.instance-id"), Values: []string{instance}}}})
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, v := range out.Volumes {
			got[aws.ToString(v.Attachments[0].Device)] = fmt.Sprintf("%s %d %d %d %t %s", v.VolumeType, aws.ToInt32(v.Size), aws.ToInt32(v.Iops), aws.ToInt32(v.Throughput), aws.ToBool(v.Encrypted), aws.ToString(v.KmsKeyId))
		}
		return got
	}
	want := map[string]string{"/dev/sda1": "gp3 30 3000 250 false ", "/dev/sdf": "io2 100 4000 0 false ", "/dev/sdg": "gp2 50 0 0 true " + key}
	if got := volumes(box); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("launched volumes %v, want %v", got, want)
	}
	snaps, err := c.CreateSnapshots(ctx, &ec2.CreateSnapshotsInput{InstanceSpecification: &types.InstanceSpecification{InstanceId: aws.String(box)}})
	if err != nil {
		t.Fatal(err)
	}
	dev := map[string]string{}
	vols, _ := c.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{Filters: []types.Filter{{Name: aws.String("attachment.instance-id"), Values: []string{box}}}})
	for _, v := range vols.Volumes {
		dev[aws.ToString(v.VolumeId)] = aws.ToString(v.Attachments[0].Device)
	}
	snapOf := map[string]string{}
	for _, s := range snaps.Snapshots {
		snapOf[dev[aws.ToString(s.VolumeId)]] = aws.ToString(s.SnapshotId)
	}
	if s := describeSnapshot(t, c, snapOf["/dev/sdg"]); !aws.ToBool(s.Encrypted) || aws.ToString(s.KmsKeyId) != key {
		t.Errorf("snapshot of the encrypted volume: encrypted %v, key %q; want its volume's key", aws.ToBool(s.Encrypted), aws.ToString(s.KmsKeyId))
	}

	register := func(name string, edit func(m map[string]*types.EbsBlockDevice)) (string, error) {
		m := map[string]*types.EbsBlockDevice{
			"/dev/sda1": {SnapshotId: aws.String(snapOf["/dev/sda1"]), VolumeType: types.VolumeTypeGp3, Iops: aws.Int32(3000), Throughput: aws.Int32(250)},
			"/dev/sdf":  {SnapshotId: aws.String(snapOf["/dev/sdf"]), VolumeType: types.VolumeTypeIo2, Iops: aws.Int32(4000)},
			"/dev/sdg":  {SnapshotId: aws.String(snapOf["/dev/sdg"]), VolumeType: types.VolumeTypeGp2},
		}
		if edit != nil {
			edit(m)
		}
		var bdm []types.BlockDeviceMapping
		for _, d := range []string{"/dev/sda1", "/dev/sdf", "/dev/sdg"} {
			bdm = append(bdm, types.BlockDeviceMapping{DeviceName: aws.String(d), Ebs: m[d]})
		}
		out, err := c.RegisterImage(ctx, &ec2.RegisterImageInput{Name: aws.String(name), RootDeviceName: aws.String("/dev/sda1"), Architecture: types.ArchitectureValuesX8664,
			VirtualizationType: aws.String("hvm"), BootMode: types.BootModeValuesLegacyBios, EnaSupport: aws.Bool(false), ImdsSupport: types.ImdsSupportValuesV20, BlockDeviceMappings: bdm})
		if err != nil {
			return "", err
		}
		return aws.ToString(out.ImageId), nil
	}
	// AWS makes images and volumes of completed snapshots only.
	if _, err := register("pending-image", nil); codeOf(err) != "IncorrectState" {
		t.Errorf("an image of pending snapshots: %v, want IncorrectState", err)
	}
	if _, err := c.CreateVolume(ctx, &ec2.CreateVolumeInput{AvailabilityZone: run.Instances[0].Placement.AvailabilityZone, SnapshotId: aws.String(snapOf["/dev/sda1"])}); codeOf(err) != "IncorrectState" {
		t.Errorf("a volume of a pending snapshot: %v, want IncorrectState", err)
	}
	for _, s := range snaps.Snapshots {
		if err := srv.SetSnapshotState(ctx, aws.ToString(s.SnapshotId), SnapshotCompleted, ""); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name, code string
		edit       func(m map[string]*types.EbsBlockDevice)
	}{
		{"encrypted flag on a snapshot's mapping", "InvalidBlockDeviceMapping", func(m map[string]*types.EbsBlockDevice) { m["/dev/sdg"].Encrypted = aws.Bool(true) }},
		{"KMS key at registration", "InvalidBlockDeviceMapping", func(m map[string]*types.EbsBlockDevice) { m["/dev/sdg"].KmsKeyId = aws.String(key) }},
		{"IOPS on gp2", "InvalidParameterCombination", func(m map[string]*types.EbsBlockDevice) { m["/dev/sdg"].Iops = aws.Int32(300) }},
		{"throughput on io2", "InvalidParameterCombination", func(m map[string]*types.EbsBlockDevice) { m["/dev/sdf"].Throughput = aws.Int32(250) }},
		{"io2 without IOPS", "InvalidParameterCombination", func(m map[string]*types.EbsBlockDevice) { m["/dev/sdf"].Iops = nil }},
	} {
		if _, err := register("refused-image", tc.edit); codeOf(err) != tc.code {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.code)
		}
	}
	img, err := register("kept-image", nil)
	if err != nil {
		t.Fatal(err)
	}
	d, err := c.DescribeImages(ctx, &ec2.DescribeImagesInput{ImageIds: []string{img}})
	if err != nil || len(d.Images) != 1 {
		t.Fatalf("DescribeImages: %v", err)
	}
	if im := d.Images[0]; im.BootMode != types.BootModeValuesLegacyBios || aws.ToBool(im.EnaSupport) || im.ImdsSupport != types.ImdsSupportValuesV20 {
		t.Errorf("image boot settings: mode %q ena %v imds %q", im.BootMode, aws.ToBool(im.EnaSupport), im.ImdsSupport)
	}
	// A launch that names the encrypted device's key and the IMDS settings.
	again, err := c.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: aws.String(img), MinCount: aws.Int32(1), MaxCount: aws.Int32(1), InstanceType: types.InstanceTypeM5Large,
		BlockDeviceMappings: []types.BlockDeviceMapping{{DeviceName: aws.String("/dev/sdg"), Ebs: &types.EbsBlockDevice{Encrypted: aws.Bool(true), KmsKeyId: aws.String(key)}}},
		MetadataOptions:     &types.InstanceMetadataOptionsRequest{HttpPutResponseHopLimit: aws.Int32(2)}})
	if err != nil {
		t.Fatal(err)
	}
	in := again.Instances[0]
	if got := volumes(aws.ToString(in.InstanceId)); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("volumes from the image %v, want %v", got, want)
	}
	if in.BootMode != types.BootModeValuesLegacyBios || aws.ToBool(in.EnaSupport) || in.MetadataOptions == nil || in.MetadataOptions.HttpTokens != types.HttpTokensStateRequired || aws.ToInt32(in.MetadataOptions.HttpPutResponseHopLimit) != 2 {
		t.Errorf("instance from the image: mode %q ena %v metadata %+v", in.BootMode, aws.ToBool(in.EnaSupport), in.MetadataOptions)
	}
	// A launch override AWS refuses.
	_, err = c.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: aws.String(img), MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
		BlockDeviceMappings: []types.BlockDeviceMapping{{DeviceName: aws.String("/dev/sdf"), Ebs: &types.EbsBlockDevice{VolumeType: types.VolumeTypeGp2}}}})
	if codeOf(err) != "InvalidParameterCombination" {
		t.Errorf("io2's IOPS on a gp2 override: %v, want InvalidParameterCombination", err)
	}
}

// CreateVolume with a client token makes one volume, however often it is
// called (AWS: "Ensure idempotency"), and refuses the token with other
// arguments; moto alone makes one per call. A reset forgets the tokens
// with the volumes.
func TestLauncherCreateVolumeHonoursTheClientToken(t *testing.T) {
	t.Parallel()
	srv, c := patchedServer(t)
	ctx := ctxT(t)
	in := func(token string) *ec2.CreateVolumeInput {
		return &ec2.CreateVolumeInput{AvailabilityZone: aws.String(Region + "a"), Size: aws.Int32(8), VolumeType: types.VolumeTypeGp3, ClientToken: aws.String(token)}
	}
	first, err := c.CreateVolume(ctx, in("restore-op-1-sdf"))
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.CreateVolume(ctx, in("restore-op-1-sdf"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := c.CreateVolume(ctx, in("restore-op-1-sdg"))
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(again.VolumeId) != aws.ToString(first.VolumeId) || aws.ToString(other.VolumeId) == aws.ToString(first.VolumeId) {
		t.Errorf("volumes %s, %s (same token), %s (another): want the first two equal, the third new",
			aws.ToString(first.VolumeId), aws.ToString(again.VolumeId), aws.ToString(other.VolumeId))
	}
	bigger := in("restore-op-1-sdf")
	bigger.Size = aws.Int32(9)
	if _, err := c.CreateVolume(ctx, bigger); codeOf(err) != "IdempotentParameterMismatch" {
		t.Errorf("the token with another size: %v, want IdempotentParameterMismatch", err)
	}
	all, err := c.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all.Volumes) != 2 {
		t.Errorf("%d volumes after three calls with two tokens, want 2", len(all.Volumes))
	}
	if err := srv.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	after, err := c.CreateVolume(ctx, in("restore-op-1-sdf"))
	if err != nil {
		t.Fatalf("the token after a reset: %v", err)
	}
	if aws.ToString(after.VolumeId) == aws.ToString(first.VolumeId) {
		t.Error("a reset kept the token's volume")
	}
}
