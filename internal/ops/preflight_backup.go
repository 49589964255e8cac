package ops

import (
	"context"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// SnapshotMaker is the call an EBS backup makes.
type SnapshotMaker interface {
	CreateSnapshots(context.Context, *ec2.CreateSnapshotsInput, ...func(*ec2.Options)) (*ec2.CreateSnapshotsOutput, error)
}

// BackupPreflight tries an EBS backup of instance id without effect:
// CreateSnapshots of every volume, with the backup's description and
// tags, as DryRun.
func BackupPreflight(ctx context.Context, api SnapshotMaker, id string) Preflight {
	var pf Preflight
	_, err := api.CreateSnapshots(ctx, &ec2.CreateSnapshotsInput{
		DryRun:                aws.Bool(true),
		InstanceSpecification: &ec2types.InstanceSpecification{InstanceId: aws.String(id), ExcludeBootVolume: aws.Bool(false)},
		Description:           aws.String(BackupDescriptionPrefix + " (pre-flight)"),
		CopyTagsFromSource:    ec2types.CopyTagsFromSourceVolume,
		TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeSnapshot, Tags: []ec2types.Tag{
			{Key: aws.String(TagBackupID), Value: aws.String("bk-preflight")},
		}}},
	})
	pf.dryRun("ec2:CreateSnapshots", id+" (every volume)", err)
	return pf
}

// BucketEncryption reads the tarball bucket's default encryption: S3 has
// no dry run, and this read shows the bucket is there, the bot may read
// its settings, and which key (if any) the uploads will need.
type BucketEncryption interface {
	GetBucketEncryption(context.Context, *s3.GetBucketEncryptionInput, ...func(*s3.Options)) (*s3.GetBucketEncryptionOutput, error)
}

// BucketPreflight reads bucket's default encryption.
func BucketPreflight(ctx context.Context, api BucketEncryption, bucket string) Preflight {
	var pf Preflight
	out, err := api.GetBucketEncryption(ctx, &s3.GetBucketEncryptionInput{Bucket: aws.String(bucket)})
	err = translate(err)
	switch {
	case errors.Is(err, ErrNoDefaultEncryption):
		pf.add(Check{Call: "s3:GetEncryptionConfiguration", On: bucket, Status: CheckOK, Reason: "no default encryption set (S3 encrypts with SSE-S3)"})
	case err != nil:
		pf.refused("s3:GetEncryptionConfiguration", bucket, reasonOf(err))
	default:
		what := "SSE-S3"
		if c := out.ServerSideEncryptionConfiguration; c != nil {
			for _, r := range c.Rules {
				if d := r.ApplyServerSideEncryptionByDefault; d != nil && d.KMSMasterKeyID != nil {
					what = fmt.Sprintf("%s with key %s (the bot's policy needs it in aws.kms_key_arns)", d.SSEAlgorithm, aws.ToString(d.KMSMasterKeyID))
				} else if d != nil {
					what = string(d.SSEAlgorithm)
				}
			}
		}
		pf.add(Check{Call: "s3:GetEncryptionConfiguration", On: bucket, Status: CheckOK, Reason: what})
	}
	return pf
}
