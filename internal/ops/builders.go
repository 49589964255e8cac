package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	asgtypes "github.com/aws/aws-sdk-go-v2/service/autoscaling/types"

	"github.com/circlebot/circlebot/internal/journal"
)

// BuilderASG is the part of Auto Scaling a builder rotation uses.
type BuilderASG interface {
	AutoScaling
	SetDesiredCapacity(context.Context, *autoscaling.SetDesiredCapacityInput, ...func(*autoscaling.Options)) (*autoscaling.SetDesiredCapacityOutput, error)
	TerminateInstanceInAutoScalingGroup(context.Context, *autoscaling.TerminateInstanceInAutoScalingGroupInput, ...func(*autoscaling.Options)) (*autoscaling.TerminateInstanceInAutoScalingGroupOutput, error)
}

// Builders replaces the builder fleet so that every builder reconnects to
// the current Services box.
//
// How, and why: each batch is surged in first — desired capacity is
// raised by the batch size, the group launches new builders from its
// launch template, and only when they are InService and Healthy are the
// batch's old builders terminated with the desired capacity decremented.
// The fleet never has fewer healthy builders than it started with. This is
// what Auto Scaling's instance refresh does with MinHealthyPercentage 100
// and MaxHealthyPercentage above 100, done with the basic calls so that it
// runs the same on AWS and on moto (which has no instance refresh), and so
// that every batch is a journaled step that resumes after a crash.
type Builders struct {
	ASG     BuilderASG
	Group   string
	Batch   int // builders per batch; 0: a quarter of the fleet, at least 1
	Poll    time.Duration
	Timeout time.Duration // per batch, for new builders to be healthy
	// ReadBack bounds the read-back that the old builders left the group
	// (default 2 min): Auto Scaling's reads lag its writes.
	ReadBack time.Duration
}

// RotationPlan is the fleet as it was when the rotation was planned.
type RotationPlan struct {
	Group     string   `json:"group"`
	Desired   int32    `json:"desired"`
	Min       int32    `json:"min"`
	Max       int32    `json:"max"`
	Instances []string `json:"instances"` // to replace, sorted
	Batch     int      `json:"batch"`
}

func (p RotationPlan) Batches() [][]string {
	var out [][]string
	for i := 0; i < len(p.Instances); i += p.Batch {
		out = append(out, p.Instances[i:min(i+p.Batch, len(p.Instances))])
	}
	return out
}

// Facts bind the approval to the group and the batch size, not to the
// instance list or the desired capacity, which autoscaling changes by
// itself between the request and the approval. The instances to replace
// are read again when it runs and kept in the journal.
func (p RotationPlan) Facts() map[string]string {
	return map[string]string{"group": p.Group, "batch": fmt.Sprint(p.Batch)}
}

func (p RotationPlan) Encode() string { b, _ := json.Marshal(p); return string(b) }

func DecodeRotationPlan(s string) (RotationPlan, error) {
	var p RotationPlan
	err := json.Unmarshal([]byte(s), &p)
	return p, err
}

func (b *Builders) group(ctx context.Context) (asgtypes.AutoScalingGroup, error) {
	out, err := b.ASG.DescribeAutoScalingGroups(ctx, &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{b.Group}})
	if err != nil {
		return asgtypes.AutoScalingGroup{}, fmt.Errorf("read the builder group %s: %w", b.Group, translate(err))
	}
	if len(out.AutoScalingGroups) == 0 {
		return asgtypes.AutoScalingGroup{}, refusef("there is no Auto Scaling group `%s` (`builders.asg_name`).", b.Group)
	}
	return out.AutoScalingGroups[0], nil
}

// stillIn reports whether instance id is in the group and not on its way
// out; a group that cannot be read counts as still holding it.
func (b *Builders) stillIn(ctx context.Context, id string) bool {
	g, err := b.group(ctx)
	if err != nil {
		return true
	}
	return slices.ContainsFunc(g.Instances, func(i asgtypes.Instance) bool {
		return aws.ToString(i.InstanceId) == id && !strings.HasPrefix(string(i.LifecycleState), "Terminat")
	})
}

// Plan records the fleet and sizes the batches: each batch must fit
// between the desired capacity and the group's maximum.
func (b *Builders) Plan(ctx context.Context) (RotationPlan, error) {
	g, err := b.group(ctx)
	if err != nil {
		return RotationPlan{}, err
	}
	p := RotationPlan{Group: b.Group, Desired: aws.ToInt32(g.DesiredCapacity), Min: aws.ToInt32(g.MinSize), Max: aws.ToInt32(g.MaxSize)}
	for _, in := range g.Instances {
		if in.LifecycleState == asgtypes.LifecycleStateInService || in.LifecycleState == asgtypes.LifecycleStatePending {
			p.Instances = append(p.Instances, aws.ToString(in.InstanceId))
		}
	}
	slices.Sort(p.Instances)
	if len(p.Instances) == 0 {
		return p, refusef("the builder group `%s` has no instances to rotate.", b.Group)
	}
	room := int(p.Max - p.Desired)
	if room < 1 {
		return p, refusef("the builder group `%s` is at its maximum size (%d): a rotation adds new builders before removing old ones so the fleet never shrinks. Raise its max size by at least 1, then request again.", b.Group, p.Max)
	}
	p.Batch = b.Batch
	if p.Batch <= 0 {
		p.Batch = max(1, len(p.Instances)/4)
	}
	p.Batch = min(p.Batch, room, len(p.Instances))
	return p, nil
}

// RotationSteps names the steps of plan.
func RotationSteps(p RotationPlan) []string {
	var s []string
	bs := p.Batches()
	for i, batch := range bs {
		s = append(s, fmt.Sprintf("Replace batch %d of %d (%s)", i+1, len(bs), strings.Join(batch, ", ")))
	}
	return append(s, "Verify the fleet")
}

// Steps returns the journal steps: one per batch, then a check.
func (b *Builders) Steps(p RotationPlan) []journal.Def {
	names := RotationSteps(p)
	var defs []journal.Def
	for i, batch := range p.Batches() {
		defs = append(defs, journal.Def{Name: names[i], Run: retrying(func(ctx context.Context, _ *journal.Op, pr journal.Progress) (string, error) {
			return b.replace(ctx, p, batch, pr)
		}, b.poll())})
	}
	defs = append(defs, journal.Def{Name: names[len(names)-1], Run: retrying(func(ctx context.Context, _ *journal.Op, _ journal.Progress) (string, error) {
		return b.verify(ctx, p)
	}, b.poll())})
	return defs
}

func (b *Builders) poll() time.Duration { return cmpOr(b.Poll, 5*time.Second) }

// ReplaceAll runs every batch and the check in one step (a failover's).
func (b *Builders) ReplaceAll(ctx context.Context, p RotationPlan, pr journal.Progress) (string, error) {
	for _, batch := range p.Batches() {
		if _, err := b.replace(ctx, p, batch, pr); err != nil {
			return "", err
		}
	}
	return b.verify(ctx, p)
}

// replace surges the batch's replacements in, waits for them to be
// healthy, then retires the batch. Run again, it only does what is left.
func (b *Builders) replace(ctx context.Context, p RotationPlan, batch []string, pr journal.Progress) (string, error) {
	start := time.Now()
	g, err := b.group(ctx)
	if err != nil {
		return "", err
	}
	in := map[string]asgtypes.Instance{}
	for _, i := range g.Instances {
		in[aws.ToString(i.InstanceId)] = i
	}
	var left []string
	for _, id := range batch {
		if i, ok := in[id]; ok && !strings.HasPrefix(string(i.LifecycleState), "Terminat") {
			left = append(left, id)
		}
	}
	if len(left) == 0 {
		return "already replaced", nil
	}
	target := p.Desired + int32(len(left))
	if aws.ToInt32(g.DesiredCapacity) < target {
		if _, err := b.ASG.SetDesiredCapacity(ctx, &autoscaling.SetDesiredCapacityInput{AutoScalingGroupName: aws.String(p.Group), DesiredCapacity: aws.Int32(target), HonorCooldown: aws.Bool(false)}); err != nil {
			return "", fmt.Errorf("raise %s to %d for the new builders: %w", p.Group, target, translate(err))
		}
	}
	deadline := time.Now().Add(cmpOr(b.Timeout, 15*time.Minute))
	for {
		g, err = b.group(ctx)
		if err != nil && !transient(err) {
			return "", err // (a transient failure is a poll that saw nothing, as in waitFor)
		}
		// Builders of earlier batches were retired: a read that lags may
		// still show them in service, and counting them would retire this
		// batch before its replacements are healthy.
		if err == nil && healthyBut(g, retired(p, batch)) >= int(target) {
			break
		}
		if time.Now().After(deadline) {
			// Give the surge back by removing the new builders themselves
			// (with the capacity), so the old, healthy ones stay: left to
			// Auto Scaling, its policy could pick the old ones.
			return "", fmt.Errorf("the new builders of %s are not healthy after %s (%d of %d); %s", p.Group, cmpOr(b.Timeout, 15*time.Minute), healthy(g), target, b.unsurge(context.WithoutCancel(ctx), p))
		}
		if err := sleep(ctx, b.poll()); err != nil {
			return "", err
		}
	}
	pr.Log(fmt.Sprintf("%s: %d healthy builders; retiring %s.", p.Group, healthy(g), strings.Join(left, ", ")))
	var retiring []string
	for _, id := range left {
		_, err := b.ASG.TerminateInstanceInAutoScalingGroup(ctx, &autoscaling.TerminateInstanceInAutoScalingGroupInput{InstanceId: aws.String(id), ShouldDecrementDesiredCapacity: aws.Bool(true)})
		// ValidationError is Auto Scaling's code for "not in the group"
		// and for other refusals too (a min size the termination would
		// break): it counts as gone only when the group says so, never
		// by the message's text.
		if err = translate(err); err != nil && (!errors.Is(err, ErrNotInGroup) || b.stillIn(ctx, id)) {
			return "", fmt.Errorf("retire %s: %w", id, err)
		}
		if err == nil {
			retiring = append(retiring, id)
		}
	}
	// Read back until the group shows them leaving: the next batch plans
	// its surge from this read, and one that lags would still show the
	// capacity this batch gave back.
	err = readBack(ctx, b.poll(), b.ReadBack, strings.Join(retiring, ", ")+" leaving "+p.Group, func() (bool, string, error) {
		g, err := b.group(ctx)
		if err != nil {
			return false, "", err
		}
		var still []string
		for _, i := range g.Instances {
			if slices.Contains(retiring, aws.ToString(i.InstanceId)) && !strings.HasPrefix(string(i.LifecycleState), "Terminat") {
				still = append(still, aws.ToString(i.InstanceId)+" "+string(i.LifecycleState))
			}
		}
		return len(still) == 0, strings.Join(still, ", "), nil
	})
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s replaced in %s; the fleet never had fewer than %d healthy builders", strings.Join(left, ", "), since(start), p.Desired), nil
}

// unsurge gives a failed batch's surge back and says what it did. It
// terminates, with the capacity, builders the rotation added (those not
// in the plan), the unhealthy ones first, only as many as the group holds
// above the planned desired capacity: the new builders of a finished
// batch replaced old ones and stay. If the batch's builders never
// launched, there is nothing to terminate and the desired capacity is set
// back instead.
func (b *Builders) unsurge(ctx context.Context, p RotationPlan) string {
	g, err := b.group(ctx)
	if err != nil {
		return "could not read the group to remove the new builders: " + Explain(err) + "; set its desired capacity back to " + fmt.Sprint(p.Desired) + " by hand"
	}
	active := 0
	var added []asgtypes.Instance
	for _, i := range g.Instances {
		if strings.HasPrefix(string(i.LifecycleState), "Terminat") {
			continue
		}
		active++
		if !slices.Contains(p.Instances, aws.ToString(i.InstanceId)) {
			added = append(added, i)
		}
	}
	isHealthy := func(i asgtypes.Instance) int {
		if i.LifecycleState == asgtypes.LifecycleStateInService && aws.ToString(i.HealthStatus) == "Healthy" {
			return 1
		}
		return 0
	}
	slices.SortStableFunc(added, func(x, y asgtypes.Instance) int { return isHealthy(x) - isHealthy(y) })
	added = added[:max(0, min(active-int(p.Desired), len(added)))]
	var removed, failed []string
	for _, i := range added {
		id := aws.ToString(i.InstanceId)
		if _, err := b.ASG.TerminateInstanceInAutoScalingGroup(ctx, &autoscaling.TerminateInstanceInAutoScalingGroupInput{InstanceId: aws.String(id), ShouldDecrementDesiredCapacity: aws.Bool(true)}); err != nil {
			failed = append(failed, id)
			continue
		}
		removed = append(removed, id)
	}
	msg := "the old builders were kept"
	if len(removed) > 0 {
		msg += "; the new ones were removed (" + strings.Join(removed, ", ") + ")"
	}
	if len(failed) > 0 {
		return msg + "; could NOT remove " + strings.Join(failed, ", ") + ": terminate them and set the desired capacity back to " + fmt.Sprint(p.Desired) + " by hand"
	}
	// Never below the builders left, so Auto Scaling has none to pick.
	back := max(p.Desired, int32(active-len(removed)))
	if aws.ToInt32(g.DesiredCapacity)-int32(len(removed)) > back {
		if _, err := b.ASG.SetDesiredCapacity(ctx, &autoscaling.SetDesiredCapacityInput{AutoScalingGroupName: aws.String(p.Group), DesiredCapacity: aws.Int32(back), HonorCooldown: aws.Bool(false)}); err != nil {
			return msg + "; could NOT set the desired capacity back to " + fmt.Sprint(back) + " (" + Explain(err) + "): set it by hand"
		}
		msg += "; the desired capacity was set back to " + fmt.Sprint(back)
	}
	return msg
}

func healthy(g asgtypes.AutoScalingGroup) int {
	n := 0
	for _, i := range g.Instances {
		if i.LifecycleState == asgtypes.LifecycleStateInService && aws.ToString(i.HealthStatus) == "Healthy" {
			n++
		}
	}
	return n
}

// retired lists the builders of the batches before batch.
func retired(p RotationPlan, batch []string) []string {
	var out []string
	for _, b := range p.Batches() {
		if len(b) > 0 && len(batch) > 0 && b[0] == batch[0] {
			break
		}
		out = append(out, b...)
	}
	return out
}

// healthyBut counts the healthy builders other than those named.
func healthyBut(g asgtypes.AutoScalingGroup, not []string) int {
	n := 0
	for _, i := range g.Instances {
		if i.LifecycleState == asgtypes.LifecycleStateInService && aws.ToString(i.HealthStatus) == "Healthy" && !slices.Contains(not, aws.ToString(i.InstanceId)) {
			n++
		}
	}
	return n
}

func (b *Builders) verify(ctx context.Context, p RotationPlan) (string, error) {
	var g asgtypes.AutoScalingGroup
	var still []string
	// The retirements show in the group some time after they were made.
	err := readBack(ctx, b.poll(), b.ReadBack, "the old builders gone from "+p.Group, func() (bool, string, error) {
		var err error
		if g, err = b.group(ctx); err != nil {
			return false, "", err
		}
		still = still[:0]
		for _, i := range g.Instances {
			if slices.Contains(p.Instances, aws.ToString(i.InstanceId)) && !strings.HasPrefix(string(i.LifecycleState), "Terminat") {
				still = append(still, aws.ToString(i.InstanceId))
			}
		}
		return len(still) == 0, "old builders " + strings.Join(still, ", "), nil
	})
	switch {
	case errors.Is(err, ErrNotConverged):
		return "", fmt.Errorf("old builders still in %s: %s: %w", p.Group, strings.Join(still, ", "), err)
	case err != nil:
		return "", err
	}
	return fmt.Sprintf("%d new builders in service (desired %d); none of the old ones left", healthy(g), aws.ToInt32(g.DesiredCapacity)), nil
}

// BuilderStatus is the fleet as `builders status` shows it.
type BuilderStatus struct {
	Group                  string
	Desired, Min, Max      int32
	Instances              []BuilderInstance
	LaunchTemplate         string
	ServicesIP, ServiceIPs string
}

type BuilderInstance struct {
	ID, State, Health, AZ, Type, Template string
}

// Status reads the fleet.
func (b *Builders) Status(ctx context.Context) (BuilderStatus, error) {
	g, err := b.group(ctx)
	if err != nil {
		return BuilderStatus{}, err
	}
	s := BuilderStatus{Group: b.Group, Desired: aws.ToInt32(g.DesiredCapacity), Min: aws.ToInt32(g.MinSize), Max: aws.ToInt32(g.MaxSize)}
	if g.LaunchTemplate != nil {
		s.LaunchTemplate = aws.ToString(g.LaunchTemplate.LaunchTemplateName) + " " + aws.ToString(g.LaunchTemplate.Version)
	}
	for _, i := range g.Instances {
		bi := BuilderInstance{ID: aws.ToString(i.InstanceId), State: string(i.LifecycleState), Health: aws.ToString(i.HealthStatus), AZ: aws.ToString(i.AvailabilityZone), Type: aws.ToString(i.InstanceType)}
		if i.LaunchTemplate != nil {
			bi.Template = aws.ToString(i.LaunchTemplate.Version)
		}
		s.Instances = append(s.Instances, bi)
	}
	slices.SortFunc(s.Instances, func(a, b BuilderInstance) int { return strings.Compare(a.ID, b.ID) })
	return s, nil
}
