package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/circlebot/circlebot/internal/app"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/testenv/motoserver"
	"github.com/circlebot/circlebot/internal/testenv/ssmbox"
)

// volumeSpecs reads the volumes attached to an instance back from EC2, by
// device: type, size, IOPS, throughput, encryption and key.
func volumeSpecs(t *testing.T, api *ec2.Client, instance string) map[string]string {
	t.Helper()
	out, err := api.DescribeVolumes(context.Background(), &ec2.DescribeVolumesInput{Filters: []ec2types.Filter{
		{Name: aws.String("attachment.instance-id"), Values: []string{instance}}}})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, v := range out.Volumes {
		got[aws.ToString(v.Attachments[0].Device)] = fmt.Sprintf("%s %d GiB, %d IOPS, %d MiB/s, encrypted %t, key %q",
			v.VolumeType, aws.ToInt32(v.Size), aws.ToInt32(v.Iops), aws.ToInt32(v.Throughput), aws.ToBool(v.Encrypted), aws.ToString(v.KmsKeyId))
	}
	return got
}

// createKMSKey makes a customer-managed key in moto (KMS's JSON protocol:
// the module has no KMS client) and returns its ARN.
func createKMSKey(t *testing.T, endpoint string) string {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, endpoint, bytes.NewReader([]byte(`{"Description":"circleci services data"}`)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "TrentService.CreateKey")
	req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=x")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct{ KeyMetadata struct{ Arn string } }
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.KeyMetadata.Arn == "" {
		t.Fatalf("create a KMS key in moto: HTTP %d, %v", resp.StatusCode, err)
	}
	return out.KeyMetadata.Arn
}

// Issue 14: a restore brings every volume back as it was. The Services box
// has a gp3 root with 250 MiB/s, an io2 data volume with 4000 IOPS and a
// volume encrypted under a customer-managed key; after a backup and a
// restore, the new box's volumes, read back from EC2, match the old box's
// device for device, and the plan named them. Before, RegisterImage took
// only the snapshot IDs, so every volume came back as AWS's default type
// without its IOPS or throughput.
// volumesBox sets the Services box up with a gp3 root at 250 MiB/s, an
// io2 volume at 4000 IOPS, a volume encrypted under a customer-managed
// key and IMDSv2, and returns each device's volume as EC2 reads it.
func volumesBox(t *testing.T) (r *restoreEnv, api *ec2.Client, keyARN string, oldBox ec2types.Instance, before map[string]string) {
	t.Helper()
	ctx := context.Background()
	moto := patchedMoto(t)
	if err := moto.AutoCompleteSnapshots(ctx, 1); err != nil {
		t.Fatal(err)
	}
	direct := motoserver.AWSConfig(moto.URL)
	keyARN = createKMSKey(t, moto.URL)
	ssmSrv := ssmbox.New(t)
	ssmSrv.RegisterNew(func(id string) bool { return strings.HasPrefix(id, "i-") })
	e := newEnvOn(t, moto, func(c *config.Config) {
		c.Roles.Approvers = []string{bob}
		c.AWS.KMSKeyARNs = []string{keyARN}
	}, func(o *app.Options) { o.SSMEndpoint = ssmSrv.URL })
	r = &restoreEnv{env: e, ssm: ssmSrv, oldBox: ssmSrv.AddBox(e.inst.ServicesBox.ID)}
	r.tune(e.app)

	api = ec2.NewFromConfig(direct)
	box := e.inst.ServicesBox
	// The seeded box: /dev/sda1 30 GiB, /dev/sdf 100 GiB, /dev/sdg 50 GiB, all gp3.
	if _, err := api.ModifyVolume(ctx, &ec2.ModifyVolumeInput{VolumeId: aws.String(box.Volumes[0]), VolumeType: ec2types.VolumeTypeGp3, Throughput: aws.Int32(250)}); err != nil {
		t.Fatal(err)
	}
	if _, err := api.ModifyVolume(ctx, &ec2.ModifyVolumeInput{VolumeId: aws.String(box.Volumes[1]), VolumeType: ec2types.VolumeTypeIo2, Iops: aws.Int32(4000)}); err != nil {
		t.Fatal(err)
	}
	enc, err := api.CreateVolume(ctx, &ec2.CreateVolumeInput{AvailabilityZone: aws.String(box.AZ), Size: aws.Int32(20), VolumeType: ec2types.VolumeTypeGp3,
		Encrypted: aws.Bool(true), KmsKeyId: aws.String(keyARN)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := api.AttachVolume(ctx, &ec2.AttachVolumeInput{VolumeId: enc.VolumeId, InstanceId: aws.String(box.ID), Device: aws.String("/dev/sdh")}); err != nil {
		t.Fatal(err)
	}
	// IMDSv2 only, with a hop limit for containers: the new box must serve
	// its metadata the same way.
	if _, err := api.ModifyInstanceMetadataOptions(ctx, &ec2.ModifyInstanceMetadataOptionsInput{InstanceId: aws.String(box.ID),
		HttpTokens: ec2types.HttpTokensStateRequired, HttpPutResponseHopLimit: aws.Int32(2)}); err != nil {
		t.Fatal(err)
	}
	oldBox = e.instance(box.ID)
	before = volumeSpecs(t, api, box.ID)
	for dev, want := range map[string]string{"/dev/sda1": "gp3 30 GiB, 3000 IOPS, 250 MiB/s", "/dev/sdf": "io2 100 GiB, 4000 IOPS", "/dev/sdh": "encrypted true, key \"" + keyARN} {
		if !strings.Contains(before[dev], want) {
			t.Fatalf("the box was not set up as the test needs: %s is %s", dev, before[dev])
		}
	}

	return r, api, keyARN, oldBox, before
}

func TestRestoreBringsEveryVolumeBackAsItWas(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r, api, keyARN, oldBox, before := volumesBox(t)
	e := r.env
	// doctor sees the encrypted volume's key among aws.kms_key_arns.
	if doc := e.answer(e.slash(alice, incident, "doctor")); !strings.Contains(doc, "KMS keys of the volumes") || !strings.Contains(doc, "1 key(s), each in aws.kms_key_arns; the 1 key(s) there enabled") {
		t.Errorf("doctor on the KMS key:\n%s", doc)
	}
	e.server.Wait()

	e.slash(alice, incident, "backup now")
	r.backup = e.lastBackup(ops.StateCompleted)
	e.server.Wait()

	req := r.request(alice, "restore latest --rebuild")
	plan := r.waitText("plan", req, "Approval needed")
	for _, want := range []string{"/dev/sda1=`", "gp3, 30 GiB, 3000 IOPS, 250 MiB/s", "io2, 100 GiB, 4000 IOPS", "encrypted with " + keyARN} {
		if !strings.Contains(plan, want) {
			t.Errorf("the plan does not name %q:\n%s", want, plan)
		}
	}
	r.click(bob, "approve "+req, "vol.a")
	r.waitText("summary", "Restored `"+r.backup.ID+"`")
	r.server.Wait()
	got := r.restored()
	if len(got) != 1 {
		t.Fatalf("%d restored instances", len(got))
	}
	after := volumeSpecs(t, api, aws.ToString(got[0].InstanceId))
	for dev, want := range before {
		if after[dev] != want {
			t.Errorf("%s came back as %s; it was %s", dev, after[dev], want)
		}
	}
	nb := got[0]
	if m := nb.MetadataOptions; m == nil || m.HttpTokens != ec2types.HttpTokensStateRequired || aws.ToInt32(m.HttpPutResponseHopLimit) != 2 {
		t.Errorf("the new box's metadata options %+v, want tokens required and hop limit 2 as the old box had", m)
	}
	// moto shows no boot mode on the seeded box: its AMI's is what it boots.
	wantMode := oldBox.BootMode
	if wantMode == "" {
		imgs, err := api.DescribeImages(ctx, &ec2.DescribeImagesInput{ImageIds: []string{aws.ToString(oldBox.ImageId)}})
		if err != nil || len(imgs.Images) != 1 {
			t.Fatalf("the seeded box's AMI: %v", err)
		}
		wantMode = imgs.Images[0].BootMode
	}
	if nb.BootMode != wantMode || oldBox.EnaSupport != nil && aws.ToBool(nb.EnaSupport) != aws.ToBool(oldBox.EnaSupport) {
		t.Errorf("the new box boots %q with ENA %v; the old one %q (its AMI %q) with ENA %v", nb.BootMode, aws.ToBool(nb.EnaSupport), oldBox.BootMode, wantMode, aws.ToBool(oldBox.EnaSupport))
	}
	if len(after) != len(before) {
		t.Errorf("the new box has %d volumes, the old one had %d: %v", len(after), len(before), after)
	}
	doc, err := policyFor(*e.iamCfg)
	if err != nil {
		t.Fatal(err)
	}
	if f := e.judge(doc); len(f) > 0 {
		t.Errorf("policy.json refuses calls of the restore: %v", f)
	}
}

// Issue 15 with issue 14: an in-place restore gives each device a volume
// with what the backup recorded, not what the device holds now. The root
// is changed after the backup (gp2, no throughput); the restore brings it
// back as gp3 at 250 MiB/s, with the io2 and the encrypted volume as they
// were, on the same instance.
func TestRestoreInPlaceBringsEveryVolumeBackAsRecorded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r, api, _, _, before := volumesBox(t)
	e, box := r.env, r.inst.ServicesBox
	e.slash(alice, incident, "backup now")
	r.backup = e.lastBackup(ops.StateCompleted)
	e.server.Wait()
	if _, err := api.ModifyVolume(ctx, &ec2.ModifyVolumeInput{VolumeId: aws.String(box.Volumes[0]), VolumeType: ec2types.VolumeTypeGp2}); err != nil {
		t.Fatal(err)
	}
	req := r.request(alice, "restore latest")
	r.waitText("plan", req, "in place")
	r.click(bob, "approve "+req, "vol.inplace")
	r.waitText("summary", "Restored `"+r.backup.ID+"` in place")
	r.server.Wait()
	r.checkRestoredInPlace()
	after := volumeSpecs(t, api, box.ID)
	for dev, want := range before {
		if after[dev] != want {
			t.Errorf("%s came back as %s; it was %s when backed up", dev, after[dev], want)
		}
	}
}
