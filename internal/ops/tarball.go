package ops

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// S3 is what the tarball backup does in S3 itself; the Services box only
// ever sees presigned part URLs.
type S3 interface {
	CreateMultipartUpload(context.Context, *s3.CreateMultipartUploadInput, ...func(*s3.Options)) (*s3.CreateMultipartUploadOutput, error)
	CompleteMultipartUpload(context.Context, *s3.CompleteMultipartUploadInput, ...func(*s3.Options)) (*s3.CompleteMultipartUploadOutput, error)
	AbortMultipartUpload(context.Context, *s3.AbortMultipartUploadInput, ...func(*s3.Options)) (*s3.AbortMultipartUploadOutput, error)
	HeadObject(context.Context, *s3.HeadObjectInput, ...func(*s3.Options)) (*s3.HeadObjectOutput, error)
}

// Presigner signs part uploads; *s3.PresignClient is the real one.
type Presigner interface {
	PresignUploadPart(context.Context, *s3.UploadPartInput, ...func(*s3.PresignOptions)) (*v4.PresignedHTTPRequest, error)
}

// TarballBackup runs circleci-backup on the Services box through SSM and
// puts the tarball in S3.
//
// How the upload happens, and why: the bot starts an S3 multipart upload,
// presigns one PUT URL per part (valid for URLExpiry), and the box sends
// the parts with curl. The box needs no AWS CLI and no S3 permission in its
// instance role — a compromised or rebuilt box cannot read or delete other
// backups — and the bot, which already holds the bucket rights, completes
// and verifies the object. Parts keep the SSM command small and allow
// tarballs beyond S3's 5 GiB single-PUT limit.
type TarballBackup struct {
	EC2       EC2
	SSM       SSM
	S3        S3
	Presign   Presigner
	Records   RecordStore
	NameTag   string
	Bucket    string
	Prefix    string // object key prefix, e.g. "circleci-backups/"
	Version   string
	Poll      time.Duration
	URLExpiry time.Duration
	Now       func() time.Time
}

// MaxParts bounds the part URLs sent in one SSM command (SSM caps the
// size of a command's parameters); with parts up to 5 GiB this allows
// tarballs of up to 80 GiB.
const (
	MaxParts    = 16
	minPartSize = 16 << 20
	maxPartSize = 5 << 30
)

var TarballSteps = []string{"Find the Services box", "Check scratch space", "Run circleci-backup", "Upload to S3", "Verify the object", "Clean up scratch space"}

func (t *TarballBackup) Steps() []string { return TarballSteps }

func (t *TarballBackup) now() time.Time {
	if t.Now != nil {
		return t.Now()
	}
	return time.Now()
}

func (t *TarballBackup) Run(ctx context.Context, b *Backup, p Progress) error {
	b.Method, b.State, b.Version, b.Bucket = "tarball", StateRunning, t.Version, t.Bucket
	if b.Started.IsZero() {
		b.Started = t.now()
	}
	fail := func(step int, err error) error {
		p.Fail(step, errors.New(Explain(err)))
		b.State, b.Error, b.Finished = StateFailed, Explain(err), t.now()
		return errors.Join(err, t.Records.SaveBackup(b))
	}
	p.Begin(0, "tag Name="+t.NameTag)
	inst, err := FindBox(ctx, t.EC2, t.NameTag)
	if err != nil {
		return fail(0, err)
	}
	b.Shape = ShapeOf(inst)
	if state := string(inst.State.Name); state != "running" {
		return fail(0, fmt.Errorf("the Services box %s is %s: circleci-backup needs it running", b.Shape.InstanceID, state))
	}
	b.Key = t.Prefix + b.ID + "/circleci-data-export.tar.bz2"
	if err := t.Records.SaveBackup(b); err != nil {
		return fail(0, err)
	}
	p.Done(0, fmt.Sprintf("`%s` %s", b.Shape.InstanceID, b.Shape.PrivateIP))
	sh := &Shell{SSM: t.SSM, Instance: b.Shape.InstanceID, Poll: t.Poll}
	dir := `"${BOX_ROOT:-}/tmp/circlebot-` + b.ID + `"`

	// The seed warns that circleci-backup needs room for the tarball and
	// its scratch files next to the data: ask for the data's size free.
	p.Begin(1, "")
	r, err := sh.Run(ctx, "circlebot "+b.ID+": check space", fmt.Sprintf(`d=%s
mkdir -p "$d"
echo "data_kib=$(du -sk "${BOX_ROOT:-}/data" | cut -f1)"
echo "free_kib=$(df -Pk "$d" | awk 'NR==2{print $4}')"`, dir), 2*time.Minute)
	if err != nil {
		return fail(1, err)
	}
	dataKiB, derr := strconv.ParseInt(field(r.Stdout, "data_kib"), 10, 64)
	freeKiB, ferr := strconv.ParseInt(field(r.Stdout, "free_kib"), 10, 64)
	if derr != nil || ferr != nil {
		// SSM said the script succeeded but it printed nothing usable: the
		// command did not really run (or /data is missing). Never go on
		// blind into a 6-hour backup.
		return fail(1, fmt.Errorf("the Services box did not report its disk space (SSM command %s printed %q); is the SSM agent running the command, and does /data exist?", r.CommandID, trimTo(r.Stdout, 200)))
	}
	if freeKiB < dataKiB {
		return fail(1, fmt.Errorf("not enough scratch space on the Services box: %d MiB free in /tmp for %d MiB of /data; free space or attach a volume (the runbook's advice)", freeKiB>>10, dataKiB>>10))
	}
	p.Done(1, fmt.Sprintf("%d MiB of data, %d MiB free", dataKiB>>10, freeKiB>>10))

	p.Begin(2, "")
	r, err = sh.Run(ctx, "circlebot "+b.ID+": circleci-backup", fmt.Sprintf(`d=%s
circleci-backup "$d"
f="$d/circleci-data-export.tar.bz2"
echo "size=$(stat -c %%s "$f")"
echo "sha256=$(sha256sum "$f" | cut -d' ' -f1)"`, dir), 6*time.Hour)
	if err != nil {
		t.cleanup(ctx, sh, b, dir, p)
		return fail(2, err)
	}
	b.Size, _ = strconv.ParseInt(field(r.Stdout, "size"), 10, 64)
	b.SHA256 = field(r.Stdout, "sha256")
	if b.Size <= 0 || len(b.SHA256) != 64 {
		t.cleanup(ctx, sh, b, dir, p)
		return fail(2, fmt.Errorf("circleci-backup made no usable tarball (size %d, checksum %q)", b.Size, b.SHA256))
	}
	if err := t.Records.SaveBackup(b); err != nil {
		return fail(2, err)
	}
	p.Done(2, fmt.Sprintf("%d bytes, sha256 %s…", b.Size, b.SHA256[:12]))

	p.Begin(3, fmt.Sprintf("s3://%s/%s", t.Bucket, b.Key))
	if err := t.upload(ctx, sh, b, dir, p); err != nil {
		t.cleanup(ctx, sh, b, dir, p)
		return fail(3, err)
	}
	p.Done(3, fmt.Sprintf("`s3://%s/%s`", t.Bucket, b.Key))

	p.Begin(4, "")
	head, err := t.S3.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(t.Bucket), Key: aws.String(b.Key)})
	if err != nil {
		return fail(4, fmt.Errorf("verify s3://%s/%s: %w", t.Bucket, b.Key, err))
	}
	if got := aws.ToInt64(head.ContentLength); got != b.Size {
		return fail(4, fmt.Errorf("s3://%s/%s holds %d bytes, the box made %d", t.Bucket, b.Key, got, b.Size))
	}
	if got := head.Metadata["sha256"]; got != b.SHA256 {
		return fail(4, fmt.Errorf("s3://%s/%s carries checksum %q, the box computed %q", t.Bucket, b.Key, got, b.SHA256))
	}
	p.Done(4, fmt.Sprintf("%d bytes, checksum recorded", b.Size))
	t.cleanup(ctx, sh, b, dir, p)

	b.State, b.Finished = StateCompleted, t.now()
	return t.Records.SaveBackup(b)
}

// cleanup removes the bot's own scratch directory; failing to is a
// warning, never a failed backup.
func (t *TarballBackup) cleanup(ctx context.Context, sh *Shell, b *Backup, dir string, p Progress) {
	p.Begin(5, "")
	if _, err := sh.Run(ctx, "circlebot "+b.ID+": clean up", `rm -rf -- `+dir, 5*time.Minute); err != nil {
		p.Skip(5, "could not remove the scratch directory: "+Explain(err))
		b.Notes = append(b.Notes, "scratch directory /tmp/circlebot-"+b.ID+" left on the box")
		return
	}
	p.Done(5, "")
}

func (t *TarballBackup) upload(ctx context.Context, sh *Shell, b *Backup, dir string, p Progress) error {
	part := max(int64(minPartSize), (b.Size+MaxParts-1)/MaxParts)
	if part > maxPartSize {
		return fmt.Errorf("the tarball is %d GiB, over the %d GiB this upload supports; use EBS backups", b.Size>>30, (MaxParts*int64(maxPartSize))>>30)
	}
	n := int((b.Size + part - 1) / part)
	mp, err := t.S3.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{
		Bucket: aws.String(t.Bucket), Key: aws.String(b.Key),
		Metadata: map[string]string{"sha256": b.SHA256, "backup-id": b.ID, "source-instance": b.Shape.InstanceID, "requester": b.Requester},
	})
	if err != nil {
		return fmt.Errorf("start upload to s3://%s/%s: %w", t.Bucket, b.Key, err)
	}
	abort := func(cause error) error {
		_, aerr := t.S3.AbortMultipartUpload(context.WithoutCancel(ctx), &s3.AbortMultipartUploadInput{Bucket: aws.String(t.Bucket), Key: aws.String(b.Key), UploadId: mp.UploadId})
		return errors.Join(cause, aerr)
	}
	var script strings.Builder
	fmt.Fprintf(&script, "f=%s/circleci-data-export.tar.bz2\n", dir)
	fmt.Fprintf(&script, "part=%s/part\n", dir)
	for i := range n {
		req, err := t.Presign.PresignUploadPart(ctx, &s3.UploadPartInput{
			Bucket: aws.String(t.Bucket), Key: aws.String(b.Key), UploadId: mp.UploadId, PartNumber: aws.Int32(int32(i + 1)),
		}, s3.WithPresignExpires(cmpOr(t.URLExpiry, 2*time.Hour)))
		if err != nil {
			return abort(fmt.Errorf("presign part %d: %w", i+1, err))
		}
		// dd copies one part to a file so curl sends a Content-Length, which
		// presigned PUTs require (no chunked uploads).
		fmt.Fprintf(&script, "dd if=\"$f\" of=\"$part\" bs=1M iflag=skip_bytes,count_bytes skip=%d count=%d status=none\n", int64(i)*part, part)
		fmt.Fprintf(&script, "etag=$(curl -sS --fail --retry 5 --retry-all-errors -T \"$part\" -D - -o /dev/null '%s' | tr -d '\\r' | awk 'tolower($1)==\"etag:\"{print $2}')\n", req.URL)
		fmt.Fprintf(&script, "echo \"part%d=$etag\"\n", i+1)
	}
	script.WriteString("rm -f -- \"$part\"\n")
	p.Log(fmt.Sprintf("uploading %d bytes in %d part(s) of up to %d MiB with presigned URLs", b.Size, n, part>>20))
	r, err := sh.Run(ctx, "circlebot "+b.ID+": upload", script.String(), 6*time.Hour)
	if err != nil {
		return abort(err)
	}
	var parts []s3types.CompletedPart
	for i := range n {
		etag := field(r.Stdout, fmt.Sprintf("part%d", i+1))
		if etag == "" {
			return abort(fmt.Errorf("part %d: S3 returned no ETag to the box", i+1))
		}
		parts = append(parts, s3types.CompletedPart{ETag: aws.String(etag), PartNumber: aws.Int32(int32(i + 1))})
	}
	_, err = t.S3.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
		Bucket: aws.String(t.Bucket), Key: aws.String(b.Key), UploadId: mp.UploadId,
		MultipartUpload: &s3types.CompletedMultipartUpload{Parts: parts},
	})
	if err != nil {
		return abort(fmt.Errorf("complete upload: %w", err))
	}
	return nil
}
