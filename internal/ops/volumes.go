package ops

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// VolumeSpec is one EBS volume of the Services box as a backup found it:
// what a restore needs to make it again the same. Without it AWS makes
// each volume of an image its default type, without the provisioned IOPS
// or throughput the box had.
type VolumeSpec struct {
	Device              string `json:"device"`
	VolumeID            string `json:"volume_id,omitempty"`
	Type                string `json:"type,omitempty"` // gp3, io2, …; "" unknown
	SizeGiB             int32  `json:"size_gib,omitempty"`
	IOPS                int32  `json:"iops,omitempty"`
	Throughput          int32  `json:"throughput,omitempty"` // MiB/s, gp3 only
	Encrypted           bool   `json:"encrypted,omitempty"`
	KMSKeyID            string `json:"kms_key_id,omitempty"`
	DeleteOnTermination bool   `json:"delete_on_termination,omitempty"`
	// From says where the values were read when they were not recorded
	// with the backup (an older record, a runbook-made set): the
	// snapshot, the volume as it is now. Unknown names what could not be
	// found; a restore leaves those to AWS's defaults and its plan says so.
	From    string   `json:"from,omitempty"`
	Unknown []string `json:"unknown,omitempty"`
}

// BootSpec is how the Services box boots and serves its metadata: what an
// image of its snapshots must state so that the new box boots (a
// UEFI-only or non-ENA box may not boot otherwise) and behaves the same.
type BootSpec struct {
	VirtualizationType string `json:"virtualization_type,omitempty"`
	// BootMode is the instance's (what its AMI specified: legacy-bios,
	// uefi or uefi-preferred), CurrentBootMode what it booted with, and
	// ImageBootMode the source AMI's as DescribeImages gave it.
	BootMode        string `json:"boot_mode,omitempty"`
	CurrentBootMode string `json:"current_boot_mode,omitempty"`
	ImageBootMode   string `json:"image_boot_mode,omitempty"`
	TPM             string `json:"tpm,omitempty"` // "v2.0" or ""
	ENA             *bool  `json:"ena,omitempty"` // nil: unknown
	SriovNetSupport string `json:"sriov_net_support,omitempty"`
	ImdsSupport     string `json:"imds_support,omitempty"` // the source AMI's ("v2.0")
	IMDS            *IMDS  `json:"imds,omitempty"`
	From            string `json:"from,omitempty"`
}

// IMDS is the instance metadata service as the box had it.
type IMDS struct {
	HTTPTokens   string `json:"http_tokens,omitempty"` // required | optional
	HopLimit     int32  `json:"hop_limit,omitempty"`
	Endpoint     string `json:"endpoint,omitempty"` // enabled | disabled
	Tags         string `json:"instance_metadata_tags,omitempty"`
	ProtocolIPv6 string `json:"protocol_ipv6,omitempty"`
}

// bootOf reads the boot and metadata settings of an instance.
func bootOf(in ec2types.Instance) *BootSpec {
	b := &BootSpec{
		VirtualizationType: string(in.VirtualizationType),
		BootMode:           string(in.BootMode),
		CurrentBootMode:    string(in.CurrentInstanceBootMode),
		TPM:                aws.ToString(in.TpmSupport),
		SriovNetSupport:    aws.ToString(in.SriovNetSupport),
	}
	if in.EnaSupport != nil {
		b.ENA = aws.Bool(*in.EnaSupport)
	}
	if m := in.MetadataOptions; m != nil {
		b.IMDS = &IMDS{HTTPTokens: string(m.HttpTokens), HopLimit: aws.ToInt32(m.HttpPutResponseHopLimit), Endpoint: string(m.HttpEndpoint),
			Tags: string(m.InstanceMetadataTags), ProtocolIPv6: string(m.HttpProtocolIpv6)}
	}
	return b
}

// imageBootFill adds what only the source AMI tells (its boot mode and
// IMDS support) to b, if the AMI can still be read; an AMI deregistered
// since launch leaves them to the instance's own attributes.
func imageBootFill(ctx context.Context, api any, imageID string, b *BootSpec) {
	d, ok := api.(interface {
		DescribeImages(context.Context, *ec2.DescribeImagesInput, ...func(*ec2.Options)) (*ec2.DescribeImagesOutput, error)
	})
	if !ok || imageID == "" || b == nil {
		return
	}
	out, err := d.DescribeImages(ctx, &ec2.DescribeImagesInput{ImageIds: []string{imageID}})
	if err != nil || len(out.Images) == 0 {
		return
	}
	img := out.Images[0]
	b.ImageBootMode, b.ImdsSupport = string(img.BootMode), string(img.ImdsSupport)
}

// BoxVolumes reads every EBS volume attached to in: type, size, IOPS,
// throughput, encryption and key (DescribeVolumes), DeleteOnTermination
// (the instance's mapping). The result is in device order, with each
// volume's own tags (for copying them onto its snapshot).
func BoxVolumes(ctx context.Context, api EC2, in ec2types.Instance) ([]VolumeSpec, map[string][]ec2types.Tag, error) {
	byID := map[string]ec2types.InstanceBlockDeviceMapping{}
	var ids []string
	for _, m := range in.BlockDeviceMappings {
		if m.Ebs != nil && m.Ebs.VolumeId != nil {
			byID[aws.ToString(m.Ebs.VolumeId)] = m
			ids = append(ids, aws.ToString(m.Ebs.VolumeId))
		}
	}
	if len(ids) == 0 {
		return nil, nil, nil
	}
	out, err := api.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: ids})
	if err != nil {
		return nil, nil, fmt.Errorf("read the volumes of %s: %w", aws.ToString(in.InstanceId), translate(err))
	}
	var specs []VolumeSpec
	tags := map[string][]ec2types.Tag{}
	for _, v := range out.Volumes {
		id := aws.ToString(v.VolumeId)
		m := byID[id]
		s := specOfVolume(v)
		s.Device, s.DeleteOnTermination = aws.ToString(m.DeviceName), aws.ToBool(m.Ebs.DeleteOnTermination)
		specs = append(specs, s)
		tags[id] = v.Tags
	}
	slices.SortFunc(specs, func(a, b VolumeSpec) int { return strings.Compare(a.Device, b.Device) })
	return specs, tags, nil
}

func specOfVolume(v ec2types.Volume) VolumeSpec {
	return VolumeSpec{
		VolumeID: aws.ToString(v.VolumeId), Type: string(v.VolumeType), SizeGiB: aws.ToInt32(v.Size),
		IOPS: aws.ToInt32(v.Iops), Throughput: aws.ToInt32(v.Throughput),
		Encrypted: aws.ToBool(v.Encrypted), KMSKeyID: aws.ToString(v.KmsKeyId),
	}
}

// specFromSnapshot is the fallback for a set whose record has no volume
// attributes (made before they were recorded, or by the runbook): the
// snapshot tells size, encryption and key; the volume it was taken of,
// if it still exists, its type, IOPS and throughput as they are now.
func specFromSnapshot(ctx context.Context, api EC2, device string, snap ec2types.Snapshot) VolumeSpec {
	s := VolumeSpec{Device: device, VolumeID: aws.ToString(snap.VolumeId), SizeGiB: aws.ToInt32(snap.VolumeSize),
		Encrypted: aws.ToBool(snap.Encrypted), KMSKeyID: aws.ToString(snap.KmsKeyId), From: "snapshot " + aws.ToString(snap.SnapshotId)}
	out, err := api.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{s.VolumeID}})
	if err == nil && len(out.Volumes) == 1 {
		v := specOfVolume(out.Volumes[0])
		s.Type, s.IOPS, s.Throughput = v.Type, v.IOPS, v.Throughput
		s.From += ", volume " + s.VolumeID + " as it is now"
		return s
	}
	s.Unknown = []string{"type", "IOPS", "throughput"}
	return s
}

// Describe is the spec as one plan line: "gp3, 30 GiB, 3000 IOPS,
// 250 MiB/s, encrypted (key …)".
func (v VolumeSpec) Describe() string {
	var p []string
	if v.Type != "" {
		p = append(p, v.Type)
	}
	if v.SizeGiB > 0 {
		p = append(p, fmt.Sprintf("%d GiB", v.SizeGiB))
	}
	if v.IOPS > 0 && hasIOPS(v.Type) {
		p = append(p, fmt.Sprintf("%d IOPS", v.IOPS))
	}
	if v.Throughput > 0 && v.Type == string(ec2types.VolumeTypeGp3) {
		p = append(p, fmt.Sprintf("%d MiB/s", v.Throughput))
	}
	switch {
	case v.Encrypted && v.KMSKeyID != "":
		p = append(p, "encrypted with "+v.KMSKeyID)
	case v.Encrypted:
		p = append(p, "encrypted")
	default:
		p = append(p, "not encrypted")
	}
	if len(v.Unknown) > 0 {
		p = append(p, "unknown: "+strings.Join(v.Unknown, ", ")+" (AWS's defaults)")
	}
	if v.From != "" {
		p = append(p, "read from "+v.From)
	}
	return strings.Join(p, ", ")
}

// Describe is the boot settings as one plan line.
func (b *BootSpec) Describe(arch string) string {
	if b == nil {
		return "boot settings unknown (the record predates them): " + arch + ", ENA on, other settings AWS's defaults"
	}
	p := []string{cmp.Or(arch, "x86_64"), cmp.Or(b.VirtualizationType, "hvm")}
	if m := b.imageBootMode(); m != "" {
		p = append(p, "boot mode "+m)
	} else {
		p = append(p, "boot mode unknown (AWS's default)")
	}
	if b.TPM != "" {
		p = append(p, "TPM "+b.TPM)
	}
	switch {
	case b.ENA == nil:
		p = append(p, "ENA unknown (registered on)")
	case *b.ENA:
		p = append(p, "ENA on")
	default:
		p = append(p, "ENA off")
	}
	if b.SriovNetSupport == "simple" {
		p = append(p, "SR-IOV simple")
	}
	if m := b.IMDS; m != nil {
		s := "IMDS tokens " + cmp.Or(m.HTTPTokens, "optional")
		if m.HopLimit > 0 {
			s += fmt.Sprintf(", hop limit %d", m.HopLimit)
		}
		if m.Endpoint != "" {
			s += ", endpoint " + m.Endpoint
		}
		p = append(p, s)
	} else {
		p = append(p, "IMDS settings unknown (AWS's defaults)")
	}
	if b.From != "" {
		p = append(p, "read from "+b.From)
	}
	return strings.Join(p, ", ")
}

// imageBootMode is the boot mode to register: what the box booted with
// (so an image of a legacy-BIOS box does not boot UEFI), else what its
// AMI said.
func (b *BootSpec) imageBootMode() string {
	if b == nil {
		return ""
	}
	for _, m := range []string{b.CurrentBootMode, b.BootMode, b.ImageBootMode} {
		switch m {
		case "legacy-bios", "uefi", "uefi-preferred":
			return m
		}
	}
	return ""
}

func hasIOPS(t string) bool {
	switch ec2types.VolumeType(t) {
	case ec2types.VolumeTypeGp3, ec2types.VolumeTypeIo1, ec2types.VolumeTypeIo2:
		return true
	}
	return false
}

// ebsFor is a volume's performance as an EBS mapping states it: type,
// IOPS where the type has provisioned IOPS, throughput for gp3 only (AWS
// refuses the others), and the size when it is known.
func ebsFor(v VolumeSpec) ec2types.EbsBlockDevice {
	var e ec2types.EbsBlockDevice
	if v.Type != "" {
		e.VolumeType = ec2types.VolumeType(v.Type)
	}
	if v.SizeGiB > 0 {
		e.VolumeSize = aws.Int32(v.SizeGiB)
	}
	if v.IOPS > 0 && hasIOPS(v.Type) {
		e.Iops = aws.Int32(v.IOPS)
	}
	if v.Throughput > 0 && v.Type == string(ec2types.VolumeTypeGp3) {
		e.Throughput = aws.Int32(v.Throughput)
	}
	return e
}

// imageMappings are the block-device mappings an image of the plan's
// snapshots is registered with. RegisterImage takes each volume's type,
// IOPS and throughput; it refuses Encrypted and KmsKeyId on a mapping
// with a snapshot (the volume is encrypted as its snapshot is), so the
// key is stated at launch (launchMappings).
func imageMappings(snaps []RestoreSnapshot, deleteOnTermination bool) []ec2types.BlockDeviceMapping {
	var bdm []ec2types.BlockDeviceMapping
	for _, s := range snaps {
		e := ebsFor(s.Volume)
		e.SnapshotId, e.DeleteOnTermination = aws.String(s.ID), aws.Bool(deleteOnTermination)
		if s.SizeGiB > 0 && aws.ToInt32(e.VolumeSize) < s.SizeGiB {
			e.VolumeSize = aws.Int32(s.SizeGiB) // never smaller than its snapshot
		}
		bdm = append(bdm, ec2types.BlockDeviceMapping{DeviceName: aws.String(s.Device), Ebs: &e})
	}
	return bdm
}

// launchMappings are RunInstances' overrides of the image's mappings: the
// KMS key of each encrypted volume (KmsKeyId is accepted only there), so
// that the new volume is encrypted under the key the old one had rather
// than whatever the account's default is.
func launchMappings(snaps []RestoreSnapshot) []ec2types.BlockDeviceMapping {
	var bdm []ec2types.BlockDeviceMapping
	for _, s := range snaps {
		if s.Volume.Encrypted && s.Volume.KMSKeyID != "" {
			bdm = append(bdm, ec2types.BlockDeviceMapping{DeviceName: aws.String(s.Device),
				Ebs: &ec2types.EbsBlockDevice{Encrypted: aws.Bool(true), KmsKeyId: aws.String(s.Volume.KMSKeyID)}})
		}
	}
	return bdm
}

// imageInput is the RegisterImage call for a restore or a drill of plan:
// every volume's settings and the box's boot settings, from the record
// (not hard-coded). Unknown ENA support is registered on, as every
// current instance type needs it (the plan says it was not known).
func imageInput(plan RestorePlan, name, description string, deleteOnTermination bool, tags []ec2types.Tag) *ec2.RegisterImageInput {
	arch := ec2types.ArchitectureValues(plan.Shape.Architecture)
	if arch == "" {
		arch = ec2types.ArchitectureValuesX8664
	}
	b := plan.Shape.Boot
	in := &ec2.RegisterImageInput{
		Name:                aws.String(name),
		Description:         aws.String(description),
		Architecture:        arch,
		RootDeviceName:      aws.String(plan.Shape.RootDevice),
		VirtualizationType:  aws.String("hvm"),
		EnaSupport:          aws.Bool(true),
		BlockDeviceMappings: imageMappings(plan.Snapshots, deleteOnTermination),
		TagSpecifications:   []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeImage, Tags: tags}},
	}
	if b == nil {
		return in
	}
	if b.VirtualizationType != "" {
		in.VirtualizationType = aws.String(b.VirtualizationType)
	}
	if b.ENA != nil {
		in.EnaSupport = aws.Bool(*b.ENA)
	}
	if m := b.imageBootMode(); m != "" {
		in.BootMode = ec2types.BootModeValues(m)
	}
	if b.TPM == string(ec2types.TpmSupportValuesV20) {
		// NitroTPM needs UEFI: a box with a TPM booted UEFI.
		in.TpmSupport, in.BootMode = ec2types.TpmSupportValuesV20, ec2types.BootModeValuesUefi
	}
	if b.SriovNetSupport == "simple" {
		in.SriovNetSupport = aws.String("simple")
	}
	if b.ImdsSupport == string(ec2types.ImdsSupportValuesV20) || (b.IMDS != nil && b.IMDS.HTTPTokens == string(ec2types.HttpTokensStateRequired)) {
		in.ImdsSupport = ec2types.ImdsSupportValuesV20
	}
	return in
}

// metadataOptions are RunInstances' IMDS settings from the record; nil
// when unknown (AWS's defaults, or the image's ImdsSupport).
func metadataOptions(b *BootSpec) *ec2types.InstanceMetadataOptionsRequest {
	if b == nil || b.IMDS == nil {
		return nil
	}
	m := b.IMDS
	o := &ec2types.InstanceMetadataOptionsRequest{}
	if m.HTTPTokens != "" {
		o.HttpTokens = ec2types.HttpTokensState(m.HTTPTokens)
	}
	if m.HopLimit > 0 {
		o.HttpPutResponseHopLimit = aws.Int32(m.HopLimit)
	}
	if m.Endpoint != "" {
		o.HttpEndpoint = ec2types.InstanceMetadataEndpointState(m.Endpoint)
	}
	if m.Tags != "" {
		o.InstanceMetadataTags = ec2types.InstanceMetadataTagsState(m.Tags)
	}
	if m.ProtocolIPv6 != "" {
		o.HttpProtocolIpv6 = ec2types.InstanceMetadataProtocolState(m.ProtocolIPv6)
	}
	return o
}

// CreateVolumeInput is the CreateVolume call that makes v again from
// snapshotID in az: type, size, IOPS, throughput, and the same KMS key
// (CreateVolume, unlike RegisterImage, takes Encrypted and KmsKeyId with
// a snapshot). An in-place restore uses it.
func (v VolumeSpec) CreateVolumeInput(az, snapshotID string, tags []ec2types.Tag) *ec2.CreateVolumeInput {
	e := ebsFor(v)
	in := &ec2.CreateVolumeInput{
		AvailabilityZone: aws.String(az),
		SnapshotId:       aws.String(snapshotID),
		VolumeType:       e.VolumeType,
		Size:             e.VolumeSize,
		Iops:             e.Iops,
		Throughput:       e.Throughput,
	}
	if v.Encrypted {
		in.Encrypted = aws.Bool(true)
		if v.KMSKeyID != "" {
			in.KmsKeyId = aws.String(v.KMSKeyID)
		}
	}
	if len(tags) > 0 {
		in.TagSpecifications = []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeVolume, Tags: tags}}
	}
	return in
}

// VolumeSpecOf returns the recorded spec of device in rec, if any.
func VolumeSpecOf(rec *Backup, device string) (VolumeSpec, bool) {
	if rec == nil {
		return VolumeSpec{}, false
	}
	for _, v := range rec.Shape.Volumes {
		if v.Device == device {
			return v, true
		}
	}
	return VolumeSpec{}, false
}

// fillBoot gives a plan whose shape has no boot settings (an older
// record) the best that can be read: the live box's when it is the
// instance the backup was taken of, else the source AMI's.
func fillBoot(ctx context.Context, api RestoreEC2, plan *RestorePlan, box *ec2types.Instance) {
	if plan.Shape.Boot != nil {
		return
	}
	if box != nil && aws.ToString(box.InstanceId) == plan.Shape.InstanceID {
		b := bootOf(*box)
		b.From = "the Services box " + plan.Shape.InstanceID + " as it is now"
		plan.Shape.Boot = b
		return
	}
	if plan.Shape.ImageID == "" {
		return
	}
	out, err := api.DescribeImages(ctx, &ec2.DescribeImagesInput{ImageIds: []string{plan.Shape.ImageID}})
	if err = translate(err); err != nil || len(out.Images) == 0 {
		if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrMalformedID) {
			plan.BootNote = "the source AMI " + plan.Shape.ImageID + " could not be read: " + failure(err)
		}
		return
	}
	img := out.Images[0]
	b := &BootSpec{VirtualizationType: string(img.VirtualizationType), ImageBootMode: string(img.BootMode), TPM: string(img.TpmSupport),
		SriovNetSupport: aws.ToString(img.SriovNetSupport), ImdsSupport: string(img.ImdsSupport), From: "the source AMI " + plan.Shape.ImageID}
	if img.EnaSupport != nil {
		b.ENA = aws.Bool(*img.EnaSupport)
	}
	plan.Shape.Boot = b
}

// Copied volume tags: a snapshot holds at most 50 tags, and the bot puts
// its own on each (botSnapshotTags: those of EBSBackup.tags plus the
// volume and device).
const (
	maxTagsPerResource = 50
	botSnapshotTags    = 10
)

// copyableTags are the volume tags a snapshot may take: AWS's own (aws:)
// cannot be set, and the bot's keys and Name are its own on a snapshot.
// At most budget are kept, by key order; the rest are returned as left.
func copyableTags(tags []ec2types.Tag, budget int) (kept []ec2types.Tag, left []string) {
	var all []ec2types.Tag
	for _, t := range tags {
		k := aws.ToString(t.Key)
		if strings.HasPrefix(k, "aws:") || strings.HasPrefix(k, "circlebot:") || k == "Name" {
			continue
		}
		all = append(all, t)
	}
	slices.SortFunc(all, func(a, b ec2types.Tag) int { return strings.Compare(aws.ToString(a.Key), aws.ToString(b.Key)) })
	if len(all) <= budget {
		return all, nil
	}
	for _, t := range all[budget:] {
		left = append(left, aws.ToString(t.Key))
	}
	return all[:budget], left
}

// tagsFit reports whether every volume's tags fit on its snapshot next to
// the bot's: then CreateSnapshots copies them itself (CopyTagsFromSource).
// CopyTagsFromSource copies every tag but AWS's own, so all are counted.
func tagsFit(volTags map[string][]ec2types.Tag) bool {
	for _, tags := range volTags {
		n := 0
		for _, t := range tags {
			if !strings.HasPrefix(aws.ToString(t.Key), "aws:") {
				n++
			}
		}
		if n+botSnapshotTags > maxTagsPerResource {
			return false
		}
	}
	return true
}
