package ops

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/aws/smithy-go"
)

func TestExplain(t *testing.T) {
	api := &smithy.GenericAPIError{Code: "UnauthorizedOperation", Message: "You are not authorized to perform this operation."}
	op := &smithy.OperationError{ServiceID: "EC2", OperationName: "CreateSnapshots", Err: fmt.Errorf("https response error StatusCode: 403, RequestID: abc, api error: %w", api)}
	cases := []struct {
		err  error
		want string
	}{
		{fmt.Errorf("snapshot volumes of i-1: %w", op), "snapshot volumes of i-1: AWS said UnauthorizedOperation: You are not authorized to perform this operation. The bot's IAM policy is missing a permission"},
		{fmt.Errorf("read snapshot state: %w", context.DeadlineExceeded), "read snapshot state: AWS did not answer in time."},
		{fmt.Errorf("find the Services box: no instance tagged Name=x: %w", ErrNotFound), "find the Services box: no instance tagged Name=x: not found."},
	}
	for _, c := range cases {
		got := Explain(c.err)
		if !strings.HasPrefix(got, c.want) {
			t.Errorf("Explain(%v)\n got %q\nwant %q…", c.err, got, c.want)
		}
		if strings.Contains(got, "RequestID") || strings.Contains(got, "StatusCode") {
			t.Errorf("SDK internals leak: %q", got)
		}
	}
}
