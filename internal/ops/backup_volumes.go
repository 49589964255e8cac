package ops

import (
	"context"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// recordVolumes puts each volume's settings and the box's boot settings
// into b's shape and returns each volume's tags. A failure to read them
// does not stop the backup (the snapshots are what matters): the record
// says so, and a restore then reads what it can from the snapshots.
func (e *EBSBackup) recordVolumes(ctx context.Context, b *Backup, inst ec2types.Instance, p Progress) map[string][]ec2types.Tag {
	imageBootFill(ctx, e.EC2, b.Shape.ImageID, b.Shape.Boot)
	specs, tags, err := BoxVolumes(ctx, e.EC2, inst)
	if err != nil {
		note := "volume settings not recorded (" + failure(err) + "); a restore reads them from the snapshots"
		p.Log(note)
		b.Notes = append(b.Notes, note)
		return nil
	}
	b.Shape.Volumes = specs
	return tags
}

// trimmed notes a volume whose tags did not all fit on its snapshot.
func (e *EBSBackup) trimmed(b *Backup, volume, device string, copied int, left []string, p Progress) {
	if len(left) == 0 {
		return
	}
	note := fmt.Sprintf("snapshot of %s (%s): %d of its %d tags copied, the most that fit next to the bot's %d (AWS allows %d per snapshot); not copied: %s",
		volume, device, copied, copied+len(left), botSnapshotTags, maxTagsPerResource, strings.Join(left, ", "))
	p.Log(note)
	b.Notes = append(b.Notes, note)
}

// copyTags copies each volume's own tags onto its snapshot, trimmed to
// what fits, when CreateSnapshots could not copy them (CopyTagsFromSource
// fails the whole set past 50 tags on one snapshot). A failure is noted,
// not fatal: the tags are the volume's, not the restore point's.
func (e *EBSBackup) copyTags(ctx context.Context, b *Backup, volTags map[string][]ec2types.Tag, p Progress) {
	for _, s := range b.Snapshots {
		copied, left := copyableTags(volTags[s.VolumeID], maxTagsPerResource-botSnapshotTags)
		if len(copied) > 0 {
			_, err := e.EC2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{s.ID}, Tags: copied})
			if err != nil {
				note := fmt.Sprintf("could not copy the tags of %s onto %s (%s)", s.VolumeID, s.ID, failure(translate(err)))
				p.Log(note)
				b.Notes = append(b.Notes, note)
				continue
			}
		}
		e.trimmed(b, s.VolumeID, s.Device, len(copied), left, p)
	}
}

// volumeLines are the plan's lines for each device: the snapshot it is
// made from and the volume it becomes.
func volumeLines(snaps []RestoreSnapshot) []string {
	var out []string
	for _, s := range snaps {
		out = append(out, fmt.Sprintf("%s=`%s`: %s", s.Device, s.ID, s.Volume.Describe()))
	}
	return out
}

// VolumeLines and BootLine are what the plan shows of the volumes and
// the boot settings the new box gets.
func (p RestorePlan) VolumeLines() []string { return volumeLines(p.Snapshots) }

func (p RestorePlan) BootLine() string {
	line := p.Shape.Boot.Describe(p.Shape.Architecture)
	if p.BootNote != "" {
		line += " (" + p.BootNote + ")"
	}
	return line
}

// volumesFact and bootFact bind the approval to the volumes and boot
// settings the plan will create.
func volumesFact(snaps []RestoreSnapshot) string {
	var out []string
	for _, s := range snaps {
		v := s.Volume
		out = append(out, fmt.Sprintf("%s=%s/%d/%d/%d/%t/%s", s.Device, v.Type, v.SizeGiB, v.IOPS, v.Throughput, v.Encrypted, v.KMSKeyID))
	}
	return strings.Join(out, ",")
}

func bootFact(b *BootSpec) string {
	if b == nil {
		return "unknown"
	}
	ena := "?"
	if b.ENA != nil {
		ena = fmt.Sprint(*b.ENA)
	}
	imds := ""
	if m := b.IMDS; m != nil {
		imds = fmt.Sprintf("%s/%d/%s/%s/%s", m.HTTPTokens, m.HopLimit, m.Endpoint, m.Tags, m.ProtocolIPv6)
	}
	return strings.Join([]string{b.VirtualizationType, b.imageBootMode(), b.TPM, ena, b.SriovNetSupport, b.ImdsSupport, imds}, ";")
}
