package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	elb "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	elbtypes "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"

	"github.com/circlebot/circlebot/internal/journal"
)

// FailoverEC2 is the part of EC2 a failover uses.
type FailoverEC2 interface {
	EC2
	StopInstances(context.Context, *ec2.StopInstancesInput, ...func(*ec2.Options)) (*ec2.StopInstancesOutput, error)
	StartInstances(context.Context, *ec2.StartInstancesInput, ...func(*ec2.Options)) (*ec2.StartInstancesOutput, error)
	CreateTags(context.Context, *ec2.CreateTagsInput, ...func(*ec2.Options)) (*ec2.CreateTagsOutput, error)
	DescribeNetworkInterfaces(context.Context, *ec2.DescribeNetworkInterfacesInput, ...func(*ec2.Options)) (*ec2.DescribeNetworkInterfacesOutput, error)
	AssignPrivateIpAddresses(context.Context, *ec2.AssignPrivateIpAddressesInput, ...func(*ec2.Options)) (*ec2.AssignPrivateIpAddressesOutput, error)
	UnassignPrivateIpAddresses(context.Context, *ec2.UnassignPrivateIpAddressesInput, ...func(*ec2.Options)) (*ec2.UnassignPrivateIpAddressesOutput, error)
	DetachNetworkInterface(context.Context, *ec2.DetachNetworkInterfaceInput, ...func(*ec2.Options)) (*ec2.DetachNetworkInterfaceOutput, error)
	AttachNetworkInterface(context.Context, *ec2.AttachNetworkInterfaceInput, ...func(*ec2.Options)) (*ec2.AttachNetworkInterfaceOutput, error)
	DescribeSubnets(context.Context, *ec2.DescribeSubnetsInput, ...func(*ec2.Options)) (*ec2.DescribeSubnetsOutput, error)
}

// TargetGroups is the part of Elastic Load Balancing a load-balancer
// failover uses.
type TargetGroups interface {
	RegisterTargets(context.Context, *elb.RegisterTargetsInput, ...func(*elb.Options)) (*elb.RegisterTargetsOutput, error)
	DeregisterTargets(context.Context, *elb.DeregisterTargetsInput, ...func(*elb.Options)) (*elb.DeregisterTargetsOutput, error)
	DescribeTargetHealth(context.Context, *elb.DescribeTargetHealthInput, ...func(*elb.Options)) (*elb.DescribeTargetHealthOutput, error)
}

// Discovery modes: how builders find the Services box.
const (
	DiscoverySecondaryIP  = "secondary-ip"
	DiscoveryENI          = "eni"
	DiscoveryLoadBalancer = "load-balancer"
	DiscoveryNone         = "none"
)

// Failover fences the Services box and promotes the replica: the seed's
// "cold fail-over", with the fence first so that two boxes never serve.
type Failover struct {
	EC2          FailoverEC2
	ELB          TargetGroups
	SSM          SSM
	HTTP         *http.Client
	NameTag      string
	ReplicaTag   string
	Region       string
	Discovery    string
	ServiceIP    string
	ENI          string
	TargetGroups []string
	AppStart     string
	HealthURL    string // optional; {ip} is the replica's private IP, {service_ip} the service address
	// OSAddressCommand configures the service address in the replica's
	// OS after it moved (osaddress.go): "" is DefaultOSAddressCommand,
	// "none" skips it.
	OSAddressCommand string
	Poll             time.Duration
	StopTimeout      time.Duration
	// HealthTimeout bounds the wait for the replica's status checks, its
	// SSM agent and the HTTP check.
	HealthTimeout time.Duration
	// Builders rotates the fleet when discovery is "none".
	Builders *Builders
	// Lag checks the replica's replication (nil: not configured);
	// RequireInSync refuses a replica not in sync without --force-stale.
	Lag           *LagCheck
	RequireInSync bool
	// ReadBack bounds each read-back after a change (default 2 min):
	// EC2's and ELB's reads lag their writes.
	ReadBack time.Duration
}

// Node is one side of a failover as the plan saw it.
type Node struct {
	ID      string `json:"id"`
	State   string `json:"state"`
	AZ      string `json:"az"`
	Subnet  string `json:"subnet"`
	VPC     string `json:"vpc,omitempty"`
	IP      string `json:"ip"`
	ENI     string `json:"eni"`
	MAC     string `json:"mac,omitempty"`     // of the primary interface
	Unknown string `json:"unknown,omitempty"` // why its state cannot be read
	// Name is its Name tag when read: bound in a failover's plan, so a
	// replica a refresh retired (renamed -retired) between the approval
	// and the run is a changed plan, not a promotion of stale data.
	Name string `json:"name,omitempty"`
}

func nodeOf(in ec2types.Instance) Node {
	b := Node{ID: aws.ToString(in.InstanceId), State: string(in.State.Name), Subnet: aws.ToString(in.SubnetId), VPC: aws.ToString(in.VpcId), IP: aws.ToString(in.PrivateIpAddress), Name: tagValue(in.Tags, "Name")}
	if in.Placement != nil {
		b.AZ = aws.ToString(in.Placement.AvailabilityZone)
	}
	for _, n := range in.NetworkInterfaces {
		if n.Attachment != nil && aws.ToInt32(n.Attachment.DeviceIndex) == 0 {
			b.ENI = aws.ToString(n.NetworkInterfaceId)
			b.MAC = aws.ToString(n.MacAddress)
		}
	}
	return b
}

// FailoverPlan is everything a failover will touch.
type FailoverPlan struct {
	// RTO is the predicted time to the app starting on the replica (not a
	// fact: history changes it).
	RTO     RTO    `json:"rto,omitzero"`
	Region  string `json:"region"`
	NameTag string `json:"name_tag"`
	Primary *Node  `json:"primary,omitempty"` // nil: no Services box left to fence
	Replica Node   `json:"replica"`
	// Building are new replicas a replica refresh is building
	// (Name=<replica tag>-candidate): not the replica.
	Building     []Candidate   `json:"building,omitempty"`
	ReplicaTag   string        `json:"replica_tag,omitempty"`
	Discovery    string        `json:"discovery"`
	ServiceIP    string        `json:"service_ip,omitempty"`
	IPHolderENI  string        `json:"ip_holder_eni,omitempty"`
	ENI          string        `json:"eni,omitempty"`
	TargetGroups []string      `json:"target_groups,omitempty"`
	ForceUnknown bool          `json:"force_unknown"`
	AppStart     string        `json:"app_start,omitempty"`
	HealthURL    string        `json:"health_url,omitempty"`
	Builders     []string      `json:"builders,omitempty"` // rotated when discovery is none
	BuilderPlan  *RotationPlan `json:"builder_plan,omitempty"`
	// Lag is the replica's replication verdict (nil: no check configured);
	// ForceStale: --force-stale, a replica not in sync is accepted.
	Lag           *Lag `json:"lag,omitempty"`
	RequireInSync bool `json:"require_in_sync,omitempty"`
	ForceStale    bool `json:"force_stale,omitempty"`
	// The service address in the replica's OS (osaddress.go): the
	// command ("" the default, "none" off), the subnet's prefix length
	// and the MAC of the interface that holds the address on the
	// replica ("" when there is no SSM to run it).
	OSCommand     string `json:"os_command,omitempty"`
	ServicePrefix int    `json:"service_prefix,omitempty"`
	ServiceMAC    string `json:"service_mac,omitempty"`
}

func withName(name string) string {
	if name == "" {
		return ""
	}
	return ", Name=" + name
}

func (p FailoverPlan) Facts() map[string]string {
	f := map[string]string{
		"region": p.Region, "replica": p.Replica.ID + " (" + p.Replica.State + ", " + p.Replica.AZ + withName(p.Replica.Name) + ")",
		"discovery": p.Discovery, "service_ip": p.ServiceIP, "eni": p.ENI, "target_groups": strings.Join(p.TargetGroups, ","),
		"force_unknown": fmt.Sprint(p.ForceUnknown), "app_start": p.AppStart, "health_url": p.HealthURL,
		"primary": "none", "rotate_builders": "",
	}
	if p.Lag != nil {
		// The verdict itself is not bound: seconds behind change between
		// the request and the run. What is bound is whether a replica not
		// in sync was accepted; the plan made again before running checks
		// the replica again.
		f["require_in_sync"], f["force_stale"] = fmt.Sprint(p.RequireInSync), fmt.Sprint(p.ForceStale)
	}
	if os := p.OSAddress(); os != "" {
		f["os_address"] = os + ": " + cmpStr(p.OSCommand, "default")
	}
	if p.BuilderPlan != nil {
		f["rotate_builders"] = p.BuilderPlan.Group + " batch " + fmt.Sprint(p.BuilderPlan.Batch)
	}
	if p.Primary != nil {
		f["primary"] = p.Primary.ID + " (" + p.Primary.State + ", " + p.Primary.AZ + ")"
		if p.Primary.Unknown != "" {
			f["primary"] = p.Primary.ID + " (state unknown)"
		}
		if p.Primary.Unreadable() {
			f["primary"] = "none found (state unknown)"
		}
	}
	return f
}

func (p FailoverPlan) Encode() string { b, _ := json.Marshal(p); return string(b) }

func DecodeFailoverPlan(s string) (FailoverPlan, error) {
	var p FailoverPlan
	err := json.Unmarshal([]byte(s), &p)
	return p, err
}

func (f *Failover) poll() time.Duration { return cmpOr(f.Poll, 2*time.Second) }

// Plan reads both boxes and the service address and refuses what cannot
// be done safely: an unreadable primary without --force-unknown, a
// secondary IP or interface that cannot reach the replica's subnet.
func (f *Failover) Plan(ctx context.Context, to string, forceUnknown bool) (FailoverPlan, error) {
	return f.PlanWith(ctx, to, forceUnknown, false)
}

// PlanWith is Plan with --force-stale: a replica the replication check
// does not find in sync is accepted even with failover.require_in_sync.
func (f *Failover) PlanWith(ctx context.Context, to string, forceUnknown, forceStale bool) (FailoverPlan, error) {
	p := FailoverPlan{ForceStale: forceStale, RequireInSync: f.RequireInSync, Region: f.Region, NameTag: f.NameTag, Discovery: f.Discovery, ForceUnknown: forceUnknown, AppStart: f.AppStart, HealthURL: f.HealthURL, OSCommand: f.OSAddressCommand}
	if p.Discovery == "" {
		p.Discovery = DiscoverySecondaryIP
	}
	prim, err := FindBox(ctx, f.EC2, f.NameTag)
	var amb *AmbiguousError
	switch {
	case errors.As(err, &amb):
		return p, refusef("%s. Fence one by hand before a failover.", amb.Error())
	case errors.Is(err, ErrNotFound):
		// Nothing to fence: the box is gone (terminated or never tagged).
	case err != nil:
		if ctx.Err() != nil {
			return p, err
		}
		if !transient(err) {
			// AccessDenied, expired credentials…: not an outage, and no
			// reason to fail over blind.
			return p, refusef("the Services box cannot be read: %s Fix that first; a failover needs to see the box it fences.", Explain(err))
		}
		// AWS cannot answer for its zone: that is unknown, not dead.
		p.Primary = &Node{Unknown: Explain(err)}
		if !forceUnknown {
			return p, refusef("the Services box's state cannot be read (%s) — its zone may be down. Unknown is not dead: if it still runs, two Services boxes would serve at once. Check the AWS console or Health Dashboard; if you are sure it is down, request `failover --force-unknown` and the approver takes that risk.", strings.TrimSuffix(p.Primary.Unknown, "."))
		}
	default:
		b := nodeOf(prim)
		p.Primary = &b
	}
	p.ReplicaTag = f.ReplicaTag
	if f.ReplicaTag != "" {
		// Informational: a read that fails here leaves it out, it does
		// not stop a failover.
		p.Building, _ = Candidates(ctx, f.EC2, f.ReplicaTag)
	}
	if to == "" {
		if f.ReplicaTag == "" {
			return p, refusef("no replica is configured (`replica.name_tag`) and no `--to <instance-id>` was given.")
		}
		rep, err := FindBox(ctx, f.EC2, f.ReplicaTag)
		if errors.Is(err, ErrNotFound) && len(p.Building) > 0 {
			return p, refusef("there is no replica tagged Name=%s. %s: not verified and not named the replica yet, so not used. `resume` that refresh to finish it (it names the new replica), then request the failover again.", f.ReplicaTag, CandidateLines(p.Building, f.ReplicaTag))
		}
		if errors.Is(err, ErrNotFound) {
			return p, refusef("there is no replica tagged Name=%s. Give one with `failover --to <instance-id>`.", f.ReplicaTag)
		}
		if err != nil {
			return p, refusef("cannot read the replica: %s", Explain(err))
		}
		p.Replica = nodeOf(rep)
	} else {
		out, err := f.EC2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{to}})
		if err = translate(err); errors.Is(err, ErrNotFound) || errors.Is(err, ErrMalformedID) || (err == nil && (len(out.Reservations) == 0 || len(out.Reservations[0].Instances) == 0)) {
			return p, refusef("instance `%s` does not exist in %s.", to, f.Region)
		}
		if err != nil {
			return p, refusef("cannot read `%s`: %s", to, Explain(err))
		}
		p.Replica = nodeOf(out.Reservations[0].Instances[0])
		// A refresh's candidate is refused rather than promoted: it is not
		// verified, and the policy (NeverNameAnotherInstanceAsABox) lets
		// the bot name only the replica the box, so the approval would
		// end in a pre-flight that asks to loosen IAM mid-incident.
		if f.ReplicaTag != "" && tagValue(out.Reservations[0].Instances[0].Tags, "Name") == CandidateName(f.ReplicaTag) {
			by := "a refresh"
			if op := tagValue(out.Reservations[0].Instances[0].Tags, TagReplicaOp); op != "" {
				by = "the replica refresh `" + op + "`"
			}
			return p, refusef("`%s` is the new replica %s is building (Name=%s): not verified and not the replica, so a failover does not promote it. `resume` that refresh to finish it (it names the new replica), then request the failover again.", to, by, CandidateName(f.ReplicaTag))
		}
	}
	switch p.Replica.State {
	case "running", "stopped":
	default:
		return p, refusef("the replica `%s` is %s; it must be running or stopped.", p.Replica.ID, p.Replica.State)
	}
	if p.Primary != nil && p.Primary.ID == p.Replica.ID {
		return p, refusef("`%s` is the Services box itself, not a replica.", p.Replica.ID)
	}
	if f.Lag != nil {
		l := Lag{State: LagUnknown, At: time.Now(), Why: fmt.Sprintf("the replica is %s: its replication is not checked", p.Replica.State)}
		if p.Replica.State == "running" {
			l = f.Lag.Check(ctx, p.Replica.ID)
		}
		p.Lag = &l
		if f.RequireInSync && l.State != LagInSync && !forceStale {
			return p, refusef("the replica `%s` is not known to be in sync: replication %s (`replica.replication_check_command`). A failover to it now loses what it has not received. Wait until it catches up, or, if losing that is better than staying down, request `failover --force-stale` and the approver takes that risk.", p.Replica.ID, l)
		}
	}
	if p.Primary != nil && p.Primary.Unknown != "" {
		// Which box holds the service address now is what gets fenced.
		id, err := f.lastKnownPrimary(ctx, p)
		if err != nil {
			return p, err
		}
		p.Primary.ID = id
	}
	switch p.Discovery {
	case DiscoverySecondaryIP:
		if err := f.planSecondaryIP(ctx, &p); err != nil {
			return p, err
		}
	case DiscoveryENI:
		if err := f.planENI(ctx, &p); err != nil {
			return p, err
		}
	case DiscoveryLoadBalancer:
		if len(f.TargetGroups) == 0 {
			return p, refusef("`failover.discovery: load-balancer` needs `failover.target_group_arns`.")
		}
		for _, tg := range f.TargetGroups {
			if _, err := f.ELB.DescribeTargetHealth(ctx, &elb.DescribeTargetHealthInput{TargetGroupArn: aws.String(tg)}); err != nil {
				return p, refusef("target group `%s` cannot be read: %s", tg, Explain(err))
			}
		}
		p.TargetGroups = slices.Clone(f.TargetGroups)
	case DiscoveryNone:
		if f.Builders != nil {
			rp, err := f.Builders.Plan(ctx)
			if err != nil {
				return p, err
			}
			p.BuilderPlan = &rp
			p.Builders = rp.Instances
		}
	default:
		return p, refusef("unknown `failover.discovery` %q", p.Discovery)
	}
	return p, nil
}

// lastKnownPrimary names the box that holds the service address when
// the box cannot be read by its tag: the one instance holding the
// secondary IP (in the replica's VPC), the dedicated interface, or the
// one target of the load balancer other than the replica. Anything
// ambiguous is refused: the wrong instance would be fenced.
func (f *Failover) lastKnownPrimary(ctx context.Context, p FailoverPlan) (string, error) {
	var holders []string
	switch p.Discovery {
	case DiscoverySecondaryIP:
		if f.ServiceIP == "" {
			return "", refusef("the Services box cannot be read and `failover.service_ip` is not set, so the bot cannot tell which instance holds the service address to fence it. Set it, or fence the box by hand.")
		}
		hs, err := InterfacesHolding(ctx, f.EC2, f.ServiceIP, "", p.Replica.VPC)
		if err != nil {
			return "", refusef("cannot find which instance holds %s: %s", f.ServiceIP, Explain(err))
		}
		for _, n := range hs {
			if n.Attachment != nil {
				holders = append(holders, aws.ToString(n.Attachment.InstanceId))
			}
		}
	case DiscoveryENI:
		out, err := f.EC2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{f.ENI}})
		if err != nil || len(out.NetworkInterfaces) == 0 {
			return "", refusef("cannot read interface `%s`: %s", f.ENI, Explain(err))
		}
		if a := out.NetworkInterfaces[0].Attachment; a != nil {
			holders = append(holders, aws.ToString(a.InstanceId))
		}
	case DiscoveryLoadBalancer:
		seen := map[string]bool{}
		for _, tg := range f.TargetGroups {
			out, err := f.ELB.DescribeTargetHealth(ctx, &elb.DescribeTargetHealthInput{TargetGroupArn: aws.String(tg)})
			if err != nil {
				return "", refusef("target group `%s` cannot be read: %s", tg, Explain(err))
			}
			for _, d := range out.TargetHealthDescriptions {
				if id := aws.ToString(d.Target.Id); id != p.Replica.ID && !seen[id] {
					seen[id] = true
					holders = append(holders, id)
				}
			}
		}
	}
	holders = slices.DeleteFunc(holders, func(id string) bool { return id == p.Replica.ID })
	switch len(holders) {
	case 0:
		return "", nil // nothing serves the address: nothing to fence
	case 1:
		return holders[0], nil
	}
	return "", refusef("the Services box cannot be read and %d instances hold its address (%s): fence the right one by hand first.", len(holders), strings.Join(holders, ", "))
}

func (f *Failover) planSecondaryIP(ctx context.Context, p *FailoverPlan) error {
	ip := f.ServiceIP
	if ip == "" && p.Primary != nil && p.Primary.Unknown == "" {
		in, _, err := f.describe(ctx, p.Primary.ID)
		if err != nil {
			return err
		}
		if sec := ShapeOf(in).SecondaryIPs; len(sec) > 0 {
			ip = sec[0]
		}
	}
	if ip == "" {
		return refusef("`failover.discovery: secondary-ip` needs the service address: set `failover.service_ip` (the secondary IP builders use).")
	}
	p.ServiceIP = ip
	// A secondary IP lives in one subnet: the replica's must contain it.
	// (Read from the replica's subnet, so it holds with the old box
	// unreadable too.)
	sub, err := f.EC2.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{SubnetIds: []string{p.Replica.Subnet}})
	if err != nil || len(sub.Subnets) == 0 {
		return refusef("cannot read the replica's subnet `%s`: %s", p.Replica.Subnet, Explain(err))
	}
	_, cidr, cerr := net.ParseCIDR(aws.ToString(sub.Subnets[0].CidrBlock))
	if cerr != nil || !cidr.Contains(net.ParseIP(ip)) {
		where := "another subnet"
		if p.Primary != nil && p.Primary.Subnet != "" {
			where = "`" + p.Primary.Subnet + "`"
		}
		return refusef("the service address %s lives in %s, the replica `%s` in `%s` (%s, %s): a secondary IP cannot leave its subnet, so this failover cannot keep it. Use `failover.discovery: load-balancer` (an NLB on TCP 80, 443, 4434 in front of the box) or `none` (builders restarted with the replica's IP %s and CIRCLE_SECRET_PASSPHRASE), or keep a replica in the box's subnet.",
			ip, where, p.Replica.ID, p.Replica.Subnet, aws.ToString(sub.Subnets[0].CidrBlock), p.Replica.AZ, p.Replica.IP)
	}
	ones, _ := cidr.Mask.Size()
	if err := f.planOS(p, ones, p.Replica.MAC, "the replica's primary interface `"+p.Replica.ENI+"`"); err != nil {
		return err
	}
	hs, err := InterfacesHolding(ctx, f.EC2, ip, p.Replica.Subnet, "")
	if err != nil {
		return refusef("cannot find the interface holding %s: %s", ip, Explain(err))
	}
	for _, n := range hs {
		p.IPHolderENI = aws.ToString(n.NetworkInterfaceId)
		holder := ""
		if n.Attachment != nil {
			holder = aws.ToString(n.Attachment.InstanceId)
		}
		switch {
		case holder == p.Replica.ID:
			return refusef("the service address %s is already on the replica `%s`.", ip, p.Replica.ID)
		case holder != "" && (p.Primary == nil || (p.Primary.ID != holder && p.Primary.Unknown == "")):
			// Taking the address from an instance that is not fenced
			// would leave it running with half its identity.
			box := "no instance is tagged as the Services box"
			if p.Primary != nil {
				box = "the Services box is `" + p.Primary.ID + "`"
			}
			return refusef("the service address %s is held by `%s`, but %s: the bot fences only the box it reads by its tag. Fix the Name tags (or fence `%s` by hand), then request again.", ip, holder, box, holder)
		}
	}
	return nil
}

// eniDeviceIndex is where an `eni` failover attaches the interface on
// the replica.
const eniDeviceIndex = 1

func (f *Failover) planENI(ctx context.Context, p *FailoverPlan) error {
	if f.ENI == "" {
		return refusef("`failover.discovery: eni` needs `failover.eni_id`.")
	}
	out, err := f.EC2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{f.ENI}})
	if err != nil || len(out.NetworkInterfaces) == 0 {
		return refusef("network interface `%s` cannot be read: %s", f.ENI, Explain(err))
	}
	n := out.NetworkInterfaces[0]
	if az := aws.ToString(n.AvailabilityZone); az != p.Replica.AZ {
		return refusef("network interface `%s` is in %s and the replica `%s` in %s: an interface attaches only within its zone. Use `failover.discovery: load-balancer` or `none`, or keep a replica in %s.", f.ENI, az, p.Replica.ID, p.Replica.AZ, az)
	}
	if a := n.Attachment; a != nil {
		holder := aws.ToString(a.InstanceId)
		if holder != p.Replica.ID && aws.ToInt32(a.DeviceIndex) == 0 {
			// AWS never detaches an instance's primary interface: the
			// failover would fence the box, then fail to move it.
			return refusef("interface `%s` is the primary interface (device index 0) of `%s`, which AWS cannot detach: `failover.eni_id` must be a secondary interface that carries the service address.", f.ENI, holder)
		}
		if holder != p.Replica.ID && (p.Primary == nil || (p.Primary.ID != holder && p.Primary.Unknown == "")) {
			return refusef("interface `%s` is attached to `%s`, which is not the Services box the bot reads by its tag: fix the Name tags (or fence `%s` by hand), then request again.", f.ENI, holder, holder)
		}
	}
	// moveENI attaches it at device index 1 (0 is always the instance's
	// own primary interface): a replica that has another interface there
	// would refuse the attach after its box was fenced.
	if a := n.Attachment; a == nil || aws.ToString(a.InstanceId) != p.Replica.ID {
		rep, ok, err := f.describe(ctx, p.Replica.ID)
		if err != nil || !ok {
			return refusef("cannot read the replica `%s`: %s", p.Replica.ID, Explain(err))
		}
		for _, ri := range rep.NetworkInterfaces {
			if ri.Attachment != nil && aws.ToInt32(ri.Attachment.DeviceIndex) == eniDeviceIndex {
				return refusef("the replica `%s` already has interface `%s` at device index %d, where `%s` would be attached: detach it from the replica (or use another replica), then request again.", p.Replica.ID, aws.ToString(ri.NetworkInterfaceId), eniDeviceIndex, f.ENI)
			}
		}
	}
	p.ENI = f.ENI
	for _, a := range n.PrivateIpAddresses {
		if aws.ToBool(a.Primary) {
			p.ServiceIP = aws.ToString(a.PrivateIpAddress)
		}
	}
	if p.OSCommand != OSAddressNone && f.SSM != nil {
		sub, err := f.EC2.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{SubnetIds: []string{aws.ToString(n.SubnetId)}})
		if err != nil || len(sub.Subnets) == 0 {
			return refusef("cannot read the subnet `%s` of interface `%s`: %s", aws.ToString(n.SubnetId), f.ENI, Explain(err))
		}
		_, cidr, cerr := net.ParseCIDR(aws.ToString(sub.Subnets[0].CidrBlock))
		if cerr != nil {
			return refusef("subnet `%s` has no IPv4 CIDR block", aws.ToString(n.SubnetId))
		}
		ones, _ := cidr.Mask.Size()
		if err := f.planOS(p, ones, aws.ToString(n.MacAddress), "interface `"+f.ENI+"`"); err != nil {
			return err
		}
	}
	return nil
}

// planOS records what the OS step needs: the subnet's prefix length and
// the MAC by which the replica's OS names the device holding the
// address. Without SSM, or with the step off, it records nothing.
func (f *Failover) planOS(p *FailoverPlan, prefix int, mac, what string) error {
	if p.OSCommand == OSAddressNone || f.SSM == nil {
		return nil
	}
	if mac == "" {
		return refusef("the MAC address of %s cannot be read, so the replica's OS cannot be told which device gets the service address %s. Set `failover.os_address_command: none` if the replica configures it by itself.", what, p.ServiceIP)
	}
	p.ServicePrefix, p.ServiceMAC = prefix, strings.ToLower(mac)
	return nil
}

func (f *Failover) describe(ctx context.Context, id string) (ec2types.Instance, bool, error) {
	return describeInstance(ctx, f.EC2, id)
}

func (f *Failover) waitState(ctx context.Context, id string, timeout time.Duration, want ...ec2types.InstanceStateName) error {
	_, err := waitInstanceState(ctx, f.EC2, id, f.poll(), timeout, want...)
	return err
}

// Steps returns the journal steps of plan, in order: the fence first,
// the address only after the old box is confirmed stopped. The builder
// rotation is there only in discovery mode none.
func (f *Failover) Steps(p FailoverPlan) []journal.Def {
	type fn = StepFunc[FailoverResult]
	type w = *Work[FailoverResult]
	steps := []struct {
		name string
		run  fn
	}{
		{stepFence, func(ctx context.Context, _ w, pr journal.Progress) (string, error) {
			return f.fence(ctx, p, pr)
		}},
		{stepStartRep, func(ctx context.Context, _ w, _ journal.Progress) (string, error) {
			return f.startReplica(ctx, p)
		}},
		{stepMoveAddress, func(ctx context.Context, _ w, pr journal.Progress) (string, error) {
			return f.move(ctx, p, pr)
		}},
		{stepOSAddress, func(ctx context.Context, op w, pr journal.Progress) (string, error) {
			return f.configureOS(ctx, op, p, pr)
		}},
		{stepNameTag, func(ctx context.Context, op w, _ journal.Progress) (string, error) {
			return f.retag(ctx, op, p)
		}},
		{stepAppReplica, func(ctx context.Context, op w, pr journal.Progress) (string, error) {
			return f.startApp(ctx, op, p, pr)
		}},
		{"Verify health", func(ctx context.Context, _ w, pr journal.Progress) (string, error) {
			return f.verify(ctx, p, pr)
		}},
	}
	if p.osAddressSkipped() != "" {
		// Only a failover that moves an address has the OS step.
		steps = slices.DeleteFunc(steps, func(st struct {
			name string
			run  fn
		}) bool {
			return strings.HasPrefix(st.name, "Configure the service address")
		})
	}
	if p.BuilderPlan != nil {
		steps = append(steps, struct {
			name string
			run  fn
		}{stepRotate, func(ctx context.Context, _ w, pr journal.Progress) (string, error) {
			return f.Builders.ReplaceAll(ctx, *p.BuilderPlan, pr)
		}})
	}
	defs := make([]journal.Def, len(steps))
	for i, st := range steps {
		defs[i] = journal.Def{Name: st.name, Run: retrying(typed(st.run), f.poll())}
	}
	return defs
}

// fence stops the old primary and confirms it stopped (fence.go); a
// primary whose state could not be read when the failover was planned
// (approved with --force-unknown) gets a forced stop at once. With
// --force-unknown, a stop that cannot be confirmed is a warning and the
// failover goes on, as the approver accepted; without it, it stops the
// failover before the address moves.
func (f *Failover) fence(ctx context.Context, p FailoverPlan, pr journal.Progress) (string, error) {
	if p.Primary == nil {
		return "no Services box to fence (none is tagged Name=" + p.NameTag + ")", nil
	}
	id := p.Primary.ID
	if p.Primary.Unreadable() {
		return "state unknown and ID unknown: not fenced (approved with --force-unknown); make sure the old box does not come back", nil
	}
	res, err := f.fencing(pr).run(ctx, id, p.Primary.Unknown != "", p.ForceUnknown)
	switch {
	case err != nil:
		return "", fmt.Errorf("the old primary is not confirmed stopped; not moving the address: %w", err)
	case res.Gone:
		return fmt.Sprintf("`%s` is gone (AWS no longer knows it)", id), nil
	case res.Already:
		return fmt.Sprintf("`%s` was already %s", id, res.Before), nil
	case res.Confirmed && res.Forced:
		return fmt.Sprintf("`%s` force-stopped and confirmed in %s", id, res.Took.Round(time.Second)), nil
	case res.Confirmed:
		return fmt.Sprintf("`%s` stopped and confirmed in %s", id, res.Took.Round(time.Second)), nil
	case !res.Sent:
		// A zone in trouble may not take the stop at all; the approver
		// accepted that risk with --force-unknown.
		pr.Log(fmt.Sprintf("Forced stop of `%s` failed (%s); going on as approved with --force-unknown.", id, Explain(res.Why)))
		return fmt.Sprintf("`%s` could not be reached: not confirmed stopped (approved with --force-unknown)", id), nil
	}
	pr.Log(fmt.Sprintf(":warning: `%s` is not confirmed stopped (%s); going on as approved with --force-unknown.", id, Explain(res.Why)))
	return fmt.Sprintf("`%s` stop sent, *not confirmed* (approved with --force-unknown)", id), nil
}

func (f *Failover) fencing(pr journal.Progress) fence {
	return fence{EC2: f.EC2, Poll: f.poll(), Timeout: cmpOr(f.StopTimeout, 2*time.Minute), Log: pr.Log}
}

// ensureFenced is checked again before the address moves and before the
// app starts: after a resume hours later, someone may have started the
// old box again.
func (f *Failover) ensureFenced(ctx context.Context, p FailoverPlan) error {
	if p.Primary == nil || p.Primary.Unreadable() {
		return nil
	}
	in, ok, err := f.describe(ctx, p.Primary.ID)
	if err != nil {
		if p.ForceUnknown {
			return nil // unreadable, as approved
		}
		return fmt.Errorf("check that the old primary is still fenced: %w", err)
	}
	if !ok {
		return nil // gone: AWS no longer knows it, so it cannot serve
	}
	running := in.State.Name == ec2types.InstanceStateNameRunning || in.State.Name == ec2types.InstanceStateNamePending
	if p.ForceUnknown && !running {
		return nil // stopping, or the like: what --force-unknown accepted
	}
	if in.State.Name != ec2types.InstanceStateNameStopped && in.State.Name != ec2types.InstanceStateNameTerminated {
		return fmt.Errorf("the old primary %s is %s again: not going on while it may serve; stop it, then resume", p.Primary.ID, in.State.Name)
	}
	return nil
}

func (f *Failover) startReplica(ctx context.Context, p FailoverPlan) (string, error) {
	in, ok, err := f.describe(ctx, p.Replica.ID)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", fmt.Errorf("the replica %s is gone", p.Replica.ID)
	}
	switch in.State.Name {
	case ec2types.InstanceStateNameRunning:
		return fmt.Sprintf("`%s` running", p.Replica.ID), nil
	case ec2types.InstanceStateNameStopped, ec2types.InstanceStateNamePending:
	default:
		return "", fmt.Errorf("the replica %s is %s", p.Replica.ID, in.State.Name)
	}
	start := time.Now()
	if in.State.Name == ec2types.InstanceStateNameStopped {
		if _, err := f.EC2.StartInstances(ctx, &ec2.StartInstancesInput{InstanceIds: []string{p.Replica.ID}}); err != nil {
			return "", fmt.Errorf("start %s: %w", p.Replica.ID, translate(err))
		}
	}
	if err := f.waitState(ctx, p.Replica.ID, cmpOr(f.HealthTimeout, 10*time.Minute), ec2types.InstanceStateNameRunning); err != nil {
		return "", err
	}
	return fmt.Sprintf("`%s` started in %s", p.Replica.ID, since(start)), nil
}

// move moves the service address by the discovery mode, and reads back
// that it left the old box.
func (f *Failover) move(ctx context.Context, p FailoverPlan, pr journal.Progress) (string, error) {
	if err := f.ensureFenced(ctx, p); err != nil {
		return "", err
	}
	switch p.Discovery {
	case DiscoverySecondaryIP:
		return f.moveIP(ctx, p)
	case DiscoveryENI:
		return f.moveENI(ctx, p)
	case DiscoveryLoadBalancer:
		return f.moveTargets(ctx, p)
	}
	return fmt.Sprintf("nothing to move (discovery none): builders must use %s", p.Replica.IP), nil
}

func (f *Failover) holders(ctx context.Context, ip, subnet string) ([]ec2types.NetworkInterface, error) {
	return InterfacesHolding(ctx, f.EC2, ip, subnet, "")
}

// moveIP takes the secondary IP off every interface but the replica's,
// puts it on the replica's, and reads back until it is there alone: on
// AWS the remapping is asynchronous, so the first read may not show it.
func (f *Failover) moveIP(ctx context.Context, p FailoverPlan) (string, error) {
	ip := p.ServiceIP
	hs, err := f.holders(ctx, ip, p.Replica.Subnet)
	if err != nil {
		return "", err
	}
	onReplica := false
	for _, n := range hs {
		id := aws.ToString(n.NetworkInterfaceId)
		if id == p.Replica.ENI {
			onReplica = true
			continue
		}
		// Take it off the old interface first: the old box is fenced, and
		// an address on two interfaces would answer from both.
		_, err := f.EC2.UnassignPrivateIpAddresses(ctx, &ec2.UnassignPrivateIpAddressesInput{NetworkInterfaceId: n.NetworkInterfaceId, PrivateIpAddresses: []string{ip}})
		if err = translate(err); err != nil && !errors.Is(err, ErrNotAssigned) {
			if p.Primary != nil && p.Primary.Unknown != "" {
				continue // AllowReassignment below takes it over
			}
			return "", fmt.Errorf("remove %s from %s: %w", ip, id, err)
		}
	}
	if !onReplica {
		if _, err := f.EC2.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(p.Replica.ENI), PrivateIpAddresses: []string{ip}, AllowReassignment: aws.Bool(true)}); err != nil {
			return "", fmt.Errorf("put %s on the replica's interface %s: %w", ip, p.Replica.ENI, translate(err))
		}
	}
	var ids []string
	timeout := cmpOr(f.StopTimeout, 2*time.Minute)
	err = waitFor(ctx, f.poll(), time.Now().Add(timeout), func() (bool, error) {
		hs, err := f.holders(ctx, ip, p.Replica.Subnet)
		if err != nil {
			return false, err
		}
		ids = ids[:0]
		for _, n := range hs {
			ids = append(ids, aws.ToString(n.NetworkInterfaceId))
		}
		return len(ids) == 1 && ids[0] == p.Replica.ENI, nil
	})
	var to *waitTimeout
	switch {
	case errors.As(err, &to):
		return "", fmt.Errorf("%s is on %v, not only on the replica's %s, %s after the move (%s)", ip, ids, p.Replica.ENI, timeout, to)
	case err != nil:
		return "", err
	}
	return fmt.Sprintf("%s moved to `%s` (%s) and gone from the old interface", ip, p.Replica.ENI, p.Replica.ID), nil
}

func (f *Failover) moveENI(ctx context.Context, p FailoverPlan) (string, error) {
	read := func() (ec2types.NetworkInterface, error) {
		out, err := f.EC2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{p.ENI}})
		if err == nil && len(out.NetworkInterfaces) == 0 {
			err = ErrNotFound
		}
		if err != nil {
			return ec2types.NetworkInterface{}, fmt.Errorf("read %s: %w", p.ENI, translate(err))
		}
		return out.NetworkInterfaces[0], nil
	}
	n, err := read()
	if err != nil {
		return "", err
	}
	if n.Attachment != nil && aws.ToString(n.Attachment.InstanceId) == p.Replica.ID {
		return fmt.Sprintf("`%s` is attached to `%s`", p.ENI, p.Replica.ID), nil
	}
	if n.Attachment != nil {
		_, err := f.EC2.DetachNetworkInterface(ctx, &ec2.DetachNetworkInterfaceInput{AttachmentId: n.Attachment.AttachmentId, Force: aws.Bool(p.Primary != nil && p.Primary.Unknown != "")})
		if err != nil {
			return "", fmt.Errorf("detach %s: %w", p.ENI, translate(err))
		}
		timeout := cmpOr(f.StopTimeout, 2*time.Minute)
		err = waitFor(ctx, f.poll(), time.Now().Add(timeout), func() (bool, error) {
			n, err := read()
			return err == nil && n.Status == ec2types.NetworkInterfaceStatusAvailable, err
		})
		var to *waitTimeout
		switch {
		case errors.As(err, &to):
			return "", fmt.Errorf("%s did not detach within %s", p.ENI, timeout)
		case err != nil:
			return "", err
		}
	}
	if _, err := f.EC2.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: aws.String(p.ENI), InstanceId: aws.String(p.Replica.ID), DeviceIndex: aws.Int32(eniDeviceIndex)}); err != nil {
		return "", fmt.Errorf("attach %s to %s: %w", p.ENI, p.Replica.ID, translate(err))
	}
	// Read back until AWS shows it on the replica: like the detach, the
	// attach may not show in the first reads.
	timeout := cmpOr(f.StopTimeout, 2*time.Minute)
	err = waitFor(ctx, f.poll(), time.Now().Add(timeout), func() (bool, error) {
		n, err := read()
		return err == nil && n.Attachment != nil && aws.ToString(n.Attachment.InstanceId) == p.Replica.ID, err
	})
	var to *waitTimeout
	switch {
	case errors.As(err, &to):
		return "", fmt.Errorf("%s is not attached to %s %s after the attach (%s)", p.ENI, p.Replica.ID, timeout, to)
	case err != nil:
		return "", err
	}
	return fmt.Sprintf("`%s` (%s) moved to `%s`", p.ENI, p.ServiceIP, p.Replica.ID), nil
}

func (f *Failover) moveTargets(ctx context.Context, p FailoverPlan) (string, error) {
	for _, tg := range p.TargetGroups {
		// Every target but the replica leaves first (the old box, known
		// or not), then the replica joins: never two boxes behind it.
		out, err := f.ELB.DescribeTargetHealth(ctx, &elb.DescribeTargetHealthInput{TargetGroupArn: aws.String(tg)})
		if err != nil {
			return "", fmt.Errorf("read %s: %w", tg, translate(err))
		}
		var others []elbtypes.TargetDescription
		for _, d := range out.TargetHealthDescriptions {
			if aws.ToString(d.Target.Id) != p.Replica.ID {
				others = append(others, elbtypes.TargetDescription{Id: d.Target.Id, Port: d.Target.Port})
			}
		}
		if len(others) > 0 {
			if _, err := f.ELB.DeregisterTargets(ctx, &elb.DeregisterTargetsInput{TargetGroupArn: aws.String(tg), Targets: others}); err != nil {
				return "", fmt.Errorf("deregister the old targets from %s: %w", tg, translate(err))
			}
		}
		if _, err := f.ELB.RegisterTargets(ctx, &elb.RegisterTargetsInput{TargetGroupArn: aws.String(tg), Targets: []elbtypes.TargetDescription{{Id: aws.String(p.Replica.ID)}}}); err != nil {
			return "", fmt.Errorf("register %s in %s: %w", p.Replica.ID, tg, translate(err))
		}
		// Read back until the group shows the replica and no other
		// target that still gets traffic: ELB's reads lag its writes.
		var still []string
		err = readBack(ctx, f.poll(), f.ReadBack, "`"+p.Replica.ID+"` as the only target of "+tg, func() (bool, string, error) {
			out, err := f.ELB.DescribeTargetHealth(ctx, &elb.DescribeTargetHealthInput{TargetGroupArn: aws.String(tg)})
			if err != nil {
				return false, "", fmt.Errorf("read %s: %w", tg, translate(err))
			}
			still = still[:0]
			replica := false
			for _, d := range out.TargetHealthDescriptions {
				id := aws.ToString(d.Target.Id)
				switch {
				case id == p.Replica.ID:
					replica = true
				case d.TargetHealth == nil || d.TargetHealth.State != elbtypes.TargetHealthStateEnumDraining:
					still = append(still, id)
				}
			}
			seen := "targets " + strings.Join(still, ", ")
			if !replica {
				seen += " without the replica"
			}
			return replica && len(still) == 0, seen, nil
		})
		switch {
		case errors.Is(err, ErrNotConverged) && len(still) > 0:
			return "", fmt.Errorf("target group %s still sends traffic to %s: %w", tg, strings.Join(still, ", "), err)
		case err != nil:
			return "", err
		}
	}
	return fmt.Sprintf("%d target groups now point at `%s` only", len(p.TargetGroups), p.Replica.ID), nil
}

// retag makes the replica the Services box by its Name tag (status,
// backups and a later failover follow it) and renames the fenced box, so
// two instances never carry the tag.
func (f *Failover) retag(ctx context.Context, op *Work[FailoverResult], p FailoverPlan) (string, error) {
	if p.Primary != nil && !p.Primary.Unreadable() {
		if _, err := f.EC2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{p.Primary.ID}, Tags: []ec2types.Tag{
			{Key: aws.String("Name"), Value: aws.String(p.NameTag + "-fenced")},
			{Key: aws.String("circlebot:fenced-by"), Value: aws.String(op.ID)},
		}}); err != nil {
			if err = translate(err); !errors.Is(err, ErrNotFound) { // gone: nothing to rename
				return "", fmt.Errorf("rename the old primary: %w", err)
			}
		}
	}
	if _, err := f.EC2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{p.Replica.ID}, Tags: []ec2types.Tag{
		{Key: aws.String("Name"), Value: aws.String(p.NameTag)},
		{Key: aws.String("circlebot:promoted-by"), Value: aws.String(op.ID)},
	}}); err != nil {
		return "", fmt.Errorf("name the replica %s: %w", p.NameTag, translate(err))
	}
	// Status, backups and the next failover find the box by this tag:
	// read back (each box by its ID: a primary whose zone is down cannot
	// be read by its tag) until AWS shows the replica named so and the
	// old box, when it could be read, renamed.
	err := readBack(ctx, f.poll(), f.ReadBack, "Name="+p.NameTag+" on `"+p.Replica.ID+"` only", func() (bool, string, error) {
		in, ok, err := f.describe(ctx, p.Replica.ID)
		if err != nil || !ok {
			return false, "the replica unreadable", err
		}
		if n := tag(in.Tags, "Name"); n != p.NameTag {
			return false, "Name=" + n + " on the replica", nil
		}
		if p.Primary == nil || p.Primary.Unknown != "" {
			return true, "", nil
		}
		old, ok, err := f.describe(ctx, p.Primary.ID)
		if err != nil || !ok {
			return err == nil, "", err // gone: not named so
		}
		if n := tag(old.Tags, "Name"); n == p.NameTag {
			return false, "Name=" + n + " on the old box `" + p.Primary.ID + "` too", nil
		}
		return true, "", nil
	})
	if err != nil {
		return "", fmt.Errorf("hand over the Name tag: %w", err)
	}
	old := "none"
	if p.Primary != nil {
		old = "`" + p.Primary.ID + "` → " + p.NameTag + "-fenced"
	}
	return fmt.Sprintf("`%s` → Name=%s; %s", p.Replica.ID, p.NameTag, old), nil
}

func (f *Failover) startApp(ctx context.Context, op *Work[FailoverResult], p FailoverPlan, pr journal.Progress) (string, error) {
	if p.AppStart == "" || f.SSM == nil {
		return "skipped: no `services_box.app_start_command`; start the app from the admin console on port 8800", nil
	}
	if err := f.ensureFenced(ctx, p); err != nil {
		return "", err
	}
	return startApp(ctx, f.SSM, p.Replica.ID, op, func(r *FailoverResult) *Commands { return &r.Commands }, p.AppStart, f.poll(), cmpOr(f.HealthTimeout, 10*time.Minute), pr)
}

// verify waits for the replica's status checks and, when configured, an
// HTTP answer from the app (health.go).
func (f *Failover) verify(ctx context.Context, p FailoverPlan, pr journal.Progress) (string, error) {
	start := time.Now()
	timeout := cmpOr(f.HealthTimeout, 10*time.Minute)
	// {service_ip} is the address builders use: healthy there means the
	// move and the OS step worked, not only that the replica runs.
	url := FillHealthURL(p.HealthURL, p.Replica.IP, p.ServiceIP)
	h := health{EC2: f.EC2, HTTP: f.HTTP, Poll: f.poll(), Deadline: start.Add(timeout), Log: pr.Log}
	if err := h.wait(ctx, p.Replica.ID, url); err != nil {
		return "", fmt.Errorf("the replica is not healthy after %s: %w", since(start), err)
	}
	d := fmt.Sprintf("`%s` status checks passed", p.Replica.ID)
	if p.HealthURL != "" {
		d += ", " + url + " answers"
	}
	return d + " after " + since(start), nil
}
