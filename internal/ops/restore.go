package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/circlebot/circlebot/internal/journal"
)

// RestoreEC2 is the part of EC2 a restore from snapshots uses.
type RestoreEC2 interface {
	EC2
	DescribeImages(context.Context, *ec2.DescribeImagesInput, ...func(*ec2.Options)) (*ec2.DescribeImagesOutput, error)
	RegisterImage(context.Context, *ec2.RegisterImageInput, ...func(*ec2.Options)) (*ec2.RegisterImageOutput, error)
	RunInstances(context.Context, *ec2.RunInstancesInput, ...func(*ec2.Options)) (*ec2.RunInstancesOutput, error)
	StopInstances(context.Context, *ec2.StopInstancesInput, ...func(*ec2.Options)) (*ec2.StopInstancesOutput, error)
	TerminateInstances(context.Context, *ec2.TerminateInstancesInput, ...func(*ec2.Options)) (*ec2.TerminateInstancesOutput, error)
	ModifyInstanceAttribute(context.Context, *ec2.ModifyInstanceAttributeInput, ...func(*ec2.Options)) (*ec2.ModifyInstanceAttributeOutput, error)
	CreateTags(context.Context, *ec2.CreateTagsInput, ...func(*ec2.Options)) (*ec2.CreateTagsOutput, error)
	DescribeNetworkInterfaces(context.Context, *ec2.DescribeNetworkInterfacesInput, ...func(*ec2.Options)) (*ec2.DescribeNetworkInterfacesOutput, error)
	AssignPrivateIpAddresses(context.Context, *ec2.AssignPrivateIpAddressesInput, ...func(*ec2.Options)) (*ec2.AssignPrivateIpAddressesOutput, error)
	// An in-place restore's (restore_inplace.go).
	StartInstances(context.Context, *ec2.StartInstancesInput, ...func(*ec2.Options)) (*ec2.StartInstancesOutput, error)
	CreateVolume(context.Context, *ec2.CreateVolumeInput, ...func(*ec2.Options)) (*ec2.CreateVolumeOutput, error)
	AttachVolume(context.Context, *ec2.AttachVolumeInput, ...func(*ec2.Options)) (*ec2.AttachVolumeOutput, error)
	DetachVolume(context.Context, *ec2.DetachVolumeInput, ...func(*ec2.Options)) (*ec2.DetachVolumeOutput, error)
	AttachNetworkInterface(context.Context, *ec2.AttachNetworkInterfaceInput, ...func(*ec2.Options)) (*ec2.AttachNetworkInterfaceOutput, error)
}

// Tags a restore leaves on what it touches, so that a person (or the bot
// after a crash) can find them.
const (
	TagRestoreOp = "circlebot:restore-op" // on the new instance and the image
	TagKeptBy    = "circlebot:kept-by"    // on the old instance's volumes
	TagKeptFrom  = "circlebot:kept-from"
)

// RestorePlan is everything a restore from snapshots will use, derived
// from live AWS state and the bot's records. Its Facts are what the
// approval is bound to.
type RestorePlan struct {
	Source     string            `json:"source"` // bk-… or the first snapshot of a hand-made set
	SourceTime time.Time         `json:"source_time"`
	MadeByBot  bool              `json:"made_by_bot"`
	Snapshots  []RestoreSnapshot `json:"snapshots"`
	Shape      Shape             `json:"shape"` // what the new instance looks like
	ShapeFrom  string            `json:"shape_from"`
	Old        *OldBox           `json:"old,omitempty"`
	Fallbacks  []string          `json:"fallbacks,omitempty"`
	AppStart   string            `json:"app_start,omitempty"`
	Region     string            `json:"region"`
	NameTag    string            `json:"name_tag"`
	// BootNote says why the boot settings could not be read, if so.
	BootNote string `json:"boot_note,omitempty"`
	// Method is MethodInPlace or MethodRebuild ("" in plans journaled
	// before in-place restores: rebuild), and Why says why it was chosen.
	Method  string       `json:"method,omitempty"`
	Why     string       `json:"why,omitempty"`
	InPlace *InPlacePlan `json:"in_place,omitempty"`
	// RTO is the predicted time to the app starting (not a fact: history
	// changes it, not what the restore does).
	RTO RTO `json:"rto,omitzero"`
	// Completing is set when the restore point's snapshots are still
	// pending (restore_pending.go); SourceETA is the time they still need
	// as estimated from their progress (0: unknown), which the engine adds
	// to the predicted RTO; StopLead is how long a stop is expected to
	// take (0: DefaultStopLead). None is a fact: they change by the
	// minute, not what the restore does.
	Completing *Completing   `json:"completing,omitempty"`
	SourceETA  time.Duration `json:"source_eta,omitempty"`
	StopLead   time.Duration `json:"stop_lead,omitempty"`
	// Newer names a newer restore point still completing, when `restore
	// latest` picked an older completed one ("" if none).
	Newer string `json:"newer,omitempty"`
}

// IsInPlace says whether the plan restores onto the same instance.
func (p RestorePlan) IsInPlace() bool {
	return p.Method == MethodInPlace && p.InPlace != nil && p.Old != nil
}

type RestoreSnapshot struct {
	ID      string `json:"id"`
	Device  string `json:"device"`
	SizeGiB int32  `json:"size_gib"`
	// Volume is what the device's new volume will be: recorded with the
	// backup, or read from the snapshot and the old volume (VolumeSpec.From).
	Volume VolumeSpec `json:"volume"`
}

// OldBox is the Services box a restore replaces.
type OldBox struct {
	InstanceID string      `json:"instance_id"`
	State      string      `json:"state"`
	Volumes    []VolumeRef `json:"volumes"`
	// Interfaces are its network interfaces, the primary (device index
	// 0) first.
	Interfaces []InterfaceRef `json:"interfaces,omitempty"`
}

// InterfaceRef is one network interface of the old box. One that AWS
// keeps when the box is terminated (DeleteOnTermination false: made on
// its own and attached, as a failover's `eni` is) still holds its
// addresses afterwards: the primary one is moved to the new box as its
// primary interface, the others are attached to it at their device
// index.
type InterfaceRef struct {
	ID                  string   `json:"id"`
	DeviceIndex         int32    `json:"device_index"`
	IPs                 []string `json:"ips"` // its own primary IP first
	DeleteOnTermination bool     `json:"delete_on_termination"`
}

// KeptPrimary is the old box's primary interface when AWS keeps it on
// termination: the new box is launched on it.
func (o *OldBox) KeptPrimary() *InterfaceRef {
	if o == nil {
		return nil
	}
	for i := range o.Interfaces {
		if n := &o.Interfaces[i]; n.DeviceIndex == 0 && !n.DeleteOnTermination {
			return n
		}
	}
	return nil
}

// Others are the old box's interfaces other than the primary.
func (o *OldBox) Others() []InterfaceRef {
	if o == nil {
		return nil
	}
	var out []InterfaceRef
	for _, n := range o.Interfaces {
		if n.DeviceIndex != 0 {
			out = append(out, n)
		}
	}
	return out
}

func interfacesOf(in ec2types.Instance) []InterfaceRef {
	var out []InterfaceRef
	for _, n := range in.NetworkInterfaces {
		ref := InterfaceRef{ID: aws.ToString(n.NetworkInterfaceId)}
		for _, a := range n.PrivateIpAddresses {
			if aws.ToBool(a.Primary) {
				ref.IPs = append([]string{aws.ToString(a.PrivateIpAddress)}, ref.IPs...)
			} else {
				ref.IPs = append(ref.IPs, aws.ToString(a.PrivateIpAddress))
			}
		}
		if n.Attachment != nil {
			ref.DeviceIndex = aws.ToInt32(n.Attachment.DeviceIndex)
			ref.DeleteOnTermination = aws.ToBool(n.Attachment.DeleteOnTermination)
		}
		out = append(out, ref)
	}
	slices.SortFunc(out, func(a, b InterfaceRef) int { return int(a.DeviceIndex - b.DeviceIndex) })
	return out
}

type VolumeRef struct {
	ID                  string `json:"id"`
	Device              string `json:"device"`
	DeleteOnTermination bool   `json:"delete_on_termination"`
}

// Facts are the plan's bound values: a newer restore point, a changed
// instance state or a different IP gives a different hash.
func (p RestorePlan) Facts() map[string]string {
	var snaps, sgs []string
	for _, s := range p.Snapshots {
		snaps = append(snaps, s.Device+"="+s.ID)
	}
	sgs = append(sgs, p.Shape.SecurityGroups...)
	slices.Sort(sgs)
	f := map[string]string{
		"region":          p.Region,
		"source":          p.Source,
		"snapshots":       strings.Join(snaps, ","),
		"root_device":     p.Shape.RootDevice,
		"instance_type":   strings.Join(append([]string{p.Shape.Type}, p.Fallbacks...), ","),
		"subnet":          p.Shape.SubnetID,
		"security_groups": strings.Join(sgs, ","),
		"private_ip":      p.Shape.PrivateIP,
		"secondary_ips":   strings.Join(p.Shape.SecondaryIPs, ","),
		"iam_profile":     p.Shape.IAMProfile,
		"key_name":        p.Shape.KeyName,
		"app_start":       p.AppStart,
		"old_instance":    "none",
		"volumes":         volumesFact(p.Snapshots),
		"boot":            bootFact(p.Shape.Boot),
	}
	if p.Old != nil {
		var vols []string
		for _, v := range p.Old.Volumes {
			vols = append(vols, v.Device+"="+v.ID)
		}
		f["old_instance"] = p.Old.InstanceID + " (" + p.Old.State + ")"
		f["old_volumes_kept"] = strings.Join(vols, ",")
		if len(p.Old.Interfaces) > 0 {
			var nics []string
			for _, n := range p.Old.Interfaces {
				nics = append(nics, fmt.Sprintf("%d=%s(%s;delete_on_termination=%t)", n.DeviceIndex, n.ID, strings.Join(n.IPs, "+"), n.DeleteOnTermination))
			}
			f["old_interfaces"] = strings.Join(nics, ",")
		}
	}
	if p.IsInPlace() {
		var vols []string
		for _, v := range p.InPlace.Volumes {
			vols = append(vols, fmt.Sprintf("%s=%s:%dGiB:%s:%d:%d:%t", v.Device, v.SnapshotID, v.SizeGiB, v.Type, v.IOPS, v.Throughput, v.Encrypted))
		}
		f["method"] = MethodInPlace
		f["az"] = p.InPlace.AZ
		f["new_volumes"] = strings.Join(vols, ",")
	}
	return f
}

// Encode and DecodeRestorePlan carry the approved plan into the journal.
func (p RestorePlan) Encode() string {
	b, _ := json.Marshal(p)
	return string(b)
}

func DecodeRestorePlan(s string) (RestorePlan, error) {
	var p RestorePlan
	err := json.Unmarshal([]byte(s), &p)
	return p, err
}

// SnapshotRestore plans and runs a restore of the Services box from an EBS
// snapshot set: image -> new instance with the recorded shape and private
// IP. The old instance's volumes are kept.
type SnapshotRestore struct {
	EC2       RestoreEC2
	SSM       SSM // nil: the app start step is skipped
	Records   Records
	NameTag   string
	Region    string
	Fallbacks []string
	AppStart  string
	// Types and Quotas let the pre-flight check the launch's instance
	// types (architecture, vCPU quota); nil: not checked.
	Types  InstanceTypes
	Quotas Quotas
	// Poll is the wait between state polls (default 2 s); the timeouts
	// bound each wait.
	Poll          time.Duration
	ImageTimeout  time.Duration
	StopTimeout   time.Duration
	HealthTimeout time.Duration
	// ReadBack bounds each read-back after a change (default 2 min):
	// EC2's reads lag its writes.
	ReadBack time.Duration
	// StopLead is the stop time assumed until this account's restores
	// have measured their own (0: DefaultStopLead); a restore from a
	// source still completing stops the box once the snapshots need no
	// more than this (restore_pending.go).
	StopLead time.Duration
}

// Plan resolves snapshotID ("" = the newest completed EBS restore point)
// into a full plan, or refuses with a reason. It restores in place when
// the Services box's instance is there to keep, unless rebuild is set
// (`restore … --rebuild`), and says why it chose what it chose.
func (r *SnapshotRestore) Plan(ctx context.Context, snapshotID string, rebuild bool) (RestorePlan, error) {
	plan, box, err := r.plan(ctx, snapshotID, rebuild)
	if err != nil {
		return plan, err
	}
	plan.Method = MethodRebuild
	why := canInPlace(box)
	switch {
	case rebuild:
		plan.Why = "`--rebuild` asked for a new instance"
	case why != "":
		plan.Why = why
	default:
		if err := r.planInPlace(ctx, &plan, *box); err != nil {
			return RestorePlan{}, err
		}
		plan.Why = fmt.Sprintf("the Services box `%s` is %s in %s: its volumes are swapped for restored ones, and its instance, interfaces, IPs, security groups, profile and key stay (`--rebuild` builds a new instance instead)", plan.Old.InstanceID, plan.Old.State, plan.InPlace.AZ)
	}
	return plan, nil
}

// noCompletedPoint is why `restore latest` has nothing to restore: at
// 3 a.m. right after a `backup now`, the one restore point may still be
// completing, and `restore bk-…` can follow it (pts: newest first).
func noCompletedPoint(pts []Point) string {
	for _, p := range pts {
		if p.Method != MethodEBS || p.State != StateRunning || p.PrunedBy != "" {
			continue
		}
		if p.MadeByBot {
			return fmt.Sprintf("there is no completed EBS restore point yet, but `%s` (begun %s UTC) is still completing (%.0f%%): `restore %s` restores from it, keeping the box serving until it is nearly complete.",
				p.ID, p.Started.UTC().Format("2006-01-02 15:04"), p.Pct, p.ID)
		}
		// Not the bot's: its set is not known, so it cannot be followed.
		return fmt.Sprintf("there is no completed EBS restore point yet; `%s` (begun %s UTC) is still completing (%.0f%%): `restore latest` takes it once it has completed (`backup list` shows its progress).",
			p.ID, p.Started.UTC().Format("2006-01-02 15:04"), p.Pct)
	}
	return "there is no completed EBS restore point to restore from (`backup list` shows them)."
}

// plan is what both methods need: the restore point, its snapshots and
// devices, the launch shape, the old box (nil: none).
func (r *SnapshotRestore) plan(ctx context.Context, snapshotID string, rebuild bool) (RestorePlan, *ec2types.Instance, error) {
	recs, err := r.Records.Backups(ctx)
	if err != nil {
		return RestorePlan{}, nil, err
	}
	var members []ec2types.Snapshot
	var rec *Backup
	named := snapshotID != ""
	newer := ""
	if snapshotID == "" {
		pts, err := RestorePoints(ctx, r.EC2, recs)
		if err != nil {
			return RestorePlan{}, nil, err
		}
		var newest *Point
		for i := range pts {
			if pts[i].Method == MethodEBS && pts[i].Usable() {
				newest = &pts[i]
				break
			}
		}
		if newest == nil {
			return RestorePlan{}, nil, refusef("%s", noCompletedPoint(pts))
		}
		for _, p := range pts {
			// A newer one still completing: `latest` does not wait for
			// it, and the plan says how to name it. (AWS keeps start
			// times to the second, the bot's records finer: one begun in
			// the same second is not older.)
			if p.Method == MethodEBS && p.MadeByBot && p.State == StateRunning && p.PrunedBy == "" && p.ID != newest.ID && !p.Started.Before(newest.Started.Truncate(time.Second)) {
				newer = fmt.Sprintf("a newer restore point, `%s` (%s UTC), is still completing (%.0f%%): `restore %s` restores from it instead, with less data lost; the box keeps serving until it is nearly complete", p.ID, p.Started.UTC().Format("2006-01-02 15:04"), p.Pct, p.ID)
				break
			}
		}
		snapshotID = newest.Snapshots[0]
	}
	if strings.HasPrefix(snapshotID, "bk-") {
		// The bot's restore point by its ID: one of its snapshots stands
		// for it (the set is found by its tag below).
		first, err := r.firstOf(ctx, snapshotID)
		if err != nil {
			return RestorePlan{}, nil, err
		}
		snapshotID = first
	}
	out, err := r.EC2.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: []string{snapshotID}})
	if err = translate(err); errors.Is(err, ErrNotFound) || errors.Is(err, ErrMalformedID) || (err == nil && len(out.Snapshots) == 0) {
		return RestorePlan{}, nil, refusef("snapshot `%s` does not exist in %s (or this account cannot see it). `backup list` shows the restore points.", snapshotID, r.Region)
	}
	if err != nil {
		return RestorePlan{}, nil, fmt.Errorf("look up snapshot %s: %w", snapshotID, err)
	}
	snap := out.Snapshots[0]
	plan := RestorePlan{Region: r.Region, NameTag: r.NameTag, Fallbacks: r.Fallbacks, AppStart: r.AppStart, Newer: newer}
	if r.SSM == nil {
		plan.AppStart = ""
	}
	box, boxErr := FindBox(ctx, r.EC2, r.NameTag)
	var amb *AmbiguousError
	switch {
	case errors.As(boxErr, &amb):
		return RestorePlan{}, nil, refusef("%s. A restore would not know which one to replace.", amb.Error())
	case boxErr != nil && !errors.Is(boxErr, ErrNotFound):
		return RestorePlan{}, nil, boxErr
	}
	haveBox := boxErr == nil
	if id := tag(snap.Tags, TagBackupID); id != "" {
		plan.Source, plan.MadeByBot = id, true
		members, err = r.describeSet(ctx, ec2types.Filter{Name: aws.String("tag:" + TagBackupID), Values: []string{id}})
		if err != nil {
			return RestorePlan{}, nil, err
		}
		rec, _ = r.Records.Backup(ctx, id)
		members = recordedMembers(members, rec)
		if err := wholeSet(id, members, rec); err != nil {
			return RestorePlan{}, nil, err
		}
	} else if strings.HasPrefix(aws.ToString(snap.Description), BackupDescriptionPrefix) {
		members, err = r.describeSet(ctx, ec2types.Filter{Name: aws.String("description"), Values: []string{aws.ToString(snap.Description)}})
		if err != nil {
			return RestorePlan{}, nil, err
		}
		slices.SortFunc(members, func(a, b ec2types.Snapshot) int {
			return strings.Compare(aws.ToString(a.SnapshotId), aws.ToString(b.SnapshotId))
		})
		plan.Source = aws.ToString(members[0].SnapshotId)
	} else {
		what := fmt.Sprintf("a snapshot of `%s`", aws.ToString(snap.VolumeId))
		if owner := r.volumeOwner(ctx, aws.ToString(snap.VolumeId)); owner != "" {
			what += ", attached to " + owner
		}
		return RestorePlan{}, nil, refusef("`%s` is not a Services box restore point: it is %s, described %q. Restore points are made by `backup now` or the runbook (description %q…); `backup list` shows them.",
			snapshotID, what, aws.ToString(snap.Description), BackupDescriptionPrefix)
	}
	// Every member must be complete: an image of a partial set boots a
	// box with missing datastores. A restore point the bot made that is
	// still completing may be named: the restore follows it and makes
	// the volumes or the image once it completes (restore_pending.go).
	var pending []ec2types.Snapshot
	for _, m := range members {
		if m.State == ec2types.SnapshotStatePending && plan.MadeByBot && named {
			pending = append(pending, m)
		} else if m.State != ec2types.SnapshotStateCompleted {
			extra := ""
			if m.State == ec2types.SnapshotStateError {
				extra = " It cannot be restored; pick another restore point."
			} else if m.State == ec2types.SnapshotStatePending && plan.MadeByBot {
				extra = " `restore latest` takes only completed restore points: name it (`restore " + plan.Source + "`) to restore from it as it completes, or pick an older one."
			} else if m.State == ec2types.SnapshotStatePending {
				extra = " Wait for it (`backup status " + aws.ToString(m.SnapshotId) + "`) or pick an older restore point."
			}
			return RestorePlan{}, nil, refusef("restore point `%s` is not usable: snapshot `%s` is %s (%s).%s", plan.Source, aws.ToString(m.SnapshotId), m.State, aws.ToString(m.Progress), extra)
		}
		if t := aws.ToTime(m.StartTime); plan.SourceTime.IsZero() || t.Before(plan.SourceTime) {
			plan.SourceTime = t
		}
	}
	if len(pending) > 0 {
		least, eta, ok, ids, _ := sourceProgress(members, time.Now())
		plan.Completing = &Completing{Progress: least, Pending: ids}
		if ok {
			plan.SourceETA = max(eta, time.Second)
		}
	}
	// The launch shape: as recorded with the backup, else the live box's.
	switch {
	case rec != nil && rec.Shape.SubnetID != "":
		plan.Shape, plan.ShapeFrom = rec.Shape, "recorded with "+rec.ID
	case haveBox:
		plan.Shape, plan.ShapeFrom = ShapeOf(box), "the current Services box "+aws.ToString(box.InstanceId)
	default:
		return RestorePlan{}, nil, refusef("restore point `%s` has no recorded launch shape (subnet, security groups, IP) and there is no Services box tagged Name=%s to copy it from. Restore it by hand (runbook “Restore from EBS”) or from a backup the bot made.", plan.Source, r.NameTag)
	}
	if name := plan.Shape.Tags["Name"]; plan.MadeByBot && name != "" && name != r.NameTag {
		return RestorePlan{}, nil, refusef("restore point `%s` is a backup of `%s` (Name=%s), not of the Services box (Name=%s).", plan.Source, plan.Shape.InstanceID, name, r.NameTag)
	}
	devices := map[string]string{} // volume -> device on the live box
	if haveBox {
		for _, m := range box.BlockDeviceMappings {
			if m.Ebs != nil {
				devices[aws.ToString(m.Ebs.VolumeId)] = aws.ToString(m.DeviceName)
			}
		}
	}
	for _, m := range members {
		dev := tag(m.Tags, TagDevice)
		if dev == "" {
			dev = devices[aws.ToString(m.VolumeId)]
		}
		if dev == "" {
			return RestorePlan{}, nil, refusef("snapshot `%s` of restore point `%s` was not made by the bot and its volume `%s` is not attached to the Services box, so the device it belongs on is unknown.", aws.ToString(m.SnapshotId), plan.Source, aws.ToString(m.VolumeId))
		}
		spec, ok := VolumeSpecOf(rec, dev)
		if !ok {
			spec = specFromSnapshot(ctx, r.EC2, dev, m)
		}
		plan.Snapshots = append(plan.Snapshots, RestoreSnapshot{ID: aws.ToString(m.SnapshotId), Device: dev, SizeGiB: aws.ToInt32(m.VolumeSize), Volume: spec})
	}
	var live *ec2types.Instance
	if haveBox {
		live = &box
	}
	fillBoot(ctx, r.EC2, &plan, live)
	slices.SortFunc(plan.Snapshots, func(a, b RestoreSnapshot) int { return strings.Compare(a.Device, b.Device) })
	if plan.Shape.RootDevice == "" {
		plan.Shape.RootDevice = "/dev/sda1"
	}
	if !slices.ContainsFunc(plan.Snapshots, func(s RestoreSnapshot) bool { return s.Device == plan.Shape.RootDevice }) {
		return RestorePlan{}, nil, refusef("restore point `%s` has no snapshot of the root device %s, so no instance can boot from it.", plan.Source, plan.Shape.RootDevice)
	}
	// In place: the box's own instance stays (Plan decides the same way).
	inPlace := haveBox && !rebuild && canInPlace(&box) == ""
	if haveBox {
		old := &OldBox{InstanceID: aws.ToString(box.InstanceId), State: string(box.State.Name)}
		for _, m := range box.BlockDeviceMappings {
			if m.Ebs != nil {
				old.Volumes = append(old.Volumes, VolumeRef{ID: aws.ToString(m.Ebs.VolumeId), Device: aws.ToString(m.DeviceName), DeleteOnTermination: aws.ToBool(m.Ebs.DeleteOnTermination)})
			}
		}
		old.Interfaces = interfacesOf(box)
		plan.Old = old
		// The new primary interface gets the old primary interface's own
		// secondary IPs only: another interface's addresses stay with
		// that interface (reattached after the launch, or deleted with
		// the box), and AWS refuses an address another interface holds.
		// (A shape recorded before this listed every interface's.)
		var own []string
		for _, n := range old.Interfaces {
			if n.DeviceIndex == 0 {
				own = n.IPs
			}
		}
		plan.Shape.SecondaryIPs = slices.DeleteFunc(slices.Clone(plan.Shape.SecondaryIPs), func(ip string) bool {
			return !slices.Contains(own, ip) && slices.ContainsFunc(old.Others(), func(n InterfaceRef) bool { return slices.Contains(n.IPs, ip) })
		})
		if kp := old.KeptPrimary(); kp != nil && !inPlace && (len(kp.IPs) == 0 || kp.IPs[0] != plan.Shape.PrivateIP) {
			return RestorePlan{}, nil, refusef("the Services box's primary interface `%s` is kept when the box is terminated (DeleteOnTermination false) but holds %s, not the recorded private IP %s: the new box cannot be launched on it with that IP. Restore a newer restore point, or set DeleteOnTermination on the interface's attachment, then request again.", kp.ID, strings.Join(kp.IPs, ", "), plan.Shape.PrivateIP)
		}
	}
	// The private IP must be free, or held by the box this restore
	// replaces. In place, the box keeps its instance and with it its own
	// IP (a backup taken before a failover recorded the old box's).
	if inPlace {
		plan.Shape.PrivateIP = aws.ToString(box.PrivateIpAddress)
	} else if holder, err := ipHolderOf(ctx, r.EC2, plan.Shape.PrivateIP, plan.Shape.SubnetID); err != nil {
		return RestorePlan{}, nil, err
	} else if holder != nil && (plan.Old == nil || holder.instance != plan.Old.InstanceID) {
		return RestorePlan{}, nil, refusef("the Services box's private IP %s is held by %s. The new box must keep that IP (builders use it): free it first (terminate that instance or delete the interface), then request the restore again.", plan.Shape.PrivateIP, holder)
	}
	if haveBox {
		return plan, &box, nil
	}
	return plan, nil, nil
}

func (r *SnapshotRestore) describeSet(ctx context.Context, f ec2types.Filter) ([]ec2types.Snapshot, error) {
	var out []ec2types.Snapshot
	pg := ec2.NewDescribeSnapshotsPaginator(r.EC2, &ec2.DescribeSnapshotsInput{OwnerIds: []string{"self"}, Filters: []ec2types.Filter{f}})
	for pg.HasMorePages() {
		page, err := pg.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("list the restore point's snapshots: %w", translate(err))
		}
		out = append(out, page.Snapshots...)
	}
	if len(out) == 0 {
		return nil, refusef("the restore point's snapshots are gone.")
	}
	return out, nil
}

// firstOf is the first snapshot (by ID) of the bot's restore point id.
func (r *SnapshotRestore) firstOf(ctx context.Context, id string) (string, error) {
	out, err := r.EC2.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{OwnerIds: []string{"self"}, Filters: []ec2types.Filter{{Name: aws.String("tag:" + TagBackupID), Values: []string{id}}}})
	if err != nil {
		return "", fmt.Errorf("look up restore point %s: %w", id, translate(err))
	}
	var ids []string
	for _, s := range out.Snapshots {
		ids = append(ids, aws.ToString(s.SnapshotId))
	}
	if len(ids) == 0 {
		return "", refusef("restore point `%s` has no snapshots in %s (it is a tarball backup, or its snapshots were deleted). `backup list` shows the restore points.", id, r.Region)
	}
	slices.Sort(ids)
	return ids[0], nil
}

func (r *SnapshotRestore) volumeOwner(ctx context.Context, volumeID string) string {
	out, err := r.EC2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{volumeID}})
	if err != nil || len(out.Volumes) == 0 || len(out.Volumes[0].Attachments) == 0 {
		return ""
	}
	id := aws.ToString(out.Volumes[0].Attachments[0].InstanceId)
	if name := instanceName(ctx, r.EC2, id); name != "" {
		return fmt.Sprintf("`%s` (Name=%s)", id, name)
	}
	return "`" + id + "`"
}

// Steps returns the journal steps of a restore of plan, in order.
//
// The image comes before anything touches the old box: it can take long
// (the first image of a large set), and the old box keeps serving
// meanwhile; a failed image leaves production untouched.
func (r *SnapshotRestore) Steps(plan RestorePlan) []journal.Def {
	if plan.Completing != nil {
		return r.pendingSteps(plan, r.completedSteps(plan))
	}
	return r.completedSteps(plan)
}

// completedSteps are the steps of a restore whose source is completed.
func (r *SnapshotRestore) completedSteps(plan RestorePlan) []journal.Def {
	if plan.IsInPlace() {
		return r.inPlaceSteps(plan)
	}
	type w = *Work[RestoreResult]
	steps := []struct {
		name string
		run  StepFunc[RestoreResult]
	}{
		{"Check the restore point", func(ctx context.Context, _ w, _ journal.Progress) (string, error) {
			return r.checkSource(ctx, plan)
		}},
		{stepImage, func(ctx context.Context, op w, p journal.Progress) (string, error) {
			return r.image(ctx, op, plan, p)
		}},
		{stepProtect, func(ctx context.Context, op w, _ journal.Progress) (string, error) {
			return r.protect(ctx, op, plan)
		}},
		{stepStopOld, func(ctx context.Context, _ w, p journal.Progress) (string, error) {
			return r.stopOld(ctx, plan, p)
		}},
		{stepFreeIP, func(ctx context.Context, _ w, p journal.Progress) (string, error) {
			return r.freeIP(ctx, plan, p)
		}},
		{stepLaunch, func(ctx context.Context, op w, p journal.Progress) (string, error) {
			return r.launch(ctx, op, plan, p)
		}},
		{"Wait for running and status checks", func(ctx context.Context, op w, p journal.Progress) (string, error) {
			return r.waitHealthy(ctx, op, p)
		}},
		{"Reattach the old box's other interfaces", func(ctx context.Context, op w, p journal.Progress) (string, error) {
			return r.reattach(ctx, op, plan, p)
		}},
		{stepStartApp, func(ctx context.Context, op w, p journal.Progress) (string, error) {
			return r.startApp(ctx, op, plan, p)
		}},
		{"Verify the new Services box", func(ctx context.Context, op w, _ journal.Progress) (string, error) {
			return r.verify(ctx, op, plan)
		}},
	}
	if len(plan.Old.Others()) == 0 {
		// Only a box with more than one interface has this step.
		steps = slices.DeleteFunc(steps, func(st struct {
			name string
			run  StepFunc[RestoreResult]
		}) bool {
			return strings.HasPrefix(st.name, "Reattach")
		})
	}
	defs := make([]journal.Def, len(steps))
	for i, st := range steps {
		defs[i] = journal.Def{Name: st.name, Run: retrying(typed(st.run), r.poll())}
	}
	return defs
}

// reattach attaches each interface of the old box other than the
// primary to the new box at its device index, once AWS shows it free
// (the old box's termination detaches it). An interface that went with
// the old box, or that something else took meanwhile, is left, and the
// step says so.
func (r *SnapshotRestore) reattach(ctx context.Context, op *Work[RestoreResult], plan RestorePlan, p journal.Progress) (string, error) {
	id := op.Result.InstanceID
	var said []string
	for _, n := range plan.Old.Others() {
		what := fmt.Sprintf("`%s` (device %d, %s)", n.ID, n.DeviceIndex, strings.Join(n.IPs, ", "))
		var cur ec2types.NetworkInterface
		err := readBack(ctx, r.poll(), r.ReadBack, what+" detached from the old box", func() (bool, string, error) {
			var err error
			cur, err = describeENI(ctx, r.EC2, n.ID)
			if err != nil {
				return false, "", err
			}
			a := cur.Attachment
			if a == nil || cur.Status == ec2types.NetworkInterfaceStatusAvailable || aws.ToString(a.InstanceId) != plan.Old.InstanceID {
				return true, "", nil
			}
			return false, "it attached to `" + plan.Old.InstanceID + "`", nil
		})
		switch {
		case errors.Is(err, ErrNotFound):
			said = append(said, what+" is gone (deleted with the old box): its addresses are not on the new box")
			continue
		case err != nil:
			return "", err
		}
		if a := cur.Attachment; a != nil && aws.ToString(a.InstanceId) == id {
			said = append(said, what+" attached")
			continue
		} else if a != nil && aws.ToString(a.InstanceId) != "" && cur.Status != ec2types.NetworkInterfaceStatusAvailable {
			said = append(said, fmt.Sprintf("%s left: it is attached to `%s` now", what, aws.ToString(a.InstanceId)))
			continue
		}
		if _, err := r.EC2.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: aws.String(n.ID), InstanceId: aws.String(id), DeviceIndex: aws.Int32(n.DeviceIndex)}); err != nil {
			return "", fmt.Errorf("attach %s to the new box %s: %w", n.ID, id, translate(err))
		}
		err = readBack(ctx, r.poll(), r.ReadBack, what+" attached to `"+id+"`", func() (bool, string, error) {
			cur, err := describeENI(ctx, r.EC2, n.ID)
			if err != nil {
				return false, "", err
			}
			if a := cur.Attachment; a != nil && aws.ToString(a.InstanceId) == id {
				return true, "", nil
			}
			return false, "it " + string(cur.Status), nil
		})
		if err != nil {
			return "", err
		}
		said = append(said, what+" attached")
	}
	return strings.Join(said, "; "), nil
}

func (r *SnapshotRestore) poll() time.Duration { return cmpOr(r.Poll, 2*time.Second) }

// Recheck runs the plan's read-only checks again before a resume: the
// restore point is still complete.
func (r *SnapshotRestore) Recheck(ctx context.Context, plan RestorePlan) error {
	_, err := r.checkSource(ctx, plan)
	return err
}

func (r *SnapshotRestore) checkSource(ctx context.Context, plan RestorePlan) (string, error) {
	var ids []string
	for _, s := range plan.Snapshots {
		ids = append(ids, s.ID)
	}
	out, err := r.EC2.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: ids})
	if err != nil {
		return "", fmt.Errorf("check the snapshots: %w", translate(err))
	}
	if len(out.Snapshots) != len(ids) {
		return "", fmt.Errorf("%d of the %d snapshots of %s are gone", len(ids)-len(out.Snapshots), len(ids), plan.Source)
	}
	for _, s := range out.Snapshots {
		if s.State == ec2types.SnapshotStatePending && plan.Completing != nil {
			continue // followed, then waited for
		}
		if s.State != ec2types.SnapshotStateCompleted {
			return "", fmt.Errorf("snapshot %s is %s", aws.ToString(s.SnapshotId), s.State)
		}
	}
	return fmt.Sprintf("`%s`: %d snapshots, completed, taken %s UTC", plan.Source, len(ids), plan.SourceTime.UTC().Format("2006-01-02 15:04")), nil
}

// protect turns DeleteOnTermination off for every volume of the old
// instance and tags them, then reads the mappings back: nothing is
// stopped or terminated until AWS shows every volume protected.
func (r *SnapshotRestore) protect(ctx context.Context, op *Work[RestoreResult], plan RestorePlan) (string, error) {
	if plan.Old == nil {
		return "no old instance: nothing to protect", nil
	}
	in, ok, err := r.describeInstance(ctx, plan.Old.InstanceID)
	if err != nil {
		return "", err
	}
	if !ok || in.State.Name == ec2types.InstanceStateNameTerminated {
		return "", fmt.Errorf("the old instance %s is gone (terminated outside this restore) before its volumes were protected; check vol %s by hand, then cancel this restore and request a new one", plan.Old.InstanceID, volList(plan.Old.Volumes))
	}
	var vols []string
	for _, m := range in.BlockDeviceMappings {
		if m.Ebs == nil {
			continue
		}
		vols = append(vols, aws.ToString(m.Ebs.VolumeId))
		if !aws.ToBool(m.Ebs.DeleteOnTermination) {
			continue
		}
		_, err := r.EC2.ModifyInstanceAttribute(ctx, &ec2.ModifyInstanceAttributeInput{
			InstanceId: in.InstanceId,
			BlockDeviceMappings: []ec2types.InstanceBlockDeviceMappingSpecification{{
				DeviceName: m.DeviceName, Ebs: &ec2types.EbsInstanceBlockDeviceSpecification{DeleteOnTermination: aws.Bool(false)},
			}},
		})
		if err != nil {
			return "", fmt.Errorf("turn off DeleteOnTermination of %s (%s): %w", aws.ToString(m.Ebs.VolumeId), aws.ToString(m.DeviceName), translate(err))
		}
	}
	if len(vols) > 0 {
		_, err = r.EC2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: vols, Tags: []ec2types.Tag{
			{Key: aws.String(TagKeptBy), Value: aws.String(op.ID)},
			{Key: aws.String(TagKeptFrom), Value: aws.String(plan.Old.InstanceID)},
		}})
		if err != nil {
			return "", fmt.Errorf("tag the old volumes: %w", translate(err))
		}
	}
	// The change shows in DescribeInstances some time after AWS took it.
	err = readBack(ctx, r.poll(), r.ReadBack, "every volume of "+plan.Old.InstanceID+" kept on termination", func() (bool, string, error) {
		still, err := r.unprotected(ctx, plan.Old.InstanceID)
		return err == nil && still == "", still, err
	})
	if errors.Is(err, ErrNotConverged) {
		return "", fmt.Errorf("%w; not going further", err)
	}
	if err != nil {
		return "", err
	}
	op.Result.KeptVolumes = vols
	return fmt.Sprintf("%d volumes of `%s` kept on termination and tagged %s=%s: %s", len(vols), plan.Old.InstanceID, TagKeptBy, op.ID, strings.Join(vols, ", ")), nil
}

// checkProtected reads the instance back and fails if any volume would
// be deleted with it.
func (r *SnapshotRestore) checkProtected(ctx context.Context, id string) error {
	still, err := r.unprotected(ctx, id)
	if err != nil {
		return err
	}
	if still != "" {
		return fmt.Errorf("%s; not going further", still)
	}
	return nil
}

// unprotected names the first volume of instance id that would be
// deleted with it ("" when none would).
func (r *SnapshotRestore) unprotected(ctx context.Context, id string) (string, error) {
	in, ok, err := r.describeInstance(ctx, id)
	if err != nil || !ok {
		return "", err
	}
	for _, m := range in.BlockDeviceMappings {
		if m.Ebs != nil && aws.ToBool(m.Ebs.DeleteOnTermination) {
			return fmt.Sprintf("volume %s (%s) of %s is still set to be deleted on termination", aws.ToString(m.Ebs.VolumeId), aws.ToString(m.DeviceName), id), nil
		}
	}
	return "", nil
}

func volList(vs []VolumeRef) string {
	var ids []string
	for _, v := range vs {
		ids = append(ids, v.ID)
	}
	return strings.Join(ids, ", ")
}

// stopOld fences the old box (fence.go): a normal stop, then a forced
// one after StopTimeout; anything short of a confirmed stop fails the
// step. Two Services boxes must never run at once.
func (r *SnapshotRestore) stopOld(ctx context.Context, plan RestorePlan, p journal.Progress) (string, error) {
	if plan.Old == nil {
		return "no old instance", nil
	}
	id := plan.Old.InstanceID
	res, err := r.fencing(p).run(ctx, id, false, false)
	switch {
	case err != nil:
		return "", fmt.Errorf("fence the old instance: %w", err)
	case res.Gone:
		return fmt.Sprintf("`%s` is gone (AWS no longer knows it)", id), nil
	case res.Already:
		return fmt.Sprintf("`%s` was already %s", id, res.Before), nil
	case res.Forced:
		return fmt.Sprintf("`%s` force-stopped in %s", id, res.Took.Round(time.Second)), nil
	}
	return fmt.Sprintf("`%s` stopped in %s", id, res.Took.Round(time.Second)), nil
}

func (r *SnapshotRestore) fencing(p journal.Progress) fence {
	return fence{EC2: r.EC2, Poll: r.poll(), Timeout: cmpOr(r.StopTimeout, 5*time.Minute), Log: p.Log}
}

// image registers (or finds, when run again) this restore's AMI of the
// set and waits until it is available. A failed image is left as it is
// (named, tagged) and a new one is registered on the next run.
func (r *SnapshotRestore) image(ctx context.Context, op *Work[RestoreResult], plan RestorePlan, p journal.Progress) (string, error) {
	if err := r.waitSource(ctx, plan, p); err != nil {
		return "", err
	}
	start := time.Now()
	id, attempts, err := r.findImage(ctx, op.ID)
	if err != nil {
		return "", err
	}
	if id == "" && op.Result.ImageID != "" {
		// An earlier attempt registered it; the look-up by tag may lag
		// that registration, the recorded ID does not.
		id = op.Result.ImageID
	}
	if id != "" {
		p.Log(fmt.Sprintf("Image `%s` was registered by this restore before; using it.", id))
	} else {
		id, err = r.register(ctx, op, plan, attempts+1)
		if err != nil {
			return "", err
		}
	}
	op.Result.ImageID = id
	timeout := cmpOr(r.ImageTimeout, 45*time.Minute)
	nextNote := time.Now().Add(5 * time.Minute)
	err = waitFor(ctx, r.poll(), time.Now().Add(timeout), func() (bool, error) {
		out, err := r.EC2.DescribeImages(ctx, &ec2.DescribeImagesInput{ImageIds: []string{id}})
		if err = translate(err); errors.Is(err, ErrNotFound) {
			return false, nil // just registered: EC2's reads lag its writes
		}
		if err != nil {
			return false, fmt.Errorf("check image %s: %w", id, err)
		}
		if len(out.Images) > 0 {
			img := out.Images[0]
			switch img.State {
			case ec2types.ImageStateAvailable:
				return true, nil
			case ec2types.ImageStateFailed, ec2types.ImageStateError, ec2types.ImageStateInvalid, ec2types.ImageStateDeregistered:
				why := ""
				if img.StateReason != nil {
					why = ": " + aws.ToString(img.StateReason.Message)
				}
				op.Result.ImageID = "" // a resume registers a new one
				return false, fmt.Errorf("image %s is %s%s; %s, and `resume` registers a new image", id, img.State, why, oldBoxNow(plan))
			}
		}
		if time.Now().After(nextNote) {
			p.Log(fmt.Sprintf("Image `%s` is still pending after %s; AWS copies the snapshots' data first. The old box keeps serving meanwhile. Waiting up to %s.", id, since(start), timeout))
			nextNote = time.Now().Add(5 * time.Minute)
		}
		return false, nil
	})
	var to *waitTimeout
	switch {
	case errors.As(err, &to):
		return "", fmt.Errorf("image %s is still pending after %s (restore.image_timeout); %s, the image is kept, and `resume` waits for it again", id, timeout, oldBoxNow(plan))
	case err != nil:
		return "", err
	}
	if err := r.checkLaunch(ctx, plan, op.ID, id); err != nil {
		return "", err
	}
	return fmt.Sprintf("`%s` available in %s; the launch from it passed its dry run", id, since(start)), nil
}

// findImage returns this restore's usable image (pending or available),
// if any, and how many it registered in all.
func (r *SnapshotRestore) findImage(ctx context.Context, opID string) (string, int, error) {
	out, err := r.EC2.DescribeImages(ctx, &ec2.DescribeImagesInput{Owners: []string{"self"}, Filters: []ec2types.Filter{{Name: aws.String("tag:" + TagRestoreOp), Values: []string{opID}}}})
	if err != nil {
		return "", 0, fmt.Errorf("look for this restore's image: %w", translate(err))
	}
	for _, img := range out.Images {
		if img.State == ec2types.ImageStatePending || img.State == ec2types.ImageStateAvailable {
			return aws.ToString(img.ImageId), len(out.Images), nil
		}
	}
	return "", len(out.Images), nil
}

func (r *SnapshotRestore) register(ctx context.Context, op *Work[RestoreResult], plan RestorePlan, n int) (string, error) {
	name := "circleci-restore-" + op.ID
	if n > 1 {
		name += fmt.Sprintf("-%d", n)
	}
	in := restoreImageInput(plan, name, op.ID)
	// Never registered twice: the SDK retries only a throttled attempt
	// (onceEC2), and an answer lost on the way back is found by its tag
	// (or the name is taken: InvalidAMIName.Duplicate).
	out, err := r.EC2.RegisterImage(ctx, in, onceEC2)
	if err == nil {
		return aws.ToString(out.ImageId), nil
	}
	err = translate(err)
	if !errors.Is(err, ErrDuplicate) && !errors.Is(err, ErrUnavailable) && !errors.Is(err, ErrNoAnswer) {
		return "", fmt.Errorf("register the image: %w", err)
	}
	// Registered, or maybe registered: DescribeImages may lag behind.
	// Look for a while (a read that lags, not a call tried again).
	var found string
	// (At least lookLag: with a short poll, readLag polls are shorter
	// than EC2's usual lag.)
	lerr := waitFor(ctx, r.poll(), time.Now().Add(max(readLag*r.poll(), lookLag)), func() (bool, error) {
		id, _, err := r.findImage(ctx, op.ID)
		found = id
		return id != "", err
	})
	var to *waitTimeout
	switch {
	case found != "":
		return found, nil
	case lerr != nil && !errors.As(lerr, &to):
		return "", lerr
	case errors.Is(err, ErrDuplicate):
		return "", fmt.Errorf("an image named %s exists but is not this restore's (no %s=%s tag): rename or deregister it, then resume", name, TagRestoreOp, op.ID)
	}
	return "", fmt.Errorf("register the image: %w", err)
}

// restoreImageInput is the RegisterImage call of a restore: the pre-flight
// tries exactly this call.
func restoreImageInput(plan RestorePlan, name, opID string) *ec2.RegisterImageInput {
	// The restored box's volumes survive an accidental terminate.
	return imageInput(plan, name, fmt.Sprintf("CircleCI Services Box restored from %s by circlebot %s", plan.Source, opID), false, []ec2types.Tag{
		{Key: aws.String(TagRestoreOp), Value: aws.String(opID)}, {Key: aws.String("Name"), Value: aws.String(name)},
	})
}

// freeIP terminates the old, stopped, protected instance so that its
// network interface, and with it the private IP, is released.
func (r *SnapshotRestore) freeIP(ctx context.Context, plan RestorePlan, p journal.Progress) (string, error) {
	start := time.Now()
	ip := plan.Shape.PrivateIP
	if plan.Old != nil {
		in, ok, err := r.describeInstance(ctx, plan.Old.InstanceID)
		if err != nil {
			return "", err
		}
		if ok && in.State.Name != ec2types.InstanceStateNameTerminated {
			if in.State.Name != ec2types.InstanceStateNameStopped {
				return "", fmt.Errorf("the old instance %s is %s, not stopped; it is not terminated while it may be serving", plan.Old.InstanceID, in.State.Name)
			}
			if err := r.checkProtected(ctx, plan.Old.InstanceID); err != nil {
				return "", err
			}
			_, err := r.EC2.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{plan.Old.InstanceID}})
			if err = translate(err); err != nil && !errors.Is(err, ErrNotFound) {
				return "", fmt.Errorf("terminate %s: %w", plan.Old.InstanceID, err)
			}
			if _, err := r.waitState(ctx, plan.Old.InstanceID, cmpOr(r.StopTimeout, 5*time.Minute), ec2types.InstanceStateNameTerminated); err != nil {
				return "", err
			}
		}
	}
	// The interface goes some time after the instance. A primary
	// interface AWS keeps (DeleteOnTermination false) does not go: it
	// is detached, keeps the IP, and the new box is launched on it.
	kept := plan.Old.KeptPrimary()
	var h *ipHolder
	err := waitFor(ctx, r.poll(), time.Now().Add(cmpOr(r.StopTimeout, 5*time.Minute)), func() (bool, error) {
		var err error
		h, err = ipHolderOf(ctx, r.EC2, ip, plan.Shape.SubnetID)
		if kept != nil && h != nil && h.eni == kept.ID && h.instance == "" {
			return err == nil, err
		}
		return err == nil && h == nil, err
	})
	var to *waitTimeout
	switch {
	case errors.As(err, &to) && kept != nil && h != nil && h.eni == kept.ID:
		return "", fmt.Errorf("the old primary interface `%s` (kept on termination) is still attached to `%s` after %s; the new box is launched on it once it is detached: resume then", kept.ID, h.instance, cmpOr(r.StopTimeout, 5*time.Minute))
	case errors.As(err, &to) && h != nil:
		return "", fmt.Errorf("%s is still held by %s; free it, then resume", ip, h)
	case errors.As(err, &to):
		return "", fmt.Errorf("whether %s is free could not be read: %w", ip, to)
	case err != nil:
		return "", err
	}
	if plan.Old == nil {
		return fmt.Sprintf("%s is free", ip), nil
	}
	if kept != nil {
		return fmt.Sprintf("`%s` terminated (volumes kept); its primary interface `%s` with %s detached after %s, for the new box", plan.Old.InstanceID, kept.ID, ip, since(start)), nil
	}
	return fmt.Sprintf("`%s` terminated (volumes kept); %s free after %s", plan.Old.InstanceID, ip, since(start)), nil
}

// launch starts the new Services box once: a box this restore launched
// before (found by its tag) is reused, and each attempt carries a client
// token so that an answer lost on the way back cannot make a second one.
func (r *SnapshotRestore) launch(ctx context.Context, op *Work[RestoreResult], plan RestorePlan, p journal.Progress) (string, error) {
	in, err := r.launched(ctx, op.ID)
	if err != nil {
		return "", err
	}
	if in == nil {
		types := []string{plan.Shape.Type}
		for _, f := range plan.Fallbacks {
			if !slices.Contains(types, f) {
				types = append(types, f)
			}
		}
		for i, typ := range types {
			in, err = r.run(ctx, op, plan, typ)
			if err == nil {
				break
			}
			switch {
			case errors.Is(err, ErrInsufficientCapacity), errors.Is(err, ErrInstanceLimit), errors.Is(err, ErrUnsupported):
				if i+1 < len(types) {
					p.Log(fmt.Sprintf("AWS has no %s capacity in %s (%s); trying %s.", typ, plan.Shape.AZ, awsCode(err), types[i+1]))
					continue
				}
				return "", fmt.Errorf("no capacity for %s in %s; add types to restore.fallback_instance_types or retry later with `resume`: %w", strings.Join(types, ", "), plan.Shape.AZ, err)
			case errors.Is(err, ErrIPInUse):
				holder := "something else"
				if h, herr := ipHolderOf(ctx, r.EC2, plan.Shape.PrivateIP, plan.Shape.SubnetID); herr == nil && h != nil {
					holder = h.String()
				}
				return "", fmt.Errorf("%s is in use by %s; free it (terminate that instance or delete the interface), then resume this restore (%s)", plan.Shape.PrivateIP, holder, op.ID)
			}
			return "", fmt.Errorf("launch the new box (%s): %w", typ, err)
		}
	} else {
		p.Log(fmt.Sprintf("Instance `%s` was launched by this restore before; using it.", aws.ToString(in.InstanceId)))
	}
	id := aws.ToString(in.InstanceId)
	op.Result.InstanceID, op.Result.InstanceType = id, string(in.InstanceType)
	if err := r.secondaryIPs(ctx, in, plan); err != nil {
		return "", err
	}
	detail := fmt.Sprintf("`%s` (%s) at %s", id, in.InstanceType, aws.ToString(in.PrivateIpAddress))
	if len(plan.Shape.SecondaryIPs) > 0 {
		detail += " + " + strings.Join(plan.Shape.SecondaryIPs, ", ")
	}
	return detail, nil
}

// launched finds the instance this operation launched, if any.
func (r *SnapshotRestore) launched(ctx context.Context, opID string) (*ec2types.Instance, error) {
	return launchedBy(ctx, r.EC2, TagRestoreOp, opID, "this restore's instance")
}

func (r *SnapshotRestore) run(ctx context.Context, op *Work[RestoreResult], plan RestorePlan, typ string) (*ec2types.Instance, error) {
	in := launchInput(plan, op.ID, op.Result.ImageID, typ)
	out, err := r.EC2.RunInstances(ctx, in)
	if err != nil {
		return nil, translate(err)
	}
	if len(out.Instances) != 1 {
		return nil, fmt.Errorf("RunInstances returned %d instances", len(out.Instances))
	}
	return &out.Instances[0], nil
}

// launchInput is the RunInstances call that launches the new box: the
// pre-flight tries exactly this call.
func launchInput(plan RestorePlan, opID, imageID, typ string) *ec2.RunInstancesInput {
	var tags []ec2types.Tag
	for k, v := range plan.Shape.Tags {
		if strings.HasPrefix(k, "aws:") || strings.HasPrefix(k, "circlebot:") {
			continue
		}
		tags = append(tags, ec2types.Tag{Key: aws.String(k), Value: aws.String(v)})
	}
	if plan.Shape.Tags["Name"] == "" {
		tags = append(tags, ec2types.Tag{Key: aws.String("Name"), Value: aws.String(plan.NameTag)})
	}
	tags = append(tags, ec2types.Tag{Key: aws.String(TagRestoreOp), Value: aws.String(opID)},
		ec2types.Tag{Key: aws.String("circlebot:restored-from"), Value: aws.String(plan.Source)})
	slices.SortFunc(tags, func(a, b ec2types.Tag) int { return strings.Compare(*a.Key, *b.Key) })
	in := &ec2.RunInstancesInput{
		ImageId:          aws.String(imageID),
		InstanceType:     ec2types.InstanceType(typ),
		MinCount:         aws.Int32(1),
		MaxCount:         aws.Int32(1),
		ClientToken:      aws.String(clientToken(opID, typ)),
		SubnetId:         aws.String(plan.Shape.SubnetID),
		PrivateIpAddress: aws.String(plan.Shape.PrivateIP),
		SecurityGroupIds: plan.Shape.SecurityGroups,
		// The KMS key of each encrypted volume (RegisterImage cannot
		// state it) and the recorded IMDS settings.
		BlockDeviceMappings: launchMappings(plan.Snapshots),
		MetadataOptions:     metadataOptions(plan.Shape.Boot),
		TagSpecifications: []ec2types.TagSpecification{
			{ResourceType: ec2types.ResourceTypeInstance, Tags: tags},
			{ResourceType: ec2types.ResourceTypeVolume, Tags: []ec2types.Tag{{Key: aws.String(TagRestoreOp), Value: aws.String(opID)}}},
		},
	}
	if plan.Shape.KeyName != "" {
		in.KeyName = aws.String(plan.Shape.KeyName)
	}
	if p := plan.Shape.IAMProfile; p != "" {
		if strings.HasPrefix(p, "arn:") {
			in.IamInstanceProfile = &ec2types.IamInstanceProfileSpecification{Arn: aws.String(p)}
		} else {
			in.IamInstanceProfile = &ec2types.IamInstanceProfileSpecification{Name: aws.String(p)}
		}
	}
	if kept := plan.Old.KeptPrimary(); kept != nil {
		// The old primary interface, kept on termination, becomes the new
		// box's: its IP, secondary IPs and security groups come with it.
		// (AWS takes a subnet, IP and groups either here or on the
		// instance, not both.)
		in.SubnetId, in.PrivateIpAddress, in.SecurityGroupIds = nil, nil, nil
		in.NetworkInterfaces = []ec2types.InstanceNetworkInterfaceSpecification{{DeviceIndex: aws.Int32(0), NetworkInterfaceId: aws.String(kept.ID)}}
	}
	return in
}

// clientToken is unique per operation and type (AWS refuses a token
// reused with other parameters) and at most 64 characters.
func clientToken(opID, typ string) string {
	t := opID + "/" + typ
	if len(t) > 64 {
		t = t[:64]
	}
	return t
}

func (r *SnapshotRestore) secondaryIPs(ctx context.Context, in *ec2types.Instance, plan RestorePlan) error {
	if len(plan.Shape.SecondaryIPs) == 0 || len(in.NetworkInterfaces) == 0 {
		return nil
	}
	eni := in.NetworkInterfaces[0]
	have := map[string]bool{}
	for _, a := range eni.PrivateIpAddresses {
		have[aws.ToString(a.PrivateIpAddress)] = true
	}
	var missing []string
	for _, ip := range plan.Shape.SecondaryIPs {
		if !have[ip] {
			missing = append(missing, ip)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	_, err := r.EC2.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: eni.NetworkInterfaceId, PrivateIpAddresses: missing})
	if err != nil {
		return fmt.Errorf("give the new box its secondary IPs %s: %w", strings.Join(missing, ", "), translate(err))
	}
	// The assignment is asynchronous: read it back.
	return readBack(ctx, r.poll(), r.ReadBack, strings.Join(missing, ", ")+" on `"+aws.ToString(eni.NetworkInterfaceId)+"`", func() (bool, string, error) {
		n, err := describeENI(ctx, r.EC2, aws.ToString(eni.NetworkInterfaceId))
		if err != nil {
			return false, "", err
		}
		held := addressesOf(n)
		for _, ip := range missing {
			if !slices.Contains(held, ip) {
				return false, "only " + strings.Join(held, ", "), nil
			}
		}
		return true, "", nil
	})
}

// describeENI reads one network interface.
func describeENI(ctx context.Context, api interfaceReader, id string) (ec2types.NetworkInterface, error) {
	out, err := api.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{id}})
	if err == nil && len(out.NetworkInterfaces) == 0 {
		err = ErrNotFound
	}
	if err != nil {
		return ec2types.NetworkInterface{}, fmt.Errorf("read %s: %w", id, translate(err))
	}
	return out.NetworkInterfaces[0], nil
}

// addressesOf lists an interface's private IPs, the primary first.
func addressesOf(n ec2types.NetworkInterface) []string {
	var out []string
	for _, a := range n.PrivateIpAddresses {
		if aws.ToBool(a.Primary) {
			out = append([]string{aws.ToString(a.PrivateIpAddress)}, out...)
		} else {
			out = append(out, aws.ToString(a.PrivateIpAddress))
		}
	}
	return out
}

// waitHealthy waits until the new box runs and passes both status checks
// (health.go).
func (r *SnapshotRestore) waitHealthy(ctx context.Context, op *Work[RestoreResult], p journal.Progress) (string, error) {
	id := op.Result.InstanceID
	start := time.Now()
	timeout := cmpOr(r.HealthTimeout, 20*time.Minute)
	h := health{EC2: r.EC2, Poll: r.poll(), Deadline: start.Add(timeout), Log: p.Log}
	if err := h.statusChecks(ctx, id); err != nil {
		var uh *unhealthyError
		if errors.As(err, &uh) {
			return "", fmt.Errorf("%w, within %s (restore.health_timeout)", err, timeout)
		}
		return "", fmt.Errorf("the new box: %w", err)
	}
	return fmt.Sprintf("`%s` running, status checks passed after %s", id, since(start)), nil
}

// startApp runs the configured start command on the new box through SSM,
// once the box's SSM agent answers.
func (r *SnapshotRestore) startApp(ctx context.Context, op *Work[RestoreResult], plan RestorePlan, p journal.Progress) (string, error) {
	if plan.AppStart == "" {
		return "skipped: no `services_box.app_start_command` (or no SSM); start the app from the admin console on port 8800", nil
	}
	return startApp(ctx, r.SSM, op.Result.InstanceID, op, func(r *RestoreResult) *Commands { return &r.Commands }, plan.AppStart, r.poll(), cmpOr(r.HealthTimeout, 20*time.Minute), p)
}

// describeInstance and waitState read through the shared helpers.
func (r *SnapshotRestore) describeInstance(ctx context.Context, id string) (ec2types.Instance, bool, error) {
	return describeInstance(ctx, r.EC2, id)
}

func (r *SnapshotRestore) waitState(ctx context.Context, id string, timeout time.Duration, want ...ec2types.InstanceStateName) (ec2types.InstanceStateName, error) {
	return waitInstanceState(ctx, r.EC2, id, r.poll(), timeout, want...)
}

// verify reads the new box back: the recorded IP, running, and the only
// instance carrying the Services box's Name tag.
func (r *SnapshotRestore) verify(ctx context.Context, op *Work[RestoreResult], plan RestorePlan) (string, error) {
	id := op.Result.InstanceID
	in, ok, err := r.describeInstance(ctx, id)
	if err != nil {
		return "", err
	}
	if !ok || in.State.Name != ec2types.InstanceStateNameRunning {
		return "", fmt.Errorf("the new box %s is not running", id)
	}
	if got := aws.ToString(in.PrivateIpAddress); got != plan.Shape.PrivateIP {
		return "", fmt.Errorf("the new box %s has IP %s, not %s", id, got, plan.Shape.PrivateIP)
	}
	// The old box's termination and the new one's tags may show late.
	var ids []string
	err = readBack(ctx, r.poll(), r.ReadBack, "`"+id+"` as the only instance named "+plan.NameTag, func() (bool, string, error) {
		boxes, err := FindByName(ctx, r.EC2, plan.NameTag)
		if err != nil {
			return false, "", err
		}
		ids = ids[:0]
		for _, b := range boxes {
			ids = append(ids, aws.ToString(b.InstanceId))
		}
		return len(ids) == 1 && ids[0] == id, fmt.Sprintf("%d instances named so (%s)", len(ids), strings.Join(ids, ", ")), nil
	})
	if errors.Is(err, ErrNotConverged) {
		return "", fmt.Errorf("%d instances carry Name=%s (%s); there must be one Services box, the new `%s`: %w", len(ids), plan.NameTag, strings.Join(ids, ", "), id, err)
	}
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("`%s` running at %s in %s, the only instance named %s", id, plan.Shape.PrivateIP, aws.ToString(in.Placement.AvailabilityZone), plan.NameTag), nil
}

// recordedMembers keeps, of the snapshots tagged with a backup's ID, the
// ones its record lists, when it lists any: a retried CreateSnapshots
// whose first answer was lost can leave a second set with the same tag,
// and a restore must use one set, the recorded one, not both.
func recordedMembers(members []ec2types.Snapshot, rec *Backup) []ec2types.Snapshot {
	if rec == nil || len(rec.Snapshots) == 0 {
		return members
	}
	ids := map[string]bool{}
	for _, s := range rec.Snapshots {
		ids[s.ID] = true
	}
	return slices.DeleteFunc(slices.Clone(members), func(m ec2types.Snapshot) bool { return !ids[aws.ToString(m.SnapshotId)] })
}

// wholeSet refuses a bot restore point that is not every volume of the
// box it was taken of: an image of part of a set boots a Services box
// with missing datastores, and the restore then terminates the old one.
// What the set should hold comes from the bot's record, else from the
// set size a prune wrote on it.
func wholeSet(id string, members []ec2types.Snapshot, rec *Backup) error {
	for _, m := range members {
		if op := tag(m.Tags, TagPruning); op != "" && (rec == nil || len(members) < len(rec.Snapshots)) {
			return refusef("restore point `%s` is partly pruned (`%s` began deleting it): only %d of its snapshots are left. Pick another restore point (`backup list`).", id, op, len(members))
		}
	}
	if rec == nil {
		for _, m := range members {
			if n, err := strconv.Atoi(tag(m.Tags, TagSetSize)); err == nil && len(members) < n {
				return refusef("restore point `%s` has %d of its %d snapshots: it is incomplete. Pick another restore point (`backup list`).", id, len(members), n)
			}
		}
		return nil
	}
	switch {
	case rec.Pruning != "" && len(members) < len(rec.Snapshots):
		return refusef("restore point `%s` is partly pruned (`%s` began deleting it): %d of its %d snapshots are left. Pick another restore point (`backup list`).", id, rec.Pruning, len(members), len(rec.Snapshots))
	case rec.State == StateFailed || rec.State == StateInterrupted:
		return refusef("backup `%s` %s (%s), so its snapshots may not cover every volume of the box. Pick another restore point (`backup list`).", id, rec.State, strings.TrimSuffix(rec.Error, "."))
	case len(members) < len(rec.Snapshots):
		return refusef("restore point `%s` has %d of its %d snapshots (the others were deleted): it is incomplete. Pick another restore point (`backup list`).", id, len(members), len(rec.Snapshots))
	}
	return nil
}
