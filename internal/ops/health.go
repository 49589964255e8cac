package ops

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// statusReader is the one EC2 call a health wait makes.
type statusReader interface {
	DescribeInstanceStatus(context.Context, *ec2.DescribeInstanceStatusInput, ...func(*ec2.Options)) (*ec2.DescribeInstanceStatusOutput, error)
}

// health waits for a box the bot started or launched to be healthy, in
// the order a box comes up: EC2's status checks, then its SSM agent
// online (when a command is to run on it), then the app answering HTTP.
// Restore, failover and drill all wait with it, each until its own
// deadline.
type health struct {
	EC2      statusReader
	HTTP     *http.Client // nil: a client with a 10 s time-out
	Poll     time.Duration
	Deadline time.Time
	Log      func(string) // state changes as they are seen; nil: none
}

// unhealthyError: the deadline passed before the box passed a check.
type unhealthyError struct {
	what string // "i-1 did not pass its status checks", "http://… did not answer"
	last string // what the last look saw
	read error  // the last look's failure, if it failed
}

func (e *unhealthyError) Error() string {
	s := e.what + " (last seen: " + e.last + ")"
	if e.read != nil {
		s += "; the last read failed: " + firstLine(e.read)
	}
	return s
}

// wait waits for id's status checks, then, when url is set, for url to
// answer.
func (h health) wait(ctx context.Context, id, url string) error {
	if err := h.statusChecks(ctx, id); err != nil {
		return err
	}
	if url == "" {
		return nil
	}
	return h.probe(ctx, url)
}

// statusChecks waits until id runs and passes both status checks. A box
// that stops or terminates meanwhile fails the wait at once.
func (h health) statusChecks(ctx context.Context, id string) error {
	last := "no status yet"
	err := waitFor(ctx, h.poll(), h.Deadline, func() (bool, error) {
		out, err := h.EC2.DescribeInstanceStatus(ctx, &ec2.DescribeInstanceStatusInput{InstanceIds: []string{id}, IncludeAllInstances: aws.Bool(true)})
		if err != nil {
			return false, fmt.Errorf("check %s: %w", id, translate(err))
		}
		if len(out.InstanceStatuses) == 0 {
			return false, nil
		}
		s := out.InstanceStatuses[0]
		var state ec2types.InstanceStateName
		var sys, inst ec2types.SummaryStatus
		if s.InstanceState != nil {
			state = s.InstanceState.Name
		}
		if s.SystemStatus != nil {
			sys = s.SystemStatus.Status
		}
		if s.InstanceStatus != nil {
			inst = s.InstanceStatus.Status
		}
		switch state {
		case ec2types.InstanceStateNameTerminated, ec2types.InstanceStateNameShuttingDown, ec2types.InstanceStateNameStopped, ec2types.InstanceStateNameStopping:
			return false, fmt.Errorf("%s is %s", id, state)
		}
		if state == ec2types.InstanceStateNameRunning && sys == ec2types.SummaryStatusOk && inst == ec2types.SummaryStatusOk {
			return true, nil
		}
		if now := fmt.Sprintf("%s, system %s, instance %s", state, sys, inst); now != last {
			h.log(fmt.Sprintf("`%s`: %s.", id, now))
			last = now
		}
		return false, nil
	})
	var to *waitTimeout
	if errors.As(err, &to) {
		return &unhealthyError{what: id + " did not pass its status checks", last: last, read: to.last}
	}
	return err
}

// probe waits until url answers with a status below 400. An app that is
// still starting refuses or fails: that is what is waited out.
func (h health) probe(ctx context.Context, url string) error {
	if _, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil); err != nil {
		return fmt.Errorf("the health URL %q is not usable: %w", url, err)
	}
	last := "no answer yet"
	err := waitFor(ctx, h.poll(), h.Deadline, func() (bool, error) {
		code, err := h.get(ctx, url)
		switch {
		case err != nil:
			last = firstLine(err)
		case code >= 400:
			last = fmt.Sprintf("HTTP %d", code)
		default:
			return true, nil
		}
		return false, nil
	})
	var to *waitTimeout
	if errors.As(err, &to) {
		return &unhealthyError{what: url + " did not answer", last: last}
	}
	return err
}

func (h health) get(ctx context.Context, url string) (int, error) {
	hc := h.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 10 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// online runs send until the instance's SSM agent takes the command: the
// agent of a box just started registers a minute or so after the box
// runs. Anything else (a command SSM accepted, even one that then failed;
// a send that failed otherwise, which may have run) ends the wait, as
// does the deadline.
func (h health) online(ctx context.Context, id string, send func() (Result, error)) (Result, error) {
	noted := false
	for {
		res, err := send()
		if err == nil || res.CommandID != "" || !errors.Is(err, ErrAgentOffline) || time.Now().After(h.Deadline) {
			return res, err
		}
		if !noted {
			h.log(fmt.Sprintf("Waiting for the SSM agent of `%s` to register.", id))
			noted = true
		}
		// Each try is a SendCommand (throttled far sooner than a
		// Describe): the poll's pace, not a wait's.
		if err := sleep(ctx, h.poll()); err != nil {
			return res, err
		}
	}
}

func (h health) poll() time.Duration { return cmpOr(h.Poll, 2*time.Second) }

func (h health) log(s string) {
	if h.Log != nil {
		h.Log(s)
	}
}
