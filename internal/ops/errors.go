package ops

import (
	"context"
	"errors"
	"fmt"
	"strings"

	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/smithy-go"
)

var ErrNotFound = errors.New("not found")

// Explain turns an error from an AWS read into one sentence an on-call
// engineer can act on: which call, what AWS said, and no stack of wrapping.
func Explain(err error) string {
	if err == nil {
		return ""
	}
	what, _, _ := strings.Cut(err.Error(), ":")
	var ae smithy.APIError
	var oe *smithy.OperationError
	var se *v4.SigningError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("could not %s: no usable AWS credentials (%s). Check the bot's IAM role or AWS_* environment.", what, firstLine(se.Err))
	case errors.As(err, &ae):
		call := ""
		if errors.As(err, &oe) {
			call = fmt.Sprintf(" (%s %s)", oe.Service(), oe.Operation())
		}
		msg := ae.ErrorMessage()
		if msg == "" {
			msg = "no message"
		}
		hint := ""
		switch ae.ErrorCode() {
		case "UnauthorizedOperation", "AccessDenied", "AccessDeniedException":
			hint = " The bot's IAM policy is missing a permission: see the README's IAM section."
		case "RequestLimitExceeded", "Throttling", "ThrottlingException":
			hint = " AWS is throttling this account; try again in a minute."
		}
		return fmt.Sprintf("could not %s%s: AWS said %s: %s.%s", what, call, ae.ErrorCode(), strings.TrimSuffix(msg, "."), hint)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf("could not %s: AWS did not answer in time.", what)
	case errors.Is(err, ErrNotFound):
		return err.Error() + "."
	default:
		if errors.As(err, &oe) {
			return fmt.Sprintf("could not %s (%s %s): %s.", what, oe.Service(), oe.Operation(), firstLine(oe.Err))
		}
		return fmt.Sprintf("could not %s: %s.", what, firstLine(errors.Unwrap(err)))
	}
}

func firstLine(err error) string {
	if err == nil {
		return "unknown error"
	}
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}
