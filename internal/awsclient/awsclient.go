// Package awsclient builds the AWS SDK configuration the bot uses: the SDK's
// default credential and endpoint chain (AWS_ENDPOINT_URL included, which is
// how tests and the sandbox point it at moto), the one retry policy for
// every call, and a middleware that counts failed calls for /metrics.
package awsclient

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"
)

// The SDK's retry policy for every AWS call the bot makes: the standard
// retryer (exponential backoff with full jitter; a throttled attempt waits
// from 1 s up, anything else from 50 ms up, at most MaxBackoff; a
// client-side retry quota stops retry storms), MaxAttempts attempts in all.
// EC2's throttling is a per-account token bucket, so a call backs off
// rather than hammering it, and the bot keeps its call counts low. This is
// the only retry of one call: internal/ops adds only the step-level retry
// when the SDK has given up (see its doc.go).
const (
	MaxAttempts = 4
	MaxBackoff  = 20 * time.Second
)

// Retryer returns the bot's retryer (one per client, as the SDK asks).
func Retryer() aws.Retryer {
	return retry.NewStandard(func(o *retry.StandardOptions) {
		o.MaxAttempts = MaxAttempts
		o.MaxBackoff = MaxBackoff
	})
}

// ErrorCounter receives one call per AWS call that failed after retries.
type ErrorCounter func(service, operation, code string)

// Load returns the SDK config. region overrides the default chain when set.
func Load(ctx context.Context, region string, count ErrorCounter) (aws.Config, error) {
	var opts []func(*config.LoadOptions) error
	if region != "" {
		opts = append(opts, config.WithRegion(region))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return aws.Config{}, fmt.Errorf("aws: load configuration: %w", err)
	}
	if cfg.Region == "" {
		return aws.Config{}, errors.New("aws: no region configured: set aws.region in the config file or AWS_REGION")
	}
	Instrument(&cfg, count)
	return cfg, nil
}

// Instrument gives cfg the bot's retry policy (Retryer) and, when count is
// set, the error-counting middleware. Load does it for the bot's own
// config; a caller that brings its own (tests) calls it too. A config's
// RetryMaxAttempts (AWS_MAX_ATTEMPTS, or a test's lower count so that an
// API moto lacks fails fast) still caps the attempts: the SDK applies it
// on top of the retryer. AWS_RETRY_MODE is not used.
func Instrument(cfg *aws.Config, count ErrorCounter) {
	cfg.Retryer = Retryer
	if count == nil {
		return
	}
	cfg.APIOptions = append(cfg.APIOptions, func(st *middleware.Stack) error {
		// Initialize runs outside the retry loop, so this sees the final
		// outcome of a call, not every throttled attempt.
		return st.Initialize.Add(middleware.InitializeMiddlewareFunc("circlebotErrorCount",
			func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
				out, md, err := next.HandleInitialize(ctx, in)
				if err != nil && !errors.Is(err, context.Canceled) {
					count(awsmiddleware.GetServiceID(ctx), awsmiddleware.GetOperationName(ctx), ErrorCode(err))
				}
				return out, md, err
			}), middleware.Before)
	})
}

// ErrorCode is the AWS error code of err ("UnauthorizedOperation"), or a
// short word for failures that never reached an API answer.
func ErrorCode(err error) string {
	var ae smithy.APIError
	switch {
	case errors.As(err, &ae):
		return ae.ErrorCode()
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	default:
		return "transport"
	}
}
