package ops

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// preflightOpID stands in for the operation ID in the calls a pre-flight
// tries: the real one does not exist yet, and the policy's conditions
// only look at its prefix.
const preflightOpID = "op-preflight"

// Preflight tries every mutating call of a restore without effect: the
// image registration, the old box's protection, stop and termination,
// and the launch with its exact parameters in each instance type it may
// use; and checks the limits a launch meets only when it is too late (50
// tags, the image's architecture, the vCPU quota).
//
// The launch is tried with this restore's image, which exists only after
// the restore's second step: before that it is tried with an image an
// earlier restore registered (the policy lets the bot launch only from
// those), or left for the image step, which tries it before anything
// touches the old box.
func (r *SnapshotRestore) Preflight(ctx context.Context, plan RestorePlan) Preflight {
	if plan.IsInPlace() {
		return r.inPlacePreflight(ctx, plan)
	}
	var pf Preflight
	var snaps []string
	for _, s := range plan.Snapshots {
		snaps = append(snaps, s.ID)
	}
	var err error
	if plan.Completing != nil {
		// As CreateVolume: AWS registers images of completed snapshots
		// only.
		pf.skipped("ec2:RegisterImage", strings.Join(snaps, ", "), "checked when the snapshots complete (AWS registers images of completed snapshots only)")
	} else {
		reg := restoreImageInput(plan, "circleci-restore-"+preflightOpID, preflightOpID)
		reg.DryRun = aws.Bool(true)
		_, err = r.EC2.RegisterImage(ctx, reg)
		pf.dryRun("ec2:RegisterImage", strings.Join(snaps, ", "), err)
	}
	pf.forSteps(0, stepImage)
	if old := plan.Old; old != nil {
		id := old.InstanceID
		var vols []string
		dev := ""
		for _, v := range old.Volumes {
			vols = append(vols, v.ID)
			if dev == "" || v.DeleteOnTermination {
				dev = v.Device
			}
		}
		n := len(pf.Checks)
		if dev != "" {
			_, err = r.EC2.ModifyInstanceAttribute(ctx, &ec2.ModifyInstanceAttributeInput{DryRun: aws.Bool(true), InstanceId: aws.String(id),
				BlockDeviceMappings: []ec2types.InstanceBlockDeviceMappingSpecification{{DeviceName: aws.String(dev), Ebs: &ec2types.EbsInstanceBlockDeviceSpecification{DeleteOnTermination: aws.Bool(false)}}}})
			pf.dryRun("ec2:ModifyInstanceAttribute", id+" (keep "+dev+" on termination)", err)
		}
		if len(vols) > 0 {
			_, err = r.EC2.CreateTags(ctx, &ec2.CreateTagsInput{DryRun: aws.Bool(true), Resources: vols, Tags: []ec2types.Tag{
				{Key: aws.String(TagKeptBy), Value: aws.String(preflightOpID)}, {Key: aws.String(TagKeptFrom), Value: aws.String(id)},
			}})
			pf.dryRun("ec2:CreateTags", strings.Join(vols, ", ")+" (mark the kept volumes)", err)
		}
		pf.forSteps(n, stepProtect)
		n = len(pf.Checks)
		if old.State != string(ec2types.InstanceStateNameStopped) {
			_, err = r.EC2.StopInstances(ctx, &ec2.StopInstancesInput{DryRun: aws.Bool(true), InstanceIds: []string{id}})
			pf.dryRun("ec2:StopInstances", id+" (the old box)", err)
		}
		pf.forSteps(n, stepStopOld)
		n = len(pf.Checks)
		_, err = r.EC2.TerminateInstances(ctx, &ec2.TerminateInstancesInput{DryRun: aws.Bool(true), InstanceIds: []string{id}})
		pf.dryRun("ec2:TerminateInstances", id+" (the old box)", err)
		pf.forSteps(n, stepFreeIP)
	}
	launch := len(pf.Checks)
	types := launchTypes(plan)
	infos := pf.checkArch(ctx, r.Types, plan.Shape.Architecture, types)
	if infos != nil {
		pf.checkVCPUQuota(ctx, r.Quotas, infos[plan.Shape.Type], infos[plan.Shape.Type])
	}
	in := launchInput(plan, preflightOpID, "", plan.Shape.Type)
	pf.checkTags("the new box", len(in.TagSpecifications[0].Tags))
	image, err := r.earlierImage(ctx)
	switch {
	case err != nil:
		pf.refused("ec2:DescribeImages", "an earlier restore image", reasonOf(err))
	case image == "" && plan.Completing != nil:
		// The image needs the completed snapshots, which come after the
		// stop here (it overlaps their tail).
		pf.skipped("ec2:RunInstances", strings.Join(types, ", "), "tried with this restore's image once it is registered, after the snapshots complete (the old box is stopped by then, not yet terminated)")
	case image == "":
		pf.skipped("ec2:RunInstances", strings.Join(types, ", "), "tried with this restore's image once it is registered, before the old box is touched")
	default:
		r.launchPreflight(ctx, &pf, plan, preflightOpID, image, " (with image "+image+" standing in)")
	}
	// The type, quota, tag and image rows are the launch's conditions.
	pf.forSteps(launch, stepLaunch)
	return pf
}

// launchPreflight tries the launch in every type the restore may use.
func (r *SnapshotRestore) launchPreflight(ctx context.Context, pf *Preflight, plan RestorePlan, opID, image, note string) {
	for _, typ := range launchTypes(plan) {
		in := launchInput(plan, opID, image, typ)
		in.DryRun, in.ClientToken = aws.Bool(true), nil
		_, err := r.EC2.RunInstances(ctx, in)
		on := fmt.Sprintf("%s in %s at %s%s", typ, plan.Shape.SubnetID, plan.Shape.PrivateIP, note)
		terr := translate(err)
		ipHeld := errors.Is(terr, ErrIPInUse) && in.PrivateIpAddress != nil && plan.Old.holds(plan.Shape.PrivateIP)
		eniHeld := errors.Is(terr, ErrInterfaceInUse) && len(in.NetworkInterfaces) > 0 && plan.Old.KeptPrimary() != nil
		if ipHeld || eniHeld {
			// Whether AWS checks the address or the interface in a dry
			// run is not documented; if it does, the old box's own —
			// which the restore frees before it launches — would refuse
			// every restore while the old box stands. Everything else is
			// checked on the same subnet and groups with an address AWS
			// picks.
			groups := plan.Shape.SecurityGroups
			if kept := plan.Old.KeptPrimary(); eniHeld && kept != nil {
				groups = r.interfaceGroups(ctx, kept.ID, groups) // the launch takes the interface's
			}
			in.PrivateIpAddress, in.NetworkInterfaces = nil, nil
			in.SubnetId, in.SecurityGroupIds = aws.String(plan.Shape.SubnetID), groups
			_, err = r.EC2.RunInstances(ctx, in)
			on = fmt.Sprintf("%s in %s%s, with an address AWS picks: the old box `%s` holds %s until the restore frees it", typ, plan.Shape.SubnetID, note, plan.Old.InstanceID, plan.Shape.PrivateIP)
			if eniHeld && errors.Is(translate(err), ErrDryRunOK) {
				// A launch on a new interface is not a launch on the kept
				// one (the policy may treat them apart): said, not claimed.
				pf.skipped("ec2:RunInstances", on, "the rest of the launch answered DryRunOperation; the use of the kept interface itself cannot be tried while the old box holds it")
				continue
			}
		}
		pf.dryRun("ec2:RunInstances", on, err)
	}
}

// interfaceGroups are the security groups of interface id (def when it
// cannot be read: the dry run then says what is wrong).
func (r *SnapshotRestore) interfaceGroups(ctx context.Context, id string, def []string) []string {
	out, err := r.EC2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{id}})
	if err != nil || len(out.NetworkInterfaces) != 1 {
		return def
	}
	var groups []string
	for _, g := range out.NetworkInterfaces[0].Groups {
		groups = append(groups, aws.ToString(g.GroupId))
	}
	return groups
}

// holds says whether one of the old box's interfaces has ip.
func (o *OldBox) holds(ip string) bool {
	if o == nil || ip == "" {
		return false
	}
	for _, i := range o.Interfaces {
		if slices.Contains(i.IPs, ip) {
			return true
		}
	}
	return false
}

// launchTypes are the instance types a restore tries, in order.
func launchTypes(plan RestorePlan) []string {
	types := []string{plan.Shape.Type}
	for _, f := range plan.Fallbacks {
		if !slices.Contains(types, f) {
			types = append(types, f)
		}
	}
	return types
}

// earlierImage is the newest available image an earlier restore
// registered ("" when there is none).
func (r *SnapshotRestore) earlierImage(ctx context.Context) (string, error) {
	out, err := r.EC2.DescribeImages(ctx, &ec2.DescribeImagesInput{Owners: []string{"self"}, Filters: []ec2types.Filter{
		{Name: aws.String("tag-key"), Values: []string{TagRestoreOp}},
		{Name: aws.String("state"), Values: []string{"available"}},
	}})
	if err != nil {
		return "", fmt.Errorf("look for an earlier restore's image: %w", translate(err))
	}
	newest, at := "", ""
	for _, img := range out.Images {
		if c := aws.ToString(img.CreationDate); newest == "" || c > at {
			newest, at = aws.ToString(img.ImageId), c
		}
	}
	return newest, nil
}

// checkLaunch is the image step's last word: the launch, with this
// restore's image, tried in every type before the old box is touched.
func (r *SnapshotRestore) checkLaunch(ctx context.Context, plan RestorePlan, opID, image string) error {
	var pf Preflight
	r.launchPreflight(ctx, &pf, plan, opID, image, "")
	if err := pf.Err(); err != nil {
		if plan.Completing != nil {
			return fmt.Errorf("the new box could not be launched (%w); %s: fix that, then `resume`", err, oldBoxNow(plan))
		}
		return fmt.Errorf("the new box could not be launched, so the old one was not touched (%w); fix that, then `resume`", err)
	}
	return nil
}
