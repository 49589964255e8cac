package ops

import (
	"context"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	elb "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"
)

// AgentInfo reads whether the SSM agent of an instance is online. The
// bot's SSM client has it; a test double of SSM may not.
type AgentInfo interface {
	DescribeInstanceInformation(context.Context, *ssm.DescribeInstanceInformationInput, ...func(*ssm.Options)) (*ssm.DescribeInstanceInformationOutput, error)
}

// AgentOnline reads whether the SSM agent on instance id is online: what
// every command the bot sends there needs (SendCommand has no dry run).
func AgentOnline(ctx context.Context, api AgentInfo, id string) error {
	out, err := api.DescribeInstanceInformation(ctx, &ssm.DescribeInstanceInformationInput{Filters: []ssmtypes.InstanceInformationStringFilter{{Key: aws.String("InstanceIds"), Values: []string{id}}}})
	if err != nil {
		return fmt.Errorf("read the SSM agent of %s: %w", id, translate(err))
	}
	for _, i := range out.InstanceInformationList {
		if aws.ToString(i.InstanceId) != id {
			continue
		}
		if i.PingStatus != ssmtypes.PingStatusOnline {
			return fmt.Errorf("the SSM agent of %s is %s (last seen %s): %w", id, i.PingStatus, aws.ToTime(i.LastPingDateTime).UTC().Format("2006-01-02 15:04 UTC"), ErrAgentOffline)
		}
		return nil
	}
	return fmt.Errorf("%s is not registered with SSM (no agent, no instance profile with AmazonSSMManagedInstanceCore, or no route to SSM): %w", id, ErrAgentOffline)
}

// checkAgent adds the SSM agent row for instance id.
func (p *Preflight) checkAgent(ctx context.Context, api SSM, id, what string) {
	info, ok := api.(AgentInfo)
	if !ok || api == nil {
		p.skipped("ssm:DescribeInstanceInformation", id+" ("+what+")", "this SSM client cannot read agents")
		return
	}
	if err := AgentOnline(ctx, info, id); err != nil {
		if transient(err) {
			// SSM failing to answer says nothing of the agent: blocking
			// a failover at 3 a.m. on an SSM hiccup would be worse than
			// the step's own wait for the agent.
			p.skipped("ssm:DescribeInstanceInformation", id+" ("+what+")", "SSM did not answer the read (throttled, a server error or no answer, after the SDK's retries); the step waits for the agent itself")
			return
		}
		p.refused("ssm:DescribeInstanceInformation", id+" ("+what+")", reasonOf(err))
		return
	}
	p.add(Check{Call: "ssm:DescribeInstanceInformation", On: id + " (" + what + ")", Status: CheckOK, Reason: "agent online"})
}

// Preflight tries every mutating call of a failover without effect: the
// fence, the replica's start, the move of the service address by the
// discovery mode, the Name tags; and reads what has no dry run (the
// replica's SSM agent, the target groups, the builder group's room).
func (f *Failover) Preflight(ctx context.Context, p FailoverPlan) Preflight {
	var pf Preflight
	dry := aws.Bool(true)
	known := p.Primary != nil && !p.Primary.Unreadable() && p.Primary.Unknown == ""
	if p.Primary != nil && p.Primary.ID != "" && (!known || p.Primary.State != string(ec2types.InstanceStateNameStopped)) {
		_, err := f.EC2.StopInstances(ctx, &ec2.StopInstancesInput{DryRun: dry, InstanceIds: []string{p.Primary.ID}})
		pf.dryRun("ec2:StopInstances", p.Primary.ID+" (fence the Services box)", err)
	}
	pf.forSteps(0, stepFence)
	n := len(pf.Checks)
	if p.Replica.State == string(ec2types.InstanceStateNameStopped) {
		_, err := f.EC2.StartInstances(ctx, &ec2.StartInstancesInput{DryRun: dry, InstanceIds: []string{p.Replica.ID}})
		pf.dryRun("ec2:StartInstances", p.Replica.ID+" (the replica)", err)
	}
	pf.forSteps(n, stepStartRep)
	n = len(pf.Checks)
	switch p.Discovery {
	case DiscoverySecondaryIP:
		// Assign/UnassignPrivateIpAddresses take no DryRun: the read
		// shows the interface the address goes to, in its subnet.
		out, err := f.EC2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{p.Replica.ENI}})
		if err == nil && (len(out.NetworkInterfaces) == 0 || aws.ToString(out.NetworkInterfaces[0].SubnetId) != p.Replica.Subnet) {
			err = fmt.Errorf("the replica's interface %s is not in its subnet %s", p.Replica.ENI, p.Replica.Subnet)
		}
		pf.read("ec2:AssignPrivateIpAddresses", p.ServiceIP+" to "+p.Replica.ENI+" (no dry run in the API; the interface was read)", err)
	case DiscoveryENI:
		out, err := f.EC2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{p.ENI}})
		if err != nil || len(out.NetworkInterfaces) == 0 {
			if err == nil {
				err = fmt.Errorf("%s: %w", p.ENI, ErrNotFound)
			}
			pf.refused("ec2:DescribeNetworkInterfaces", p.ENI, reasonOf(translate(err)))
			break
		}
		if a := out.NetworkInterfaces[0].Attachment; a != nil && aws.ToString(a.InstanceId) != p.Replica.ID {
			_, err = f.EC2.DetachNetworkInterface(ctx, &ec2.DetachNetworkInterfaceInput{DryRun: dry, AttachmentId: a.AttachmentId})
			pf.dryRun("ec2:DetachNetworkInterface", p.ENI+" from "+aws.ToString(a.InstanceId), err)
		}
		_, err = f.EC2.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{DryRun: dry, NetworkInterfaceId: aws.String(p.ENI), InstanceId: aws.String(p.Replica.ID), DeviceIndex: aws.Int32(1)})
		pf.dryRun("ec2:AttachNetworkInterface", p.ENI+" to "+p.Replica.ID, err)
	case DiscoveryLoadBalancer:
		for _, tg := range p.TargetGroups {
			var err error
			if f.ELB == nil {
				err = fmt.Errorf("no load-balancer client")
			} else {
				_, err = f.ELB.DescribeTargetHealth(ctx, &elb.DescribeTargetHealthInput{TargetGroupArn: aws.String(tg)})
			}
			pf.read("elasticloadbalancing:RegisterTargets", tg+" (no dry run in the API; the group was read)", err)
		}
	case DiscoveryNone:
		if p.BuilderPlan != nil && f.Builders != nil {
			pf.Checks = append(pf.Checks, f.Builders.Preflight(ctx, *p.BuilderPlan).Checks...)
			// One step here rotates every batch.
			pf.forSteps(n, stepRotate)
		}
	}
	if p.Discovery != DiscoveryNone {
		pf.forSteps(n, stepMoveAddress)
	}
	n = len(pf.Checks)
	if known {
		_, err := f.EC2.CreateTags(ctx, &ec2.CreateTagsInput{DryRun: dry, Resources: []string{p.Primary.ID}, Tags: []ec2types.Tag{
			{Key: aws.String("Name"), Value: aws.String(p.NameTag + "-fenced")}, {Key: aws.String("circlebot:fenced-by"), Value: aws.String(preflightOpID)},
		}})
		pf.dryRun("ec2:CreateTags", p.Primary.ID+" (Name="+p.NameTag+"-fenced)", err)
	}
	_, err := f.EC2.CreateTags(ctx, &ec2.CreateTagsInput{DryRun: dry, Resources: []string{p.Replica.ID}, Tags: []ec2types.Tag{
		{Key: aws.String("Name"), Value: aws.String(p.NameTag)}, {Key: aws.String("circlebot:promoted-by"), Value: aws.String(preflightOpID)},
	}})
	pf.dryRun("ec2:CreateTags", p.Replica.ID+" (Name="+p.NameTag+")", err)
	pf.forSteps(n, stepNameTag)
	n = len(pf.Checks)
	if p.AppStart != "" && f.SSM != nil {
		if p.Replica.State == string(ec2types.InstanceStateNameRunning) {
			pf.checkAgent(ctx, f.SSM, p.Replica.ID, "the replica")
		} else {
			pf.skipped("ssm:DescribeInstanceInformation", p.Replica.ID+" (the replica)", "it is stopped; its agent is waited for after it starts")
		}
		// The steps that send it commands.
		if p.osAddressSkipped() == "" {
			pf.forSteps(n, stepOSAddress, stepAppReplica)
		} else {
			pf.forSteps(n, stepAppReplica)
		}
	}
	return pf
}

// Preflight reads what a rotation needs and Auto Scaling cannot try
// without effect: the group, and room above its desired capacity for a
// batch of new builders (SetDesiredCapacity over the maximum is refused).
func (b *Builders) Preflight(ctx context.Context, p RotationPlan) Preflight {
	var pf Preflight
	g, err := b.group(ctx)
	if err != nil {
		pf.refused("autoscaling:DescribeAutoScalingGroups", p.Group, reasonOf(err))
		names := RotationSteps(p)
		pf.forSteps(0, names[:len(names)-1]...)
		return pf
	}
	// Each batch raises the desired capacity to the plan's plus the
	// batch (replace), not the group's now: a rotation stopped mid-batch
	// has raised it already, and that is no reason to refuse its resume.
	desired, max := p.Desired, aws.ToInt32(g.MaxSize)
	if need := desired + int32(p.Batch); need > max {
		pf.refused("autoscaling:SetDesiredCapacity", p.Group, fmt.Sprintf("a batch of %d needs %d builders at once and the group's maximum is %d: raise its MaxSize to %d, or set builders.rotate_batch to %d", p.Batch, need, max, need, max-desired))
	} else {
		pf.add(Check{Call: "autoscaling:SetDesiredCapacity", On: p.Group, Status: CheckOK, Reason: fmt.Sprintf("room for %d above %d (max %d); no dry run in the API, the group was read", p.Batch, desired, max)})
	}
	// Every batch's step raises it ("Verify the fleet" only reads).
	names := RotationSteps(p)
	pf.forSteps(0, names[:len(names)-1]...)
	return pf
}
