package ops

import (
	"context"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	kmstypes "github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// KeyDescriber reads a KMS key's state.
type KeyDescriber interface {
	DescribeKey(context.Context, *kms.DescribeKeyInput, ...func(*kms.Options)) (*kms.DescribeKeyOutput, error)
}

// KeyUsable says whether EC2 and S3 can use key for the bot: it must be
// enabled. A disabled key, or one pending deletion or import, makes a
// launch from snapshots encrypted under it go from pending to terminated,
// and an SSE-KMS upload fail.
func KeyUsable(ctx context.Context, api KeyDescriber, key string) error {
	out, err := api.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(key)})
	if err != nil {
		return fmt.Errorf("describe KMS key %s: %w", key, translate(err))
	}
	m := out.KeyMetadata
	if m == nil {
		return fmt.Errorf("KMS key %s: no metadata in the answer", key)
	}
	if m.KeyState != kmstypes.KeyStateEnabled {
		return fmt.Errorf("KMS key %s is %s, not Enabled: EC2 cannot use it for the volumes it encrypts", key, m.KeyState)
	}
	return nil
}
