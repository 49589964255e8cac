package app_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	elbtypes "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"

	"github.com/circlebot/circlebot/internal/app"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/testenv/faultproxy"
	"github.com/circlebot/circlebot/internal/testenv/motoserver"
	"github.com/circlebot/circlebot/internal/testenv/ssmbox"
)

type failoverEnv struct {
	*env
	ssm     *ssmbox.Server
	standby string // a replica in the Services box's subnet
	health  *httptest.Server
	mu      sync.Mutex
	probes  []string // the ?ip= of each health probe
}

// newFailoverEnv adds to the sandbox a standby in the Services box's own
// subnet (the seeded replica is in the other AZ), an SSM stand-in on which
// instances come up as boxes with the app stopped, and an app health
// endpoint the bot probes with the replica's IP.
func newFailoverEnv(t *testing.T, edit func(*config.Config), opts ...func(*app.Options)) *failoverEnv {
	t.Helper()
	f := &failoverEnv{ssm: ssmbox.New(t)}
	f.ssm.RegisterNew(func(id string) bool { return strings.HasPrefix(id, "i-") })
	f.health = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.probes = append(f.probes, r.URL.Query().Get("ip"))
		f.mu.Unlock()
	}))
	t.Cleanup(f.health.Close)
	opts = append(opts, func(o *app.Options) { o.SSMEndpoint = f.ssm.URL })
	f.env = newEnvOn(t, motoserver.ForTest(t), func(c *config.Config) {
		c.Failover.HealthURL = f.health.URL + "/healthz?ip={ip}"
		c.Roles.Viewers = []string{vera}
		if edit != nil {
			edit(c)
		}
	}, opts...)
	f.app.Failover.Poll = 20 * time.Millisecond
	f.app.Snapshot.Poll = 20 * time.Millisecond
	f.app.Engine.MinInterval = 20 * time.Millisecond
	if f.app.Builders != nil {
		f.app.Builders.Poll = 20 * time.Millisecond
	}
	f.ssm.AddBox(f.inst.ServicesBox.ID)
	out, err := ec2.NewFromConfig(f.aws).RunInstances(context.Background(), &ec2.RunInstancesInput{
		ImageId: aws.String(f.inst.ImageID), InstanceType: ec2types.InstanceType(f.inst.ServicesBox.Type), MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
		SubnetId: aws.String(f.inst.ServicesBox.SubnetID), SecurityGroupIds: []string{f.inst.SecurityGroupID},
		TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance, Tags: []ec2types.Tag{{Key: aws.String("Name"), Value: aws.String("circleci_services_standby")}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	f.standby = aws.ToString(out.Instances[0].InstanceId)
	// The standby's OS: Ubuntu with its primary interface as ens5, the
	// app stopped (as a replica's is).
	sb := f.ssm.AddBox(f.standby)
	sb.SetAppState(ssmbox.AppStopped)
	sb.SetOS("ubuntu", "22.04")
	nic := out.Instances[0].NetworkInterfaces[0]
	sb.SetInterface("ens5", aws.ToString(nic.MacAddress), aws.ToString(nic.PrivateIpAddress)+"/24")
	return f
}

// osNIC gives the standby's OS a device for interface eni (hot-plugged
// there by the failover).
func (f *failoverEnv) osNIC(dev, eni string) {
	f.t.Helper()
	out, err := ec2.NewFromConfig(f.aws).DescribeNetworkInterfaces(context.Background(), &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{eni}})
	if err != nil || len(out.NetworkInterfaces) != 1 {
		f.t.Fatalf("describe %s: %v", eni, err)
	}
	f.ssm.Box(f.standby).SetInterface(dev, aws.ToString(out.NetworkInterfaces[0].MacAddress))
}

func (e *env) holdersOf(ip string) []string {
	e.t.Helper()
	out, err := ec2.NewFromConfig(e.aws).DescribeNetworkInterfaces(context.Background(), &ec2.DescribeNetworkInterfacesInput{})
	if err != nil {
		e.t.Fatal(err)
	}
	var ids []string
	for _, n := range out.NetworkInterfaces {
		for _, a := range n.PrivateIpAddresses {
			if aws.ToString(a.PrivateIpAddress) == ip && n.Attachment != nil {
				ids = append(ids, aws.ToString(n.Attachment.InstanceId))
			}
		}
	}
	return ids
}

// callIndex is the position of the first call of action whose parameters
// name value, or -1.
func callIndex(calls []faultproxy.Call, action, value string) int {
	for i, c := range calls {
		if c.Action != action || c.Params.Get("DryRun") == "true" {
			continue
		}
		for _, vs := range c.Params {
			if slices.Contains(vs, value) {
				return i
			}
		}
	}
	return -1
}

func TestFailoverFencesThePrimaryBeforeTheServiceIPMoves(t *testing.T) {
	t.Parallel()
	f := newFailoverEnv(t, nil)
	primary, ip := f.inst.ServicesBox.ID, f.inst.ServicesBox.SecondaryIP
	req := f.request(alice, "failover --to "+f.standby)
	plan := f.waitText("plan", req, "Approval needed")
	for _, want := range []string{primary, f.standby, ip, "expected downtime", "fence"} {
		if !strings.Contains(plan, want) {
			t.Errorf("plan lacks %q:\n%s", want, plan)
		}
	}
	f.proxy.Reset()
	f.click(bob, "approve "+req, "fo.1")
	sum := f.waitText("summary", "The Services box is now `"+f.standby+"`")
	f.server.Wait()

	calls := f.proxy.Calls()
	stop := callIndex(calls, "StopInstances", primary)
	confirm := -1
	for i := stop + 1; stop >= 0 && i < len(calls); i++ {
		if calls[i].Action == "DescribeInstances" && slices.Contains(calls[i].Params["InstanceId.1"], primary) {
			confirm = i
			break
		}
	}
	unassign := callIndex(calls, "UnassignPrivateIpAddresses", ip)
	assign := callIndex(calls, "AssignPrivateIpAddresses", ip)
	if stop < 0 || confirm < 0 || assign < 0 || !(stop < confirm && confirm < assign) || (unassign >= 0 && unassign < confirm) {
		t.Fatalf("call order: stop %d, confirmed stopped %d, unassign %d, assign %d; the primary must be fenced before the IP moves", stop, confirm, unassign, assign)
	}
	if got := f.holdersOf(ip); len(got) != 1 || got[0] != f.standby {
		t.Errorf("%s is held by %v, want only the standby %s", ip, got, f.standby)
	}
	if st := f.instance(primary).State.Name; st != ec2types.InstanceStateNameStopped {
		t.Errorf("old primary is %s", st)
	}
	if n := tagOf(f.instance(f.standby).Tags, "Name"); n != "circleci_services" {
		t.Errorf("standby Name=%s", n)
	}
	if n := tagOf(f.instance(primary).Tags, "Name"); n != "circleci_services-fenced" {
		t.Errorf("old primary Name=%s", n)
	}
	var started bool
	for _, c := range f.ssm.Commands() {
		if slices.Equal(c.InstanceIDs, []string{f.standby}) && strings.Contains(strings.Join(c.Lines, "\n"), " start") {
			started = true
		}
	}
	if b := f.ssm.Box(f.standby); !started || b == nil || b.AppState() != ssmbox.AppStarted {
		t.Errorf("the app was not started on the standby (command sent: %v)", started)
	}
	f.mu.Lock()
	probes := slices.Clone(f.probes)
	f.mu.Unlock()
	if len(probes) == 0 || probes[len(probes)-1] != aws.ToString(f.instance(f.standby).PrivateIpAddress) {
		t.Errorf("health probes %v, want the standby's IP", probes)
	}
	for _, want := range []string{"builders rotate", "webhooks"} {
		if !strings.Contains(sum, want) {
			t.Errorf("summary lacks %q: %s", want, sum)
		}
	}
	// The box lock is free again and status follows the new primary.
	f.slash(alice, incident, "status")
	f.waitText("status after failover", "Services box", f.standby, "running")
}

// A secondary IP cannot leave its subnet: with the seeded replica in the
// other AZ the plan is refused before anyone is asked to approve.
// A primary whose state cannot be read is unknown, not dead: refused
// without --force-unknown; with it, the plan says the risk.
func TestFailoverRefusesCrossAZAndAnUnreadablePrimary(t *testing.T) {
	t.Parallel()
	f := newFailoverEnv(t, func(c *config.Config) { c.Failover.ServiceIP = "10.0.1.100" })
	txt := f.answer(f.slash(alice, incident, "failover"))
	for _, want := range []string{"cannot leave its subnet", "load-balancer", "none"} {
		if !strings.Contains(txt, want) {
			t.Errorf("cross-AZ refusal lacks %q: %s", want, txt)
		}
	}
	// The primary's zone is down: every DescribeInstances that looks for
	// it by its Name tag fails.
	f.proxy.SetFaults(faultproxy.Faults{ServerErrorRate: 1, Match: func(c faultproxy.Call) bool {
		if c.Action != "DescribeInstances" {
			return false
		}
		for _, vs := range c.Params {
			if slices.Contains(vs, "circleci_services") {
				return true
			}
		}
		return false
	}})
	txt = f.answer(f.slash(alice, incident, "failover --to "+f.standby))
	for _, want := range []string{"cannot be read", "--force-unknown", "two Services boxes"} {
		if !strings.Contains(txt, want) {
			t.Errorf("unknown-primary refusal lacks %q: %s", want, txt)
		}
	}
	f.server.Wait()
	if all, _ := f.app.Approvals.Store.All(t.Context()); len(all) != 0 {
		t.Fatalf("refused failovers made %d requests", len(all))
	}
	req := f.request(alice, "failover --to "+f.standby+" --force-unknown")
	plan := f.waitText("plan", req, "Approval needed")
	if !strings.Contains(plan, "Risk") || !strings.Contains(plan, f.inst.ServicesBox.ID) {
		t.Errorf("force-unknown plan does not state the risk or the box: %s", plan)
	}
	if st := f.instance(f.inst.ServicesBox.ID).State.Name; st != ec2types.InstanceStateNameRunning {
		t.Errorf("a refused failover touched the box: %s", st)
	}
	// Approved, it stops the instance that holds the address (found
	// without reading the box by its tag) before moving the address.
	f.proxy.Reset()
	f.click(bob, "approve "+req, "fu.1")
	f.waitText("summary", "The Services box is now `"+f.standby+"`")
	f.server.Wait()
	calls := f.proxy.Calls()
	stop, assign := callIndex(calls, "StopInstances", f.inst.ServicesBox.ID), callIndex(calls, "AssignPrivateIpAddresses", "10.0.1.100")
	if stop < 0 || assign < stop {
		t.Errorf("force-unknown: stop at %d, assign at %d", stop, assign)
	}
	if got := f.holdersOf("10.0.1.100"); len(got) != 1 || got[0] != f.standby {
		t.Errorf("service address on %v", got)
	}
}

// An address held by an instance the bot does not read as the Services
// box (its Name tag changed) is not taken: that instance would not be
// fenced.
func TestFailoverRefusesToTakeTheAddressFromAnUnfencedInstance(t *testing.T) {
	t.Parallel()
	f := newFailoverEnv(t, func(c *config.Config) { c.Failover.ServiceIP = "10.0.1.100" })
	if _, err := ec2.NewFromConfig(f.aws).CreateTags(context.Background(), &ec2.CreateTagsInput{Resources: []string{f.inst.ServicesBox.ID},
		Tags: []ec2types.Tag{{Key: aws.String("Name"), Value: aws.String("renamed-by-someone")}}}); err != nil {
		t.Fatal(err)
	}
	txt := f.answer(f.slash(alice, incident, "failover --to "+f.standby))
	if !strings.Contains(txt, "is held by `"+f.inst.ServicesBox.ID+"`") {
		t.Errorf("refusal: %s", txt)
	}
	if got := f.holdersOf("10.0.1.100"); len(got) != 1 || got[0] != f.inst.ServicesBox.ID {
		t.Errorf("the address moved: %v", got)
	}
}

// A rotation replaces every builder, batch by batch, and the fleet never
// has fewer healthy builders than its desired capacity.
func TestBuildersRotateReplacesEveryBuilderNeverBelowDesired(t *testing.T) {
	t.Parallel()
	f := newFailoverEnv(t, func(c *config.Config) { c.Builders.RotateBatch = 2 })
	asg := autoscaling.NewFromConfig(f.aws)
	group := func() (desired int32, inService []string) {
		out, err := asg.DescribeAutoScalingGroups(context.Background(), &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{f.inst.BuilderASG}})
		if err != nil || len(out.AutoScalingGroups) == 0 {
			t.Errorf("describe group: %v", err)
			return 0, nil
		}
		g := out.AutoScalingGroups[0]
		for _, i := range g.Instances {
			if i.LifecycleState == "InService" && aws.ToString(i.HealthStatus) == "Healthy" {
				inService = append(inService, aws.ToString(i.InstanceId))
			}
		}
		return aws.ToInt32(g.DesiredCapacity), inService
	}
	desired, before := group()
	if txt := f.answer(f.slash(alice, incident, "builders status")); !strings.Contains(txt, before[0]) || !strings.Contains(txt, f.inst.ServicesBox.PrivateIP) {
		t.Errorf("builders status: %s", txt)
	}
	var mu sync.Mutex
	lowest := len(before)
	terminations := 0
	// New builders come up unhealthy and turn healthy only after a few
	// looks: the rotation must wait for them before retiring old ones.
	unhealthy := map[string]int{}
	f.proxy.SetFaults(faultproxy.Faults{Match: func(c faultproxy.Call) bool {
		if c.Action == "DescribeAutoScalingGroups" {
			out, err := asg.DescribeAutoScalingGroups(context.Background(), &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{f.inst.BuilderASG}})
			if err == nil && len(out.AutoScalingGroups) > 0 {
				mu.Lock()
				for _, i := range out.AutoScalingGroups[0].Instances {
					id := aws.ToString(i.InstanceId)
					if slices.Contains(before, id) {
						continue
					}
					n, seen := unhealthy[id]
					health := "Healthy"
					if !seen || n < 3 {
						unhealthy[id] = n + 1
						health = "Unhealthy"
					}
					_, _ = asg.SetInstanceHealth(context.Background(), &autoscaling.SetInstanceHealthInput{InstanceId: aws.String(id), HealthStatus: aws.String(health)})
				}
				mu.Unlock()
			}
		}
		if c.Action == "TerminateInstanceInAutoScalingGroup" {
			// Just before a builder is removed: the others must cover
			// the desired capacity.
			_, now := group()
			mu.Lock()
			lowest = min(lowest, len(now)-1)
			terminations++
			mu.Unlock()
		}
		return false
	}})
	req := f.request(alice, "builders rotate")
	f.click(bob, "approve "+req, "rot.1")
	f.waitText("summary", "Rotated the builders")
	f.server.Wait()
	f.proxy.SetFaults(faultproxy.Faults{})
	after, now := group()
	for _, id := range before {
		if slices.Contains(now, id) {
			t.Errorf("old builder %s still in service", id)
		}
	}
	if after != desired || len(now) != int(desired) {
		t.Errorf("after rotation: desired %d, %d in service; want %d", after, len(now), desired)
	}
	if terminations != len(before) || lowest < int(desired) {
		t.Errorf("%d terminations, lowest healthy count %d; want %d terminations and never below %d", terminations, lowest, len(before), desired)
	}
	if len(unhealthy) < len(before) {
		t.Errorf("only %d new builders were seen coming up; the health wait was not exercised", len(unhealthy))
	}
}

// syncBuffer collects log output from many goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// With the box's SSM agent offline, a `secret` request shows the refused
// agent check and cannot be approved: the read would fail only after a
// second person had approved it. No command reaches the box.
func TestSecretWithTheAgentOfflineCannotBeApproved(t *testing.T) {
	t.Parallel()
	f := newFailoverEnv(t, nil)
	f.ssm.Box(f.inst.ServicesBox.ID).SetOnline(false)
	sent := len(f.ssm.Commands())
	req, msg := f.blockedRequest(alice, "secret")
	for _, want := range []string{"refused", "`ssm:DescribeInstanceInformation` " + f.inst.ServicesBox.ID, "`ssm:SendCommand`", "skipped"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the request lacks %q:\n%s", want, msg)
		}
	}
	if ans := f.answer(f.slash(bob, incident, "approve "+req)); !strings.Contains(ans, "cannot be approved") {
		t.Fatalf("approve of a blocked request: %s", ans)
	}
	f.server.Wait()
	if n := len(f.ssm.Commands()); n != sent {
		t.Errorf("%d commands reached the box after the blocked request", n-sent)
	}
}

// The passphrase reaches the requester only, after a second person's
// approval, and appears in no log line, channel message or audit record.
func TestSecretReachesOnlyTheRequester(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	f := newFailoverEnv(t, nil, func(o *app.Options) {
		o.Log = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	token := f.ssm.Box(f.inst.ServicesBox.ID).SecretToken()
	if len(token) < 16 {
		t.Fatalf("stand-in token %q", token)
	}
	req := f.request(alice, "secret")
	f.click(bob, "approve "+req, "sec.1")
	f.waitText("notice", "shown to <@"+alice+"> only")
	f.server.Wait()
	f.slash(alice, incident, "history 50")
	f.server.Wait()
	got := 0
	for _, c := range f.slack.Calls() {
		if !strings.Contains(f.slack.Text(c)+c.BlocksJSON, token) {
			continue
		}
		if c.Method != "chat.postEphemeral" || c.User != alice {
			t.Errorf("the passphrase went to %s (user %q, channel %s)", c.Method, c.User, c.Channel)
		}
		got++
	}
	if got != 1 {
		t.Errorf("the requester got the passphrase %d times, want 1", got)
	}
	if strings.Contains(logs.String(), token) {
		t.Error("the passphrase is in the log")
	}
	recs, _ := f.app.Store.History(t.Context(), 100)
	for _, r := range recs {
		if strings.Contains(r.Command+r.Detail, token) {
			t.Errorf("the passphrase is in the audit trail: %+v", r)
		}
	}
	if logs.String() == "" {
		t.Error("nothing was logged: the test's logger is not wired, and proves nothing")
	}
}

// With a dedicated interface, the interface moves; with a load balancer,
// the target groups swap the old box for the replica.
func TestFailoverMovesAnInterfaceOrTheLoadBalancerTargets(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	t.Run("eni", func(t *testing.T) {
		t.Parallel()
		var eniID string
		f := newFailoverEnv(t, func(c *config.Config) {
			c.Failover.Discovery = "eni"
			c.Failover.ENI = "eni-00000000000000000" // replaced below, before the bot reads it
		})
		api := ec2.NewFromConfig(f.aws)
		n, err := api.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(f.inst.ServicesBox.SubnetID), PrivateIpAddress: aws.String("10.0.1.200")})
		if err != nil {
			t.Fatal(err)
		}
		eniID = aws.ToString(n.NetworkInterface.NetworkInterfaceId)
		if _, err := api.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: &eniID, InstanceId: aws.String(f.inst.ServicesBox.ID), DeviceIndex: aws.Int32(1)}); err != nil {
			t.Fatal(err)
		}
		f.app.Failover.ENI = eniID
		f.osNIC("ens6", eniID)
		req := f.request(alice, "failover --to "+f.standby)
		f.click(bob, "approve "+req, "eni.1")
		f.waitText("summary", "The Services box is now `"+f.standby+"`")
		f.server.Wait()
		out, err := api.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{eniID}})
		if err != nil || out.NetworkInterfaces[0].Attachment == nil || aws.ToString(out.NetworkInterfaces[0].Attachment.InstanceId) != f.standby {
			t.Fatalf("interface after failover: %v %+v", err, out.NetworkInterfaces[0].Attachment)
		}
		calls := f.proxy.Calls()
		if stop, attach := callIndex(calls, "StopInstances", f.inst.ServicesBox.ID), callIndex(calls, "AttachNetworkInterface", eniID); stop < 0 || attach < stop {
			t.Errorf("stop at %d, attach at %d: the fence must come first", stop, attach)
		}
	})
	t.Run("load-balancer", func(t *testing.T) {
		t.Parallel()
		var tgs []string
		f := newFailoverEnv(t, func(c *config.Config) {
			c.Failover.Discovery = "load-balancer"
			c.Failover.TargetGroupARNs = []string{"arn:placeholder"}
		})
		lb := elasticloadbalancingv2.NewFromConfig(f.aws)
		for _, port := range []int32{80, 443, 4434} {
			out, err := lb.CreateTargetGroup(ctx, &elasticloadbalancingv2.CreateTargetGroupInput{Name: aws.String(fmt.Sprintf("circleci-%d", port)), Protocol: elbtypes.ProtocolEnumTcp, Port: aws.Int32(port), VpcId: aws.String(f.inst.VPCID), TargetType: elbtypes.TargetTypeEnumInstance})
			if err != nil {
				t.Fatal(err)
			}
			arn := aws.ToString(out.TargetGroups[0].TargetGroupArn)
			tgs = append(tgs, arn)
			if _, err := lb.RegisterTargets(ctx, &elasticloadbalancingv2.RegisterTargetsInput{TargetGroupArn: &arn, Targets: []elbtypes.TargetDescription{{Id: aws.String(f.inst.ServicesBox.ID)}}}); err != nil {
				t.Fatal(err)
			}
		}
		f.app.Failover.TargetGroups = tgs
		f.iamCfg.Failover.TargetGroupARNs = tgs
		req := f.request(alice, "failover --to "+f.standby)
		f.proxy.Reset()
		f.click(bob, "approve "+req, "lb.1")
		f.waitText("summary", "The Services box is now `"+f.standby+"`")
		f.server.Wait()
		calls := f.proxy.Calls()
		if stop, reg := callIndex(calls, "StopInstances", f.inst.ServicesBox.ID), callIndex(calls, "RegisterTargets", f.standby); stop < 0 || reg < stop {
			t.Errorf("stop at %d, register at %d: the fence must come first", stop, reg)
		}
		for _, arn := range tgs {
			out, err := lb.DescribeTargetHealth(ctx, &elasticloadbalancingv2.DescribeTargetHealthInput{TargetGroupArn: aws.String(arn)})
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, d := range out.TargetHealthDescriptions {
				ids = append(ids, aws.ToString(d.Target.Id))
			}
			if !slices.Equal(ids, []string{f.standby}) {
				t.Errorf("%s targets %v, want only the standby", arn, ids)
			}
		}
	})
}

// Discovery none: nothing moves; the plan says builders need the new IP
// and rotates them, holding the builder group for the whole failover.
func TestFailoverWithoutDiscoveryRotatesTheBuilders(t *testing.T) {
	t.Parallel()
	f := newFailoverEnv(t, func(c *config.Config) {
		c.Failover.Discovery = "none"
		c.Builders.RotateBatch = 3
	})
	asg := autoscaling.NewFromConfig(f.aws)
	before := f.inst.Builders
	req := f.request(alice, "failover")
	plan := f.waitText("plan", req, "Approval needed")
	for _, want := range []string{"nothing moves", "CIRCLE_SECRET_PASSPHRASE", "replace all 3 builders"} {
		if !strings.Contains(plan, want) {
			t.Errorf("none-mode plan lacks %q: %s", want, plan)
		}
	}
	f.click(bob, "approve "+req, "none.1")
	f.waitText("summary", "The Services box is now `"+f.inst.Replica.ID+"`", "builders were rotated")
	f.server.Wait()
	out, err := asg.DescribeAutoScalingGroups(context.Background(), &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{f.inst.BuilderASG}})
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range out.AutoScalingGroups[0].Instances {
		if slices.Contains(before, aws.ToString(i.InstanceId)) {
			t.Errorf("old builder %s still in the group", aws.ToString(i.InstanceId))
		}
	}
	if got := f.holdersOf(f.inst.ServicesBox.SecondaryIP); len(got) != 1 || got[0] != f.inst.ServicesBox.ID {
		t.Errorf("discovery none moved the service address: %v", got)
	}
	if l, _ := f.app.Store.Locks(t.Context()); len(l) != 0 {
		t.Errorf("locks left after the failover: %+v", l)
	}
}

// After a failover the Services box is the old replica, and the fenced
// old box still holds the IP the earlier backups recorded. An in-place
// restore of such a backup keeps the box's own instance and IP, so that
// stale IP must not refuse it (the rebuild's IP checks do not apply).
func TestInPlaceRestoreAfterAFailoverKeepsTheNewBoxsIP(t *testing.T) {
	t.Parallel()
	f := newFailoverEnv(t, func(c *config.Config) { c.Failover.Discovery = "none" })
	f.slash(alice, incident, "backup now")
	bk := f.lastBackup(ops.StateCompleted)
	f.server.Wait()
	req := f.request(alice, "failover")
	f.waitText("plan", req, "Approval needed")
	f.click(bob, "approve "+req, "fo.inplace")
	f.waitText("summary", "The Services box is now `"+f.inst.Replica.ID+"`")
	f.server.Wait()
	txt := f.answer(f.slash(alice, incident, "restore "+bk.Snapshots[0].ID+" --dry-run"))
	if !strings.Contains(txt, "in place") || !strings.Contains(txt, f.inst.Replica.ID) || strings.Contains(txt, "is held by") {
		t.Errorf("the in-place plan after a failover:\n%s", txt)
	}
	if strings.Contains(txt, f.inst.ServicesBox.PrivateIP+"`") && !strings.Contains(txt, f.inst.Replica.PrivateIP) {
		t.Errorf("the plan keeps the fenced box's IP, not the box's own:\n%s", txt)
	}
}
