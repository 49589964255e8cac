package ops

import (
	"context"
	"errors"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// Preflight tries a reboot without effect: RebootInstances as DryRun,
// and the SSM agent the reboot is proven through.
func (r *Reboot) Preflight(ctx context.Context, p RebootPlan) Preflight {
	var pf Preflight
	_, err := r.EC2.RebootInstances(ctx, &ec2.RebootInstancesInput{DryRun: aws.Bool(true), InstanceIds: []string{p.Box.ID}})
	pf.dryRun("ec2:RebootInstances", p.Box.ID, err)
	if r.SSM != nil {
		pf.checkAgent(ctx, r.SSM, p.Box.ID, "the Services box")
	}
	// The agent is a condition of the reboot itself (the reboot is proven
	// through it): once the box was rebooted, the wait for the agent is
	// the later steps' own, and a box still booting is no reason to
	// refuse their resume.
	pf.forSteps(0, stepRebootBox)
	return pf
}

// Preflight tries a resize without effect: the stop, the type change and
// the start as DryRun, and the SSM agent the app is started through.
func (r *Resize) Preflight(ctx context.Context, p ResizePlan) Preflight {
	var pf Preflight
	dry := aws.Bool(true)
	id := p.Box.ID
	_, err := r.EC2.StopInstances(ctx, &ec2.StopInstancesInput{DryRun: dry, InstanceIds: []string{id}})
	pf.dryRun("ec2:StopInstances", id, err)
	pf.forSteps(0, stepStopBox)
	n := len(pf.Checks)
	_, err = r.EC2.ModifyInstanceAttribute(ctx, &ec2.ModifyInstanceAttributeInput{DryRun: dry, InstanceId: aws.String(id), InstanceType: &ec2types.AttributeValue{Value: aws.String(p.To.Name)}})
	pf.dryRunStopped("ec2:ModifyInstanceAttribute", id+" (type "+p.To.Name+")", err)
	pf.forSteps(n, resizeTypeStep(p.To.Name))
	n = len(pf.Checks)
	_, err = r.EC2.StartInstances(ctx, &ec2.StartInstancesInput{DryRun: dry, InstanceIds: []string{id}})
	pf.dryRunStopped("ec2:StartInstances", id, err)
	pf.forSteps(n, stepStartBox)
	n = len(pf.Checks)
	if r.SSM != nil && p.AppStart != "" {
		pf.checkAgent(ctx, r.SSM, id, "the Services box")
	}
	// As for a reboot: the agent is a condition of stopping the box at
	// all; once it was stopped, the app's step waits for it on its own.
	pf.forSteps(n, stepStopBox)
	return pf
}

// dryRunStopped is dryRun for a call that applies to a stopped instance
// only: on the running box AWS may answer IncorrectInstanceState before
// it looks at the permission, which says nothing about the call's fate
// once the box is stopped.
func (p *Preflight) dryRunStopped(call, on string, err error) {
	if errors.Is(translate(err), ErrIncorrectState) {
		p.skipped(call, on, "AWS checks it only on the stopped box")
		return
	}
	p.dryRun(call, on, err)
}
