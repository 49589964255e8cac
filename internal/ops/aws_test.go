package ops

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// translate is the one place AWS error codes are read: each becomes its
// sentinel, and the SDK's error stays reachable.
func TestTranslate(t *testing.T) {
	for _, tc := range []struct {
		op, code string
		want     error
	}{
		{"DescribeInstances", "InvalidInstanceID.NotFound", ErrNotFound},
		{"HeadObject", "NotFound", ErrNotFound},
		{"GetCommandInvocation", "InvocationDoesNotExist", ErrNotFound},
		{"DescribeInstances", "InvalidInstanceID.Malformed", ErrMalformedID},
		{"DescribeInstances", "RequestLimitExceeded", ErrThrottled},
		{"SendCommand", "ThrottlingException", ErrThrottled},
		{"DescribeInstances", "InternalError", ErrUnavailable},
		{"DescribeInstances", "UnauthorizedOperation", ErrUnauthorized},
		{"HeadObject", "Forbidden", ErrUnauthorized},
		{"StopInstances", "IncorrectInstanceState", ErrIncorrectState},
		{"RunInstances", "InvalidIPAddress.InUse", ErrIPInUse},
		{"RunInstances", "InsufficientInstanceCapacity", ErrInsufficientCapacity},
		{"RunInstances", "VcpuLimitExceeded", ErrInstanceLimit},
		{"CreateSnapshots", "UnsupportedOperation", ErrUnsupported},
		{"RegisterImage", "InvalidAMIName.Duplicate", ErrDuplicate},
		{"CreateSnapshots", "ConcurrentSnapshotLimitExceeded", ErrSnapshotLimit},
		{"SendCommand", "InvalidInstanceId", ErrAgentOffline},
		{"TerminateInstanceInAutoScalingGroup", "ValidationError", ErrNotInGroup},
		{"UnassignPrivateIpAddresses", "InvalidParameterValue", ErrNotAssigned},
		{"UpdateAutoScalingGroup", "ValidationError", nil},
		{"AssignPrivateIpAddresses", "InvalidParameterValue", nil},
	} {
		err := translate(fmt.Errorf("do it: %w", apiErr(tc.op, tc.code)))
		var ae smithy.APIError
		if !errors.As(err, &ae) || ae.ErrorCode() != tc.code {
			t.Errorf("%s %s: the API error is lost: %v", tc.op, tc.code, err)
		}
		if tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s %s: not %v", tc.op, tc.code, tc.want)
		}
		if tc.want == nil && (transient(err) || errors.Is(err, ErrNotInGroup) || errors.Is(err, ErrNotAssigned)) {
			t.Errorf("%s %s: given a kind it does not have: %v", tc.op, tc.code, err)
		}
		if again := translate(err); again != err {
			t.Errorf("%s %s: translated twice", tc.op, tc.code)
		}
		if !strings.HasSuffix(err.Error(), ae.Error()) {
			t.Errorf("the text changed: %q", err)
		}
	}
	// A 5xx with a code of its own is still AWS failing the call.
	resp := &smithyhttp.ResponseError{Response: &smithyhttp.Response{Response: &httpResponse503}, Err: &smithy.GenericAPIError{Code: "SomethingNew"}}
	if err := translate(resp); !errors.Is(err, ErrUnavailable) {
		t.Errorf("5xx: %v", err)
	}
	// A 5xx whose body is not an AWS error (an HTML page in between).
	html := &smithyhttp.ResponseError{Response: &smithyhttp.Response{Response: &httpResponse503}, Err: &smithy.DeserializationError{Err: errors.New("invalid character '<'")}}
	if err := translate(&smithy.OperationError{ServiceID: "SSM", OperationName: "DescribeInstanceInformation", Err: html}); !errors.Is(err, ErrUnavailable) || !transient(err) {
		t.Errorf("5xx with an HTML body: %v", err)
	}
	// No answer at all.
	for _, err := range []error{context.DeadlineExceeded, &net.OpError{Op: "dial", Err: errors.New("connection refused")}, &smithyhttp.RequestSendError{Err: errors.New("EOF")}} {
		if got := translate(&smithy.OperationError{ServiceID: "EC2", OperationName: "DescribeInstances", Err: err}); !errors.Is(got, ErrNoAnswer) || !transient(got) {
			t.Errorf("%v: %v", err, got)
		}
	}
	// Left alone: nil, cancellation, errors that are not AWS's.
	plain := errors.New("plain")
	if translate(nil) != nil || translate(context.Canceled) != context.Canceled || translate(plain) != plain {
		t.Error("translate changed an error it does not know")
	}
}

// Explain reads the chain: the callers' context, then AWS's code and
// message, without the SDK's request details.
func TestExplainFromTheChain(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{apiErr("DescribeInstances", "RequestLimitExceeded"), "EC2 DescribeInstances: AWS said RequestLimitExceeded: the test says RequestLimitExceeded. AWS is throttling this account; try again in a minute."},
		{fmt.Errorf("stop i-1: %w", &smithy.GenericAPIError{Code: "IncorrectInstanceState", Message: "no."}), "stop i-1: AWS said IncorrectInstanceState: no."},
		{fmt.Errorf("describe i-1: %w", &smithy.OperationError{ServiceID: "EC2", OperationName: "DescribeInstances", Err: &net.OpError{Op: "dial", Err: errors.New("connection refused")}}), "describe i-1: AWS did not answer (connection refused)."},
		{&smithy.OperationError{ServiceID: "EC2", OperationName: "DescribeInstances", Err: context.DeadlineExceeded}, "EC2 DescribeInstances: AWS did not answer in time."},
		{&smithy.OperationError{ServiceID: "EC2", OperationName: "DescribeInstances", Err: &smithy.GenericAPIError{Code: "X"}}, "EC2 DescribeInstances: AWS said X: no message."},
		{nil, ""},
	} {
		if got := Explain(tc.err); got != tc.want {
			t.Errorf("Explain(%v)\n got %q\nwant %q", tc.err, got, tc.want)
		}
	}
}

// Calls that must not run twice let the SDK retry only what AWS
// throttled; the attempts and backoff stay the client's.
func TestThrottledOnly(t *testing.T) {
	r := throttledOnly(retry.AddWithMaxAttempts(retry.NewStandard(), 7))
	if r.MaxAttempts() != 7 {
		t.Errorf("max attempts %d", r.MaxAttempts())
	}
	if !r.IsErrorRetryable(&smithy.GenericAPIError{Code: "RequestLimitExceeded"}) {
		t.Error("a throttled attempt is not retried")
	}
	for _, err := range []error{&smithy.GenericAPIError{Code: "InternalError"}, &smithyhttp.RequestSendError{Err: errors.New("EOF")}} {
		if r.IsErrorRetryable(err) {
			t.Errorf("%v is retried: the call may have run", err)
		}
	}
	if throttledOnly(nil).MaxAttempts() != retry.DefaultMaxAttempts {
		t.Error("no retryer: not the SDK's default")
	}
	// An old-style Retryer (no GetAttemptToken) still works.
	if _, err := throttledOnly(retryerOnly{aws.NopRetryer{}}).(aws.RetryerV2).GetAttemptToken(context.Background()); err != nil {
		t.Error(err)
	}
}

var httpResponse503 = http.Response{StatusCode: http.StatusServiceUnavailable}

// retryerOnly hides everything of a retryer but aws.Retryer.
type retryerOnly struct{ aws.Retryer }
