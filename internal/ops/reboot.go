package ops

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/circlebot/circlebot/internal/journal"
)

// RebootEC2 is the part of EC2 a reboot uses.
type RebootEC2 interface {
	EC2
	RebootInstances(context.Context, *ec2.RebootInstancesInput, ...func(*ec2.Options)) (*ec2.RebootInstancesOutput, error)
}

// Reboot reboots the Services box and waits until it is back: rebooted
// (proven through SSM), the app started, status checks and the health URL
// passing.
type Reboot struct {
	EC2      RebootEC2
	SSM      SSM
	HTTP     *http.Client
	NameTag  string
	Region   string
	AppStart string
	// HealthURL is probed at the end ({ip}: the box's private IP).
	HealthURL string
	// Pace is the poll interval, read when used (nil or 0: 2 s).
	Pace func() time.Duration
	// HealthTimeout bounds the wait for the reboot, the SSM agent, the
	// app's start and the checks, each.
	HealthTimeout time.Duration
}

// RebootPlan is what a reboot acts on.
type RebootPlan struct {
	Region    string        `json:"region"`
	NameTag   string        `json:"name_tag"`
	Box       InPlace       `json:"box"`
	AppStart  string        `json:"app_start,omitempty"`
	HealthURL string        `json:"health_url,omitempty"`
	Timeout   time.Duration `json:"timeout"`
	// Downtime is the last reboot's, measured (the engine fills it in).
	Downtime Downtime `json:"downtime"`
}

// Facts are what an approval of the plan is bound to.
func (p RebootPlan) Facts() map[string]string {
	return map[string]string{
		"region": p.Region, "instance": p.Box.ID, "state": p.Box.State, "type": p.Box.Type, "az": p.Box.AZ,
		"private_ip": p.Box.PrivateIP, "app_start": p.AppStart, "health_url": p.HealthURL,
	}
}

// RebootResult is what the steps of a reboot hand on.
type RebootResult struct {
	// Sent is when RebootInstances was accepted: the box must have booted
	// after it.
	Sent     time.Time `json:"sent,omitzero"`
	Booted   time.Time `json:"booted,omitzero"`
	Commands Commands  `json:"commands,omitempty"`
}

func (r *Reboot) poll() time.Duration {
	if r.Pace != nil {
		return cmpOr(r.Pace(), 2*time.Second)
	}
	return 2 * time.Second
}

func (r *Reboot) timeout() time.Duration { return cmpOr(r.HealthTimeout, 10*time.Minute) }

// Plan reads the box: it must be the one running instance with the Name
// tag.
func (r *Reboot) Plan(ctx context.Context) (RebootPlan, error) {
	b, err := findInPlace(ctx, r.EC2, r.NameTag, "reboot")
	if err != nil {
		return RebootPlan{}, err
	}
	if b.State != string(ec2types.InstanceStateNameRunning) {
		return RebootPlan{}, refusef("the Services box `%s` is %s: a reboot needs a running box. Nothing was requested. (A stopped box is started with `aws ec2 start-instances --instance-ids %s`; failover and restore replace it.)", b.ID, b.State, b.ID)
	}
	return RebootPlan{Region: r.Region, NameTag: r.NameTag, Box: b, AppStart: r.AppStart, HealthURL: r.HealthURL, Timeout: r.timeout()}, nil
}

func (r *Reboot) work() boxWork {
	return boxWork{EC2: r.EC2, SSM: r.SSM, HTTP: r.HTTP, HealthURL: r.HealthURL, Poll: r.poll(), Timeout: r.timeout()}
}

// Steps are the reboot's journaled steps.
func (r *Reboot) Steps(p RebootPlan) []journal.Def {
	type w = *Work[RebootResult]
	steps := []struct {
		name string
		run  StepFunc[RebootResult]
	}{
		{stepRebootBox, func(ctx context.Context, op w, _ journal.Progress) (string, error) {
			return r.reboot(ctx, op, p)
		}},
		{stepWaitRebooted, func(ctx context.Context, op w, pr journal.Progress) (string, error) {
			booted, err := r.work().waitRebooted(ctx, op.ID, p.Box.ID, op.Result.Sent, pr)
			if err != nil {
				return "", err
			}
			op.Result.Booted = booted
			return fmt.Sprintf("`%s` booted at %s UTC; its SSM agent answers", p.Box.ID, booted.UTC().Format("15:04:05")), nil
		}},
		{stepStartApp, func(ctx context.Context, op w, pr journal.Progress) (string, error) {
			if p.AppStart == "" || r.SSM == nil {
				return "skipped: no `services_box.app_start_command`", nil
			}
			return startApp(ctx, r.SSM, p.Box.ID, op, func(res *RebootResult) *Commands { return &res.Commands }, p.AppStart, r.poll(), r.timeout(), pr)
		}},
		{"Verify health", func(ctx context.Context, _ w, pr journal.Progress) (string, error) {
			return r.work().verify(ctx, p.Box, p.Box.Type, pr)
		}},
	}
	defs := make([]journal.Def, len(steps))
	for i, st := range steps {
		defs[i] = journal.Def{Name: st.name, Run: retrying(typed(st.run), r.poll())}
	}
	return defs
}

// reboot sends RebootInstances once: a step run again after the reboot
// was accepted (the bot died before the step was recorded done) does not
// reboot the box a second time.
func (r *Reboot) reboot(ctx context.Context, op *Work[RebootResult], p RebootPlan) (string, error) {
	id := p.Box.ID
	if !op.Result.Sent.IsZero() {
		return fmt.Sprintf("RebootInstances was accepted for `%s` at %s UTC (not sent again)", id, op.Result.Sent.UTC().Format("15:04:05")), nil
	}
	in, ok, err := describeInstance(ctx, r.EC2, id)
	switch {
	case err != nil:
		return "", err
	case !ok:
		return "", fmt.Errorf("the Services box %s is gone", id)
	case in.State.Name != ec2types.InstanceStateNameRunning:
		return "", fmt.Errorf("the Services box %s is %s, not running: not rebooting it", id, in.State.Name)
	}
	sent := time.Now()
	if _, err := r.EC2.RebootInstances(ctx, &ec2.RebootInstancesInput{InstanceIds: []string{id}}); err != nil {
		return "", fmt.Errorf("reboot %s: %w", id, translate(err))
	}
	op.Result.Sent = sent
	// Kept at once: a bot that dies now must not reboot the box again.
	_ = op.Save()
	return fmt.Sprintf("RebootInstances accepted for `%s` (%s, %s)", id, p.Box.Type, p.Box.PrivateIP), nil
}
