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

// Explain turns an error into one sentence an on-call engineer can act
// on: what the bot was doing (the context its callers wrapped), what AWS
// said, and a hint where there is an obvious one; never the SDK's request
// IDs and HTTP details.
func Explain(err error) string {
	if err == nil {
		return ""
	}
	msg := firstLine(err)
	doing := msg
	if i := strings.Index(msg, "operation error "); i >= 0 {
		doing = strings.TrimSuffix(strings.TrimSpace(msg[:i]), ":")
	}
	prefix := ""
	if doing != "" && doing != msg {
		prefix = doing + ": "
	}
	var ae smithy.APIError
	var se *v4.SigningError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("%sno usable AWS credentials (%s). Check the bot's IAM role or AWS_* environment.", prefix, firstLine(se.Err))
	case errors.As(err, &ae):
		m := strings.TrimSuffix(ae.ErrorMessage(), ".")
		if m == "" {
			m = "no message"
		}
		hint := ""
		switch ae.ErrorCode() {
		case "UnauthorizedOperation", "AccessDenied", "AccessDeniedException":
			hint = " The bot's IAM policy is missing a permission: see the README's IAM section."
		case "RequestLimitExceeded", "Throttling", "ThrottlingException":
			hint = " AWS is throttling this account; try again in a minute."
		}
		return fmt.Sprintf("%sAWS said %s: %s.%s", prefix, ae.ErrorCode(), m, hint)
	case errors.Is(err, context.DeadlineExceeded):
		if prefix == "" {
			if d, ok := strings.CutSuffix(msg, ": "+context.DeadlineExceeded.Error()); ok {
				prefix = d + ": "
			}
		}
		return prefix + "AWS did not answer in time."
	default:
		return sentence(msg)
	}
}

func firstLine(err error) string {
	if err == nil {
		return "unknown error"
	}
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// sentence ends s with one full stop, unless it already ends a sentence.
func sentence(s string) string {
	s = strings.TrimSpace(s)
	if strings.HasSuffix(s, ".") || strings.HasSuffix(s, "?") || strings.HasSuffix(s, "!") {
		return s
	}
	return s + "."
}
