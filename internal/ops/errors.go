package ops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/smithy-go"

	"github.com/circlebot/circlebot/internal/journal"
)

// RefusalError is a plan that cannot be made: its text says why, what
// holds what, and what to do. Nothing was changed.
type RefusalError struct{ Msg string }

func (e *RefusalError) Error() string { return e.Msg }

func refusef(format string, a ...any) error { return &RefusalError{Msg: fmt.Sprintf(format, a...)} }

// Explain turns an error into one sentence an on-call engineer can act
// on: what the bot was doing (the context its callers wrapped), what AWS
// said, and a hint where there is an obvious one; never the SDK's request
// IDs and HTTP details. It reads the error chain, not the SDK's wording.
func Explain(err error) string {
	if err == nil {
		return ""
	}
	err = translate(err)
	var (
		op *smithy.OperationError
		se *v4.SigningError
		ae smithy.APIError
	)
	hasOp := errors.As(err, &op)
	// inner is the outermost error of the SDK's own: what the callers'
	// wraps end with.
	inner := func(e error) error {
		if hasOp {
			return op
		}
		return e
	}
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("%sno usable AWS credentials (%s). Check the bot's IAM role or AWS_* environment.", doing(err, inner(se), op), firstLine(se.Err))
	case errors.As(err, &ae):
		m := strings.TrimSuffix(ae.ErrorMessage(), ".")
		if m == "" {
			m = "no message"
		}
		hint := ""
		switch {
		case errors.Is(err, ErrUnauthorized):
			hint = " The bot's IAM policy is missing a permission: see the README's IAM section."
		case errors.Is(err, ErrThrottled):
			hint = " AWS is throttling this account; try again in a minute."
		}
		return fmt.Sprintf("%sAWS said %s: %s.%s", doing(err, inner(ae), op), ae.ErrorCode(), m, hint)
	case errors.Is(err, context.DeadlineExceeded):
		return doing(err, inner(context.DeadlineExceeded), op) + "AWS did not answer in time."
	case errors.Is(err, ErrNoAnswer):
		var ne *net.OpError
		why := "the connection failed"
		switch {
		case errors.As(err, &ne) && ne.Err != nil:
			why = firstLine(ne.Err)
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			why = "the connection was closed"
		}
		prefix := ""
		if hasOp {
			prefix = doing(err, op, op)
		}
		return fmt.Sprintf("%sAWS did not answer (%s).", prefix, why)
	default:
		return sentence(firstLine(err))
	}
}

// doing is what the bot was doing when inner failed, ending in ": ": the
// text its callers wrapped around inner (every wrap ends with the text of
// what it wraps), else the AWS operation that failed, else nothing.
func doing(err, inner error, op *smithy.OperationError) string {
	if d, ok := strings.CutSuffix(firstLine(err), firstLine(inner)); ok {
		if d = strings.TrimSuffix(strings.TrimSpace(d), ":"); d != "" {
			return d + ": "
		}
	}
	if op != nil {
		return op.ServiceID + " " + op.OperationName + ": "
	}
	return ""
}

// explainedStep gives a step's error Explain's wording without retrying.
func explainedStep(f journal.StepFunc) journal.StepFunc {
	return func(ctx context.Context, op *journal.Op, p journal.Progress) (string, error) {
		d, err := f(ctx, op, p)
		return d, explained(err)
	}
}

// explainedError reads as Explain's one sentence (no request IDs or HTTP
// details in the journal and the channel) and unwraps to the cause.
type explainedError struct{ err error }

func (e *explainedError) Error() string { return strings.TrimSuffix(Explain(e.err), ".") }
func (e *explainedError) Unwrap() error { return e.err }

func explained(err error) error {
	if err == nil {
		return nil
	}
	return &explainedError{err: err}
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
