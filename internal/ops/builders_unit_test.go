package ops

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	asgtypes "github.com/aws/aws-sdk-go-v2/service/autoscaling/types"
	"github.com/aws/smithy-go"

	"github.com/circlebot/circlebot/internal/journal"
)

// fakeGroup is a small Auto Scaling group that lives one tick per
// DescribeAutoScalingGroups: a builder being terminated is shown once as
// Terminating and then gone; the group launches builders up to its
// desired capacity (i-new01, i-new02, … in order), each Pending for one
// tick, then InService and Unhealthy until it is healthyAfter ticks old,
// then Healthy — unless it is in never. Nothing depends on the clock.
type fakeGroup struct {
	t                 *testing.T
	mu                sync.Mutex
	name              string
	desired, min, max int32
	insts             []*fakeBuilder
	seq               int
	launchable        int // builders it can still launch (a broken launch template: 0)
	healthyAfter      int
	never             map[string]bool // new builders that never turn healthy
	// describeErrs answer the next describes in turn (nil: answer).
	describeErrs  []error
	setErrs       []error
	terminateErrs map[string]error
	// leaveOnTerminate leaves the group as its termination is asked for
	// (answering terminateErrs): it went meanwhile.
	leaveOnTerminate string
	// floor: no call may leave the desired capacity below it, nor
	// terminate a healthy builder while fewer than floor others are
	// healthy (0: not checked).
	floor     int32
	calls     []string // the mutating calls, as setCall and termCall spell them
	describes int
}

type fakeBuilder struct {
	id, state, health string
	age               int
	new, leaving      bool
}

func newFakeGroup(t *testing.T, desired, minSize, maxSize int32, old ...string) *fakeGroup {
	g := &fakeGroup{t: t, name: "builders", desired: desired, min: minSize, max: maxSize, launchable: 1 << 20, healthyAfter: 2, never: map[string]bool{}, terminateErrs: map[string]error{}}
	for _, id := range old {
		g.insts = append(g.insts, &fakeBuilder{id: id, state: "InService", health: "Healthy"})
	}
	return g
}

func setCall(n int32) string { return fmt.Sprintf("SetDesiredCapacity(%d, HonorCooldown=false)", n) }
func termCall(id string) string {
	return fmt.Sprintf("TerminateInstanceInAutoScalingGroup(%s, ShouldDecrementDesiredCapacity=true)", id)
}

func validation(format string, a ...any) error {
	return &smithy.GenericAPIError{Code: "ValidationError", Message: fmt.Sprintf(format, a...)}
}

// notInGroup is Auto Scaling's answer for an instance that left the
// group, as the SDK hands it over: inside the operation's error.
func notInGroup(id, group string) error {
	return &smithy.OperationError{ServiceID: "Auto Scaling", OperationName: "TerminateInstanceInAutoScalingGroup",
		Err: validation("The instance %s is not part of Auto Scaling group %s.", id, group)}
}

func groupErr(code string) error {
	return &smithy.GenericAPIError{Code: code, Message: "fake " + code}
}

func (g *fakeGroup) tick() {
	var keep []*fakeBuilder
	for _, b := range g.insts {
		if b.leaving {
			continue
		}
		if b.state == "Terminating" {
			b.leaving = true
		}
		if b.new && b.state != "Terminating" {
			b.age++
			if b.age >= 1 {
				b.state = "InService"
			}
			if b.age >= g.healthyAfter && !g.never[b.id] {
				b.health = "Healthy"
			}
		}
		keep = append(keep, b)
	}
	g.insts = keep
	for int32(g.active()) < g.desired && g.launchable > 0 {
		g.seq++
		g.launchable--
		g.insts = append(g.insts, &fakeBuilder{id: fmt.Sprintf("i-new%02d", g.seq), state: "Pending", health: "Unhealthy", new: true})
	}
}

func (g *fakeGroup) active() int {
	n := 0
	for _, b := range g.insts {
		if b.state != "Terminating" {
			n++
		}
	}
	return n
}

func (g *fakeGroup) healthyOthers(id string) int32 {
	var n int32
	for _, b := range g.insts {
		if b.id != id && b.state == "InService" && b.health == "Healthy" {
			n++
		}
	}
	return n
}

func (g *fakeGroup) DescribeAutoScalingGroups(_ context.Context, in *autoscaling.DescribeAutoScalingGroupsInput, _ ...func(*autoscaling.Options)) (*autoscaling.DescribeAutoScalingGroupsOutput, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.describes++
	if len(g.describeErrs) > 0 {
		err := g.describeErrs[0]
		g.describeErrs = g.describeErrs[1:]
		if err != nil {
			return nil, err
		}
	}
	if !slices.Equal(in.AutoScalingGroupNames, []string{g.name}) {
		return &autoscaling.DescribeAutoScalingGroupsOutput{}, nil
	}
	g.tick()
	out := asgtypes.AutoScalingGroup{AutoScalingGroupName: aws.String(g.name), DesiredCapacity: aws.Int32(g.desired), MinSize: aws.Int32(g.min), MaxSize: aws.Int32(g.max)}
	for _, b := range g.insts {
		out.Instances = append(out.Instances, asgtypes.Instance{InstanceId: aws.String(b.id), LifecycleState: asgtypes.LifecycleState(b.state), HealthStatus: aws.String(b.health), AvailabilityZone: aws.String("us-east-1a"), InstanceType: aws.String("m5.large")})
	}
	return &autoscaling.DescribeAutoScalingGroupsOutput{AutoScalingGroups: []asgtypes.AutoScalingGroup{out}}, nil
}

func (g *fakeGroup) SetDesiredCapacity(_ context.Context, in *autoscaling.SetDesiredCapacityInput, _ ...func(*autoscaling.Options)) (*autoscaling.SetDesiredCapacityOutput, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := aws.ToInt32(in.DesiredCapacity)
	g.calls = append(g.calls, fmt.Sprintf("SetDesiredCapacity(%d, HonorCooldown=%t)", n, aws.ToBool(in.HonorCooldown)))
	if aws.ToString(in.AutoScalingGroupName) != g.name {
		return nil, validation("AutoScalingGroup name not found - %s", aws.ToString(in.AutoScalingGroupName))
	}
	if len(g.setErrs) > 0 {
		err := g.setErrs[0]
		g.setErrs = g.setErrs[1:]
		if err != nil {
			return nil, err
		}
	}
	if n > g.max {
		return nil, validation("New SetDesiredCapacity value %d is above max value %d for the AutoScalingGroup.", n, g.max)
	}
	if n < g.min {
		return nil, validation("New SetDesiredCapacity value %d is below min value %d for the AutoScalingGroup.", n, g.min)
	}
	if n < g.floor {
		g.t.Errorf("desired capacity set to %d, below the fleet's %d", n, g.floor)
	}
	g.desired = n
	return &autoscaling.SetDesiredCapacityOutput{}, nil
}

func (g *fakeGroup) TerminateInstanceInAutoScalingGroup(_ context.Context, in *autoscaling.TerminateInstanceInAutoScalingGroupInput, _ ...func(*autoscaling.Options)) (*autoscaling.TerminateInstanceInAutoScalingGroupOutput, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	id := aws.ToString(in.InstanceId)
	g.calls = append(g.calls, fmt.Sprintf("TerminateInstanceInAutoScalingGroup(%s, ShouldDecrementDesiredCapacity=%t)", id, aws.ToBool(in.ShouldDecrementDesiredCapacity)))
	if err := g.terminateErrs[id]; err != nil {
		if id == g.leaveOnTerminate {
			g.insts = slices.DeleteFunc(g.insts, func(b *fakeBuilder) bool { return b.id == id })
		}
		return nil, err
	}
	i := slices.IndexFunc(g.insts, func(b *fakeBuilder) bool { return b.id == id && b.state != "Terminating" })
	if i < 0 {
		return nil, notInGroup(id, g.name)
	}
	b := g.insts[i]
	if aws.ToBool(in.ShouldDecrementDesiredCapacity) {
		if g.desired-1 < g.min {
			return nil, validation("Currently, desiredSize equals minSize (%d). Terminating instance without replacement will violate group's min size constraint.", g.min)
		}
		g.desired--
		if g.desired < g.floor {
			g.t.Errorf("terminating %s took the desired capacity to %d, below the fleet's %d", id, g.desired, g.floor)
		}
	}
	if b.state == "InService" && b.health == "Healthy" && g.healthyOthers(id) < g.floor {
		g.t.Errorf("healthy %s terminated while only %d other builders were healthy; the fleet needs %d", id, g.healthyOthers(id), g.floor)
	}
	b.state = "Terminating"
	return &autoscaling.TerminateInstanceInAutoScalingGroupOutput{}, nil
}

// takeCalls returns the mutating calls since the last takeCalls.
func (g *fakeGroup) takeCalls() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	c := g.calls
	g.calls = nil
	return c
}

// members are the builders not being terminated, and the desired capacity.
func (g *fakeGroup) members() ([]string, int32) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var ids []string
	for _, b := range g.insts {
		if b.state != "Terminating" {
			ids = append(ids, b.id)
		}
	}
	slices.Sort(ids)
	return ids, g.desired
}

// quietProgress is a journal.Progress (and a backup Progress) that keeps
// its log lines to itself.
type quietProgress struct {
	mu   sync.Mutex
	logs []string
}

func (p *quietProgress) Begin(int, string)             {}
func (p *quietProgress) Done(int, string)              {}
func (p *quietProgress) Skip(int, string)              {}
func (p *quietProgress) Fail(int, error)               {}
func (p *quietProgress) Progress(int, float64, string) {}
func (p *quietProgress) Log(s string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.logs = append(p.logs, s)
}

// Generous: a healthy batch finishes in a few ticks of 1 ms; only the
// tests of a batch that never gets healthy shorten it.
const rotationTimeout = 30 * time.Second

func newBuilders(g *fakeGroup, batch int) *Builders {
	return &Builders{ASG: g, Group: g.name, Batch: batch, Poll: time.Millisecond, Timeout: rotationTimeout, ReadBack: 30 * time.Millisecond}
}

func runStep(t *testing.T, d journal.Def) error {
	t.Helper()
	_, err := d.Run(context.Background(), &journal.Op{Data: map[string]string{}}, &quietProgress{})
	return err
}

func plan(t *testing.T, b *Builders) RotationPlan {
	t.Helper()
	p, err := b.Plan(context.Background())
	if err != nil {
		t.Fatalf("plan: %v", err)
	}
	return p
}

func wantGroupCalls(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s: calls\n  %q\nwant\n  %q", what, got, want)
	}
}

func wantMembers(t *testing.T, g *fakeGroup, desired int32, ids ...string) {
	t.Helper()
	got, d := g.members()
	slices.Sort(ids)
	if !slices.Equal(got, ids) || d != desired {
		t.Errorf("group: desired %d, builders %v; want desired %d, builders %v", d, got, desired, ids)
	}
}

func isRefusal(err error) bool {
	var r *RefusalError
	return errors.As(err, &r)
}

func TestBuildersPlanSizesTheBatchesToTheGroup(t *testing.T) {
	ctx := context.Background()
	t.Run("a quarter of the fleet, only builders that serve", func(t *testing.T) {
		g := newFakeGroup(t, 8, 1, 12, "i-h", "i-b", "i-g", "i-c", "i-e", "i-a", "i-d")
		g.launchable = 0
		g.insts = append(g.insts, &fakeBuilder{id: "i-f", state: "Pending", health: "Healthy"},
			&fakeBuilder{id: "i-x", state: "Terminating", health: "Unhealthy"}, &fakeBuilder{id: "i-y", state: "Standby", health: "Healthy"})
		p := plan(t, newBuilders(g, 0))
		want := RotationPlan{Group: "builders", Desired: 8, Min: 1, Max: 12, Instances: []string{"i-a", "i-b", "i-c", "i-d", "i-e", "i-f", "i-g", "i-h"}, Batch: 2}
		if fmt.Sprint(p) != fmt.Sprint(want) {
			t.Errorf("plan %+v, want %+v", p, want)
		}
		if got := p.Batches(); len(got) != 4 || !slices.Equal(got[3], []string{"i-g", "i-h"}) {
			t.Errorf("batches %v", got)
		}
		if got := RotationSteps(p); len(got) != 5 || len(newBuilders(g, 0).Steps(p)) != 5 {
			t.Errorf("steps %q", got)
		}
		if f := p.Facts(); len(f) != 2 || f["group"] != "builders" || f["batch"] != "2" {
			t.Errorf("facts %v: the approval binds the group and batch only", f)
		}
		back, err := DecodeRotationPlan(p.Encode())
		if err != nil || fmt.Sprint(back) != fmt.Sprint(p) {
			t.Errorf("decode(encode) = %+v, %v", back, err)
		}
		wantGroupCalls(t, "plan", g.takeCalls())
	})
	t.Run("the max size limits the batch", func(t *testing.T) {
		g := newFakeGroup(t, 4, 1, 5, "i-1", "i-2", "i-3", "i-4")
		if p := plan(t, newBuilders(g, 3)); p.Batch != 1 {
			t.Errorf("batch %d with room for 1 above desired 4", p.Batch)
		}
	})
	t.Run("no batch larger than the fleet", func(t *testing.T) {
		g := newFakeGroup(t, 2, 0, 20, "i-1", "i-2")
		if p := plan(t, newBuilders(g, 10)); p.Batch != 2 || len(p.Batches()) != 1 {
			t.Errorf("batch %d, batches %v", p.Batch, p.Batches())
		}
	})
	t.Run("refusals", func(t *testing.T) {
		full := newFakeGroup(t, 3, 1, 3, "i-1", "i-2", "i-3")
		if _, err := newBuilders(full, 1).Plan(ctx); !isRefusal(err) {
			t.Errorf("at max size: %v, want a refusal", err)
		}
		empty := newFakeGroup(t, 0, 0, 3)
		if _, err := newBuilders(empty, 1).Plan(ctx); !isRefusal(err) {
			t.Errorf("no instances: %v, want a refusal", err)
		}
		missing := &Builders{ASG: newFakeGroup(t, 1, 0, 3, "i-1"), Group: "other"}
		if _, err := missing.Plan(ctx); !isRefusal(err) {
			t.Errorf("no such group: %v, want a refusal", err)
		}
		broken := newFakeGroup(t, 1, 0, 3, "i-1")
		broken.describeErrs = []error{groupErr("AccessDenied")}
		if _, err := newBuilders(broken, 1).Plan(ctx); err == nil || isRefusal(err) || errorCodeOf(err) != "AccessDenied" {
			t.Errorf("unreadable group: %v, want AWS's error", err)
		}
		for _, g := range []*fakeGroup{full, empty, broken} {
			wantGroupCalls(t, "a refused plan", g.takeCalls())
		}
	})
}

func errorCodeOf(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// The normal rotation: each batch raises the desired capacity by the
// batch, waits for the new builders to be InService and Healthy, then
// terminates exactly the batch's old builders with the capacity
// decremented, so the fleet never has fewer than desired healthy builders.
func TestBuildersRotationSurgesWaitsAndRetiresEachBatch(t *testing.T) {
	g := newFakeGroup(t, 4, 1, 6, "i-old4", "i-old2", "i-old3", "i-old1")
	g.healthyAfter = 4
	b := newBuilders(g, 2)
	p := plan(t, b)
	g.floor = p.Desired
	steps := b.Steps(p)
	if len(steps) != 3 {
		t.Fatalf("%d steps for 2 batches and a check", len(steps))
	}
	if err := runStep(t, steps[0]); err != nil {
		t.Fatalf("batch 1: %v", err)
	}
	wantGroupCalls(t, "batch 1", g.takeCalls(), setCall(6), termCall("i-old1"), termCall("i-old2"))
	wantMembers(t, g, 4, "i-old3", "i-old4", "i-new01", "i-new02")
	if err := runStep(t, steps[1]); err != nil {
		t.Fatalf("batch 2: %v", err)
	}
	wantGroupCalls(t, "batch 2", g.takeCalls(), setCall(6), termCall("i-old3"), termCall("i-old4"))
	if err := runStep(t, steps[2]); err != nil {
		t.Fatalf("verify: %v", err)
	}
	wantGroupCalls(t, "verify", g.takeCalls())
	wantMembers(t, g, 4, "i-new01", "i-new02", "i-new03", "i-new04")
}

// The last, smaller batch surges by its own size only (ReplaceAll: a
// failover's one step with every batch and the check).
func TestBuildersRotationSurgesByTheBatchItReplaces(t *testing.T) {
	g := newFakeGroup(t, 5, 1, 8, "i-1", "i-2", "i-3", "i-4", "i-5")
	b := newBuilders(g, 2)
	p := plan(t, b)
	g.floor = p.Desired
	if _, err := b.ReplaceAll(context.Background(), p, &quietProgress{}); err != nil {
		t.Fatal(err)
	}
	wantGroupCalls(t, "rotation", g.takeCalls(),
		setCall(7), termCall("i-1"), termCall("i-2"),
		setCall(7), termCall("i-3"), termCall("i-4"),
		setCall(6), termCall("i-5"))
	wantMembers(t, g, 5, "i-new01", "i-new02", "i-new03", "i-new04", "i-new05")
}

// A group whose max size leaves room for one more builder is rotated one
// builder at a time and never asked above its max.
func TestBuildersRotationStaysWithinTheMaxSize(t *testing.T) {
	g := newFakeGroup(t, 3, 1, 4, "i-1", "i-2", "i-3")
	b := newBuilders(g, 2)
	p := plan(t, b)
	g.floor = p.Desired
	if p.Batch != 1 {
		t.Fatalf("batch %d in a group with room for 1", p.Batch)
	}
	for i, s := range b.Steps(p) {
		if err := runStep(t, s); err != nil {
			t.Fatalf("step %d: %v", i+1, err)
		}
	}
	wantGroupCalls(t, "rotation", g.takeCalls(),
		setCall(4), termCall("i-1"),
		setCall(4), termCall("i-2"),
		setCall(4), termCall("i-3"))
	wantMembers(t, g, 3, "i-new01", "i-new02", "i-new03")
}

// Autoscaling raised the desired capacity above the surge meanwhile: the
// rotation does not lower it, and still retires the batch with decrement.
func TestBuildersRotationNeverLowersAHigherDesiredCapacity(t *testing.T) {
	g := newFakeGroup(t, 4, 1, 10, "i-1", "i-2", "i-3", "i-4")
	b := newBuilders(g, 2)
	p := plan(t, b)
	g.desired = 7
	g.floor = p.Desired
	if err := runStep(t, b.Steps(p)[0]); err != nil {
		t.Fatal(err)
	}
	wantGroupCalls(t, "batch 1", g.takeCalls(), termCall("i-1"), termCall("i-2"))
	wantMembers(t, g, 5, "i-3", "i-4", "i-new01", "i-new02", "i-new03")
}

// A builder of the batch that left the group after the plan (Auto Scaling
// replaced it) is neither waited for nor terminated; one that leaves
// between the health check and its termination does not fail the batch.
func TestBuildersRotationSkipsABuilderThatLeftTheGroup(t *testing.T) {
	g := newFakeGroup(t, 4, 1, 6, "i-1", "i-2", "i-3", "i-4")
	b := newBuilders(g, 2)
	p := plan(t, b)
	g.floor = p.Desired
	g.insts = slices.DeleteFunc(g.insts, func(x *fakeBuilder) bool { return x.id == "i-1" })
	g.insts = append(g.insts, &fakeBuilder{id: "i-repl", state: "InService", health: "Healthy"})
	steps := b.Steps(p)
	if err := runStep(t, steps[0]); err != nil {
		t.Fatal(err)
	}
	wantGroupCalls(t, "batch 1", g.takeCalls(), setCall(5), termCall("i-2"))

	// i-3 leaves the group between the step's read and its termination.
	g.terminateErrs["i-3"] = notInGroup("i-3", "builders")
	g.leaveOnTerminate = "i-3"
	if err := runStep(t, steps[1]); err != nil {
		t.Fatalf("batch 2, i-3 gone meanwhile: %v", err)
	}
	wantGroupCalls(t, "batch 2", g.takeCalls(), setCall(6), termCall("i-3"), termCall("i-4"))
}

// A batch run again — after a crash, or a retry — does only what is left.
func TestBuildersRotationResumesABatch(t *testing.T) {
	t.Run("already replaced", func(t *testing.T) {
		g := newFakeGroup(t, 4, 1, 6, "i-1", "i-2", "i-3", "i-4")
		b := newBuilders(g, 2)
		p := plan(t, b)
		g.floor = p.Desired
		step := b.Steps(p)[0]
		if err := runStep(t, step); err != nil {
			t.Fatal(err)
		}
		g.takeCalls()
		if err := runStep(t, step); err != nil {
			t.Fatalf("again: %v", err)
		}
		wantGroupCalls(t, "the batch run again", g.takeCalls())
		wantMembers(t, g, 4, "i-3", "i-4", "i-new01", "i-new02")
	})
	t.Run("stopped after the surge and one retirement", func(t *testing.T) {
		g := newFakeGroup(t, 4, 1, 6, "i-1", "i-2", "i-3", "i-4")
		b := newBuilders(g, 2)
		p := plan(t, b)
		g.floor = p.Desired
		// As the crashed run left it: surged to 6, i-1 retired (5).
		g.desired = 5
		g.insts = slices.DeleteFunc(g.insts, func(x *fakeBuilder) bool { return x.id == "i-1" })
		g.insts = append(g.insts, &fakeBuilder{id: "i-n1", state: "InService", health: "Healthy"}, &fakeBuilder{id: "i-n2", state: "InService", health: "Healthy"})
		steps := b.Steps(p)
		if err := runStep(t, steps[0]); err != nil {
			t.Fatal(err)
		}
		wantGroupCalls(t, "the batch resumed", g.takeCalls(), termCall("i-2"))
		for _, s := range steps[1:] {
			if err := runStep(t, s); err != nil {
				t.Fatal(err)
			}
		}
		wantGroupCalls(t, "the rest", g.takeCalls(), setCall(6), termCall("i-3"), termCall("i-4"))
		wantMembers(t, g, 4, "i-n1", "i-n2", "i-new01", "i-new02")
	})
	t.Run("stopped after the surge, before the new builders were healthy", func(t *testing.T) {
		g := newFakeGroup(t, 4, 1, 6, "i-1", "i-2", "i-3", "i-4")
		b := newBuilders(g, 2)
		p := plan(t, b)
		g.floor = p.Desired
		g.desired = 6
		if err := runStep(t, b.Steps(p)[0]); err != nil {
			t.Fatal(err)
		}
		wantGroupCalls(t, "the batch resumed", g.takeCalls(), termCall("i-1"), termCall("i-2"))
	})
}

// New builders that never become healthy: the batch fails after its
// timeout and the surge is given back by terminating the batch's new
// builders with decrement. The old builders stay, and so do the new
// builders of a batch already done: they replaced old ones.
func TestBuildersUnhealthyBatchGivesTheSurgeBack(t *testing.T) {
	t.Run("first batch", func(t *testing.T) {
		g := newFakeGroup(t, 4, 1, 6, "i-1", "i-2", "i-3", "i-4")
		g.never["i-new01"], g.never["i-new02"] = true, true
		b := newBuilders(g, 2)
		p := plan(t, b)
		g.floor = p.Desired
		b.Timeout = 20 * time.Millisecond
		if err := runStep(t, b.Steps(p)[0]); err == nil {
			t.Fatal("a batch whose builders never got healthy succeeded")
		}
		calls := g.takeCalls()
		wantGroupCalls(t, "the surge", calls[:1], setCall(6))
		wantSameCalls(t, "the surge given back", calls[1:], termCall("i-new01"), termCall("i-new02"))
		wantMembers(t, g, 4, "i-1", "i-2", "i-3", "i-4")
	})
	t.Run("second batch", func(t *testing.T) {
		g := newFakeGroup(t, 4, 1, 6, "i-1", "i-2", "i-3", "i-4")
		g.never["i-new03"], g.never["i-new04"] = true, true
		b := newBuilders(g, 2)
		p := plan(t, b)
		g.floor = p.Desired
		steps := b.Steps(p)
		if err := runStep(t, steps[0]); err != nil {
			t.Fatal(err)
		}
		g.takeCalls()
		b.Timeout = 20 * time.Millisecond
		if err := runStep(t, steps[1]); err == nil {
			t.Fatal("a batch whose builders never got healthy succeeded")
		}
		calls := g.takeCalls()
		wantGroupCalls(t, "the surge", calls[:1], setCall(6))
		wantSameCalls(t, "the surge given back", calls[1:], termCall("i-new03"), termCall("i-new04"))
		wantMembers(t, g, 4, "i-3", "i-4", "i-new01", "i-new02")
	})
	t.Run("one of two healthy", func(t *testing.T) {
		g := newFakeGroup(t, 4, 1, 6, "i-1", "i-2", "i-3", "i-4")
		g.never["i-new02"] = true
		b := newBuilders(g, 2)
		p := plan(t, b)
		g.floor = p.Desired
		b.Timeout = 20 * time.Millisecond
		if err := runStep(t, b.Steps(p)[0]); err == nil {
			t.Fatal("a batch with an unhealthy builder succeeded")
		}
		calls := g.takeCalls()
		wantSameCalls(t, "the surge given back", calls[1:], termCall("i-new01"), termCall("i-new02"))
		wantMembers(t, g, 4, "i-1", "i-2", "i-3", "i-4")
	})
	t.Run("one of two healthy, second batch", func(t *testing.T) {
		g := newFakeGroup(t, 4, 1, 6, "i-1", "i-2", "i-3", "i-4")
		g.never["i-new04"] = true
		b := newBuilders(g, 2)
		p := plan(t, b)
		g.floor = p.Desired
		steps := b.Steps(p)
		if err := runStep(t, steps[0]); err != nil {
			t.Fatal(err)
		}
		g.takeCalls()
		b.Timeout = 20 * time.Millisecond
		if err := runStep(t, steps[1]); err == nil {
			t.Fatal("a batch with an unhealthy builder succeeded")
		}
		calls := g.takeCalls()
		// Two builders more than planned: the unhealthy one goes, and one
		// healthy new builder (any of them: all run the new setup).
		if len(calls) != 3 || !slices.Contains(calls, termCall("i-new04")) {
			t.Errorf("calls %q: want the surge, then i-new04 and one healthy new builder terminated", calls)
		}
		got, desired := g.members()
		for _, old := range []string{"i-3", "i-4"} {
			if !slices.Contains(got, old) {
				t.Errorf("old builder %s was removed", old)
			}
		}
		if desired != 4 || len(got) != 4 {
			t.Errorf("desired %d, builders %v; want 4", desired, got)
		}
	})
}

// wantSameCalls compares calls made in no promised order.
func wantSameCalls(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	got, want = slices.Clone(got), slices.Clone(want)
	slices.Sort(got)
	slices.Sort(want)
	wantGroupCalls(t, what, got, want...)
}

// New builders that never launch (a broken launch template, no capacity
// in the zone): there is nothing to terminate, but the desired capacity
// must still come back down, or the group launches them whenever it can.
func TestBuildersBatchThatNeverLaunchedGivesTheCapacityBack(t *testing.T) {
	t.Run("none launched", func(t *testing.T) {
		g := newFakeGroup(t, 4, 1, 6, "i-1", "i-2", "i-3", "i-4")
		g.launchable = 0
		b := newBuilders(g, 2)
		p := plan(t, b)
		g.floor = p.Desired
		b.Timeout = 20 * time.Millisecond
		if err := runStep(t, b.Steps(p)[0]); err == nil {
			t.Fatal("a batch with no new builders succeeded")
		}
		wantGroupCalls(t, "batch 1", g.takeCalls(), setCall(6), setCall(4))
		wantMembers(t, g, 4, "i-1", "i-2", "i-3", "i-4")
	})
	t.Run("one of two launched", func(t *testing.T) {
		g := newFakeGroup(t, 4, 1, 6, "i-1", "i-2", "i-3", "i-4")
		g.launchable = 1
		g.never["i-new01"] = true
		b := newBuilders(g, 2)
		p := plan(t, b)
		g.floor = p.Desired
		b.Timeout = 20 * time.Millisecond
		if err := runStep(t, b.Steps(p)[0]); err == nil {
			t.Fatal("a batch with no healthy builders succeeded")
		}
		wantGroupCalls(t, "batch 1", g.takeCalls(), setCall(6), termCall("i-new01"), setCall(4))
		wantMembers(t, g, 4, "i-1", "i-2", "i-3", "i-4")
	})
	t.Run("the capacity cannot be set back", func(t *testing.T) {
		g := newFakeGroup(t, 4, 1, 6, "i-1", "i-2", "i-3", "i-4")
		g.launchable = 0
		g.setErrs = []error{nil, groupErr("AccessDenied")}
		b := newBuilders(g, 2)
		p := plan(t, b)
		b.Timeout = 20 * time.Millisecond
		err := runStep(t, b.Steps(p)[0])
		if err == nil || !containsAll(err.Error(), "back to 4") {
			t.Fatalf("err %v; want the capacity to set back by hand", err)
		}
		wantGroupCalls(t, "batch 1", g.takeCalls(), setCall(6), setCall(4))
		wantMembers(t, g, 6, "i-1", "i-2", "i-3", "i-4")
	})
}

// What unsurge cannot do, it leaves to a person and says so: the builder
// it could not remove, the capacity to set back. It does not lower the
// desired capacity past a builder it could not remove (Auto Scaling would
// pick which builder goes, maybe an old one).
func TestBuildersUnsurgeSaysWhatIsLeftToDo(t *testing.T) {
	ctx := context.Background()
	t.Run("a termination fails", func(t *testing.T) {
		g := newFakeGroup(t, 4, 1, 6, "i-1", "i-2", "i-3", "i-4")
		g.never["i-new01"], g.never["i-new02"] = true, true
		g.terminateErrs["i-new01"] = groupErr("AccessDenied")
		b := newBuilders(g, 2)
		p := plan(t, b)
		b.Timeout = 20 * time.Millisecond
		err := runStep(t, b.Steps(p)[0])
		if err == nil {
			t.Fatal("the batch succeeded")
		}
		calls := g.takeCalls()
		wantSameCalls(t, "the surge given back", calls[1:], termCall("i-new01"), termCall("i-new02"))
		if msg := err.Error(); !containsAll(msg, "i-new01", "back to 4") {
			t.Errorf("error %q does not name the builder left over and the capacity to set back", msg)
		}
		wantMembers(t, g, 5, "i-1", "i-2", "i-3", "i-4", "i-new01")
	})
	t.Run("the group cannot be read", func(t *testing.T) {
		g := newFakeGroup(t, 6, 1, 6, "i-1", "i-2", "i-3", "i-4", "i-n1", "i-n2")
		b := newBuilders(g, 2)
		p := RotationPlan{Group: g.name, Desired: 4, Min: 1, Max: 6, Instances: []string{"i-1", "i-2", "i-3", "i-4"}, Batch: 2}
		g.describeErrs = []error{groupErr("AccessDenied")}
		if msg := b.unsurge(ctx, p); !containsAll(msg, "back to 4") {
			t.Errorf("unsurge said %q; want the capacity to set back by hand", msg)
		}
		wantGroupCalls(t, "an unreadable group", g.takeCalls())
	})
	t.Run("a builder already terminating", func(t *testing.T) {
		g := newFakeGroup(t, 6, 1, 6, "i-1", "i-2", "i-3", "i-4")
		g.launchable = 0
		g.insts = append(g.insts, &fakeBuilder{id: "i-n1", state: "Terminating", health: "Unhealthy", new: true}, &fakeBuilder{id: "i-n2", state: "InService", health: "Unhealthy", new: true})
		b := newBuilders(g, 2)
		p := RotationPlan{Group: g.name, Desired: 4, Min: 1, Max: 6, Instances: []string{"i-1", "i-2", "i-3", "i-4"}, Batch: 2}
		b.unsurge(ctx, p)
		wantGroupCalls(t, "unsurge", g.takeCalls(), termCall("i-n2"), setCall(4))
		wantMembers(t, g, 4, "i-1", "i-2", "i-3", "i-4")
	})
	t.Run("nothing to give back", func(t *testing.T) {
		g := newFakeGroup(t, 4, 1, 6, "i-1", "i-2", "i-3", "i-4")
		b := newBuilders(g, 2)
		p := plan(t, b)
		b.unsurge(ctx, p)
		wantGroupCalls(t, "a group as planned", g.takeCalls())
	})
}

func containsAll(s string, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// The calls fail: the step stops at the first failure, before any old
// builder goes; a transient read is tried again.
func TestBuildersRotationStopsOnFailures(t *testing.T) {
	t.Run("the surge is refused", func(t *testing.T) {
		g := newFakeGroup(t, 4, 1, 6, "i-1", "i-2", "i-3", "i-4")
		b := newBuilders(g, 2)
		p := plan(t, b)
		g.setErrs = []error{groupErr("AccessDenied")}
		if err := runStep(t, b.Steps(p)[0]); errorCodeOf(err) != "AccessDenied" {
			t.Fatalf("err %v, want AWS's AccessDenied", err)
		}
		wantGroupCalls(t, "batch 1", g.takeCalls(), setCall(6))
	})
	t.Run("an old builder cannot be retired", func(t *testing.T) {
		g := newFakeGroup(t, 4, 1, 6, "i-1", "i-2", "i-3", "i-4")
		b := newBuilders(g, 2)
		p := plan(t, b)
		g.terminateErrs["i-1"] = groupErr("AccessDenied")
		if err := runStep(t, b.Steps(p)[0]); errorCodeOf(err) != "AccessDenied" {
			t.Fatalf("err %v, want AWS's AccessDenied", err)
		}
		wantGroupCalls(t, "batch 1", g.takeCalls(), setCall(6), termCall("i-1"))
	})
	t.Run("a ValidationError for a builder still in the group", func(t *testing.T) {
		// Auto Scaling answers ValidationError both for an instance that
		// left the group and for one whose termination would break the
		// group's min size: only the group itself tells them apart.
		g := newFakeGroup(t, 4, 1, 6, "i-1", "i-2", "i-3", "i-4")
		b := newBuilders(g, 2)
		p := plan(t, b)
		g.terminateErrs["i-1"] = &smithy.OperationError{ServiceID: "Auto Scaling", OperationName: "TerminateInstanceInAutoScalingGroup",
			Err: validation("Currently, desiredSize equals minSize (4). Terminating instance without replacement will violate group's min size constraint.")}
		if err := runStep(t, b.Steps(p)[0]); errorCodeOf(err) != "ValidationError" {
			t.Fatalf("err %v, want AWS's ValidationError: i-1 is still in the group", err)
		}
	})
	t.Run("throttled reads are tried again", func(t *testing.T) {
		g := newFakeGroup(t, 4, 1, 6, "i-1", "i-2", "i-3", "i-4")
		b := newBuilders(g, 2)
		p := plan(t, b)
		g.floor = p.Desired
		// The step's first read, then two reads while it waits.
		g.describeErrs = []error{groupErr("Throttling"), nil, groupErr("Throttling"), groupErr("RequestLimitExceeded")}
		if err := runStep(t, b.Steps(p)[0]); err != nil {
			t.Fatal(err)
		}
		wantGroupCalls(t, "batch 1", g.takeCalls(), setCall(6), termCall("i-1"), termCall("i-2"))
	})
	t.Run("the group cannot be read while waiting", func(t *testing.T) {
		g := newFakeGroup(t, 4, 1, 6, "i-1", "i-2", "i-3", "i-4")
		b := newBuilders(g, 2)
		p := plan(t, b)
		g.describeErrs = []error{nil, groupErr("AccessDenied")}
		if err := runStep(t, b.Steps(p)[0]); errorCodeOf(err) != "AccessDenied" {
			t.Fatalf("err %v, want AWS's AccessDenied", err)
		}
		wantGroupCalls(t, "batch 1", g.takeCalls(), setCall(6))
	})
	t.Run("the group is gone", func(t *testing.T) {
		g := newFakeGroup(t, 4, 1, 6, "i-1", "i-2", "i-3", "i-4")
		b := newBuilders(g, 2)
		p := plan(t, b)
		g.name = "renamed"
		if err := runStep(t, b.Steps(p)[0]); !isRefusal(err) {
			t.Fatalf("err %v, want a refusal", err)
		}
		wantGroupCalls(t, "batch 1", g.takeCalls())
	})
	t.Run("cancelled while waiting", func(t *testing.T) {
		g := newFakeGroup(t, 4, 1, 6, "i-1", "i-2", "i-3", "i-4")
		g.launchable = 0
		b := newBuilders(g, 2)
		p := plan(t, b)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			_, err := b.Steps(p)[0].Run(ctx, &journal.Op{Data: map[string]string{}}, &quietProgress{})
			done <- err
		}()
		deadline := time.Now().Add(10 * time.Second)
		for g.describeCount() < 3 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("err %v, want cancelled", err)
		}
		// A stop is not a failure: the journal resumes the batch, so the
		// surge stays for it.
		wantGroupCalls(t, "batch 1", g.takeCalls(), setCall(6))
	})
}

func (g *fakeGroup) describeCount() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.describes
}

// The last step passes only when no old builder is left.
func TestBuildersVerifyFindsOldBuildersLeft(t *testing.T) {
	g := newFakeGroup(t, 4, 1, 6, "i-1", "i-2", "i-3", "i-4")
	b := newBuilders(g, 2)
	p := plan(t, b)
	steps := b.Steps(p)
	if err := runStep(t, steps[0]); err != nil {
		t.Fatal(err)
	}
	err := runStep(t, steps[len(steps)-1])
	if err == nil || !containsAll(err.Error(), "i-3", "i-4") || containsAll(err.Error(), "i-1") {
		t.Errorf("verify after one batch of two: %v; want i-3 and i-4 named", err)
	}
	g.describeErrs = []error{groupErr("AccessDenied")}
	if err := runStep(t, steps[len(steps)-1]); errorCodeOf(err) != "AccessDenied" {
		t.Errorf("verify of an unreadable group: %v", err)
	}
}

// ReplaceAll (a failover's one step) stops at the first failed batch.
func TestBuildersReplaceAllStopsAtAFailedBatch(t *testing.T) {
	g := newFakeGroup(t, 4, 1, 6, "i-1", "i-2", "i-3", "i-4")
	g.launchable = 0
	b := newBuilders(g, 2)
	p := plan(t, b)
	b.Timeout = 20 * time.Millisecond
	if _, err := b.ReplaceAll(context.Background(), p, &quietProgress{}); err == nil {
		t.Fatal("ReplaceAll succeeded without new builders")
	}
	wantGroupCalls(t, "the failed first batch, no second", g.takeCalls(), setCall(6), setCall(4))
	wantMembers(t, g, 4, "i-1", "i-2", "i-3", "i-4")
}

func TestBuildersStatusReadsTheFleet(t *testing.T) {
	g := newFakeGroup(t, 2, 1, 4, "i-b", "i-a")
	s, err := newBuilders(g, 1).Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if s.Desired != 2 || s.Min != 1 || s.Max != 4 || len(s.Instances) != 2 || s.Instances[0].ID != "i-a" || s.Instances[0].State != "InService" || s.Instances[0].Health != "Healthy" {
		t.Errorf("status %+v", s)
	}
	g.describeErrs = []error{groupErr("AccessDenied")}
	if _, err := newBuilders(g, 1).Status(context.Background()); err == nil {
		t.Error("status of an unreadable group succeeded")
	}
}
