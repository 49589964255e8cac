package ops

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/circlebot/circlebot/internal/journal"
)

// ResizeEC2 is the part of EC2 a resize uses.
type ResizeEC2 interface {
	EC2
	InstanceTypes
	StopInstances(context.Context, *ec2.StopInstancesInput, ...func(*ec2.Options)) (*ec2.StopInstancesOutput, error)
	StartInstances(context.Context, *ec2.StartInstancesInput, ...func(*ec2.Options)) (*ec2.StartInstancesOutput, error)
	ModifyInstanceAttribute(context.Context, *ec2.ModifyInstanceAttributeInput, ...func(*ec2.Options)) (*ec2.ModifyInstanceAttributeOutput, error)
	DescribeImages(context.Context, *ec2.DescribeImagesInput, ...func(*ec2.Options)) (*ec2.DescribeImagesOutput, error)
}

// Resize changes the Services box's instance type in place: stop (the
// fence), set the type, start, wait until healthy on the same IP and
// volumes. AWS changes a type only while the instance is stopped. A new
// type AWS cannot start (no capacity in the zone, the vCPU limit, not
// supported) sends the box back to its old type, started.
type Resize struct {
	EC2 ResizeEC2
	// ReadBack bounds the read-back of the new type (default 2 min).
	ReadBack time.Duration
	// Quotas reads the vCPU quota for the plan (nil: not checked).
	Quotas    Quotas
	SSM       SSM
	HTTP      *http.Client
	NameTag   string
	Region    string
	AppStart  string
	HealthURL string // {ip}: the box's private IP
	// Pace is the poll interval, read when used (nil or 0: 2 s).
	Pace func() time.Duration
	// StopTimeout is the clean stop's, then the forced stop's.
	StopTimeout time.Duration
	// HealthTimeout bounds the start, the SSM agent, the app's start and
	// the checks, each.
	HealthTimeout time.Duration
}

// ResizePlan is what a resize acts on and what was checked.
type ResizePlan struct {
	Region    string   `json:"region"`
	NameTag   string   `json:"name_tag"`
	Box       InPlace  `json:"box"`
	From      TypeInfo `json:"from"`
	To        TypeInfo `json:"to"`
	Checked   []string `json:"checked"`
	Quota     string   `json:"quota"`
	AppStart  string   `json:"app_start,omitempty"`
	HealthURL string   `json:"health_url,omitempty"`
	// StopTimeout and Timeout are the plan's stop and health bounds.
	StopTimeout time.Duration `json:"stop_timeout"`
	Timeout     time.Duration `json:"timeout"`
	// Downtime is the last resize's, measured (the engine fills it in).
	Downtime Downtime `json:"downtime"`
}

// Facts are what an approval of the plan is bound to.
func (p ResizePlan) Facts() map[string]string {
	return map[string]string{
		"region": p.Region, "instance": p.Box.ID, "state": p.Box.State, "az": p.Box.AZ, "private_ip": p.Box.PrivateIP,
		"volumes": p.Box.volumeFact(), "from": p.From.Name, "to": p.To.Name, "app_start": p.AppStart, "health_url": p.HealthURL,
	}
}

// ResizeResult is what the steps of a resize hand on.
type ResizeResult struct {
	// RolledBack: the new type could not start, and the box was set back
	// to its old type; Why is what AWS said.
	RolledBack bool     `json:"rolled_back,omitempty"`
	Why        string   `json:"why,omitempty"`
	Commands   Commands `json:"commands,omitempty"`
}

// Runs is the type the box runs as when the steps are done.
func (r ResizeResult) Runs(p ResizePlan) string {
	if r.RolledBack {
		return p.From.Name
	}
	return p.To.Name
}

func (r *Resize) poll() time.Duration {
	if r.Pace != nil {
		return cmpOr(r.Pace(), 2*time.Second)
	}
	return 2 * time.Second
}

func (r *Resize) timeout() time.Duration     { return cmpOr(r.HealthTimeout, 10*time.Minute) }
func (r *Resize) stopTimeout() time.Duration { return cmpOr(r.StopTimeout, 5*time.Minute) }

// Plan checks that the box can become an instance of type to, before
// anyone is asked to approve it: the type exists and is offered in the
// box's zone, runs the box's architecture, has the network adapter (ENA)
// the box needs and presents EBS volumes as the box's OS expects (NVMe on
// Nitro, xvd on Xen), and fits the vCPU quota when it can be read.
// Anything else is a refusal that names what to do instead.
func (r *Resize) Plan(ctx context.Context, to string) (ResizePlan, error) {
	b, err := findInPlace(ctx, r.EC2, r.NameTag, "resize")
	if err != nil {
		return ResizePlan{}, err
	}
	switch {
	case b.Type == to:
		return ResizePlan{}, refusef("the Services box `%s` is already %s: there is nothing to resize. Nothing was requested.", b.ID, to)
	case b.State != string(ec2types.InstanceStateNameRunning) && b.State != string(ec2types.InstanceStateNameStopped):
		return ResizePlan{}, refusef("the Services box `%s` is %s: a resize starts from a running or stopped box. Nothing was requested; try again once it is.", b.ID, b.State)
	case b.RootType == string(ec2types.DeviceTypeInstanceStore):
		return ResizePlan{}, refusef("the Services box `%s` boots from an instance-store volume, which cannot be stopped: it cannot be resized in place. Nothing was requested.", b.ID)
	}
	types, err := describeTypes(ctx, r.EC2, b.Type, to)
	if err != nil {
		return ResizePlan{}, err
	}
	toInfo, ok := types[to]
	if !ok {
		return ResizePlan{}, refusef("AWS has no instance type %q in %s. Nothing was requested. (`aws ec2 describe-instance-types --instance-types %s` finds it if it exists.)", to, r.Region, to)
	}
	fromInfo, fromKnown := types[b.Type]
	if !fromKnown {
		fromInfo = TypeInfo{Name: b.Type}
	}
	offered, err := offeredIn(ctx, r.EC2, b.AZ, to)
	if err != nil {
		return ResizePlan{}, err
	}
	if !slices.Contains(offered, to) {
		return ResizePlan{}, refusef("%s is not offered in %s, the Services box's zone (its volumes and private IP keep it there). Nothing was requested.", to, b.AZ)
	}
	p := ResizePlan{Region: r.Region, NameTag: r.NameTag, Box: b, From: fromInfo, To: toInfo, AppStart: r.AppStart, HealthURL: r.HealthURL,
		StopTimeout: r.stopTimeout(), Timeout: r.timeout()}
	p.Checked = append(p.Checked, fmt.Sprintf("%s exists and is offered in %s", toInfo, b.AZ))

	arch := b.Arch
	if arch == "" && len(fromInfo.Archs) == 1 {
		arch = fromInfo.Archs[0]
	}
	switch {
	case arch == "":
		p.Checked = append(p.Checked, "architecture: the box's is not known, not compared")
	case !slices.Contains(toInfo.Archs, arch):
		return ResizePlan{}, refusef("%s runs %s; the Services box `%s` is %s, and its AMI and everything on its disks are built for that: a resize cannot change the architecture. Nothing was requested.",
			to, strings.Join(toInfo.Archs, "/"), b.ID, arch)
	default:
		p.Checked = append(p.Checked, "architecture "+arch+", as the box's")
	}

	ena, err := r.checkENA(ctx, b, fromInfo, toInfo)
	if err != nil {
		return ResizePlan{}, err
	}
	p.Checked = append(p.Checked, ena)

	nvme, err := checkNVMe(b, fromInfo, toInfo)
	if err != nil {
		return ResizePlan{}, err
	}
	p.Checked = append(p.Checked, nvme)

	if p.Quota, err = checkQuota(ctx, r.Quotas, fromInfo, toInfo); err != nil {
		return ResizePlan{}, err
	}
	return p, nil
}

// checkENA: a type that requires the ENA network adapter boots only an
// instance whose ENA support is on. It is, when the instance's attribute
// says so, when it runs on a type that requires ENA already, or when its
// image has it.
func (r *Resize) checkENA(ctx context.Context, b InPlace, from, to TypeInfo) (string, error) {
	if to.ENA != string(ec2types.EnaSupportRequired) {
		return fmt.Sprintf("ENA: %s does not require it (%s)", to.Name, cmpOrStr(to.ENA, "unknown")), nil
	}
	switch {
	case b.ENA:
		return fmt.Sprintf("ENA: %s requires it; the box's EnaSupport is on", to.Name), nil
	case from.ENA == string(ec2types.EnaSupportRequired):
		return fmt.Sprintf("ENA: %s requires it; the box runs on %s, which requires it too", to.Name, from.Name), nil
	}
	if b.ImageID != "" {
		out, err := r.EC2.DescribeImages(ctx, &ec2.DescribeImagesInput{ImageIds: []string{b.ImageID}})
		if err = translate(err); err != nil && !errors.Is(err, ErrNotFound) {
			return "", fmt.Errorf("read the box's image %s: %w", b.ImageID, err)
		}
		if err == nil && len(out.Images) > 0 && aws.ToBool(out.Images[0].EnaSupport) {
			return fmt.Sprintf("ENA: %s requires it; the box's image %s has it", to.Name, b.ImageID), nil
		}
	}
	return "", refusef("%s requires the ENA network adapter, and neither the Services box `%s` nor its image %s has ENA support on: it would not boot. Nothing was requested. Check that its OS has the ena driver, enable it on the stopped box (`aws ec2 modify-instance-attribute --instance-id %s --ena-support`), then resize.",
		to.Name, b.ID, cmpOrStr(b.ImageID, "(unknown)"), b.ID)
}

// checkNVMe: Nitro types present EBS volumes as NVMe devices, Xen types as
// xvd devices. The box's OS, its /etc/fstab and the app's mounts are made
// for what it runs on now: a move across is a migration, not a resize.
func checkNVMe(b InPlace, from, to TypeInfo) (string, error) {
	nvme := func(t TypeInfo) bool { return t.NVMe == string(ec2types.EbsNvmeSupportRequired) }
	switch {
	case from.NVMe == "":
		return fmt.Sprintf("EBS devices: %s's are not known, not compared", b.Type), nil
	case nvme(from) == nvme(to) && nvme(to):
		return "EBS volumes appear as NVMe devices on both (Nitro)", nil
	case nvme(from) == nvme(to):
		return "EBS volumes appear as xvd devices on both (Xen)", nil
	case nvme(to):
		return "", refusef("%s presents EBS volumes as NVMe devices (Nitro); the Services box runs on %s, which presents them as xvd devices. Its OS needs the NVMe driver and its /etc/fstab must not name /dev/xvd*: that is a migration to check and do by hand, not a resize. Nothing was requested.", to.Name, b.Type)
	}
	return "", refusef("%s presents EBS volumes as xvd devices (Xen); the Services box runs on %s (Nitro), whose volumes appear as NVMe devices: its /etc/fstab and the app's mounts would name devices that no longer exist. Choose a Nitro type. Nothing was requested.", to.Name, b.Type)
}

func cmpOrStr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Steps are the resize's journaled steps: the fence first, the type only
// on a stopped box.
func (r *Resize) Steps(p ResizePlan) []journal.Def {
	type w = *Work[ResizeResult]
	steps := []struct {
		name string
		run  StepFunc[ResizeResult]
	}{
		{stepStopBox, func(ctx context.Context, _ w, pr journal.Progress) (string, error) {
			return r.stop(ctx, p, pr)
		}},
		{resizeTypeStep(p.To.Name), func(ctx context.Context, op w, _ journal.Progress) (string, error) {
			if op.Result.RolledBack {
				return fmt.Sprintf("set back to %s (%s could not start)", p.From.Name, p.To.Name), nil
			}
			changed, err := r.setType(ctx, p.Box.ID, p.To.Name)
			if err != nil {
				return "", err
			}
			if !changed {
				return fmt.Sprintf("`%s` is %s already", p.Box.ID, p.To.Name), nil
			}
			return fmt.Sprintf("`%s`: %s → %s", p.Box.ID, p.From.Name, p.To.Name), nil
		}},
		{stepStartBox, func(ctx context.Context, op w, pr journal.Progress) (string, error) {
			return r.start(ctx, op, p, pr)
		}},
		{stepStartApp, func(ctx context.Context, op w, pr journal.Progress) (string, error) {
			if p.AppStart == "" || r.SSM == nil {
				return "skipped: no `services_box.app_start_command`", nil
			}
			return startApp(ctx, r.SSM, p.Box.ID, op, func(res *ResizeResult) *Commands { return &res.Commands }, p.AppStart, r.poll(), r.timeout(), pr)
		}},
		{"Verify health", func(ctx context.Context, op w, pr journal.Progress) (string, error) {
			return r.work().verify(ctx, p.Box, op.Result.Runs(p), pr)
		}},
	}
	defs := make([]journal.Def, len(steps))
	for i, st := range steps {
		defs[i] = journal.Def{Name: st.name, Run: retrying(typed(st.run), r.poll())}
	}
	return defs
}

func (r *Resize) work() boxWork {
	return boxWork{EC2: r.EC2, SSM: r.SSM, HTTP: r.HTTP, HealthURL: r.HealthURL, Poll: r.poll(), Timeout: r.timeout()}
}

// stop is the fence (fence.go): the type is not touched until AWS shows
// the box stopped.
func (r *Resize) stop(ctx context.Context, p ResizePlan, pr journal.Progress) (string, error) {
	id := p.Box.ID
	res, err := fence{EC2: r.EC2, Poll: r.poll(), Timeout: r.stopTimeout(), Log: pr.Log}.run(ctx, id, false, false)
	switch {
	case err != nil:
		return "", fmt.Errorf("the Services box is not confirmed stopped, so its type is not changed: %w", err)
	case res.Gone || res.Before == ec2types.InstanceStateNameTerminated:
		return "", fmt.Errorf("the Services box %s is gone (terminated): there is nothing to resize", id)
	case res.Already:
		return fmt.Sprintf("`%s` was already %s", id, res.Before), nil
	case res.Forced:
		return fmt.Sprintf("`%s` force-stopped and confirmed in %s", id, res.Took.Round(time.Second)), nil
	}
	return fmt.Sprintf("`%s` stopped and confirmed in %s", id, res.Took.Round(time.Second)), nil
}

// setType sets the stopped instance's type and reads it back (EC2's reads
// lag its writes); changed is false when it was that type already.
func (r *Resize) setType(ctx context.Context, id, typ string) (changed bool, err error) {
	in, ok, err := describeInstance(ctx, r.EC2, id)
	switch {
	case err != nil:
		return false, err
	case !ok:
		return false, fmt.Errorf("the Services box %s is gone", id)
	case string(in.InstanceType) == typ:
		return false, nil
	case in.State.Name != ec2types.InstanceStateNameStopped:
		return false, fmt.Errorf("the Services box %s is %s: its type changes only while it is stopped (stop it, then resume)", id, in.State.Name)
	}
	if _, err := r.EC2.ModifyInstanceAttribute(ctx, &ec2.ModifyInstanceAttributeInput{InstanceId: aws.String(id), InstanceType: &ec2types.AttributeValue{Value: aws.String(typ)}}); err != nil {
		return false, fmt.Errorf("set the instance type of %s to %s: %w", id, typ, translate(err))
	}
	var seen ec2types.InstanceType
	err = readBack(ctx, r.poll(), r.ReadBack, id+" as "+typ, func() (bool, string, error) {
		in, ok, err := describeInstance(ctx, r.EC2, id)
		if err != nil || !ok {
			return false, "", err
		}
		seen = in.InstanceType
		return string(seen) == typ, string(seen), nil
	})
	if errors.Is(err, ErrNotConverged) {
		return false, fmt.Errorf("%s still reads as %s after its type was set to %s: %w", id, seen, typ, err)
	}
	return err == nil, err
}

// cannotStart is what AWS says when it cannot run an instance of that
// type there now: no capacity in the zone, the account's vCPU limit, or a
// type the zone does not support.
func cannotStart(err error) bool {
	return errors.Is(err, ErrInsufficientCapacity) || errors.Is(err, ErrInstanceLimit) || errors.Is(err, ErrUnsupported)
}

// start starts the box as the new type; when AWS cannot start that type,
// it sets the box back to the old type and starts it, and says so.
func (r *Resize) start(ctx context.Context, op *Work[ResizeResult], p ResizePlan, pr journal.Progress) (string, error) {
	id := p.Box.ID
	begin := time.Now()
	want := op.Result.Runs(p)
	err := r.startAs(ctx, id, want)
	switch {
	case err == nil && op.Result.RolledBack:
		return fmt.Sprintf(":warning: `%s` runs as %s again after %s: %s could not start (%s)", id, want, since(begin), p.To.Name, op.Result.Why), nil
	case err == nil:
		return fmt.Sprintf("`%s` runs as %s after %s", id, want, since(begin)), nil
	case op.Result.RolledBack || !cannotStart(err):
		return "", err
	}
	why := said(err)
	op.Result.RolledBack, op.Result.Why = true, why
	// Kept at once: a resume must go on with the old type, not try the
	// new one again.
	_ = op.Save()
	pr.Log(fmt.Sprintf(":warning: %s could not start (%s). Setting `%s` back to %s and starting it.", p.To.Name, why, id, p.From.Name))
	if _, err := r.setType(ctx, id, p.From.Name); err != nil {
		return "", fmt.Errorf("%s could not start, and setting the box back to %s failed: %w", p.To.Name, p.From.Name, err)
	}
	if err := r.startAs(ctx, id, p.From.Name); err != nil {
		return "", fmt.Errorf("%s could not start, and the box did not start again as %s either: %w", p.To.Name, p.From.Name, err)
	}
	return fmt.Sprintf(":warning: %s could not start (%s); `%s` was set back to %s and runs after %s", p.To.Name, why, id, p.From.Name, since(begin)), nil
}

// startAs starts the stopped box, which must be of type typ, and waits
// until it runs. AWS refuses a start it has no capacity for, or accepts
// it and stops the instance again with the reason
// Server.InsufficientInstanceCapacity: both are ErrInsufficientCapacity.
func (r *Resize) startAs(ctx context.Context, id, typ string) error {
	in, ok, err := describeInstance(ctx, r.EC2, id)
	switch {
	case err != nil:
		return err
	case !ok:
		return fmt.Errorf("the Services box %s is gone", id)
	case string(in.InstanceType) != typ:
		return fmt.Errorf("the Services box %s is %s, not %s: not starting it", id, in.InstanceType, typ)
	}
	switch in.State.Name {
	case ec2types.InstanceStateNameRunning:
		return nil
	case ec2types.InstanceStateNameStopped:
		if _, err := r.EC2.StartInstances(ctx, &ec2.StartInstancesInput{InstanceIds: []string{id}}); err != nil {
			return fmt.Errorf("start %s as %s: %w", id, typ, translate(err))
		}
	case ec2types.InstanceStateNamePending:
	default:
		return fmt.Errorf("the Services box %s is %s: not starting it", id, in.State.Name)
	}
	timeout := r.timeout()
	pending := false
	err = waitFor(ctx, r.poll(), time.Now().Add(timeout), func() (bool, error) {
		in, ok, err := describeInstance(ctx, r.EC2, id)
		switch {
		case err != nil:
			return false, err
		case !ok:
			return false, fmt.Errorf("the Services box %s is gone", id)
		}
		reason := ""
		if in.StateReason != nil {
			reason = aws.ToString(in.StateReason.Code)
		}
		switch in.State.Name {
		case ec2types.InstanceStateNameRunning:
			return true, nil
		case ec2types.InstanceStateNamePending:
			pending = true
		case ec2types.InstanceStateNameStopped:
			if strings.Contains(reason, "InsufficientInstanceCapacity") {
				return false, fmt.Errorf("%s stopped again while starting as %s (%s): %w", id, typ, reason, ErrInsufficientCapacity)
			}
			if pending {
				return false, fmt.Errorf("%s stopped again while starting as %s (%s)", id, typ, cmpOrStr(reason, "no reason given"))
			}
		case ec2types.InstanceStateNameStopping, ec2types.InstanceStateNameShuttingDown, ec2types.InstanceStateNameTerminated:
			return false, fmt.Errorf("%s is %s while starting as %s (%s)", id, in.State.Name, typ, cmpOrStr(reason, "no reason given"))
		}
		return false, nil
	})
	var to *waitTimeout
	if errors.As(err, &to) {
		return fmt.Errorf("%s did not run within %s of its start as %s", id, Span(timeout), typ)
	}
	return err
}
