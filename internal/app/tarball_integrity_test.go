package app_test

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/circlebot/circlebot/internal/app"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/testenv/motoserver"
	"github.com/circlebot/circlebot/internal/testenv/ssmbox"
)

// strictTarballEnv is tarballEnvSSM on a moto whose S3 answers multipart
// uploads as S3 does (motoserver.WithStrictS3), with the bucket set up by
// prepare before the bot runs.
func strictTarballEnv(t *testing.T, kmsKey string, prepare func(ctx context.Context, s3c *s3.Client, bucket string)) (*env, *ssmbox.Box) {
	t.Helper()
	ssmSrv := ssmbox.New(t)
	e := newEnvOn(t, motoserver.ForTest(t, motoserver.WithStrictS3()), func(c *config.Config) {
		c.Backup.Bucket = "circleci-backups-sandbox"
		if kmsKey != "" {
			c.AWS.KMSKeyARNs = []string{kmsKey}
		}
	}, func(o *app.Options) { o.SSMEndpoint = ssmSrv.URL })
	if prepare != nil {
		prepare(context.Background(), e.s3(), e.inst.Bucket)
	}
	return e, ssmSrv.AddBox(e.inst.ServicesBox.ID)
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// A tarball backup lands verified on buckets encrypted with SSE-S3, with
// SSE-KMS (whose ETags are not MD5s) and with Object Lock (which refuses
// parts without a checksum): S3 checks each part's SHA-256, and the
// object's composite checksum is the one the box's parts make.
func TestTarballBackupIsVerifiedOnEveryBucketKind(t *testing.T) {
	t.Parallel()
	encrypt := func(algo s3types.ServerSideEncryption, key string) func(context.Context, *s3.Client, string) {
		return func(ctx context.Context, s3c *s3.Client, bucket string) {
			rule := &s3types.ServerSideEncryptionByDefault{SSEAlgorithm: algo}
			if key != "" {
				rule.KMSMasterKeyID = aws.String(key)
			}
			must[*s3.PutBucketEncryptionOutput](t)(s3c.PutBucketEncryption(ctx, &s3.PutBucketEncryptionInput{Bucket: aws.String(bucket),
				ServerSideEncryptionConfiguration: &s3types.ServerSideEncryptionConfiguration{Rules: []s3types.ServerSideEncryptionRule{{ApplyServerSideEncryptionByDefault: rule}}}}))
		}
	}
	const kmsKey = "arn:aws:kms:us-east-1:123456789012:key/0d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6"
	for _, tc := range []struct {
		name    string
		prepare func(context.Context, *s3.Client, string)
		kms     bool
	}{
		{"SSE-S3", encrypt(s3types.ServerSideEncryptionAes256, ""), false},
		{"SSE-KMS", encrypt(s3types.ServerSideEncryptionAwsKms, kmsKey), true},
		{"Object Lock", func(ctx context.Context, s3c *s3.Client, bucket string) {
			must[*s3.PutBucketVersioningOutput](t)(s3c.PutBucketVersioning(ctx, &s3.PutBucketVersioningInput{Bucket: aws.String(bucket),
				VersioningConfiguration: &s3types.VersioningConfiguration{Status: s3types.BucketVersioningStatusEnabled}}))
			must[*s3.PutObjectLockConfigurationOutput](t)(s3c.PutObjectLockConfiguration(ctx, &s3.PutObjectLockConfigurationInput{Bucket: aws.String(bucket),
				ObjectLockConfiguration: &s3types.ObjectLockConfiguration{ObjectLockEnabled: s3types.ObjectLockEnabledEnabled,
					Rule: &s3types.ObjectLockRule{DefaultRetention: &s3types.DefaultRetention{Mode: s3types.ObjectLockRetentionModeGovernance, Days: aws.Int32(1)}}}}))
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			key := ""
			if tc.kms {
				key = kmsKey
			}
			e, box := strictTarballEnv(t, key, tc.prepare)
			// Two parts (16 MiB each at least), so the checksum is a composite.
			box.WriteCommand("circleci-backup", "#!/bin/bash\nhead -c 20000000 /dev/urandom >\"$1/circleci-data-export.tar.bz2\"\n")
			e.slash(alice, incident, "backup now tarball")
			b := e.lastBackup(ops.StateCompleted)
			body := e.object(b)
			whole := sha256.Sum256(body)
			if int64(len(body)) != b.Size || hex.EncodeToString(whole[:]) != b.SHA256 {
				t.Fatalf("object: %d bytes, sha256 %x; record %d %s", len(body), whole, b.Size, b.SHA256)
			}
			head, err := e.s3().HeadObject(context.Background(), &s3.HeadObjectInput{Bucket: aws.String(b.Bucket), Key: aws.String(b.Key), ChecksumMode: s3types.ChecksumModeEnabled})
			if err != nil {
				t.Fatal(err)
			}
			const part = 16 << 20
			h := sha256.New()
			var md5s []byte
			for off := 0; off < len(body); off += part {
				p := body[off:min(off+part, len(body))]
				s := sha256.Sum256(p)
				h.Write(s[:])
				m := md5.Sum(p)
				md5s = append(md5s, m[:]...)
			}
			// A composite checksum: the SHA-256 of the parts' SHA-256s (S3 adds
			// "-<parts>" on HeadObject; moto 5.2.1 only on GetObject).
			want := base64.StdEncoding.EncodeToString(h.Sum(nil))
			if got := aws.ToString(head.ChecksumSHA256); got != want && got != want+"-2" {
				t.Errorf("object checksum %q, the parts make %q", got, want)
			}
			mm := md5.Sum(md5s)
			md5ETag := fmt.Sprintf(`"%x-2"`, mm)
			if tc.kms == (aws.ToString(head.ETag) == md5ETag) {
				t.Errorf("ETag %s; the MD5 of the part MD5s is %s (KMS: %v)", aws.ToString(head.ETag), md5ETag, tc.kms)
			}
			m := e.finalMessage(b.ID, "Restore point")
			if !strings.Contains(m.AllText(), "s3://"+b.Bucket+"/"+b.Key) {
				t.Errorf("final message lacks the object: %s", m.AllText())
			}
			noScratchLeft(t, box)
			e.noUploadsLeft(b)
		})
	}
}

// A part damaged between the box's hash and the upload is refused by S3
// (BadDigest): the backup fails saying so, and nothing is left behind.
func TestTarballPartCorruptedInTransitIsRefusedByS3(t *testing.T) {
	t.Parallel()
	e, box := strictTarballEnv(t, "", nil)
	// curl damages the part file it is given, then runs the real curl
	// (the next one on PATH after the box's own bin).
	box.WriteCommand("curl", `#!/bin/bash
prev=
for a; do if [ "$prev" = "-T" ]; then f=$a; fi; prev=$a; done
if [ -n "${f:-}" ]; then printf '\x00\xff\x00\xff\x00\xff' | dd of="$f" bs=1 seek=7 conv=notrunc status=none; fi
real=$(PATH=${PATH#*:} command -v curl)
exec "$real" "$@"
`)
	tb, b, p := directTarball(e)
	err := tb.Run(context.Background(), b, p)
	if err == nil {
		t.Fatal("backup succeeded")
	}
	if b.State != ops.StateFailed || !strings.Contains(b.Error, "BadDigest") || !strings.Contains(b.Error, "part 1") {
		t.Errorf("record: %s: %s", b.State, b.Error)
	}
	for _, s := range append(p.all(), err.Error(), b.Error) {
		if strings.Contains(s, "X-Amz-") {
			t.Errorf("a presigned URL got out: %s", s)
		}
	}
	noScratchLeft(t, box)
	e.noUploadsLeft(b)
	if _, err := e.s3().HeadObject(context.Background(), &s3.HeadObjectInput{Bucket: aws.String(b.Bucket), Key: aws.String(b.Key)}); err == nil {
		t.Errorf("s3://%s/%s exists", b.Bucket, b.Key)
	}
}

// A tarball replaced in S3 after the backup (same size, its metadata lost)
// is refused by the restore: the download's SHA-256 is checked against the
// backup record, and circleci-restore never runs.
func TestTarballRestoreChecksTheDownloadAgainstTheRecord(t *testing.T) {
	t.Parallel()
	e, box := strictTarballEnv(t, "", nil)
	e.app.Engine.MinInterval = 20 * time.Millisecond
	e.app.Tarball.Poll = 20 * time.Millisecond
	e.slash(alice, incident, "backup now tarball")
	b := e.lastBackup(ops.StateCompleted)
	e.server.Wait()
	other := bytes.Repeat([]byte{0x5a}, int(b.Size))
	if _, err := e.s3().PutObject(context.Background(), &s3.PutObjectInput{Bucket: aws.String(b.Bucket), Key: aws.String(b.Key), Body: bytes.NewReader(other)}); err != nil {
		t.Fatal(err)
	}
	uri := "s3://" + b.Bucket + "/" + b.Key
	req := e.request(alice, "restore "+uri)
	e.click(bob, "approve "+req, "tar.1")
	e.waitText("refused download", "the backup recorded "+b.SHA256)
	e.server.Wait()
	if aside := box.RestoreAsideDirs(); len(aside) != 0 {
		t.Errorf("circleci-restore ran: %v", aside)
	}
}
