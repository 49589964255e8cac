package ops

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/circlebot/circlebot/internal/journal"
)

// An in-place restore swaps the Services box's volumes for new ones made
// from the restore point, on the same instance: its interfaces, every IP,
// security groups, profile and key stay as they are. No image is made,
// nothing is terminated, and the old volumes stay (detached, tagged), so
// there is never a moment without a box to go back to.

// Restore methods a plan picks.
const (
	MethodRebuild = "rebuild"  // image, new instance, same IP (restore.go)
	MethodInPlace = "in-place" // new volumes on the same instance (here)
)

// More tags an in-place restore leaves.
const (
	TagReplacedBy = "circlebot:replaced-by" // on an old volume: the op that detached it
)

// InPlaceVolume is one volume an in-place restore makes: from which
// snapshot, at which device, with what attributes.
type InPlaceVolume struct {
	Device     string `json:"device"`
	SnapshotID string `json:"snapshot_id"`
	SizeGiB    int32  `json:"size_gib"`
	Type       string `json:"type"`
	IOPS       int32  `json:"iops,omitempty"`
	Throughput int32  `json:"throughput,omitempty"`
	Encrypted  bool   `json:"encrypted,omitempty"`
	KMSKeyID   string `json:"kms_key_id,omitempty"`
	// Replaces is the old box's volume at this device ("" if none).
	Replaces string `json:"replaces,omitempty"`
}

// InPlacePlan is the part of a restore plan an in-place restore adds.
type InPlacePlan struct {
	AZ      string          `json:"az"`
	Volumes []InPlaceVolume `json:"volumes"`
}

// canInPlace says whether the box can take its restore in place, and why
// not: the instance must be there to keep (running — impaired included —
// or stopped), not on its way out or gone.
func canInPlace(box *ec2types.Instance) string {
	if box == nil {
		return "there is no Services box instance to keep, so a new one is built"
	}
	switch box.State.Name {
	case ec2types.InstanceStateNameRunning, ec2types.InstanceStateNameStopped, ec2types.InstanceStateNameStopping, ec2types.InstanceStateNamePending:
		return ""
	}
	return fmt.Sprintf("the Services box `%s` is %s, so a new one is built", aws.ToString(box.InstanceId), box.State.Name)
}

// planInPlace fills plan for an in-place restore of box: each snapshot
// becomes a volume in the box's zone with the attributes the backup
// recorded; where it recorded none (older records, runbook sets), those
// of the snapshot (size, encryption) and of the volume now at that device
// (type, IOPS, throughput; else gp3).
func (r *SnapshotRestore) planInPlace(ctx context.Context, plan *RestorePlan, box ec2types.Instance) error {
	ip := &InPlacePlan{AZ: aws.ToString(box.Placement.AvailabilityZone)}
	atDevice := map[string]string{}
	var volIDs []string
	for _, m := range box.BlockDeviceMappings {
		if m.Ebs != nil {
			atDevice[aws.ToString(m.DeviceName)] = aws.ToString(m.Ebs.VolumeId)
			volIDs = append(volIDs, aws.ToString(m.Ebs.VolumeId))
		}
	}
	current := map[string]ec2types.Volume{}
	if len(volIDs) > 0 {
		out, err := r.EC2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: volIDs})
		if err != nil {
			return fmt.Errorf("read the Services box's volumes: %w", translate(err))
		}
		for _, v := range out.Volumes {
			current[aws.ToString(v.VolumeId)] = v
		}
	}
	var snapIDs []string
	for _, s := range plan.Snapshots {
		snapIDs = append(snapIDs, s.ID)
	}
	out, err := r.EC2.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: snapIDs})
	if err != nil {
		return fmt.Errorf("read the restore point's snapshots: %w", translate(err))
	}
	snaps := map[string]ec2types.Snapshot{}
	for _, s := range out.Snapshots {
		snaps[aws.ToString(s.SnapshotId)] = s
	}
	for _, s := range plan.Snapshots {
		snap := snaps[s.ID]
		v := InPlaceVolume{Device: s.Device, SnapshotID: s.ID, SizeGiB: aws.ToInt32(snap.VolumeSize), Type: "gp3",
			Encrypted: aws.ToBool(snap.Encrypted), KMSKeyID: aws.ToString(snap.KmsKeyId), Replaces: atDevice[s.Device]}
		if v.SizeGiB == 0 {
			v.SizeGiB = s.SizeGiB
		}
		if old, ok := current[v.Replaces]; ok {
			v.Type = cmpOrStr(string(old.VolumeType), "gp3")
			// A bigger volume than the snapshot keeps its size: the file
			// system may have been grown into it since.
			v.SizeGiB = max(v.SizeGiB, aws.ToInt32(old.Size))
			switch old.VolumeType {
			case ec2types.VolumeTypeIo1, ec2types.VolumeTypeIo2, ec2types.VolumeTypeGp3:
				v.IOPS = aws.ToInt32(old.Iops)
			}
			if old.VolumeType == ec2types.VolumeTypeGp3 {
				v.Throughput = aws.ToInt32(old.Throughput)
			}
		}
		// What the backup recorded of the volume wins over what is at the
		// device now: the restore brings back the box as it was backed up.
		if rec := s.Volume; rec.Type != "" && rec.From == "" {
			v.Type, v.IOPS, v.Throughput = rec.Type, rec.IOPS, rec.Throughput
			if rec.Encrypted {
				v.Encrypted, v.KMSKeyID = true, cmpOrStr(rec.KMSKeyID, v.KMSKeyID)
			}
			v.SizeGiB = max(v.SizeGiB, rec.SizeGiB)
		}
		ip.Volumes = append(ip.Volumes, v)
	}
	plan.Method, plan.InPlace = MethodInPlace, ip
	return nil
}

// inPlaceSteps are the journal steps of an in-place restore, in order.
//
// The new volumes are created before the box is stopped and only waited
// for after the stop: CreateVolume does not touch the running box, and the
// volumes become available while it shuts down (overlap 1; a cancel
// before the stop leaves the box serving and the volumes to delete).
func (r *SnapshotRestore) inPlaceSteps(plan RestorePlan) []journal.Def {
	type w = *Work[RestoreResult]
	steps := []struct {
		name string
		run  StepFunc[RestoreResult]
	}{
		{"Check the restore point", func(ctx context.Context, _ w, _ journal.Progress) (string, error) {
			return r.checkSource(ctx, plan)
		}},
		{stepCreateVols, func(ctx context.Context, op w, p journal.Progress) (string, error) {
			return r.createVolumes(ctx, op, plan, p)
		}},
		{stepProtect, func(ctx context.Context, op w, _ journal.Progress) (string, error) {
			return r.protect(ctx, op, plan)
		}},
		{stepStopBox, func(ctx context.Context, _ w, p journal.Progress) (string, error) {
			return r.stopOld(ctx, plan, p)
		}},
		{stepSwap, func(ctx context.Context, op w, p journal.Progress) (string, error) {
			return r.swapVolumes(ctx, op, plan, p)
		}},
		{stepStartBox, func(ctx context.Context, op w, p journal.Progress) (string, error) {
			return r.startInPlace(ctx, op, plan, p)
		}},
		{stepStartApp, func(ctx context.Context, op w, p journal.Progress) (string, error) {
			return r.startApp(ctx, op, plan, p)
		}},
		{"Verify the Services box", func(ctx context.Context, op w, p journal.Progress) (string, error) {
			return r.verifyInPlace(ctx, op, plan, p)
		}},
	}
	defs := make([]journal.Def, len(steps))
	for i, st := range steps {
		defs[i] = journal.Def{Name: st.name, Run: retrying(typed(st.run), r.poll())}
	}
	return defs
}

// restoreVolumes finds the volumes this operation made, by device (tags
// set on create, so a volume exists with them or not at all).
func (r *SnapshotRestore) restoreVolumes(ctx context.Context, opID string) (map[string]ec2types.Volume, error) {
	out, err := r.EC2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{Filters: []ec2types.Filter{{Name: aws.String("tag:" + TagRestoreOp), Values: []string{opID}}}})
	if err != nil {
		return nil, fmt.Errorf("look for this restore's volumes: %w", translate(err))
	}
	m := map[string]ec2types.Volume{}
	for _, v := range out.Volumes {
		if v.State == ec2types.VolumeStateDeleting || v.State == ec2types.VolumeStateDeleted || v.State == ec2types.VolumeStateError {
			continue
		}
		if dev := tag(v.Tags, TagDevice); dev != "" {
			m[dev] = v
		}
	}
	return m, nil
}

// createVolumeInput is the CreateVolume of one in-place volume (the
// pre-flight tries exactly this call).
func createVolumeInput(plan RestorePlan, v InPlaceVolume, opID string) *ec2.CreateVolumeInput {
	in := &ec2.CreateVolumeInput{
		AvailabilityZone: aws.String(plan.InPlace.AZ),
		SnapshotId:       aws.String(v.SnapshotID),
		Size:             aws.Int32(v.SizeGiB),
		VolumeType:       ec2types.VolumeType(v.Type),
		ClientToken:      aws.String(clientToken(opID, v.Device)),
		TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeVolume, Tags: []ec2types.Tag{
			{Key: aws.String(TagRestoreOp), Value: aws.String(opID)},
			{Key: aws.String(TagDevice), Value: aws.String(v.Device)},
			{Key: aws.String("circlebot:restored-from"), Value: aws.String(plan.Source)},
			{Key: aws.String("Name"), Value: aws.String(plan.NameTag + " " + v.Device)},
		}}},
	}
	// AWS refuses IOPS and throughput for types that do not take them
	// (a gp2 volume reports its baseline IOPS, which CreateVolume refuses).
	if v.IOPS > 0 && hasIOPS(v.Type) {
		in.Iops = aws.Int32(v.IOPS)
	}
	if v.Throughput > 0 && ec2types.VolumeType(v.Type) == ec2types.VolumeTypeGp3 {
		in.Throughput = aws.Int32(v.Throughput)
	}
	// A volume from an encrypted snapshot is encrypted whatever is
	// asked; the key is kept as it was.
	if v.Encrypted {
		in.Encrypted = aws.Bool(true)
		if v.KMSKeyID != "" {
			in.KmsKeyId = aws.String(v.KMSKeyID)
		}
	}
	return in
}

// inPlacePreflight tries the calls of an in-place restore: the volumes
// created (with their tags, type and key), the old ones marked kept, the
// box stopped and started. The swap itself is listed, not tried (below).
func (r *SnapshotRestore) inPlacePreflight(ctx context.Context, plan RestorePlan) Preflight {
	var pf Preflight
	id := plan.Old.InstanceID
	for _, v := range plan.InPlace.Volumes {
		if plan.Completing != nil {
			// AWS makes volumes only from completed snapshots: a dry run
			// now would be refused for the snapshot's state, not for
			// anything the restore could change.
			pf.skipped("ec2:CreateVolume", v.Device+" from "+v.SnapshotID, "checked when the snapshots complete (AWS makes volumes from completed snapshots only)")
			continue
		}
		in := createVolumeInput(plan, v, preflightOpID)
		in.DryRun, in.ClientToken = aws.Bool(true), nil
		_, err := r.EC2.CreateVolume(ctx, in)
		pf.dryRun("ec2:CreateVolume", v.Device+" from "+v.SnapshotID, err)
	}
	pf.forSteps(0, stepCreateVols)
	n := len(pf.Checks)
	var vols []string
	for _, v := range plan.Old.Volumes {
		vols = append(vols, v.ID)
	}
	if len(vols) > 0 {
		_, err := r.EC2.CreateTags(ctx, &ec2.CreateTagsInput{DryRun: aws.Bool(true), Resources: vols, Tags: []ec2types.Tag{
			{Key: aws.String(TagKeptBy), Value: aws.String(preflightOpID)}, {Key: aws.String(TagKeptFrom), Value: aws.String(id)},
		}})
		pf.dryRun("ec2:CreateTags", strings.Join(vols, ", ")+" (mark the kept volumes)", err)
	}
	pf.forSteps(n, stepProtect)
	n = len(pf.Checks)
	if plan.Old.State != string(ec2types.InstanceStateNameStopped) {
		_, err := r.EC2.StopInstances(ctx, &ec2.StopInstancesInput{DryRun: aws.Bool(true), InstanceIds: []string{id}})
		pf.dryRun("ec2:StopInstances", id+" (the box)", err)
	}
	pf.forSteps(n, stepStopBox)
	n = len(pf.Checks)
	// The swap's calls cannot be tried yet: the policy lets the bot detach
	// only volumes its protect step has marked kept, and attach only the
	// volumes this restore created (tags that do not exist before the
	// restore runs), so a dry run now would be refused for a reason the
	// run will not meet. The swap step reads each volume back instead.
	for _, v := range plan.Old.Volumes {
		pf.skipped("ec2:DetachVolume", v.ID+" from "+v.Device, "allowed once the restore has marked it kept; tried by the swap step")
		pf.skipped("ec2:AttachVolume", "the new volume at "+v.Device, "allowed once the restore has created it; tried by the swap step")
	}
	pf.forSteps(n, stepSwap)
	n = len(pf.Checks)
	_, err := r.EC2.StartInstances(ctx, &ec2.StartInstancesInput{DryRun: aws.Bool(true), InstanceIds: []string{id}})
	if err = translate(err); err != nil && !errors.Is(err, ErrDryRunOK) && !errors.Is(err, ErrUnauthorized) && plan.Old.State != string(ec2types.InstanceStateNameStopped) {
		// A running box cannot be started now; IAM's answer is what counts.
		pf.skipped("ec2:StartInstances", id, "checked when the box is stopped ("+reasonOf(err)+")")
	} else {
		pf.dryRun("ec2:StartInstances", id+" (the box, after the swap)", err)
	}
	pf.forSteps(n, stepStartBox)
	return pf
}

// createVolumes makes one volume per snapshot, at most once: a volume
// this restore made before (found by its tags) is used, and each
// CreateVolume carries a client token (the operation and the device), so
// the SDK may retry it: AWS answers a repeated token with the first
// call's volume ("Ensure idempotency", EC2 API reference), and the test
// launcher holds moto to that. An answer still lost after the SDK's
// retries is followed by a look for the volume before the step fails.
func (r *SnapshotRestore) createVolumes(ctx context.Context, op *Work[RestoreResult], plan RestorePlan, p journal.Progress) (string, error) {
	if err := r.waitSource(ctx, plan, p); err != nil {
		return "", err
	}
	have, err := r.restoreVolumes(ctx, op.ID)
	if err != nil {
		return "", err
	}
	made := map[string]string{}
	for _, v := range plan.InPlace.Volumes {
		if got, ok := have[v.Device]; ok {
			made[v.Device] = aws.ToString(got.VolumeId)
			continue
		}
		in := createVolumeInput(plan, v, op.ID)
		out, err := r.EC2.CreateVolume(ctx, in)
		if err == nil {
			made[v.Device] = aws.ToString(out.VolumeId)
			continue
		}
		err = translate(err)
		if !errors.Is(err, ErrUnavailable) && !errors.Is(err, ErrNoAnswer) {
			return "", fmt.Errorf("create the volume for %s from %s: %w", v.Device, v.SnapshotID, err)
		}
		// Made, or maybe made: reads lag, so look for a while.
		var found string
		lerr := waitFor(ctx, r.poll(), time.Now().Add(readLag*r.poll()), func() (bool, error) {
			m, err := r.restoreVolumes(ctx, op.ID)
			found = aws.ToString(m[v.Device].VolumeId)
			return found != "", err
		})
		if found == "" {
			var to *waitTimeout
			if lerr != nil && !errors.As(lerr, &to) {
				return "", lerr
			}
			// Not made (a look that long sees it): the step is tried
			// again on this transient error, and looks first; on AWS the
			// client token would return the first volume anyway.
			return "", fmt.Errorf("create the volume for %s: %w", v.Device, err)
		}
		p.Log(fmt.Sprintf("The answer to CreateVolume for %s was lost; it made `%s`.", v.Device, found))
		made[v.Device] = found
	}
	op.Result.NewVolumes = made
	var parts []string
	for _, v := range plan.InPlace.Volumes {
		parts = append(parts, fmt.Sprintf("%s=`%s`", v.Device, made[v.Device]))
	}
	return fmt.Sprintf("%d volumes in %s: %s", len(made), plan.InPlace.AZ, strings.Join(parts, ", ")), nil
}

// swapVolumes waits for the new volumes, then, device by device (root
// included), detaches the old volume (kept, tagged) and attaches the new
// one. Run again, it picks up where it was: a device that already holds
// its new volume is done.
func (r *SnapshotRestore) swapVolumes(ctx context.Context, op *Work[RestoreResult], plan RestorePlan, p journal.Progress) (string, error) {
	id := plan.Old.InstanceID
	start := time.Now()
	timeout := cmpOr(r.StopTimeout, 5*time.Minute)
	in, ok, err := r.describeInstance(ctx, id)
	if err != nil {
		return "", err
	}
	if !ok || (in.State.Name != ec2types.InstanceStateNameStopped) {
		return "", fmt.Errorf("the Services box %s is %s, not stopped; its volumes are swapped only while it is stopped", id, stateOr(in, ok))
	}
	// Overlap 1 ends here: wait for the volumes created before the stop.
	var vols map[string]ec2types.Volume
	err = waitFor(ctx, r.poll(), time.Now().Add(timeout), func() (bool, error) {
		var err error
		vols, err = r.restoreVolumes(ctx, op.ID)
		if err != nil {
			return false, err
		}
		for _, v := range plan.InPlace.Volumes {
			nv, ok := vols[v.Device]
			if !ok {
				return false, fmt.Errorf("the new volume for %s is gone; cancel this restore and request a new one", v.Device)
			}
			if nv.State != ec2types.VolumeStateAvailable && nv.State != ec2types.VolumeStateInUse {
				return false, nil
			}
		}
		return true, nil
	})
	var to *waitTimeout
	if errors.As(err, &to) {
		return "", fmt.Errorf("the new volumes are not available after %s; `resume` waits again", timeout)
	}
	if err != nil {
		return "", err
	}
	attached := func() (map[string]string, error) {
		in, _, err := r.describeInstance(ctx, id)
		if err != nil {
			return nil, err
		}
		m := map[string]string{}
		for _, bm := range in.BlockDeviceMappings {
			if bm.Ebs != nil {
				m[aws.ToString(bm.DeviceName)] = aws.ToString(bm.Ebs.VolumeId)
			}
		}
		return m, nil
	}
	// Every old volume is detached, then every new one attached: the
	// detaches (and then the attaches) run at once, so the swap takes one
	// detach and one attach, not one of each per device.
	var replaced []string
	now, err := attached()
	if err != nil {
		return "", err
	}
	var detaching []string
	for _, v := range plan.InPlace.Volumes {
		old := now[v.Device]
		if old == "" || old == aws.ToString(vols[v.Device].VolumeId) {
			continue
		}
		if _, err := r.EC2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{old}, Tags: []ec2types.Tag{
			{Key: aws.String(TagReplacedBy), Value: aws.String(op.ID)}, {Key: aws.String(TagKeptBy), Value: aws.String(op.ID)}, {Key: aws.String(TagKeptFrom), Value: aws.String(id)},
		}}); err != nil {
			return "", fmt.Errorf("tag the old volume %s: %w", old, translate(err))
		}
		_, err := r.EC2.DetachVolume(ctx, &ec2.DetachVolumeInput{VolumeId: aws.String(old), InstanceId: aws.String(id), Device: aws.String(v.Device)})
		if err = translate(err); err != nil {
			// A detach whose answer was lost, or that an earlier run
			// sent, makes this one fail: what counts is whether the
			// volume is still attached.
			if inst, _, st, rerr := r.attachmentOf(ctx, old); rerr != nil || (inst == id && st != ec2types.VolumeAttachmentStateDetaching) {
				return "", fmt.Errorf("detach %s from %s: %w", old, v.Device, err)
			}
		}
		detaching = append(detaching, old)
	}
	for _, old := range detaching {
		if err := r.waitVolume(ctx, old, timeout, ec2types.VolumeStateAvailable); err != nil {
			return "", fmt.Errorf("detach %s: %w", old, err)
		}
		replaced = append(replaced, old)
	}
	if len(replaced) > 0 {
		p.Log(fmt.Sprintf("`%s` detached (kept, tagged %s=%s).", strings.Join(replaced, "`, `"), TagReplacedBy, op.ID))
	}
	if now, err = attached(); err != nil {
		return "", err
	}
	var attaching []string
	for _, v := range plan.InPlace.Volumes {
		newID := aws.ToString(vols[v.Device].VolumeId)
		if now[v.Device] == newID {
			continue
		}
		_, err = r.EC2.AttachVolume(ctx, &ec2.AttachVolumeInput{VolumeId: aws.String(newID), InstanceId: aws.String(id), Device: aws.String(v.Device)})
		if err = translate(err); err != nil {
			// Likewise: attached (or attaching) there already is done.
			if inst, dev, _, rerr := r.attachmentOf(ctx, newID); rerr != nil || inst != id || dev != v.Device {
				return "", fmt.Errorf("attach %s at %s: %w", newID, v.Device, err)
			}
		}
		attaching = append(attaching, newID)
	}
	for _, newID := range attaching {
		if err := r.waitVolume(ctx, newID, timeout, ec2types.VolumeStateInUse); err != nil {
			return "", fmt.Errorf("attach %s: %w", newID, err)
		}
	}
	if now, err = attached(); err != nil {
		return "", err
	}
	for _, v := range plan.InPlace.Volumes {
		if got, want := now[v.Device], aws.ToString(vols[v.Device].VolumeId); got != want {
			return "", fmt.Errorf("%s holds %s, not the restored %s", v.Device, got, want)
		}
	}
	op.Result.InstanceID = id
	op.Result.KeptVolumes = IDList(mergeIDs(op.Result.KeptVolumes, replaced))
	return fmt.Sprintf("%d devices of `%s` hold the restored volumes (root included) after %s", len(plan.InPlace.Volumes), id, since(start)), nil
}

func mergeIDs(a IDList, b []string) []string {
	out := slices.Clone([]string(a))
	for _, s := range b {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

func stateOr(in ec2types.Instance, ok bool) string {
	if !ok {
		return "gone"
	}
	return string(in.State.Name)
}

// attachmentOf reads which instance and device a volume is attached to
// ("" when none) and the attachment's state.
func (r *SnapshotRestore) attachmentOf(ctx context.Context, vol string) (string, string, ec2types.VolumeAttachmentState, error) {
	out, err := r.EC2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{vol}})
	if err != nil {
		return "", "", "", fmt.Errorf("read volume %s: %w", vol, translate(err))
	}
	for _, v := range out.Volumes {
		for _, a := range v.Attachments {
			if a.State == ec2types.VolumeAttachmentStateDetached {
				continue
			}
			return aws.ToString(a.InstanceId), aws.ToString(a.Device), a.State, nil
		}
	}
	return "", "", "", nil
}

// waitVolume waits until the volume is in state want, and, for in-use,
// its attachment attached.
func (r *SnapshotRestore) waitVolume(ctx context.Context, id string, timeout time.Duration, want ec2types.VolumeState) error {
	last := ""
	err := waitFor(ctx, r.poll(), time.Now().Add(timeout), func() (bool, error) {
		out, err := r.EC2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{id}})
		if err = translate(err); errors.Is(err, ErrNotFound) {
			return false, nil // just made: reads lag
		}
		if err != nil || len(out.Volumes) == 0 {
			return false, err
		}
		v := out.Volumes[0]
		last = string(v.State)
		if v.State != want {
			return false, nil
		}
		if want == ec2types.VolumeStateInUse {
			return len(v.Attachments) == 1 && v.Attachments[0].State == ec2types.VolumeAttachmentStateAttached, nil
		}
		return true, nil
	})
	var to *waitTimeout
	if errors.As(err, &to) {
		return fmt.Errorf("volume %s is %s, not %s, after %s", id, last, want, timeout)
	}
	return err
}

// startInPlace starts the stopped box on its new volumes. It does not
// wait for the status checks: the app is started as soon as the SSM agent
// answers (next step), which comes before both checks pass (overlap 2);
// the checks are waited for in the verify step, while the app starts.
func (r *SnapshotRestore) startInPlace(ctx context.Context, op *Work[RestoreResult], plan RestorePlan, p journal.Progress) (string, error) {
	id := plan.Old.InstanceID
	start := time.Now()
	in, ok, err := r.describeInstance(ctx, id)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", fmt.Errorf("the Services box %s is gone", id)
	}
	if in.State.Name == ec2types.InstanceStateNameStopped {
		if _, err := r.EC2.StartInstances(ctx, &ec2.StartInstancesInput{InstanceIds: []string{id}}); err != nil {
			err = translate(err)
			if errors.Is(err, ErrInsufficientCapacity) {
				return "", fmt.Errorf("AWS has no %s capacity in %s now; its volumes are restored: `resume` tries the start again: %w", in.InstanceType, plan.InPlace.AZ, err)
			}
			if !errors.Is(err, ErrIncorrectState) {
				return "", fmt.Errorf("start %s: %w", id, err)
			}
		}
	}
	if _, err := r.waitState(ctx, id, cmpOr(r.HealthTimeout, 20*time.Minute), ec2types.InstanceStateNameRunning); err != nil {
		return "", err
	}
	op.Result.InstanceID = id
	return fmt.Sprintf("`%s` running after %s", id, since(start)), nil
}

// verifyInPlace waits for both status checks and reads the box back: the
// same instance, running, its IP, every device on its restored volume,
// and the only instance named as the Services box.
func (r *SnapshotRestore) verifyInPlace(ctx context.Context, op *Work[RestoreResult], plan RestorePlan, p journal.Progress) (string, error) {
	id := plan.Old.InstanceID
	start := time.Now()
	timeout := cmpOr(r.HealthTimeout, 20*time.Minute)
	h := health{EC2: r.EC2, Poll: r.poll(), Deadline: start.Add(timeout), Log: p.Log}
	if err := h.statusChecks(ctx, id); err != nil {
		return "", fmt.Errorf("the restored box: %w", err)
	}
	in, ok, err := r.describeInstance(ctx, id)
	if err != nil {
		return "", err
	}
	if !ok || in.State.Name != ec2types.InstanceStateNameRunning {
		return "", fmt.Errorf("the Services box %s is not running", id)
	}
	if got := aws.ToString(in.PrivateIpAddress); plan.Shape.PrivateIP != "" && got != plan.Shape.PrivateIP {
		return "", fmt.Errorf("the Services box %s has IP %s, not %s", id, got, plan.Shape.PrivateIP)
	}
	now := map[string]string{}
	for _, bm := range in.BlockDeviceMappings {
		if bm.Ebs != nil {
			now[aws.ToString(bm.DeviceName)] = aws.ToString(bm.Ebs.VolumeId)
		}
	}
	for dev, vol := range op.Result.NewVolumes {
		if now[dev] != vol {
			return "", fmt.Errorf("%s of %s holds %s, not the restored %s", dev, id, now[dev], vol)
		}
	}
	boxes, err := FindByName(ctx, r.EC2, plan.NameTag)
	if err != nil {
		return "", err
	}
	if len(boxes) != 1 {
		return "", fmt.Errorf("%d instances carry Name=%s; there must be one Services box", len(boxes), plan.NameTag)
	}
	return fmt.Sprintf("`%s` running at %s, status checks passed after %s, every device on its restored volume", id, aws.ToString(in.PrivateIpAddress), since(start)), nil
}
