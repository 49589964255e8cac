package ops

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// The failover's safety paths, on a fake EC2: the fence with and without
// --force-unknown, a primary whose zone does not answer, and the move of
// the service address with a read-back that lags.

const serviceIP = "10.0.1.100"

// failoverEnv: the Services box i-prim holds the service address on
// eni-prim; the replica i-rep (eni-rep) is in the same subnet.
func failoverEnv() (*fakeEC2, *Failover) {
	f := newFakeEC2()
	f.subnets["subnet-a"] = "10.0.1.0/24"
	for _, b := range []struct{ id, name, eni, ip string }{{"i-prim", "circleci_services", "eni-prim", "10.0.1.10"}, {"i-rep", "replica", "eni-rep", "10.0.1.20"}} {
		in := f.addInstance(b.id, stRunning, b.name)
		in.SubnetId, in.VpcId, in.PrivateIpAddress = aws.String("subnet-a"), aws.String("vpc-1"), aws.String(b.ip)
		in.Placement = &ec2types.Placement{AvailabilityZone: aws.String("us-east-1a")}
		in.NetworkInterfaces = []ec2types.InstanceNetworkInterface{{NetworkInterfaceId: aws.String(b.eni), Attachment: &ec2types.InstanceNetworkInterfaceAttachment{DeviceIndex: aws.Int32(0)}}}
		f.addENI(b.eni, "subnet-a", "vpc-1", b.id, b.ip)
	}
	eni := f.enis["eni-prim"]
	eni.PrivateIpAddresses = append(eni.PrivateIpAddresses, ec2types.NetworkInterfacePrivateIpAddress{PrivateIpAddress: aws.String(serviceIP), Primary: aws.Bool(false)})
	return f, &Failover{EC2: f, NameTag: "circleci_services", Region: "us-east-1", Discovery: DiscoverySecondaryIP, ServiceIP: serviceIP,
		Poll: time.Millisecond, StopTimeout: 30 * time.Millisecond, ReadBack: 30 * time.Millisecond}
}

func primaryPlan() FailoverPlan {
	return FailoverPlan{NameTag: "circleci_services", Discovery: DiscoverySecondaryIP, ServiceIP: serviceIP,
		Primary: &Node{ID: "i-prim", State: "running"}, Replica: Node{ID: "i-rep", ENI: "eni-rep", Subnet: "subnet-a"}}
}

// zoneDown fails every DescribeInstances that looks for the Services box
// by its Name tag, as in an AZ outage.
func zoneDown(_ int, in *ec2.DescribeInstancesInput) error {
	for _, flt := range in.Filters {
		if aws.ToString(flt.Name) == "tag:Name" && slices.Contains(flt.Values, "circleci_services") {
			return apiErr("DescribeInstances", "Unavailable")
		}
	}
	return nil
}

// A primary that cannot be read is unknown, not dead: refused without
// --force-unknown. With it, the instance holding the service address is
// force-stopped before the address moves; when nothing holds it, nothing
// can be stopped and the fence says so.
func TestFailoverForceUnknownWithAndWithoutAHolder(t *testing.T) {
	ctx := context.Background()
	f, fo := failoverEnv()
	f.describeErr = zoneDown
	_, err := fo.Plan(ctx, "i-rep", false)
	var refusal *RefusalError
	if !errors.As(err, &refusal) || !strings.Contains(refusal.Msg, "--force-unknown") || !strings.Contains(refusal.Msg, "Unknown is not dead") {
		t.Fatalf("refusal: %v", err)
	}

	p, err := fo.Plan(ctx, "i-rep", true)
	if err != nil || p.Primary == nil || p.Primary.ID != "i-prim" || p.Primary.Unknown == "" || p.IPHolderENI != "eni-prim" {
		t.Fatalf("plan with a holder: %+v, %v", p.Primary, err)
	}
	rec := &recorder{}
	got, err := fo.fence(ctx, p, rec)
	if err != nil || !strings.Contains(got, "`i-prim` force-stopped and confirmed") {
		t.Fatalf("fence: %q, %v", got, err)
	}
	if got, err := fo.move(ctx, p, rec); err != nil || !strings.Contains(got, "moved to `eni-rep`") {
		t.Fatalf("move: %q, %v", got, err)
	}
	wantCalls(t, f, "StopInstances i-prim force", "UnassignPrivateIpAddresses eni-prim "+serviceIP, "AssignPrivateIpAddresses eni-rep "+serviceIP+" reassign=true")

	f, fo = failoverEnv()
	f.describeErr = zoneDown
	f.enis["eni-prim"].PrivateIpAddresses = f.enis["eni-prim"].PrivateIpAddresses[:1] // nothing holds the address
	p, err = fo.Plan(ctx, "i-rep", true)
	if err != nil || p.Primary == nil || !p.Primary.Unreadable() {
		t.Fatalf("plan without a holder: %+v, %v", p.Primary, err)
	}
	if got, err := fo.fence(ctx, p, rec); err != nil || !strings.Contains(got, "not fenced (approved with --force-unknown)") {
		t.Fatalf("fence: %q, %v", got, err)
	}
	wantCalls(t, f)
}

func TestFailoverFence(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		force  bool // --force-unknown
		state  ec2types.InstanceStateName
		onStop func(f *fakeEC2) func(string, bool) error
		want   string // detail, or the error with "error: "
		log    string
	}{
		{"stops", false, stRunning, nil, "`i-prim` stopped and confirmed in", ""},
		{"already stopped", false, stStopped, nil, "`i-prim` was already stopped", ""},
		{"never stops", false, stRunning, never, "error: the old primary is not confirmed stopped; not moving the address: i-prim is not stopped even after a forced stop", "did not stop within"},
		{"never stops, --force-unknown", true, stRunning, never, "`i-prim` stop sent, *not confirmed* (approved with --force-unknown)", ":warning: `i-prim` is not confirmed stopped"},
		{"forced", false, stRunning, func(f *fakeEC2) func(string, bool) error {
			return func(id string, force bool) error {
				if force {
					f.then(id, stStopped)
				} else {
					f.then(id, stStopping)
				}
				return nil
			}
		}, "`i-prim` force-stopped and confirmed in", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, fo := failoverEnv()
			f.then("i-prim", tc.state)
			if tc.onStop != nil {
				f.onStop = tc.onStop(f)
			}
			p := primaryPlan()
			p.ForceUnknown = tc.force
			rec := &recorder{}
			got, err := fo.fence(ctx, p, rec)
			if err != nil {
				got = "error: " + err.Error()
			}
			if !strings.HasPrefix(got, tc.want) || (tc.log != "" && !rec.has(tc.log)) {
				t.Errorf("%q\nwant %q…, log %q in %q", got, tc.want, tc.log, rec.lines)
			}
		})
	}
	rec := &recorder{}
	_, fo := failoverEnv()
	p := primaryPlan()
	p.Primary = nil
	if got, _ := fo.fence(ctx, p, rec); !strings.HasPrefix(got, "no Services box to fence") {
		t.Errorf("no primary: %q", got)
	}
	p.Primary = &Node{ID: "i-gone"}
	if got, _ := fo.fence(ctx, p, rec); got != "`i-gone` is gone (AWS no longer knows it)" {
		t.Errorf("gone: %q", got)
	}
	// Unknown at planning and the forced stop is refused: going on, as
	// approved, saying so.
	f, fo := failoverEnv()
	f.onStop = func(string, bool) error { return apiErr("StopInstances", "InternalError") }
	f.describeErr = func(int, *ec2.DescribeInstancesInput) error { return apiErr("DescribeInstances", "Unavailable") }
	p = primaryPlan()
	p.ForceUnknown, p.Primary.Unknown = true, "AWS said Unavailable"
	if got, err := fo.fence(ctx, p, rec); err != nil || !strings.Contains(got, "stop sent, *not confirmed*") {
		t.Errorf("lost forced stop: %q, %v", got, err)
	}
	f.onStop = func(string, bool) error { return apiErr("StopInstances", "UnauthorizedOperation") }
	if got, err := fo.fence(ctx, p, rec); err != nil || !strings.Contains(got, "could not be reached") || !rec.has("Forced stop of `i-prim` failed") {
		t.Errorf("refused forced stop: %q, %v", got, err)
	}
}

// The address leaves the old interface before it goes on the replica's,
// and the move is read back until AWS shows it there alone.
func TestFailoverMoveIPWaitsForTheReadBack(t *testing.T) {
	ctx := context.Background()
	f, fo := failoverEnv()
	f.eniLag = 3
	got, err := fo.moveIP(ctx, primaryPlan())
	if err != nil || got != serviceIP+" moved to `eni-rep` (i-rep) and gone from the old interface" {
		t.Fatalf("%q, %v", got, err)
	}
	wantCalls(t, f, "UnassignPrivateIpAddresses eni-prim "+serviceIP, "AssignPrivateIpAddresses eni-rep "+serviceIP+" reassign=true")
	if n := f.count("DescribeNetworkInterfaces"); n < 5 {
		t.Errorf("%d reads: the lagging read-back was not waited out", n)
	}

	// It never settles: the step fails and says where the address is.
	f, fo = failoverEnv()
	f.eniLag = 1 << 20
	if _, err := fo.moveIP(ctx, primaryPlan()); err == nil || !strings.Contains(err.Error(), serviceIP+" is on [eni-prim], not only on the replica's eni-rep") {
		t.Errorf("never settles: %v", err)
	}
}

func TestFailoverMoveIPRefusals(t *testing.T) {
	ctx := context.Background()
	// Not on the old interface any more (InvalidParameterValue): fine.
	f, fo := failoverEnv()
	f.onUnassign = func(string) error { return apiErr("UnassignPrivateIpAddresses", "InvalidParameterValue") }
	if _, err := fo.moveIP(ctx, primaryPlan()); err != nil {
		t.Errorf("not assigned: %v", err)
	}
	// Refused while the old box is known: the address is not taken.
	f, fo = failoverEnv()
	f.onUnassign = func(string) error { return apiErr("UnassignPrivateIpAddresses", "UnauthorizedOperation") }
	if _, err := fo.moveIP(ctx, primaryPlan()); !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "remove "+serviceIP+" from eni-prim") {
		t.Errorf("denied: %v", err)
	}
	wantCalls(t, f, "UnassignPrivateIpAddresses eni-prim "+serviceIP)
	// The old box's zone is down: the reassignment takes it over.
	f, fo = failoverEnv()
	f.onUnassign = func(string) error { return apiErr("UnassignPrivateIpAddresses", "Unavailable") }
	p := primaryPlan()
	p.Primary.Unknown = "AWS said Unavailable"
	if _, err := fo.moveIP(ctx, p); err != nil {
		t.Errorf("zone down: %v", err)
	}
	// Already on the replica (a resume): nothing to assign.
	f, fo = failoverEnv()
	f.enis["eni-rep"].PrivateIpAddresses = append(f.enis["eni-rep"].PrivateIpAddresses, f.enis["eni-prim"].PrivateIpAddresses[1])
	f.enis["eni-prim"].PrivateIpAddresses = f.enis["eni-prim"].PrivateIpAddresses[:1]
	if _, err := fo.moveIP(ctx, primaryPlan()); err != nil {
		t.Errorf("resumed: %v", err)
	}
	wantCalls(t, f)
	// The replica's interface refuses it.
	f, fo = failoverEnv()
	f.onAssign = func(string) error { return apiErr("AssignPrivateIpAddresses", "PrivateIpAddressLimitExceeded") }
	if _, err := fo.moveIP(ctx, primaryPlan()); err == nil || !strings.Contains(err.Error(), "put "+serviceIP+" on the replica's interface eni-rep") {
		t.Errorf("assign refused: %v", err)
	}
	// The interfaces cannot be read, before or after.
	for _, bad := range []int{1, 2} {
		f, fo = failoverEnv()
		f.describeENIs = func(n int) error {
			if n >= bad {
				return apiErr("DescribeNetworkInterfaces", "UnauthorizedOperation")
			}
			return nil
		}
		if _, err := fo.moveIP(ctx, primaryPlan()); !errors.Is(err, ErrUnauthorized) {
			t.Errorf("unreadable from read %d: %v", bad, err)
		}
	}
	// Started again by someone since the fence: nothing moves.
	f, fo = failoverEnv()
	if _, err := fo.move(ctx, primaryPlan(), &recorder{}); err == nil || !strings.Contains(err.Error(), "is running again") {
		t.Errorf("running again: %v", err)
	}
	wantCalls(t, f)
}

// The replica's Name is bound in a failover's plan: a replica a refresh
// renamed -retired between the approval and the run changes the plan.
func TestFailoverFactsBindTheReplicasName(t *testing.T) {
	p := FailoverPlan{Replica: Node{ID: "i-1", State: "stopped", AZ: "us-east-1b", Name: "circleci_services_replica"}}
	before := p.Facts()["replica"]
	p.Replica.Name = RetiredName("circleci_services_replica")
	if after := p.Facts()["replica"]; after == before || !strings.Contains(after, "Name=circleci_services_replica-retired") {
		t.Errorf("replica fact %q then %q: the rename is not bound", before, after)
	}
}
