package sandbox

import (
	"context"
	"errors"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/smithy-go"
)

// The SDK retries a call whose answer was lost (a 5xx or a dropped
// connection after the call took effect). For the creates below AWS offers
// no client token, so that retry either fails with "already exists" or
// makes a second one. Seed must survive it: CI caught a seed failing with
// InvalidGroup.Duplicate in the VPC it had just made.

// errorCode is the API error code of err, or "".
func errorCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// noRetry turns the SDK's own retries off for one call: createOnce retries
// it after looking for what a lost answer may have left.
func noRetry(o *ec2.Options) { o.RetryMaxAttempts = 1 }

const createTries = 3

// createOnce runs create (which must pass noRetry to its call) until it
// succeeds or fails for good. After a failure the SDK would have retried,
// it asks find whether the failed try took effect, and stops if it did.
func createOnce(ctx context.Context, create func(context.Context) error, find func(context.Context) (bool, error)) error {
	var err error
	for try := range createTries {
		if try > 0 {
			t := time.NewTimer(time.Duration(try) * 100 * time.Millisecond) // back off as the SDK would
			select {
			case <-ctx.Done():
				t.Stop()
				return errors.Join(err, ctx.Err())
			case <-t.C:
			}
		}
		if err = create(ctx); err == nil {
			return nil
		}
		if retry.IsErrorRetryables(retry.DefaultRetryables).IsErrorRetryable(err) != aws.TrueTernary {
			return err
		}
		if found, ferr := find(ctx); ferr == nil && found {
			return nil
		}
	}
	return err
}
