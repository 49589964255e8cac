// Package awsclient builds the AWS SDK configuration the bot uses: the SDK's
// default credential and endpoint chain (AWS_ENDPOINT_URL included, which is
// how tests and the sandbox point it at moto), bounded retries, and a
// middleware that counts failed calls for /metrics.
package awsclient

import (
	"context"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"
)

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

// Instrument adds the error-counting middleware to cfg.
func Instrument(cfg *aws.Config, count ErrorCounter) {
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
