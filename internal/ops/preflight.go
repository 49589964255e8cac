package ops

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Pre-flight: every mutating call a plan will make, tried without effect
// before anyone is asked to approve it and again just before its first
// destructive step. EC2 takes DryRun on most of its calls: AWS then checks
// the permission (with the resources' tags, iam:PassRole, KMS grants) and
// the parameters, and answers DryRunOperation instead of acting. Where an
// API has no dry run (AssignPrivateIpAddresses, Auto Scaling, SSM, S3), a
// read shows that the call would find what it needs.

// Check is one row of a pre-flight: a call, and whether AWS would accept
// it.
type Check struct {
	// Call is the API call (or read) as AWS names it: "ec2:RunInstances".
	Call string `json:"call"`
	// On is what it acts on, for people: "i-0abc (the old box), t3.xlarge".
	On string `json:"on,omitempty"`
	// Status is ok, refused, or skipped (not checkable now; Reason says
	// when it is checked).
	Status string `json:"status"`
	// Reason is AWS's answer when refused (its code and message), or why
	// the row is skipped.
	Reason string `json:"reason,omitempty"`
	// Denied: refused by IAM (UnauthorizedOperation, AccessDenied), as
	// opposed to a parameter or state AWS would refuse.
	Denied bool `json:"denied,omitempty"`
	// Steps are the journal names of the steps this row stands for: whose
	// calls it tries, or whose start it is a condition of. A resume runs
	// the pre-flight again and weighs a row only while one of its steps
	// is still to run (engine.blocking); none: every step (the row always
	// counts).
	Steps []string `json:"steps,omitempty"`
}

// The statuses of a Check.
const (
	CheckOK      = "ok"
	CheckRefused = "refused"
	CheckSkipped = "skipped"
)

// Preflight is the table of a plan's checks.
type Preflight struct {
	Checks []Check `json:"checks,omitempty"`
}

// Refused are the rows AWS would refuse.
func (p Preflight) Refused() []Check {
	var out []Check
	for _, c := range p.Checks {
		if c.Status == CheckRefused {
			out = append(out, c)
		}
	}
	return out
}

// Err is a *PreflightError when any row is refused, else nil.
func (p Preflight) Err() error {
	if r := p.Refused(); len(r) > 0 {
		return &PreflightError{Refused: r}
	}
	return nil
}

func (p *Preflight) add(c Check) { p.Checks = append(p.Checks, c) }

// forSteps says that the rows added since row from stand for steps (by
// their journal names: the builders take them from the same constants as
// the kinds' step lists, so a renamed step cannot drift from its rows).
func (p *Preflight) forSteps(from int, steps ...string) {
	for i := from; i < len(p.Checks); i++ {
		p.Checks[i].Steps = steps
	}
}

// ok, refused and skipped add one row each.
func (p *Preflight) ok(call, on string) { p.add(Check{Call: call, On: on, Status: CheckOK}) }
func (p *Preflight) refused(call, on, reason string) {
	p.add(Check{Call: call, On: on, Status: CheckRefused, Reason: reason})
}
func (p *Preflight) skipped(call, on, why string) {
	p.add(Check{Call: call, On: on, Status: CheckSkipped, Reason: why})
}

// dryRun records the answer to one call made with DryRun set: AWS's
// DryRunOperation is the yes; anything else is a no with AWS's reason. A
// call that returned no error at all was carried out, which no dry run
// may be: that is refused too, loudly.
func (p *Preflight) dryRun(call, on string, err error) {
	err = translate(err)
	switch {
	case errors.Is(err, ErrDryRunOK):
		p.ok(call, on)
	case err == nil:
		p.refused(call, on, "the endpoint carried the call out instead of answering DryRunOperation; it is not a dry run there")
	default:
		p.add(Check{Call: call, On: on, Status: CheckRefused, Reason: reasonOf(err), Denied: errors.Is(err, ErrUnauthorized)})
	}
}

// read records a read that stands in for a call without a dry run.
func (p *Preflight) read(call, on string, err error) {
	if err != nil {
		p.refused(call, on, reasonOf(err))
		return
	}
	p.ok(call, on)
}

// reasonOf is AWS's answer in one line, without the encoded
// authorization message AWS appends to UnauthorizedOperation (it is long
// and only `aws sts decode-authorization-message` reads it).
func reasonOf(err error) string {
	s := said(err)
	if i := strings.Index(s, " Encoded authorization failure message"); i >= 0 {
		s = strings.TrimSuffix(strings.TrimSpace(s[:i]), ".")
	}
	if errors.Is(err, ErrUnauthorized) {
		s += " (the bot's IAM policy, deploy/iam/policy.json, does not allow it)"
	}
	if len(s) > 400 {
		s = s[:400] + "…"
	}
	return s
}

// PreflightError: AWS would refuse at least one call of the plan. Nothing
// was changed.
type PreflightError struct {
	Refused []Check
}

func (e *PreflightError) Error() string {
	var parts []string
	for _, c := range e.Refused {
		s := c.Call
		if c.On != "" {
			s += " on " + c.On
		}
		parts = append(parts, s+": "+c.Reason)
	}
	return "the pre-flight was refused: " + strings.Join(parts, "; ")
}

// maxTags is how many tags AWS allows on one resource.
const maxTags = 50

// checkTags refuses a tag set over AWS's limit of 50 per resource.
func (p *Preflight) checkTags(what string, n int) {
	if n > maxTags {
		p.refused("tags", what, fmt.Sprintf("%d tags, more than the %d AWS allows on one resource: remove %d from the box's launch shape", n, maxTags, n-maxTags))
		return
	}
	p.add(Check{Call: "tags", On: what, Status: CheckOK, Reason: fmt.Sprintf("%d of %d", n, maxTags)})
}

// checkArch refuses instance types that cannot run an image of arch (a
// fallback type of another architecture would fail only at launch, after
// the old box is gone), and types AWS does not know.
func (p *Preflight) checkArch(ctx context.Context, api InstanceTypes, arch string, types []string) map[string]TypeInfo {
	if api == nil {
		p.skipped("ec2:DescribeInstanceTypes", strings.Join(types, ", "), "no instance-type reader")
		return nil
	}
	if arch == "" {
		arch = "x86_64"
	}
	infos, err := describeTypes(ctx, api, types...)
	if err != nil {
		p.refused("ec2:DescribeInstanceTypes", strings.Join(types, ", "), reasonOf(err))
		return nil
	}
	for _, t := range types {
		i, ok := infos[t]
		switch {
		case !ok:
			p.refused("instance type", t, "AWS does not know this instance type in this region")
		case !slices.Contains(i.Archs, arch):
			p.refused("instance type", t, fmt.Sprintf("%s runs %s, not the image's %s: remove it from restore.fallback_instance_types", t, strings.Join(i.Archs, "/"), arch))
		default:
			p.add(Check{Call: "instance type", On: t, Status: CheckOK, Reason: arch})
		}
	}
	return infos
}

// checkVCPUQuota reads the account's vCPU quota for typ's family where it
// can be read, and refuses a type bigger than the quota allows in all.
func (p *Preflight) checkVCPUQuota(ctx context.Context, api Quotas, from, to TypeInfo) {
	if api == nil || to.Name == "" {
		return
	}
	note, err := checkQuota(ctx, api, from, to)
	var ref *RefusalError
	switch {
	case errors.As(err, &ref):
		p.refused("servicequotas:GetServiceQuota", to.Name, ref.Msg)
	case err != nil:
		p.refused("servicequotas:GetServiceQuota", to.Name, reasonOf(err))
	case strings.Contains(note, "not checked"):
		p.skipped("servicequotas:GetServiceQuota", to.Name, note)
	default:
		p.add(Check{Call: "servicequotas:GetServiceQuota", On: to.Name, Status: CheckOK, Reason: note})
	}
}
