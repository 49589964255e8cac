package ops

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// volEC2 answers DescribeVolumes and DescribeImages from maps; anything
// else panics (the embedded interface is nil).
type volEC2 struct {
	RestoreEC2
	volumes map[string]ec2types.Volume
	images  map[string]ec2types.Image
}

func (f *volEC2) DescribeVolumes(_ context.Context, in *ec2.DescribeVolumesInput, _ ...func(*ec2.Options)) (*ec2.DescribeVolumesOutput, error) {
	var out []ec2types.Volume
	for _, id := range in.VolumeIds {
		v, ok := f.volumes[id]
		if !ok {
			return nil, apiErr("DescribeVolumes", "InvalidVolume.NotFound")
		}
		out = append(out, v)
	}
	return &ec2.DescribeVolumesOutput{Volumes: out}, nil
}

func (f *volEC2) DescribeImages(_ context.Context, in *ec2.DescribeImagesInput, _ ...func(*ec2.Options)) (*ec2.DescribeImagesOutput, error) {
	img, ok := f.images[in.ImageIds[0]]
	if !ok {
		return nil, apiErr("DescribeImages", "InvalidAMIID.NotFound")
	}
	return &ec2.DescribeImagesOutput{Images: []ec2types.Image{img}}, nil
}

const testKey = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"

// A record made before volumes and boot settings were kept still
// restores: each volume is read from its snapshot (size, encryption,
// key) and from the volume it was taken of while that exists (type,
// IOPS, throughput); what cannot be read is named in the plan and left
// to AWS's defaults; the boot settings come from the source AMI, ENA on
// when nothing says otherwise.
func TestOldRecordsRestoreWithWhatCanBeRead(t *testing.T) {
	// A record as the bot wrote it before this change: no volumes, no boot.
	var rec Backup
	old := `{"id":"bk-1","method":"ebs","state":"completed","shape":{"instance_id":"i-gone","type":"m5.xlarge","private_ip":"10.0.1.10","subnet_id":"subnet-a","image_id":"ami-src","root_device":"/dev/sda1","architecture":"arm64"},"snapshots":[{"id":"snap-root","device":"/dev/sda1"}]}`
	if err := json.Unmarshal([]byte(old), &rec); err != nil {
		t.Fatal(err)
	}
	if _, ok := VolumeSpecOf(&rec, "/dev/sda1"); ok {
		t.Fatal("an old record has no volume settings")
	}
	f := &volEC2{
		volumes: map[string]ec2types.Volume{"vol-data": {VolumeId: aws.String("vol-data"), VolumeType: ec2types.VolumeTypeIo2, Size: aws.Int32(100), Iops: aws.Int32(4000)}},
		images:  map[string]ec2types.Image{"ami-src": {ImageId: aws.String("ami-src"), BootMode: ec2types.BootModeValuesUefi, EnaSupport: aws.Bool(true), ImdsSupport: ec2types.ImdsSupportValuesV20}},
	}
	ctx := context.Background()
	snap := func(id, vol string, size int32, key string) ec2types.Snapshot {
		return ec2types.Snapshot{SnapshotId: aws.String(id), VolumeId: aws.String(vol), VolumeSize: aws.Int32(size), Encrypted: aws.Bool(key != ""), KmsKeyId: aws.String(key)}
	}
	root := specFromSnapshot(ctx, f, "/dev/sda1", snap("snap-root", "vol-gone", 30, testKey))
	data := specFromSnapshot(ctx, f, "/dev/sdf", snap("snap-data", "vol-data", 100, ""))
	if root.Type != "" || !root.Encrypted || root.KMSKeyID != testKey || root.SizeGiB != 30 || !slices.Equal(root.Unknown, []string{"type", "IOPS", "throughput"}) {
		t.Errorf("root from its snapshot alone: %+v", root)
	}
	if data.Type != "io2" || data.IOPS != 4000 || len(data.Unknown) != 0 || !strings.Contains(data.From, "vol-data as it is now") {
		t.Errorf("data from its snapshot and its volume: %+v", data)
	}
	plan := RestorePlan{Source: rec.ID, Shape: rec.Shape, Snapshots: []RestoreSnapshot{
		{ID: "snap-root", Device: "/dev/sda1", SizeGiB: 30, Volume: root}, {ID: "snap-data", Device: "/dev/sdf", SizeGiB: 100, Volume: data},
	}}
	fillBoot(ctx, f, &plan, nil)
	if b := plan.Shape.Boot; b == nil || b.ImageBootMode != "uefi" || b.ENA == nil || !*b.ENA || !strings.Contains(b.From, "ami-src") {
		t.Fatalf("boot from the source AMI: %+v", plan.Shape.Boot)
	}
	lines := strings.Join(plan.VolumeLines(), "\n")
	for _, want := range []string{"/dev/sda1=`snap-root`: 30 GiB, encrypted with " + testKey + ", unknown: type, IOPS, throughput (AWS's defaults)", "/dev/sdf=`snap-data`: io2, 100 GiB, 4000 IOPS, not encrypted"} {
		if !strings.Contains(lines, want) {
			t.Errorf("plan lines lack %q:\n%s", want, lines)
		}
	}
	in := imageInput(plan, "circleci-restore-op-1", "d", false, nil)
	if in.BootMode != ec2types.BootModeValuesUefi || !aws.ToBool(in.EnaSupport) || in.ImdsSupport != ec2types.ImdsSupportValuesV20 || in.Architecture != ec2types.ArchitectureValuesArm64 {
		t.Errorf("image boot settings: mode %q ena %v imds %q arch %q", in.BootMode, aws.ToBool(in.EnaSupport), in.ImdsSupport, in.Architecture)
	}
	got := map[string]ec2types.EbsBlockDevice{}
	for _, m := range in.BlockDeviceMappings {
		got[aws.ToString(m.DeviceName)] = *m.Ebs
	}
	if r := got["/dev/sda1"]; r.VolumeType != "" || r.Iops != nil || r.Encrypted != nil || r.KmsKeyId != nil || aws.ToString(r.SnapshotId) != "snap-root" {
		t.Errorf("root mapping states what is unknown, or encryption RegisterImage refuses: %+v", r)
	}
	if d := got["/dev/sdf"]; d.VolumeType != ec2types.VolumeTypeIo2 || aws.ToInt32(d.Iops) != 4000 || d.Throughput != nil {
		t.Errorf("data mapping: %+v", d)
	}
	lm := launchMappings(plan.Snapshots)
	if len(lm) != 1 || aws.ToString(lm[0].DeviceName) != "/dev/sda1" || !aws.ToBool(lm[0].Ebs.Encrypted) || aws.ToString(lm[0].Ebs.KmsKeyId) != testKey {
		t.Errorf("launch overrides: %+v", lm)
	}

	// Nothing to read at all: the plan says so, and ENA stays on.
	bare := RestorePlan{Shape: Shape{ImageID: "ami-deregistered", RootDevice: "/dev/sda1"}}
	fillBoot(ctx, f, &bare, nil)
	if bare.Shape.Boot != nil || !strings.Contains(bare.BootLine(), "unknown") {
		t.Errorf("no AMI, no record: %+v, %q", bare.Shape.Boot, bare.BootLine())
	}
	if in := imageInput(bare, "n", "d", false, nil); !aws.ToBool(in.EnaSupport) || in.BootMode != "" || metadataOptions(bare.Shape.Boot) != nil {
		t.Errorf("unknown boot settings: ena %v mode %q", aws.ToBool(in.EnaSupport), in.BootMode)
	}
}

// The recorded settings go into RegisterImage and RunInstances as AWS
// takes them: throughput for gp3 only, IOPS for gp3/io1/io2 only,
// encryption never on a snapshot's mapping at registration but the key at
// launch; TPM implies UEFI; IMDS from the record.
func TestImageAndLaunchCarryTheRecord(t *testing.T) {
	ena := false
	plan := RestorePlan{Shape: Shape{RootDevice: "/dev/xvda", Architecture: "x86_64",
		Boot: &BootSpec{VirtualizationType: "hvm", BootMode: "uefi-preferred", CurrentBootMode: "legacy-bios", ENA: &ena, SriovNetSupport: "simple",
			IMDS: &IMDS{HTTPTokens: "required", HopLimit: 2, Endpoint: "enabled"}}},
		Snapshots: []RestoreSnapshot{
			{ID: "snap-1", Device: "/dev/xvda", SizeGiB: 30, Volume: VolumeSpec{Type: "gp3", SizeGiB: 40, IOPS: 3000, Throughput: 250}},
			{ID: "snap-2", Device: "/dev/sdf", SizeGiB: 100, Volume: VolumeSpec{Type: "gp2", SizeGiB: 100, IOPS: 300, Throughput: 0}},
			{ID: "snap-3", Device: "/dev/sdg", SizeGiB: 50, Volume: VolumeSpec{Type: "io2", SizeGiB: 50, IOPS: 4000, Encrypted: true, KMSKeyID: testKey}},
		}}
	in := imageInput(plan, "n", "d", false, nil)
	if in.BootMode != ec2types.BootModeValuesLegacyBios || aws.ToBool(in.EnaSupport) || aws.ToString(in.SriovNetSupport) != "simple" || in.ImdsSupport != ec2types.ImdsSupportValuesV20 || in.TpmSupport != "" {
		t.Errorf("boot: mode %q (the box booted legacy-bios) ena %v sriov %q imds %q tpm %q", in.BootMode, aws.ToBool(in.EnaSupport), aws.ToString(in.SriovNetSupport), in.ImdsSupport, in.TpmSupport)
	}
	var got []string
	for _, m := range in.BlockDeviceMappings {
		e := m.Ebs
		got = append(got, fmt.Sprintf("%s %s %s %d iops=%d tp=%d enc=%v key=%v dot=%v", aws.ToString(m.DeviceName), aws.ToString(e.SnapshotId), e.VolumeType, aws.ToInt32(e.VolumeSize), aws.ToInt32(e.Iops), aws.ToInt32(e.Throughput), e.Encrypted != nil, e.KmsKeyId != nil, aws.ToBool(e.DeleteOnTermination)))
	}
	want := []string{
		"/dev/xvda snap-1 gp3 40 iops=3000 tp=250 enc=false key=false dot=false",
		"/dev/sdf snap-2 gp2 100 iops=0 tp=0 enc=false key=false dot=false", // gp2's IOPS are its baseline: AWS refuses them
		"/dev/sdg snap-3 io2 50 iops=4000 tp=0 enc=false key=false dot=false",
	}
	if !slices.Equal(got, want) {
		t.Errorf("image mappings:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if lm := launchMappings(plan.Snapshots); len(lm) != 1 || aws.ToString(lm[0].DeviceName) != "/dev/sdg" || aws.ToString(lm[0].Ebs.KmsKeyId) != testKey {
		t.Errorf("launch overrides: %+v", lm)
	}
	mo := metadataOptions(plan.Shape.Boot)
	if mo == nil || mo.HttpTokens != ec2types.HttpTokensStateRequired || aws.ToInt32(mo.HttpPutResponseHopLimit) != 2 || mo.HttpEndpoint != "enabled" {
		t.Errorf("metadata options: %+v", mo)
	}
	plan.Shape.Boot.TPM = "v2.0"
	if in := imageInput(plan, "n", "d", true, nil); in.TpmSupport != ec2types.TpmSupportValuesV20 || in.BootMode != ec2types.BootModeValuesUefi || !aws.ToBool(in.BlockDeviceMappings[0].Ebs.DeleteOnTermination) {
		t.Errorf("TPM: tpm %q mode %q", in.TpmSupport, in.BootMode)
	}
	cv := plan.Snapshots[2].Volume.CreateVolumeInput("us-east-1a", "snap-3", nil)
	if cv.VolumeType != ec2types.VolumeTypeIo2 || aws.ToInt32(cv.Iops) != 4000 || !aws.ToBool(cv.Encrypted) || aws.ToString(cv.KmsKeyId) != testKey || aws.ToInt32(cv.Size) != 50 || cv.Throughput != nil {
		t.Errorf("CreateVolumeInput: %+v", cv)
	}
}

func manyTags(n int) []ec2types.Tag {
	tags := []ec2types.Tag{{Key: aws.String("aws:cloudformation:stack-name"), Value: aws.String("s")}, {Key: aws.String("Name"), Value: aws.String("data")}}
	for i := range n {
		tags = append(tags, ec2types.Tag{Key: aws.String(fmt.Sprintf("team:%02d", i)), Value: aws.String("v")})
	}
	return tags
}

// A snapshot holds 50 tags. Per-volume snapshots take the volume's own
// tags as far as they fit next to the bot's (the bot's are never the
// ones dropped), and the record says which were left off.
func TestSnapshotTagsStayWithinFifty(t *testing.T) {
	f := newPvEC2()
	f.volTags = map[string][]ec2types.Tag{"vol-0a": manyTags(45), "vol-0b": manyTags(3)}
	_, rec, err := runPerVolume(t, f)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range f.creates {
		if len(c.Tags) > maxTagsPerResource {
			t.Errorf("snapshot of %s with %d tags", c.Volume, len(c.Tags))
		}
		if c.Tags[TagBackupID] != rec.ID || c.Tags[TagDevice] == "" || c.Tags["Name"] != "circlebot "+rec.ID {
			t.Errorf("snapshot of %s lost the bot's tags: %v", c.Volume, c.Tags)
		}
		if _, ok := c.Tags["aws:cloudformation:stack-name"]; ok {
			t.Errorf("snapshot of %s copies an aws: tag", c.Volume)
		}
		switch c.Volume {
		case "vol-0a":
			if len(c.Tags) != maxTagsPerResource || c.Tags["team:39"] != "v" || c.Tags["team:40"] != "" {
				t.Errorf("vol-0a: %d tags, want the first 40 of its own by key: %v", len(c.Tags), c.Tags)
			}
		case "vol-0b":
			if c.Tags["team:02"] != "v" {
				t.Errorf("vol-0b's tags not copied: %v", c.Tags)
			}
		}
	}
	notes := strings.Join(rec.Notes, "\n")
	if !strings.Contains(notes, "vol-0a (/dev/sdb): 40 of its 45 tags copied") || !strings.Contains(notes, "team:40, team:41, team:42, team:43, team:44") || strings.Contains(notes, "vol-0b") {
		t.Errorf("notes: %s", notes)
	}
	if got := len(rec.Shape.Volumes); got != 3 {
		t.Errorf("%d volumes recorded", got)
	}

	// With CreateSnapshots, tags that would not fit are copied afterwards,
	// trimmed, instead of CopyTagsFromSource failing the whole set.
	if tagsFit(map[string][]ec2types.Tag{"v": manyTags(39)}) != true || tagsFit(map[string][]ec2types.Tag{"v": manyTags(40)}) != false {
		t.Errorf("tagsFit: 39+Name fit next to the bot's 10, 40+Name do not")
	}
	g := newPvEC2()
	e := &EBSBackup{EC2: g}
	b := &Backup{Snapshots: []SnapshotRef{{ID: "snap-a", VolumeID: "vol-0a", Device: "/dev/sdb"}, {ID: "snap-b", VolumeID: "vol-0b", Device: "/dev/sda1"}}}
	e.copyTags(context.Background(), b, map[string][]ec2types.Tag{"vol-0a": manyTags(45), "vol-0b": manyTags(2)}, &quietProgress{})
	if n := len(g.taggedAfter["snap-a"]); n != maxTagsPerResource-botSnapshotTags {
		t.Errorf("snap-a got %d copied tags", n)
	}
	if n := len(g.taggedAfter["snap-b"]); n != 2 {
		t.Errorf("snap-b got %d copied tags", n)
	}
	if len(b.Notes) != 1 || !strings.Contains(b.Notes[0], "vol-0a") {
		t.Errorf("notes: %q", b.Notes)
	}
}
