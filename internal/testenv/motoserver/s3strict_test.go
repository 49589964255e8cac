package motoserver

import (
	"bytes"
	"crypto/md5"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
)

func strictS3(t *testing.T, opts ...Option) (*Server, *s3.Client) {
	t.Helper()
	s := ForTest(t, append([]Option{WithStrictS3()}, opts...)...)
	// WhenRequired: the SDK adds no checksum of its own, so each case sends
	// exactly the headers it means to.
	c := s3.NewFromConfig(AWSConfig(s.URL), func(o *s3.Options) {
		o.UsePathStyle = true
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
	})
	return s, c
}

func sha256b64(b []byte) string {
	s := sha256.Sum256(b)
	return base64.StdEncoding.EncodeToString(s[:])
}

func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

func startUpload(t *testing.T, c *s3.Client, bucket string) *string {
	t.Helper()
	mp, err := c.CreateMultipartUpload(ctxT(t), &s3.CreateMultipartUploadInput{Bucket: aws.String(bucket), Key: aws.String("k"), ChecksumAlgorithm: s3types.ChecksumAlgorithmSha256})
	if err != nil {
		t.Fatal(err)
	}
	return mp.UploadId
}

func TestStrictS3ChecksPartsAndCompletes(t *testing.T) {
	t.Parallel()
	_, c := strictS3(t)
	ctx := ctxT(t)
	if _, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String("plain")}); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("circlebot"), 1000)
	up := startUpload(t, c, "plain")
	_, err := c.UploadPart(ctx, &s3.UploadPartInput{Bucket: aws.String("plain"), Key: aws.String("k"), UploadId: up, PartNumber: aws.Int32(1),
		Body: bytes.NewReader(data), ChecksumSHA256: aws.String(sha256b64([]byte("other data")))})
	if apiCode(err) != "BadDigest" {
		t.Fatalf("a part with the wrong SHA-256: %v", err)
	}
	part, err := c.UploadPart(ctx, &s3.UploadPartInput{Bucket: aws.String("plain"), Key: aws.String("k"), UploadId: up, PartNumber: aws.Int32(1),
		Body: bytes.NewReader(data), ChecksumSHA256: aws.String(sha256b64(data))})
	if err != nil {
		t.Fatal(err)
	}
	// Unencrypted: the part's ETag is its MD5.
	if m := md5.Sum(data); strings.Trim(aws.ToString(part.ETag), `"`) != hex.EncodeToString(m[:]) {
		t.Errorf("ETag %s of an unencrypted part is not its MD5", aws.ToString(part.ETag))
	}
	complete := func(sum *string) error {
		_, err := c.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: aws.String("plain"), Key: aws.String("k"), UploadId: up,
			MultipartUpload: &s3types.CompletedMultipartUpload{Parts: []s3types.CompletedPart{{ETag: part.ETag, PartNumber: aws.Int32(1), ChecksumSHA256: sum}}}})
		return err
	}
	if err := complete(nil); apiCode(err) != "InvalidRequest" {
		t.Errorf("complete without the part's checksum: %v", err)
	}
	if err := complete(aws.String(sha256b64([]byte("x")))); apiCode(err) != "InvalidPart" {
		t.Errorf("complete with another checksum: %v", err)
	}
	if err := complete(aws.String(sha256b64(data))); err != nil {
		t.Errorf("complete: %v", err)
	}
}

func TestStrictS3KMSETagsAreNotMD5s(t *testing.T) {
	t.Parallel()
	_, c := strictS3(t)
	ctx := ctxT(t)
	if _, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String("kms")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutBucketEncryption(ctx, &s3.PutBucketEncryptionInput{Bucket: aws.String("kms"), ServerSideEncryptionConfiguration: &s3types.ServerSideEncryptionConfiguration{
		Rules: []s3types.ServerSideEncryptionRule{{ApplyServerSideEncryptionByDefault: &s3types.ServerSideEncryptionByDefault{SSEAlgorithm: s3types.ServerSideEncryptionAwsKms}}}}}); err != nil {
		t.Fatal(err)
	}
	data := []byte("tarball part")
	m := md5.Sum(data)
	up := startUpload(t, c, "kms")
	part, err := c.UploadPart(ctx, &s3.UploadPartInput{Bucket: aws.String("kms"), Key: aws.String("k"), UploadId: up, PartNumber: aws.Int32(1),
		Body: bytes.NewReader(data), ChecksumSHA256: aws.String(sha256b64(data))})
	if err != nil {
		t.Fatal(err)
	}
	etag := strings.Trim(aws.ToString(part.ETag), `"`)
	if len(etag) != 32 || etag == hex.EncodeToString(m[:]) {
		t.Errorf("part ETag %q: want 32 hex digits that are not the MD5 %x", etag, m)
	}
	put, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("kms"), Key: aws.String("single"), Body: bytes.NewReader(data)})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Trim(aws.ToString(put.ETag), `"`); got == hex.EncodeToString(m[:]) {
		t.Errorf("object ETag %s is the MD5", got)
	}
}

func TestStrictS3ObjectLockNeedsAChecksumOnParts(t *testing.T) {
	t.Parallel()
	s, c := strictS3(t, WithPatchedSnapshots())
	ctx := ctxT(t)
	if _, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String("locked"), ObjectLockEnabledForBucket: aws.Bool(true)}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutObjectLockConfiguration(ctx, &s3.PutObjectLockConfigurationInput{Bucket: aws.String("locked"), ObjectLockConfiguration: &s3types.ObjectLockConfiguration{
		ObjectLockEnabled: s3types.ObjectLockEnabledEnabled,
		Rule:              &s3types.ObjectLockRule{DefaultRetention: &s3types.DefaultRetention{Mode: s3types.ObjectLockRetentionModeGovernance, Days: aws.Int32(1)}}}}); err != nil {
		t.Fatal(err)
	}
	data := []byte("tarball part")
	up := startUpload(t, c, "locked")
	_, err := c.UploadPart(ctx, &s3.UploadPartInput{Bucket: aws.String("locked"), Key: aws.String("k"), UploadId: up, PartNumber: aws.Int32(1), Body: bytes.NewReader(data)})
	if apiCode(err) != "InvalidRequest" {
		t.Errorf("a part without a checksum: %v", err)
	}
	if _, err := c.UploadPart(ctx, &s3.UploadPartInput{Bucket: aws.String("locked"), Key: aws.String("k"), UploadId: up, PartNumber: aws.Int32(1),
		Body: bytes.NewReader(data), ChecksumSHA256: aws.String(sha256b64(data))}); err != nil {
		t.Errorf("a part with its checksum: %v", err)
	}
	// A presigned part that names a header it was not sent with.
	req, err := s3.NewPresignClient(c).PresignUploadPart(ctx, &s3.UploadPartInput{Bucket: aws.String("locked"), Key: aws.String("k"), UploadId: up, PartNumber: aws.Int32(2),
		ChecksumSHA256: aws.String(sha256b64(data))})
	if err != nil {
		t.Fatal(err)
	}
	hr, _ := http.NewRequestWithContext(ctx, http.MethodPut, req.URL, bytes.NewReader(data))
	resp, err := http.DefaultClient.Do(hr)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("presigned part without its signed checksum header: HTTP %d", resp.StatusCode)
	}
	// The patched launcher behind it still serves its control API.
	if _, err := s.SnapshotStates(ctx); err != nil {
		t.Errorf("chained launcher: %v", err)
	}
}
