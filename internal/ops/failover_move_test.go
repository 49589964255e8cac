package ops

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	elb "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	elbtypes "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"
	"github.com/aws/smithy-go"
)

// The move of the service address in the two other discovery modes (a
// dedicated network interface, load-balancer target groups), the
// dispatch between the modes, and the check before it that the old box
// is still fenced.

// fakeELB is a few target groups: a deregistered target drains (as on
// AWS, for the deregistration delay), a registered one is initial. Hooks
// run before the default behaviour; an error is the call's answer.
type fakeELB struct {
	mu           sync.Mutex
	groups       map[string][]elbtypes.TargetHealthDescription
	calls        []string
	describes    int
	onDescribe   func(tg string, n int) error // n: the describes so far, this one included
	onDeregister func(tg string) error
	onRegister   func(tg string) error
}

func newFakeELB() *fakeELB { return &fakeELB{groups: map[string][]elbtypes.TargetHealthDescription{}} }

func elbErr(op, code string) error {
	return &smithy.OperationError{ServiceID: "Elastic Load Balancing v2", OperationName: op, Err: &smithy.GenericAPIError{Code: code, Message: "the test says " + code}}
}

// add puts targets (id or id:port) in group tg in state.
func (e *fakeELB) add(tg string, state elbtypes.TargetHealthStateEnum, targets ...string) {
	if _, ok := e.groups[tg]; !ok {
		e.groups[tg] = nil
	}
	for _, t := range targets {
		d := elbtypes.TargetHealthDescription{Target: &elbtypes.TargetDescription{}, TargetHealth: &elbtypes.TargetHealth{State: state}}
		id, port, ok := strings.Cut(t, ":")
		d.Target.Id = aws.String(id)
		if ok {
			var p int32
			fmt.Sscan(port, &p)
			d.Target.Port = aws.Int32(p)
		}
		e.groups[tg] = append(e.groups[tg], d)
	}
}

func targetList(ts []elbtypes.TargetDescription) string {
	var s []string
	for _, t := range ts {
		id := aws.ToString(t.Id)
		if t.Port != nil {
			id += fmt.Sprint(":", aws.ToInt32(t.Port))
		}
		s = append(s, id)
	}
	return strings.Join(s, ",")
}

func (e *fakeELB) DescribeTargetHealth(_ context.Context, in *elb.DescribeTargetHealthInput, _ ...func(*elb.Options)) (*elb.DescribeTargetHealthOutput, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	tg := aws.ToString(in.TargetGroupArn)
	e.describes++
	e.calls = append(e.calls, "DescribeTargetHealth "+tg)
	if e.onDescribe != nil {
		if err := e.onDescribe(tg, e.describes); err != nil {
			return nil, err
		}
	}
	ds, ok := e.groups[tg]
	if !ok {
		return nil, elbErr("DescribeTargetHealth", "TargetGroupNotFound")
	}
	return &elb.DescribeTargetHealthOutput{TargetHealthDescriptions: slices.Clone(ds)}, nil
}

func (e *fakeELB) DeregisterTargets(_ context.Context, in *elb.DeregisterTargetsInput, _ ...func(*elb.Options)) (*elb.DeregisterTargetsOutput, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	tg := aws.ToString(in.TargetGroupArn)
	e.calls = append(e.calls, "DeregisterTargets "+tg+" "+targetList(in.Targets))
	if e.onDeregister != nil {
		if err := e.onDeregister(tg); err != nil {
			return nil, err
		}
	}
	for i, d := range e.groups[tg] {
		if slices.ContainsFunc(in.Targets, func(t elbtypes.TargetDescription) bool { return aws.ToString(t.Id) == aws.ToString(d.Target.Id) }) {
			e.groups[tg][i].TargetHealth = &elbtypes.TargetHealth{State: elbtypes.TargetHealthStateEnumDraining}
		}
	}
	return &elb.DeregisterTargetsOutput{}, nil
}

func (e *fakeELB) RegisterTargets(_ context.Context, in *elb.RegisterTargetsInput, _ ...func(*elb.Options)) (*elb.RegisterTargetsOutput, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	tg := aws.ToString(in.TargetGroupArn)
	e.calls = append(e.calls, "RegisterTargets "+tg+" "+targetList(in.Targets))
	if e.onRegister != nil {
		if err := e.onRegister(tg); err != nil {
			return nil, err
		}
	}
	for _, t := range in.Targets {
		if !slices.ContainsFunc(e.groups[tg], func(d elbtypes.TargetHealthDescription) bool { return aws.ToString(d.Target.Id) == aws.ToString(t.Id) }) {
			e.groups[tg] = append(e.groups[tg], elbtypes.TargetHealthDescription{Target: &elbtypes.TargetDescription{Id: t.Id, Port: t.Port},
				TargetHealth: &elbtypes.TargetHealth{State: elbtypes.TargetHealthStateEnumInitial}})
		}
	}
	return &elb.RegisterTargetsOutput{}, nil
}

// states is each target of tg and its state ("i-prim:draining").
func (e *fakeELB) states(tg string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var s []string
	for _, d := range e.groups[tg] {
		s = append(s, aws.ToString(d.Target.Id)+":"+string(d.TargetHealth.State))
	}
	return s
}

// wantELBCalls compares the calls that change a target group, in order.
func wantELBCalls(t *testing.T, e *fakeELB, want ...string) {
	t.Helper()
	e.mu.Lock()
	got := slices.Clone(e.calls)
	e.mu.Unlock()
	var changes []string
	for _, c := range got {
		if !strings.HasPrefix(c, "Describe") {
			changes = append(changes, c)
		}
	}
	if !slices.Equal(changes, want) {
		t.Errorf("target group changes: %q, want %q\nall calls: %q", changes, want, got)
	}
}

// afterFence is failoverEnv after the fence: the old primary is stopped.
func afterFence() (*fakeEC2, *Failover) {
	f, fo := failoverEnv()
	f.insts["i-prim"].State = &ec2types.InstanceState{Name: stStopped}
	return f, fo
}

// eniEnv: the service address is the primary IP of a dedicated interface
// eni-svc, attached to the old box as its second interface (device index
// 1; index 0 is the box's own).
func eniEnv() (*fakeEC2, *Failover, FailoverPlan) {
	f, fo := afterFence()
	f.enis["eni-prim"].PrivateIpAddresses = f.enis["eni-prim"].PrivateIpAddresses[:1]
	n := f.addENI("eni-svc", "subnet-a", "vpc-1", "i-prim", serviceIP)
	n.Attachment.DeviceIndex = aws.Int32(1)
	fo.Discovery, fo.ENI = DiscoveryENI, "eni-svc"
	p := primaryPlan()
	p.Discovery, p.ENI = DiscoveryENI, "eni-svc"
	return f, fo, p
}

// attachedTo is where the interface is attached ("i-rep@1"), or "".
func attachedTo(f *fakeEC2, eni string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := f.enis[eni].Attachment
	if a == nil {
		return ""
	}
	return fmt.Sprintf("%s@%d", aws.ToString(a.InstanceId), aws.ToInt32(a.DeviceIndex))
}

// The interface leaves the old box, is seen available, and only then is
// attached to the replica, as its second interface.
func TestFailoverMoveENIDetachesWaitsAndAttaches(t *testing.T) {
	ctx := context.Background()
	f, fo, p := eniEnv()
	got, err := fo.moveENI(ctx, p)
	if err != nil || got != "`eni-svc` ("+serviceIP+") moved to `i-rep`" {
		t.Fatalf("%q, %v", got, err)
	}
	wantCalls(t, f, "DetachNetworkInterface eni-svc", "AttachNetworkInterface eni-svc i-rep 1")
	if at := attachedTo(f, "eni-svc"); at != "i-rep@1" {
		t.Errorf("eni-svc attached to %q", at)
	}
	// The box's own interface is never touched.
	if at := attachedTo(f, "eni-prim"); at != "i-prim@0" {
		t.Errorf("eni-prim attached to %q", at)
	}

	// The old box's zone did not answer at planning: the detach is forced
	// (a stuck instance cannot release it).
	f, fo, p = eniEnv()
	p.Primary.Unknown = "AWS said Unavailable"
	if _, err := fo.moveENI(ctx, p); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, f, "DetachNetworkInterface eni-svc force", "AttachNetworkInterface eni-svc i-rep 1")
}

// EC2 is eventually consistent: reads after the detach, and after the
// attach, may still show the interface as it was. The move waits them out
// instead of attaching an interface not yet free, or failing a move that
// worked.
func TestFailoverMoveENIWaitsOutReadsThatLag(t *testing.T) {
	ctx := context.Background()
	f, fo, p := eniEnv()
	f.eniLag = 3
	got, err := fo.moveENI(ctx, p)
	if err != nil || !strings.HasSuffix(got, "moved to `i-rep`") {
		t.Fatalf("%q, %v", got, err)
	}
	wantCalls(t, f, "DetachNetworkInterface eni-svc", "AttachNetworkInterface eni-svc i-rep 1")
	// Attached only after a read showed it detached: 1 read before the
	// detach, 3 stale and 1 fresh after it, then the attach.
	calls := f.Calls()
	if i := slices.Index(calls, "AttachNetworkInterface eni-svc i-rep 1"); i < 0 || f.count("DescribeNetworkInterfaces") < 5 || slices.Index(calls[:i], "DetachNetworkInterface eni-svc") != 1 || strings.Count(strings.Join(calls[:i], "\n"), "DescribeNetworkInterfaces") != 5 {
		t.Errorf("not waited out: %q", calls)
	}

	// A read that fails transiently while waiting is one poll that saw
	// nothing.
	f, fo, p = eniEnv()
	f.describeENIs = func(n int) error {
		if n == 2 {
			return apiErr("DescribeNetworkInterfaces", "RequestLimitExceeded")
		}
		return nil
	}
	if _, err := fo.moveENI(ctx, p); err != nil {
		t.Errorf("throttled read: %v", err)
	}
	wantCalls(t, f, "DetachNetworkInterface eni-svc", "AttachNetworkInterface eni-svc i-rep 1")
}

// Run again after a failure or a crash: whatever the last attempt did is
// not done twice.
func TestFailoverMoveENIResumes(t *testing.T) {
	ctx := context.Background()
	// Detached already: attached, not detached again.
	f, fo, p := eniEnv()
	f.enis["eni-svc"].Attachment, f.enis["eni-svc"].Status = nil, ec2types.NetworkInterfaceStatusAvailable
	if got, err := fo.moveENI(ctx, p); err != nil || !strings.HasSuffix(got, "moved to `i-rep`") {
		t.Errorf("detached already: %q, %v", got, err)
	}
	wantCalls(t, f, "AttachNetworkInterface eni-svc i-rep 1")

	// On the replica already: nothing to do.
	f, fo, p = eniEnv()
	f.enis["eni-svc"].Attachment.InstanceId = aws.String("i-rep")
	if got, err := fo.moveENI(ctx, p); err != nil || got != "`eni-svc` is attached to `i-rep`" {
		t.Errorf("on the replica: %q, %v", got, err)
	}
	wantCalls(t, f)
}

func TestFailoverMoveENIFailures(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		setup func(f *fakeEC2)
		is    error // errors.Is, when not nil
		want  string
		calls []string
	}{
		{"unreadable", func(f *fakeEC2) {
			f.describeENIs = func(int) error { return apiErr("DescribeNetworkInterfaces", "UnauthorizedOperation") }
		}, ErrUnauthorized, "read eni-svc", nil},
		{"gone", func(f *fakeEC2) { delete(f.enis, "eni-svc") }, ErrNotFound, "read eni-svc", nil},
		{"detach refused", func(f *fakeEC2) {
			f.onDetach = func(string, bool) error { return apiErr("DetachNetworkInterface", "UnauthorizedOperation") }
		}, ErrUnauthorized, "detach eni-svc", []string{"DetachNetworkInterface eni-svc"}},
		// The box's own interface cannot leave it (AWS refuses): the move
		// fails there and attaches nothing.
		{"the box's primary interface", func(f *fakeEC2) {
			f.enis["eni-svc"].Attachment.DeviceIndex = aws.Int32(0)
		}, nil, "detach eni-svc", []string{"DetachNetworkInterface eni-svc"}},
		{"never detaches", func(f *fakeEC2) { f.eniLag = 1 << 20 }, nil, "eni-svc did not detach within 30ms", []string{"DetachNetworkInterface eni-svc"}},
		{"unreadable after the detach", func(f *fakeEC2) {
			f.describeENIs = func(n int) error {
				if n > 1 {
					return apiErr("DescribeNetworkInterfaces", "UnauthorizedOperation")
				}
				return nil
			}
		}, ErrUnauthorized, "read eni-svc", []string{"DetachNetworkInterface eni-svc"}},
		{"attach refused", func(f *fakeEC2) {
			f.onAttach = func(string, string) error { return apiErr("AttachNetworkInterface", "AttachmentLimitExceeded") }
		}, nil, "attach eni-svc to i-rep", []string{"DetachNetworkInterface eni-svc", "AttachNetworkInterface eni-svc i-rep 1"}},
		{"unreadable after the attach", func(f *fakeEC2) {
			f.onAttach = func(string, string) error {
				f.describeENIs = func(int) error { return apiErr("DescribeNetworkInterfaces", "UnauthorizedOperation") }
				return nil
			}
		}, ErrUnauthorized, "read eni-svc", []string{"DetachNetworkInterface eni-svc", "AttachNetworkInterface eni-svc i-rep 1"}},
		{"never reads back attached", func(f *fakeEC2) {
			f.onAttach = func(string, string) error { f.eniLag = 1 << 20; return nil }
		}, nil, "eni-svc is not attached to i-rep", []string{"DetachNetworkInterface eni-svc", "AttachNetworkInterface eni-svc i-rep 1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, fo, p := eniEnv()
			tc.setup(f)
			_, err := fo.moveENI(ctx, p)
			if err == nil || !strings.Contains(err.Error(), tc.want) || (tc.is != nil && !errors.Is(err, tc.is)) {
				t.Errorf("%v; want %q (%v)", err, tc.want, tc.is)
			}
			wantCalls(t, f, tc.calls...)
		})
	}
}

// lbEnv: two target groups (TCP 80 and 443) with the old box behind them.
func lbEnv() (*fakeEC2, *fakeELB, *Failover, FailoverPlan) {
	f, fo := afterFence()
	e := newFakeELB()
	e.add("tg-80", elbtypes.TargetHealthStateEnumHealthy, "i-prim:80")
	e.add("tg-443", elbtypes.TargetHealthStateEnumHealthy, "i-prim:443")
	fo.ELB, fo.Discovery, fo.TargetGroups = e, DiscoveryLoadBalancer, []string{"tg-80", "tg-443"}
	p := primaryPlan()
	p.Discovery, p.ServiceIP, p.TargetGroups = DiscoveryLoadBalancer, "", []string{"tg-80", "tg-443"}
	return f, e, fo, p
}

// In each group every target but the replica leaves before the replica
// joins: never two boxes behind the load balancer.
func TestFailoverMoveTargetsDeregistersThenRegisters(t *testing.T) {
	ctx := context.Background()
	f, e, fo, p := lbEnv()
	e.add("tg-443", elbtypes.TargetHealthStateEnumUnhealthy, "i-older:443") // a box fenced long ago, still registered
	got, err := fo.moveTargets(ctx, p)
	if err != nil || got != "2 target groups now point at `i-rep` only" {
		t.Fatalf("%q, %v", got, err)
	}
	wantELBCalls(t, e, "DeregisterTargets tg-80 i-prim:80", "RegisterTargets tg-80 i-rep",
		"DeregisterTargets tg-443 i-prim:443,i-older:443", "RegisterTargets tg-443 i-rep")
	if s := e.states("tg-443"); !slices.Equal(s, []string{"i-prim:draining", "i-older:draining", "i-rep:initial"}) {
		t.Errorf("tg-443: %q", s)
	}
	wantCalls(t, f) // EC2 is not touched

	// The replica is registered already (a resume, or set up so): only
	// the others leave; registering it again is harmless.
	_, e, fo, p = lbEnv()
	e.add("tg-80", elbtypes.TargetHealthStateEnumHealthy, "i-rep")
	e.groups["tg-443"] = nil
	e.add("tg-443", elbtypes.TargetHealthStateEnumHealthy, "i-rep")
	if _, err := fo.moveTargets(ctx, p); err != nil {
		t.Fatal(err)
	}
	wantELBCalls(t, e, "DeregisterTargets tg-80 i-prim:80", "RegisterTargets tg-80 i-rep", "RegisterTargets tg-443 i-rep")
	if s := e.states("tg-80"); !slices.Equal(s, []string{"i-prim:draining", "i-rep:healthy"}) {
		t.Errorf("tg-80: %q", s)
	}
}

func TestFailoverMoveTargetsFailures(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		setup func(e *fakeELB)
		is    error
		want  string
		calls []string
	}{
		// A failure in one group stops there: the replica does not join a
		// group the old box may still be in.
		{"deregister refused in the second group", func(e *fakeELB) {
			e.onDeregister = func(tg string) error {
				if tg == "tg-443" {
					return elbErr("DeregisterTargets", "AccessDenied")
				}
				return nil
			}
		}, ErrUnauthorized, "deregister the old targets from tg-443", []string{"DeregisterTargets tg-80 i-prim:80", "RegisterTargets tg-80 i-rep", "DeregisterTargets tg-443 i-prim:443"}},
		{"second group unreadable", func(e *fakeELB) {
			e.onDescribe = func(tg string, _ int) error {
				if tg == "tg-443" {
					return elbErr("DescribeTargetHealth", "AccessDenied")
				}
				return nil
			}
		}, ErrUnauthorized, "read tg-443", []string{"DeregisterTargets tg-80 i-prim:80", "RegisterTargets tg-80 i-rep"}},
		{"second group gone", func(e *fakeELB) { delete(e.groups, "tg-443") }, nil, "read tg-443", []string{"DeregisterTargets tg-80 i-prim:80", "RegisterTargets tg-80 i-rep"}},
		{"register refused", func(e *fakeELB) {
			e.onRegister = func(string) error { return elbErr("RegisterTargets", "InvalidTarget") }
		}, nil, "register i-rep in tg-80", []string{"DeregisterTargets tg-80 i-prim:80", "RegisterTargets tg-80 i-rep"}},
		{"unreadable after the move", func(e *fakeELB) {
			e.onDescribe = func(_ string, n int) error {
				if n == 2 {
					return elbErr("DescribeTargetHealth", "AccessDenied")
				}
				return nil
			}
		}, ErrUnauthorized, "read tg-80", []string{"DeregisterTargets tg-80 i-prim:80", "RegisterTargets tg-80 i-rep"}},
		// Someone put another box in the group meanwhile: the move does not
		// call that done.
		{"another box still serves", func(e *fakeELB) {
			e.onRegister = func(tg string) error {
				e.add(tg, elbtypes.TargetHealthStateEnumHealthy, "i-other")
				return nil
			}
		}, nil, "target group tg-80 still sends traffic to i-other", []string{"DeregisterTargets tg-80 i-prim:80", "RegisterTargets tg-80 i-rep"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, e, fo, p := lbEnv()
			tc.setup(e)
			_, err := fo.moveTargets(ctx, p)
			if err == nil || !strings.Contains(err.Error(), tc.want) || (tc.is != nil && !errors.Is(err, tc.is)) {
				t.Errorf("%v; want %q (%v)", err, tc.want, tc.is)
			}
			wantELBCalls(t, e, tc.calls...)
		})
	}
}

// move checks the fence again, then moves the address the way the plan
// says; with discovery none nothing moves.
func TestFailoverMoveByDiscoveryMode(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		mode  string
		want  string
		calls []string
		elb   []string
	}{
		{DiscoverySecondaryIP, serviceIP + " moved to `eni-rep` (i-rep)", []string{"UnassignPrivateIpAddresses eni-prim " + serviceIP, "AssignPrivateIpAddresses eni-rep " + serviceIP + " reassign=true"}, nil},
		{DiscoveryENI, "`eni-svc` (" + serviceIP + ") moved to `i-rep`", []string{"DetachNetworkInterface eni-svc", "AttachNetworkInterface eni-svc i-rep 1"}, nil},
		{DiscoveryLoadBalancer, "2 target groups now point at `i-rep` only", nil, []string{"DeregisterTargets tg-80 i-prim:80", "RegisterTargets tg-80 i-rep", "DeregisterTargets tg-443 i-prim:443", "RegisterTargets tg-443 i-rep"}},
		{DiscoveryNone, "nothing to move (discovery none): builders must use 10.0.1.20", nil, nil},
	} {
		for _, again := range []bool{false, true} {
			name := tc.mode
			if again {
				name += "/started again"
			}
			t.Run(name, func(t *testing.T) {
				f, e, fo, p := moveEnv(tc.mode)
				if again {
					// Someone started the old box after the fence: nothing
					// moves, in any mode.
					f.insts["i-prim"].State = &ec2types.InstanceState{Name: stRunning}
				}
				got, err := fo.move(ctx, p, &recorder{})
				switch {
				case again:
					if err == nil || !strings.Contains(err.Error(), "the old primary i-prim is running again") {
						t.Errorf("%q, %v", got, err)
					}
					wantCalls(t, f)
					wantELBCalls(t, e)
					if calls := f.Calls(); !slices.Equal(calls, []string{"DescribeInstances i-prim"}) {
						t.Errorf("calls %q: only the old box is read", calls)
					}
					return
				case err != nil || !strings.HasPrefix(got, tc.want):
					t.Errorf("%q, %v; want %q…", got, err, tc.want)
				}
				wantCalls(t, f, tc.calls...)
				wantELBCalls(t, e, tc.elb...)
				if f.Calls()[0] != "DescribeInstances i-prim" {
					t.Errorf("the fence was not checked first: %q", f.Calls())
				}
			})
		}
	}
}

// moveEnv is the environment and plan of a failover in mode, after the
// fence.
func moveEnv(mode string) (*fakeEC2, *fakeELB, *Failover, FailoverPlan) {
	switch mode {
	case DiscoveryENI:
		f, fo, p := eniEnv()
		e := newFakeELB()
		fo.ELB = e
		return f, e, fo, p
	case DiscoveryLoadBalancer:
		return lbEnv()
	}
	f, fo := afterFence()
	e := newFakeELB()
	fo.ELB, fo.Discovery = e, mode
	p := primaryPlan()
	p.Discovery, p.Replica.IP = mode, "10.0.1.20"
	return f, e, fo, p
}

// ensureFenced: after the fence (and hours later, on a resume) the old
// box must still be stopped or gone; --force-unknown accepts a box that
// cannot be read or is still stopping, never one that runs.
func TestFailoverEnsureFenced(t *testing.T) {
	ctx := context.Background()
	unauthorized := func(int, *ec2.DescribeInstancesInput) error {
		return apiErr("DescribeInstances", "UnauthorizedOperation")
	}
	for _, tc := range []struct {
		name    string
		state   ec2types.InstanceStateName // "": the instance is gone
		force   bool
		readErr func(int, *ec2.DescribeInstancesInput) error
		want    string // "": no error
		is      error
	}{
		{"stopped", stStopped, false, nil, "", nil},
		{"terminated", ec2types.InstanceStateNameTerminated, false, nil, "", nil},
		{"gone", "", false, nil, "", nil},
		{"running again", stRunning, false, nil, "the old primary i-prim is running again: not going on while it may serve", nil},
		{"pending again", ec2types.InstanceStateNamePending, false, nil, "the old primary i-prim is pending again", nil},
		{"stopping again", stStopping, false, nil, "the old primary i-prim is stopping again", nil},
		{"unreadable", stStopped, false, unauthorized, "check that the old primary is still fenced", ErrUnauthorized},
		{"zone down", stStopped, false, func(int, *ec2.DescribeInstancesInput) error { return apiErr("DescribeInstances", "Unavailable") }, "check that the old primary is still fenced", ErrUnavailable},
		{"--force-unknown, unreadable", stStopped, true, unauthorized, "", nil},
		{"--force-unknown, stopping", stStopping, true, nil, "", nil},
		{"--force-unknown, stopped", stStopped, true, nil, "", nil},
		{"--force-unknown, running again", stRunning, true, nil, "the old primary i-prim is running again", nil},
		{"--force-unknown, pending again", ec2types.InstanceStateNamePending, true, nil, "the old primary i-prim is pending again", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, fo := failoverEnv()
			if tc.state == "" {
				delete(f.insts, "i-prim")
			} else {
				f.insts["i-prim"].State = &ec2types.InstanceState{Name: tc.state}
			}
			f.describeErr = tc.readErr
			p := primaryPlan()
			p.ForceUnknown = tc.force
			err := fo.ensureFenced(ctx, p)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("%v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("%v; want %q", err, tc.want)
			case tc.is != nil && !errors.Is(err, tc.is):
				t.Errorf("%v; want %v", err, tc.is)
			}
			wantCalls(t, f)
		})
	}
	// No box was tagged, or none could be read nor found by its address
	// (--force-unknown): there is nothing to check, and nothing is read.
	f, fo := failoverEnv()
	p := primaryPlan()
	p.Primary = nil
	if err := fo.ensureFenced(ctx, p); err != nil {
		t.Errorf("no primary: %v", err)
	}
	p.Primary, p.ForceUnknown = &Node{Unknown: "AWS said Unavailable"}, true
	if err := fo.ensureFenced(ctx, p); err != nil {
		t.Errorf("unreadable primary: %v", err)
	}
	if calls := f.Calls(); len(calls) != 0 {
		t.Errorf("calls %q", calls)
	}
}

// The plan of an interface move refuses what the move could not do, so
// that nothing is fenced for it: an interface in another zone, one held
// by a box the bot does not fence, or the box's own primary interface
// (AWS never detaches device index 0).
func TestFailoverPlanENI(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		setup func(f *fakeEC2, fo *Failover)
		want  string // the refusal; "": planned
	}{
		{"dedicated interface", func(*fakeEC2, *Failover) {}, ""},
		{"on the replica already", func(f *fakeEC2, _ *Failover) { f.enis["eni-svc"].Attachment.InstanceId = aws.String("i-rep") }, ""},
		{"detached", func(f *fakeEC2, _ *Failover) { f.enis["eni-svc"].Attachment = nil }, ""},
		{"the box's primary interface", func(_ *fakeEC2, fo *Failover) { fo.ENI = "eni-prim" }, "interface `eni-prim` is the primary interface (device index 0) of `i-prim`, which AWS cannot detach"},
		{"another zone", func(f *fakeEC2, _ *Failover) { f.enis["eni-svc"].AvailabilityZone = aws.String("us-east-1b") }, "network interface `eni-svc` is in us-east-1b and the replica `i-rep` in us-east-1a"},
		{"held by another box", func(f *fakeEC2, _ *Failover) { f.enis["eni-svc"].Attachment.InstanceId = aws.String("i-other") }, "interface `eni-svc` is attached to `i-other`, which is not the Services box"},
		{"not configured", func(_ *fakeEC2, fo *Failover) { fo.ENI = "" }, "needs `failover.eni_id`"},
		{"the replica's device index 1 taken", func(f *fakeEC2, _ *Failover) {
			f.insts["i-rep"].NetworkInterfaces = append(f.insts["i-rep"].NetworkInterfaces, ec2types.InstanceNetworkInterface{NetworkInterfaceId: aws.String("eni-rep2"), Attachment: &ec2types.InstanceNetworkInterfaceAttachment{DeviceIndex: aws.Int32(1)}})
		}, "the replica `i-rep` already has interface `eni-rep2` at device index 1, where `eni-svc` would be attached"},
		{"unreadable", func(f *fakeEC2, _ *Failover) {
			f.describeENIs = func(int) error { return apiErr("DescribeNetworkInterfaces", "UnauthorizedOperation") }
		}, "network interface `eni-svc` cannot be read"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, fo, _ := eniEnv()
			f.insts["i-prim"].State = &ec2types.InstanceState{Name: stRunning}
			for _, n := range f.enis {
				n.AvailabilityZone = aws.String("us-east-1a")
			}
			tc.setup(f, fo)
			p, err := fo.Plan(ctx, "i-rep", false)
			var refusal *RefusalError
			switch {
			case tc.want == "" && (err != nil || p.ENI != "eni-svc" || p.ServiceIP != serviceIP || p.Primary == nil || p.Primary.ID != "i-prim"):
				t.Errorf("%+v, %v", p, err)
			case tc.want != "" && (!errors.As(err, &refusal) || !strings.Contains(refusal.Msg, tc.want)):
				t.Errorf("%v; want a refusal %q", err, tc.want)
			}
			wantCalls(t, f)
		})
	}
}
