package ops

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/smithy-go"

	"github.com/circlebot/circlebot/internal/journal"
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
// presigns PUT URLs for a few parts at a time (valid for URLExpiry), and
// the box sends those parts with curl, one SSM command per batch. The box
// needs no AWS CLI and no S3 permission in its instance role — a
// compromised or rebuilt box cannot read or delete other backups — and the
// bot, which already holds the bucket rights, completes and verifies the
// object. Parts keep each SSM command small and allow tarballs beyond S3's
// 5 GiB single-PUT limit.
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
	URLExpiry time.Duration // default 1 h, the upload command's timeout
	Now       func() time.Time
}

// MaxParts bounds the parts of one tarball; with parts up to 5 GiB this
// allows tarballs of up to 80 GiB.
//
// partsPerCommand is how many parts one SSM command uploads. Their URLs
// are presigned just before the command is sent and the command's timeout
// is their expiry, so no URL can run out while its command still waits to
// use it, however long the whole upload takes.
const (
	MaxParts        = 16
	partsPerCommand = 4
	minPartSize     = 16 << 20
	maxPartSize     = 5 << 30
)

// resultPrefix marks the lines the bot's scripts print for the bot to
// read, so nothing a tool prints can be taken for a result.
const resultPrefix = "circlebot:"

var TarballSteps = []string{"Find the Services box", "Check scratch space", "Run circleci-backup", "Upload to S3", "Verify the object", "Clean up scratch space"}

func (t *TarballBackup) now() time.Time {
	if t.Now != nil {
		return t.Now()
	}
	return time.Now()
}

// shell runs the backup's commands on the box, recording each command
// it sends in the backup's record (what to cancel if the bot dies).
func (t *TarballBackup) shell(ctx context.Context, b *Backup, p Progress) *Shell {
	return &Shell{SSM: t.SSM, Instance: b.Shape.InstanceID, Poll: t.Poll, OnSend: func(id string) {
		b.CommandID = id
		if err := t.Records.SaveBackup(ctx, b); err != nil {
			p.Log("could not record SSM command " + id + " in the backup record: " + Explain(err))
		}
	}}
}

func (t *TarballBackup) steps(req BackupRequest) []backupStep {
	return []backupStep{
		{TarballSteps[0], func(ctx context.Context, w *BackupWork, p Progress) (string, error) {
			b := &w.Record
			b.Method, b.State, b.Version, b.Bucket = MethodTarball, StateRunning, t.Version, t.Bucket
			b.Trigger, b.Requester, b.Channel, b.Reason = req.Trigger, req.Requester, req.Channel, cmp.Or(req.Reason, b.Reason)
			if b.Started.IsZero() {
				b.Started = t.now()
			}
			p.Log("tag Name=" + t.NameTag)
			inst, err := FindBox(ctx, t.EC2, t.NameTag)
			if err != nil {
				return "", err
			}
			b.Shape = ShapeOf(inst)
			if state := string(inst.State.Name); state != "running" {
				return "", fmt.Errorf("the Services box %s is %s: circleci-backup needs it running", b.Shape.InstanceID, state)
			}
			b.Key = t.Prefix + b.ID + "/circleci-data-export.tar.bz2"
			if err := t.Records.SaveBackup(ctx, b); err != nil {
				return "", err
			}
			return fmt.Sprintf("`%s` %s", b.Shape.InstanceID, b.Shape.PrivateIP), nil
		}},
		// The seed warns that circleci-backup needs room for the tarball
		// and its scratch files next to the data: ask for the data's size
		// free. du reads every inode of a big datastore, hence the long
		// timeout.
		{TarballSteps[1], func(ctx context.Context, w *BackupWork, p Progress) (string, error) {
			b := &w.Record
			w.Scratch = true
			if err := w.save(); err != nil {
				return "", err
			}
			r, err := t.shell(ctx, b, p).Run(ctx, "circlebot "+b.ID+": check space", fmt.Sprintf(`d=%s
mkdir -p "$d"
echo "%sdata_kib=$(du -sk "${BOX_ROOT:-}/data" | cut -f1)"
echo "%sfree_kib=$(df -Pk "$d" | awk 'NR==2{print $4}')"`, scratchDir(b.ID), resultPrefix, resultPrefix), 30*time.Minute)
			if err != nil {
				// A command SSM refused never ran and made no directory to
				// clean up (the box is likely unreachable anyway).
				var refused smithy.APIError
				w.Scratch = r.CommandID != "" || !errors.As(err, &refused)
				return "", err
			}
			dataKiB, derr := strconv.ParseInt(field(r.Stdout, resultPrefix+"data_kib"), 10, 64)
			freeKiB, ferr := strconv.ParseInt(field(r.Stdout, resultPrefix+"free_kib"), 10, 64)
			if derr != nil || ferr != nil {
				// SSM said the script succeeded but it printed nothing
				// usable: the command did not really run (or /data is
				// missing). Never go on blind into a 6-hour backup.
				return "", fmt.Errorf("the Services box did not report its disk space (SSM command %s printed %q): check that the SSM agent runs commands and that /data exists", r.CommandID, trimTo(r.Stdout, 200))
			}
			if freeKiB < dataKiB {
				return "", fmt.Errorf("not enough scratch space on the Services box: %d MiB free in /tmp for %d MiB of /data; free space or attach a volume (the runbook's advice)", freeKiB>>10, dataKiB>>10)
			}
			return fmt.Sprintf("%d MiB of data, %d MiB free", dataKiB>>10, freeKiB>>10), nil
		}},
		// circleci-backup's own output goes to a log: SSM keeps only the
		// first 24,000 characters of stdout, and a chatty export would
		// push the size and checksum out of them.
		{TarballSteps[2], func(ctx context.Context, w *BackupWork, p Progress) (string, error) {
			b := &w.Record
			r, err := t.shell(ctx, b, p).Run(ctx, "circlebot "+b.ID+": circleci-backup", fmt.Sprintf(`d=%s
if ! circleci-backup "$d" >"$d/backup.log" 2>&1; then
	echo "circleci-backup failed; the end of its output:" >&2
	tail -n 20 "$d/backup.log" >&2
	exit 1
fi
f="$d/circleci-data-export.tar.bz2"
echo "%ssize=$(stat -c %%s "$f")"
echo "%ssha256=$(sha256sum "$f" | cut -d' ' -f1)"`, scratchDir(b.ID), resultPrefix, resultPrefix), 6*time.Hour)
			if err != nil {
				return "", err
			}
			b.Size, _ = strconv.ParseInt(field(r.Stdout, resultPrefix+"size"), 10, 64)
			b.SHA256 = field(r.Stdout, resultPrefix+"sha256")
			if b.Size <= 0 || len(b.SHA256) != 64 {
				return "", fmt.Errorf("circleci-backup made no usable tarball (size %d, checksum %q)", b.Size, b.SHA256)
			}
			if err := t.Records.SaveBackup(ctx, b); err != nil {
				return "", err
			}
			return fmt.Sprintf("%d bytes, sha256 %s…", b.Size, b.SHA256[:12]), nil
		}},
		{TarballSteps[3], func(ctx context.Context, w *BackupWork, p Progress) (string, error) {
			b := &w.Record
			p.Log(fmt.Sprintf("uploading to s3://%s/%s", t.Bucket, b.Key))
			want, err := t.upload(ctx, t.shell(ctx, b, p), b, scratchDir(b.ID), p)
			if err != nil {
				return "", err
			}
			w.WantChecksum = want
			return fmt.Sprintf("`s3://%s/%s`", t.Bucket, b.Key), nil
		}},
		{TarballSteps[4], func(ctx context.Context, w *BackupWork, p Progress) (string, error) {
			b := &w.Record
			return t.verifyObject(ctx, b, w.WantChecksum)
		}},
		// Failing to clean up is a warning, never a failed backup.
		{TarballSteps[5], func(ctx context.Context, w *BackupWork, p Progress) (string, error) {
			b := &w.Record
			detail := ""
			if err := t.cleanup(ctx, t.shell(ctx, b, p), b); err != nil {
				detail = "could not remove the scratch directory: " + Explain(err)
			}
			w.Scratch = false
			b.State, b.Finished = StateCompleted, t.now()
			return detail, t.Records.SaveBackup(ctx, b)
		}},
	}
}

// Steps are the tarball backup's journaled steps, for the engine. A step
// that fails records the backup as failed; what it left on the box and
// in S3 is for the kind's cleanup (Abandon).
func (t *TarballBackup) Steps(req BackupRequest) []journal.Def {
	return journaled(t.steps(req), t.Records, t.now)
}

// Run takes the backup described by b without a journal: the steps of
// Steps one after the other; a step that fails or is cut off removes the
// scratch directory on its way out.
func (t *TarballBackup) Run(ctx context.Context, b *Backup, p Progress) error {
	w := &BackupWork{Record: *b}
	err := direct(ctx, w, t.steps(BackupRequest{Trigger: b.Trigger, Requester: b.Requester, Channel: b.Channel, Reason: b.Reason}), t.Records, t.now, p)
	if err != nil {
		if w.Scratch {
			last := len(TarballSteps) - 1
			p.Begin(last, "")
			if cerr := t.cleanup(ctx, t.shell(ctx, &w.Record, p), &w.Record); cerr != nil {
				p.Skip(last, "could not remove the scratch directory: "+Explain(cerr))
			} else {
				p.Done(last, "")
			}
		}
		if ctx.Err() != nil {
			t.interrupted(ctx, &w.Record)
		}
	}
	*b = w.Record
	return err
}

// interrupted records a backup the bot stopped under: not a restore
// point, and never retried.
func (t *TarballBackup) interrupted(ctx context.Context, b *Backup) {
	b.State, b.Finished = StateInterrupted, t.now()
	if b.Error == "" {
		b.Error = "the bot stopped during the backup"
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	_ = t.Records.SaveBackup(sctx, b) // the engine's cleanup records it again
}

// cleanup removes the bot's own scratch directory. It runs on its own
// clock: a backup stopped because the bot is shutting down must still
// not leave a tarball the size of /data behind in /tmp. A failure is
// noted in the record.
func (t *TarballBackup) cleanup(ctx context.Context, sh *Shell, b *Backup) error {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Minute)
	defer cancel()
	if _, err := sh.Run(cctx, "circlebot "+b.ID+": clean up", `rm -rf -- `+scratchDir(b.ID), time.Minute); err != nil {
		b.Notes = append(b.Notes, "scratch directory /tmp/circlebot-"+b.ID+" left on the box")
		return err
	}
	return nil
}

// upload sends the tarball as a multipart upload and completes it, and
// returns the checksum S3 must report for the whole object: the composite
// SHA-256 of the parts as the box read them ("<base64>-<parts>").
//
// Integrity does not rest on ETags, which are MD5s only for unencrypted
// and SSE-S3 objects (with SSE-KMS or SSE-C they are not). Instead the box
// first hashes each part (SHA-256), the bot signs that checksum into the
// part's presigned URL (x-amz-checksum-sha256 is a signed header), the box
// sends it with the part and S3 refuses a part whose data does not match
// (BadDigest). The same header satisfies Object Lock buckets, which refuse
// parts without Content-MD5 or a checksum. CompleteMultipartUpload names
// every part's checksum, and S3's composite checksum of the object is the
// SHA-256 of the parts' SHA-256 digests, which the bot computes from the
// box's hashes (S3 User Guide, "Checking object integrity": SHA-256
// multipart checksums are COMPOSITE).
func (t *TarballBackup) upload(ctx context.Context, sh *Shell, b *Backup, dir string, p Progress) (want string, err error) {
	// The part URLs are bearer credentials for the bucket: whatever SSM,
	// curl or S3 echoes of them must not reach the record or Slack.
	defer func() { err = redactURLs(err) }()
	part := max(int64(minPartSize), (b.Size+MaxParts-1)/MaxParts)
	if part > maxPartSize {
		return "", fmt.Errorf("the tarball is %d GiB, over the %d GiB this upload supports; use EBS backups", b.Size>>30, (MaxParts*int64(maxPartSize))>>30)
	}
	n := int((b.Size + part - 1) / part)
	sums, err := t.hashParts(ctx, sh, b, dir, part, n)
	if err != nil {
		return "", err
	}
	want = compositeSHA256(sums)
	mp, err := t.S3.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{
		Bucket: aws.String(t.Bucket), Key: aws.String(b.Key),
		ChecksumAlgorithm: s3types.ChecksumAlgorithmSha256, ChecksumType: s3types.ChecksumTypeComposite,
		Metadata: map[string]string{"sha256": b.SHA256, "backup-id": b.ID, "source-instance": b.Shape.InstanceID, "requester": b.Requester},
	})
	if err != nil {
		return "", fmt.Errorf("start upload to s3://%s/%s: %w", t.Bucket, b.Key, translate(err))
	}
	b.UploadID = aws.ToString(mp.UploadId)
	if err := t.Records.SaveBackup(ctx, b); err != nil {
		p.Log("could not record multipart upload " + b.UploadID + " in the backup record: " + Explain(err))
	}
	abort := func(cause error) error {
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		_, aerr := t.S3.AbortMultipartUpload(actx, &s3.AbortMultipartUploadInput{Bucket: aws.String(t.Bucket), Key: aws.String(b.Key), UploadId: mp.UploadId})
		if aerr != nil {
			aerr = fmt.Errorf("abort multipart upload %s of s3://%s/%s: %w", b.UploadID, t.Bucket, b.Key, translate(aerr))
		}
		return errors.Join(cause, aerr)
	}
	expiry := cmpOr(t.URLExpiry, time.Hour)
	p.Log(fmt.Sprintf("uploading %d bytes in %d part(s) of up to %d MiB, %d part(s) per SSM command, each checked by S3 against the SHA-256 the box computed", b.Size, n, part>>20, partsPerCommand))
	var parts []s3types.CompletedPart
	for first := 0; first < n; first += partsPerCommand {
		last := min(first+partsPerCommand, n)
		var script strings.Builder
		fmt.Fprintf(&script, "d=%s\n", dir)
		script.WriteString("f=\"$d/circleci-data-export.tar.bz2\"\npart=\"$d/part\"\n")
		for i := first; i < last; i++ {
			req, err := t.Presign.PresignUploadPart(ctx, &s3.UploadPartInput{
				Bucket: aws.String(t.Bucket), Key: aws.String(b.Key), UploadId: mp.UploadId, PartNumber: aws.Int32(int32(i + 1)),
				ChecksumSHA256: aws.String(sums[i]),
			}, s3.WithPresignExpires(expiry))
			if err != nil {
				return "", abort(fmt.Errorf("presign part %d: %w", i+1, err))
			}
			if strings.Contains(req.URL, "'") {
				return "", abort(fmt.Errorf("presign part %d: the URL cannot be quoted for the shell", i+1))
			}
			// dd copies one part to a file so curl sends a Content-Length, which
			// presigned PUTs require (no chunked uploads). The curl flags are
			// all in curl 7.35 (Ubuntu 14.04): --retry covers timeouts and 5xx,
			// --speed-limit/--speed-time turn a stalled transfer into a timeout.
			// Without --fail curl keeps S3's error document, whose code
			// (BadDigest, AccessDenied, …) the failure then names.
			fmt.Fprintf(&script, "dd if=\"$f\" of=\"$part\" bs=1M iflag=skip_bytes,count_bytes skip=%d count=%d status=none\n", int64(i)*part, part)
			fmt.Fprintf(&script, "code=$(curl -sS --retry 5 --connect-timeout 30 --speed-limit 1024 --speed-time 120 -H 'x-amz-checksum-sha256: %s' -T \"$part\" -D \"$d/part.head\" -o \"$d/part.body\" -w '%%{http_code}' '%s' 2>\"$d/part.err\") || { echo \"part %d did not reach S3: $(tail -n 1 \"$d/part.err\")\" >&2; exit 1; }\n", sums[i], req.URL, i+1)
			fmt.Fprintf(&script, "if [ \"$code\" != 200 ]; then echo \"S3 refused part %d: HTTP $code $(sed -n 's:.*<Code>\\(.*\\)</Code>.*:\\1:p' \"$d/part.body\" | head -n 1): $(sed -n 's:.*<Message>\\(.*\\)</Message>.*:\\1:p' \"$d/part.body\" | head -n 1)\" >&2; exit 1; fi\n", i+1)
			fmt.Fprintf(&script, "echo \"%spart%d.etag=$(tr -d '\\r' <\"$d/part.head\" | awk 'tolower($1)==\"etag:\"{e=$2} END{print e}')\"\n", resultPrefix, i+1)
		}
		script.WriteString("rm -f -- \"$part\" \"$d/part.head\" \"$d/part.body\" \"$d/part.err\"\n")
		r, err := sh.Run(ctx, fmt.Sprintf("circlebot %s: upload parts %d-%d of %d", b.ID, first+1, last, n), script.String(), expiry)
		if err != nil {
			return "", abort(err)
		}
		for i := first; i < last; i++ {
			etag := field(r.Stdout, fmt.Sprintf("%spart%d.etag", resultPrefix, i+1))
			if etag == "" {
				return "", abort(fmt.Errorf("part %d: S3 returned no ETag to the box", i+1))
			}
			parts = append(parts, s3types.CompletedPart{ETag: aws.String(etag), PartNumber: aws.Int32(int32(i + 1)), ChecksumSHA256: aws.String(sums[i])})
		}
		p.Progress(3, 100*float64(last)/float64(n), fmt.Sprintf("%d of %d parts", last, n))
	}
	_, err = t.S3.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
		Bucket: aws.String(t.Bucket), Key: aws.String(b.Key), UploadId: mp.UploadId,
		MultipartUpload: &s3types.CompletedMultipartUpload{Parts: parts},
	})
	if err != nil {
		return "", abort(fmt.Errorf("complete upload: %w", translate(err)))
	}
	return want, nil
}

// hashParts has the box compute each part's SHA-256 before anything is
// sent, so the bot can sign them into the part URLs. It returns them
// base64-encoded, as S3's checksum headers carry them.
func (t *TarballBackup) hashParts(ctx context.Context, sh *Shell, b *Backup, dir string, part int64, n int) ([]string, error) {
	var script strings.Builder
	fmt.Fprintf(&script, "d=%s\nf=\"$d/circleci-data-export.tar.bz2\"\n", dir)
	for i := range n {
		fmt.Fprintf(&script, "echo \"%spart%d.sha256=$(dd if=\"$f\" bs=1M iflag=skip_bytes,count_bytes skip=%d count=%d status=none | sha256sum | cut -d' ' -f1)\"\n", resultPrefix, i+1, int64(i)*part, part)
	}
	// Reading the whole tarball once more: as long as circleci-backup's
	// own checksum took, at most.
	r, err := sh.Run(ctx, fmt.Sprintf("circlebot %s: hash %d part(s)", b.ID, n), script.String(), 3*time.Hour)
	if err != nil {
		return nil, fmt.Errorf("hash the parts on the box: %w", err)
	}
	sums := make([]string, n)
	for i := range n {
		raw := field(r.Stdout, fmt.Sprintf("%spart%d.sha256", resultPrefix, i+1))
		digest, derr := hex.DecodeString(raw)
		if derr != nil || len(digest) != sha256.Size {
			return nil, fmt.Errorf("the box reported no SHA-256 of part %d (%q)", i+1, trimTo(raw, 80))
		}
		sums[i] = base64.StdEncoding.EncodeToString(digest)
	}
	return sums, nil
}

// compositeSHA256 is the checksum S3 gives a multipart object uploaded with
// SHA-256 part checksums: the SHA-256 of the concatenated part digests,
// base64, then "-" and the number of parts.
func compositeSHA256(parts []string) string {
	h := sha256.New()
	for _, p := range parts {
		d, _ := base64.StdEncoding.DecodeString(p)
		h.Write(d)
	}
	return fmt.Sprintf("%s-%d", base64.StdEncoding.EncodeToString(h.Sum(nil)), len(parts))
}

// verifyObject reads the completed object's length and checksum back from
// S3 and compares them with what the box sent. HeadObject returns the
// checksum only when asked (ChecksumMode ENABLED).
func (t *TarballBackup) verifyObject(ctx context.Context, b *Backup, want string) (string, error) {
	head, err := t.S3.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(t.Bucket), Key: aws.String(b.Key), ChecksumMode: s3types.ChecksumModeEnabled})
	if err != nil {
		return "", fmt.Errorf("verify s3://%s/%s: %w", t.Bucket, b.Key, translate(err))
	}
	if got := aws.ToInt64(head.ContentLength); got != b.Size {
		return "", fmt.Errorf("s3://%s/%s holds %d bytes, the box made %d", t.Bucket, b.Key, got, b.Size)
	}
	got := aws.ToString(head.ChecksumSHA256)
	if !sameComposite(got, want) {
		if got == "" {
			got = "none"
		}
		return "", fmt.Errorf("s3://%s/%s has SHA-256 checksum %s, the box's parts make %s: the object is not what the box sent", t.Bucket, b.Key, got, want)
	}
	return fmt.Sprintf("%d bytes; S3's SHA-256 of the parts matches the box's (%s)", b.Size, want), nil
}

// sameComposite compares two composite checksums; the part count after
// the "-" is compared when both carry one (S3 documents it on HeadObject,
// and some answers give the bare value).
func sameComposite(got, want string) bool {
	gv, gn, gok := strings.Cut(got, "-")
	wv, wn, wok := strings.Cut(want, "-")
	return gv != "" && gv == wv && (!gok || !wok || gn == wn)
}

var presignedURL = regexp.MustCompile(`https?://\S*X-Amz-\S*`)

func redact(s string) string { return presignedURL.ReplaceAllString(s, "<presigned URL>") }

// redactedError is an error with presigned URLs cut out of its text. It
// unwraps only to what callers test for (cancellation, ErrRemote, the
// kind translate gave the AWS error, the AWS error itself), as the
// original chain would still print the URLs.
type redactedError struct {
	msg  string
	errs []error
}

func (e *redactedError) Error() string   { return e.msg }
func (e *redactedError) Unwrap() []error { return e.errs }

func redactURLs(err error) error {
	if err == nil {
		return nil
	}
	err = translate(err)
	var ae smithy.APIError
	isAPI := errors.As(err, &ae)
	if !presignedURL.MatchString(err.Error()) && (!isAPI || !presignedURL.MatchString(ae.ErrorMessage())) {
		return err
	}
	out := &redactedError{msg: redact(err.Error())}
	for _, target := range []error{context.Canceled, context.DeadlineExceeded, ErrRemote} {
		if errors.Is(err, target) {
			out.errs = append(out.errs, target)
		}
	}
	var known *awsError
	if errors.As(err, &known) {
		out.errs = append(out.errs, known.kind)
	}
	if isAPI {
		out.errs = append(out.errs, &smithy.GenericAPIError{Code: ae.ErrorCode(), Message: redact(ae.ErrorMessage()), Fault: ae.ErrorFault()})
	}
	return out
}

// Abandon undoes what a tarball backup left running when the bot died: it
// cancels its SSM command, aborts its multipart upload and removes its
// scratch directory, so a copy the size of /data does not sit in /tmp on
// the Services box. It is never retried: the backup stays a failure. It
// returns what it did and what it could not do, in words.
func (t *TarballBackup) Abandon(ctx context.Context, b *Backup) []string {
	var done []string
	if b.Shape.InstanceID == "" {
		return []string{"nothing had reached the Services box"}
	}
	sh := &Shell{SSM: t.SSM, Instance: b.Shape.InstanceID, Poll: t.Poll}
	if b.CommandID != "" {
		inv, err := t.SSM.GetCommandInvocation(ctx, &ssm.GetCommandInvocationInput{CommandId: aws.String(b.CommandID), InstanceId: aws.String(b.Shape.InstanceID)})
		if err == nil && running(inv.Status) {
			if err := sh.stop(ctx, b.CommandID, nil); err != nil {
				done = append(done, "could not cancel SSM command "+b.CommandID+": "+Explain(err))
			} else {
				done = append(done, "cancelled SSM command "+b.CommandID)
			}
		}
	}
	if b.UploadID != "" {
		_, err := t.S3.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: aws.String(b.Bucket), Key: aws.String(b.Key), UploadId: aws.String(b.UploadID)})
		switch err = translate(err); {
		case err == nil || errors.Is(err, ErrNotFound):
			done = append(done, "aborted the unfinished upload to s3://"+b.Bucket+"/"+b.Key)
		default:
			done = append(done, "could not abort the upload "+b.UploadID+": "+Explain(err))
		}
	}
	if b.CommandID == "" {
		// No command of this backup ever reached the box: no scratch
		// directory either (and the box may be unreachable).
		return append(done, "no command of it had reached the box")
	}
	dir := scratchDir(b.ID)
	if _, err := sh.Run(ctx, "circlebot "+b.ID+": clean up after a restart", `rm -rf -- `+dir, time.Minute); err != nil {
		done = append(done, "could not remove /tmp/circlebot-"+b.ID+" on the box: "+Explain(err))
	} else {
		done = append(done, "removed /tmp/circlebot-"+b.ID+" on the box")
	}
	return done
}

// Close is the end of a tarball backup that did not finish, whatever
// stopped it (a failed step, a cancel, a shutdown, or a dead bot found by
// recovery): what it left is undone (Abandon) and the record says it is
// no restore point — interrupted when the bot stopped under it (cut),
// failed otherwise — with what was cleaned up. It returns that, in words.
func (t *TarballBackup) Close(ctx context.Context, b *Backup, cut bool) []string {
	did := t.Abandon(ctx, b)
	switch {
	case cut && b.State != StateFailed:
		b.State = StateInterrupted
		if b.Error == "" {
			b.Error = "the bot stopped during the backup; it was not retried"
		}
	case b.State == StateRunning || b.State == "":
		b.State = StateFailed
		if b.Error == "" {
			b.Error = "stopped before it finished"
		}
	}
	if b.Finished.IsZero() {
		b.Finished = t.now()
	}
	b.Notes = append(b.Notes, did...)
	if err := t.Records.SaveBackup(ctx, b); err != nil {
		did = append(did, "could not record it in the backup record: "+Explain(err))
	}
	return did
}

// scratchDir is a backup's scratch directory on the box, quoted for the
// shell and written ${BOX_ROOT:-}/… so the test stand-in maps it (empty on
// a real box).
func scratchDir(id string) string { return `"${BOX_ROOT:-}/tmp/circlebot-` + id + `"` }
