package ops

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// statuses answers DescribeInstanceStatus from a script, one entry per
// call; the last stays. A "" state is an empty answer, an error an error.
type statuses []any

func (s *statuses) DescribeInstanceStatus(context.Context, *ec2.DescribeInstanceStatusInput, ...func(*ec2.Options)) (*ec2.DescribeInstanceStatusOutput, error) {
	next := (*s)[0]
	if len(*s) > 1 {
		*s = (*s)[1:]
	}
	switch v := next.(type) {
	case error:
		return nil, v
	case [3]string:
		if v[0] == "" {
			return &ec2.DescribeInstanceStatusOutput{}, nil
		}
		return &ec2.DescribeInstanceStatusOutput{InstanceStatuses: []ec2types.InstanceStatus{{
			InstanceId:     aws.String("i-1"),
			InstanceState:  &ec2types.InstanceState{Name: ec2types.InstanceStateName(v[0])},
			SystemStatus:   &ec2types.InstanceStatusSummary{Status: ec2types.SummaryStatus(v[1])},
			InstanceStatus: &ec2types.InstanceStatusSummary{Status: ec2types.SummaryStatus(v[2])},
		}}}, nil
	}
	panic("bad script")
}

func testHealth(s *statuses, rec *recorder) health {
	return health{EC2: s, Poll: time.Millisecond, Deadline: time.Now().Add(50 * time.Millisecond), Log: rec.Log}
}

func TestHealthStatusChecks(t *testing.T) {
	ctx := context.Background()
	rec := &recorder{}
	ok := [3]string{"running", "ok", "ok"}
	s := statuses{[3]string{}, [3]string{"pending", "initializing", "initializing"}, apiErr("DescribeInstanceStatus", "RequestLimitExceeded"), [3]string{"running", "initializing", "ok"}, ok}
	if err := testHealth(&s, rec).statusChecks(ctx, "i-1"); err != nil {
		t.Fatal(err)
	}
	if !rec.has("`i-1`: running, system initializing, instance ok.") {
		t.Errorf("log %q", rec.lines)
	}
	// Stopped meanwhile: fails at once. Denied: fails at once.
	s = statuses{[3]string{"stopping", "", ""}}
	if err := testHealth(&s, rec).statusChecks(ctx, "i-1"); err == nil || err.Error() != "i-1 is stopping" {
		t.Errorf("stopping: %v", err)
	}
	s = statuses{apiErr("DescribeInstanceStatus", "UnauthorizedOperation")}
	if err := testHealth(&s, rec).statusChecks(ctx, "i-1"); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("denied: %v", err)
	}
	// Never passes: the deadline, with what was seen last.
	s = statuses{[3]string{"running", "impaired", "ok"}}
	var uh *unhealthyError
	if err := testHealth(&s, rec).statusChecks(ctx, "i-1"); !errors.As(err, &uh) || err.Error() != "i-1 did not pass its status checks (last seen: running, system impaired, instance ok)" {
		t.Errorf("impaired: %v", err)
	}
	s = statuses{[3]string{"running", "initializing", "ok"}, apiErr("DescribeInstanceStatus", "InternalError")}
	if err := testHealth(&s, rec).statusChecks(ctx, "i-1"); err == nil || !strings.Contains(err.Error(), "the last read failed") {
		t.Errorf("unreadable at the end: %v", err)
	}
}

func TestHealthProbe(t *testing.T) {
	ctx := context.Background()
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) < 3 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	s := statuses{[3]string{"running", "ok", "ok"}}
	h := testHealth(&s, &recorder{})
	if err := h.wait(ctx, "i-1", srv.URL); err != nil || n.Load() != 3 {
		t.Errorf("%v after %d probes", err, n.Load())
	}
	if err := h.wait(ctx, "i-1", ""); err != nil {
		t.Errorf("no URL: %v", err)
	}
	if err := h.probe(ctx, "http://[::1"); err == nil || !strings.Contains(err.Error(), "not usable") {
		t.Errorf("bad URL: %v", err)
	}
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusBadGateway) }))
	defer down.Close()
	if err := h.probe(ctx, down.URL); err == nil || !strings.Contains(err.Error(), "did not answer (last seen: HTTP 502)") {
		t.Errorf("down: %v", err)
	}
	down.Close()
	if err := h.probe(ctx, down.URL); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("gone: %v", err)
	}
	s = statuses{[3]string{"terminated", "", ""}}
	if err := h.wait(ctx, "i-1", srv.URL); err == nil || err.Error() != "i-1 is terminated" {
		t.Errorf("terminated: %v", err)
	}
}

// The SSM agent of a new box registers late: its refusals are waited
// out; any other failure, or a command SSM took, ends the wait.
func TestHealthOnline(t *testing.T) {
	ctx := context.Background()
	rec := &recorder{}
	h := testHealth(&statuses{}, rec)
	offline := fmt.Errorf("run: %w", translate(apiErr("SendCommand", "InvalidInstanceId")))
	sends := 0
	res, err := h.online(ctx, "i-1", func() (Result, error) {
		if sends++; sends < 3 {
			return Result{}, offline
		}
		return Result{CommandID: "c-1"}, nil
	})
	if err != nil || res.CommandID != "c-1" || sends != 3 || !rec.has("Waiting for the SSM agent of `i-1`") {
		t.Errorf("%+v, %v after %d sends", res, err, sends)
	}
	sends = 0
	if _, err := h.online(ctx, "i-1", func() (Result, error) {
		sends++
		return Result{}, translate(apiErr("SendCommand", "InternalError"))
	}); !errors.Is(err, ErrUnavailable) || sends != 1 {
		t.Errorf("a send that may have run is sent again: %v after %d sends", err, sends)
	}
	h.Deadline = time.Now()
	sends = 0
	if _, err := h.online(ctx, "i-1", func() (Result, error) { sends++; return Result{}, offline }); !errors.Is(err, ErrAgentOffline) || sends != 1 {
		t.Errorf("deadline: %v after %d sends", err, sends)
	}
}
