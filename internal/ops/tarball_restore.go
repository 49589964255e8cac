package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/circlebot/circlebot/internal/journal"
)

// GetPresigner signs the tarball's download; *s3.PresignClient is the
// real one.
type GetPresigner interface {
	PresignGetObject(context.Context, *s3.GetObjectInput, ...func(*s3.PresignOptions)) (*v4.PresignedHTTPRequest, error)
}

// TarballRestore restores a circleci-backup tarball onto the running
// Services box with circleci-restore. As with the backup, the box fetches
// the object through a presigned URL and needs no S3 rights of its own.
// circleci-restore moves the box's current data aside
// (/data/circleci-restore-*); nothing is deleted.
type TarballRestore struct {
	EC2       EC2
	S3        S3
	Presign   GetPresigner
	SSM       SSM
	NameTag   string
	Region    string
	AppStart  string
	AppStop   string
	Poll      time.Duration
	URLExpiry time.Duration // default 1 h, also the download's timeout
}

// TarballRestorePlan is what a tarball restore will use.
type TarballRestorePlan struct {
	Bucket     string    `json:"bucket"`
	Key        string    `json:"key"`
	ETag       string    `json:"etag"`
	Size       int64     `json:"size"`
	SHA256     string    `json:"sha256,omitempty"` // from the object's metadata, when the bot made it
	Modified   time.Time `json:"modified"`
	InstanceID string    `json:"instance_id"`
	PrivateIP  string    `json:"private_ip"`
	AppStart   string    `json:"app_start,omitempty"`
	AppStop    string    `json:"app_stop,omitempty"`
	Region     string    `json:"region"`
}

func (p TarballRestorePlan) Facts() map[string]string {
	return map[string]string{
		"region": p.Region, "bucket": p.Bucket, "key": p.Key, "etag": p.ETag, "size": strconv.FormatInt(p.Size, 10),
		"instance": p.InstanceID, "private_ip": p.PrivateIP, "app_start": p.AppStart, "app_stop": p.AppStop,
	}
}

func (p TarballRestorePlan) Encode() string {
	b, _ := json.Marshal(p)
	return string(b)
}

func DecodeTarballRestorePlan(s string) (TarballRestorePlan, error) {
	var p TarballRestorePlan
	err := json.Unmarshal([]byte(s), &p)
	return p, err
}

var TarballRestoreSteps = []string{
	"Check the tarball",
	"Check the Services box",
	"Download the tarball onto the box",
	"Stop the app",
	"Run circleci-restore",
	"Start the app",
	"Remove the downloaded tarball",
}

// Plan checks that the object exists and the box runs, or refuses.
func (t *TarballRestore) Plan(ctx context.Context, bucket, key string) (TarballRestorePlan, error) {
	head, err := t.S3.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	switch code := errorCode(err); {
	case code == "NotFound" || code == "NoSuchKey" || code == "NoSuchBucket":
		return TarballRestorePlan{}, refusef("`s3://%s/%s` does not exist (%s). `backup list` shows the tarball restore points.", bucket, key, code)
	case code == "Forbidden" || code == "AccessDenied":
		return TarballRestorePlan{}, refusef("S3 refused to show `s3://%s/%s` (%s): either it does not exist (without s3:ListBucket, S3 says 403 for a missing object) or the bot's IAM policy does not cover it (see the README). `backup list` shows the tarball restore points.", bucket, key, code)
	case err != nil:
		return TarballRestorePlan{}, fmt.Errorf("look up s3://%s/%s: %w", bucket, key, err)
	}
	if aws.ToInt64(head.ContentLength) == 0 {
		return TarballRestorePlan{}, refusef("`s3://%s/%s` is empty: it is not a circleci-backup tarball.", bucket, key)
	}
	box, err := FindBox(ctx, t.EC2, t.NameTag)
	if err != nil {
		return TarballRestorePlan{}, refusef("%s. A tarball restore runs circleci-restore on the running Services box; with no box, restore from a snapshot.", Explain(err))
	}
	if box.State.Name != "running" {
		return TarballRestorePlan{}, refusef("the Services box `%s` is %s: a tarball restore runs circleci-restore on it, so it must be running. Start it first, or restore from a snapshot.", aws.ToString(box.InstanceId), box.State.Name)
	}
	p := TarballRestorePlan{
		Bucket: bucket, Key: key, ETag: strings.Trim(aws.ToString(head.ETag), `"`), Size: aws.ToInt64(head.ContentLength),
		SHA256: head.Metadata["sha256"], Modified: aws.ToTime(head.LastModified),
		InstanceID: aws.ToString(box.InstanceId), PrivateIP: aws.ToString(box.PrivateIpAddress),
		AppStart: t.AppStart, AppStop: t.AppStop, Region: t.Region,
	}
	return p, nil
}

// Steps returns the journal steps of plan.
func (t *TarballRestore) Steps(plan TarballRestorePlan) []journal.Def {
	fns := []journal.StepFunc{
		func(ctx context.Context, op *journal.Op, _ journal.Progress) (string, error) {
			return t.checkObject(ctx, plan)
		},
		func(ctx context.Context, op *journal.Op, _ journal.Progress) (string, error) {
			return t.checkBox(ctx, op, plan)
		},
		func(ctx context.Context, op *journal.Op, _ journal.Progress) (string, error) {
			return t.download(ctx, op, plan)
		},
		func(ctx context.Context, op *journal.Op, _ journal.Progress) (string, error) {
			return t.app(ctx, op, plan, plan.AppStop, "stop the app")
		},
		func(ctx context.Context, op *journal.Op, _ journal.Progress) (string, error) {
			return t.restore(ctx, op, plan)
		},
		func(ctx context.Context, op *journal.Op, _ journal.Progress) (string, error) {
			return t.app(ctx, op, plan, plan.AppStart, "start the app")
		},
		func(ctx context.Context, op *journal.Op, _ journal.Progress) (string, error) {
			return t.cleanup(ctx, op, plan)
		},
	}
	defs := make([]journal.Def, len(fns))
	for i, f := range fns {
		defs[i] = journal.Def{Name: TarballRestoreSteps[i], Run: retrying(f, cmpOr(t.Poll, 2*time.Second))}
	}
	return defs
}

func (t *TarballRestore) shell(id string) *Shell {
	return &Shell{SSM: t.SSM, Instance: id, Poll: t.Poll}
}

func (t *TarballRestore) checkObject(ctx context.Context, plan TarballRestorePlan) (string, error) {
	head, err := t.S3.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(plan.Bucket), Key: aws.String(plan.Key)})
	if err != nil {
		return "", fmt.Errorf("check s3://%s/%s: %w", plan.Bucket, plan.Key, err)
	}
	if got := strings.Trim(aws.ToString(head.ETag), `"`); got != plan.ETag {
		return "", fmt.Errorf("s3://%s/%s changed since the plan (ETag %s, approved %s); cancel this restore and request a new one", plan.Bucket, plan.Key, got, plan.ETag)
	}
	return fmt.Sprintf("`s3://%s/%s`, %d bytes, unchanged", plan.Bucket, plan.Key, plan.Size), nil
}

// checkBox confirms it is the planned box, that SSM reaches it, and that
// there is room for the download and the extracted data, and notes which
// moved-aside directories exist already.
func (t *TarballRestore) checkBox(ctx context.Context, op *journal.Op, plan TarballRestorePlan) (string, error) {
	box, err := FindBox(ctx, t.EC2, t.NameTag)
	if err != nil {
		return "", err
	}
	if id := aws.ToString(box.InstanceId); id != plan.InstanceID || box.State.Name != "running" {
		return "", fmt.Errorf("the Services box is now %s (%s), not the planned %s (running); cancel this restore and request a new one", id, box.State.Name, plan.InstanceID)
	}
	dir := scratchDir(op.ID)
	r, err := t.shell(plan.InstanceID).Run(ctx, "circlebot "+op.ID+": check space", fmt.Sprintf(`d=%s
mkdir -p "$d" "${BOX_ROOT:-}/data"
echo "%sfree_kib=$(df -Pk "$d" | awk 'NR==2{print $4}')"
echo "%sdata_free_kib=$(df -Pk "${BOX_ROOT:-}/data" | awk 'NR==2{print $4}')"
echo "%saside=$(cd "${BOX_ROOT:-}/data" && ls -d circleci-restore-* 2>/dev/null | tr '\n' ' ')"`, dir, resultPrefix, resultPrefix, resultPrefix), 10*time.Minute)
	if err != nil {
		return "", err
	}
	free, ferr := strconv.ParseInt(field(r.Stdout, resultPrefix+"free_kib"), 10, 64)
	dataFree, derr := strconv.ParseInt(field(r.Stdout, resultPrefix+"data_free_kib"), 10, 64)
	if ferr != nil || derr != nil {
		return "", fmt.Errorf("the Services box did not report its disk space (SSM command %s printed %q)", r.CommandID, trimTo(r.Stdout, 200))
	}
	sizeKiB := plan.Size >> 10
	// bzip2 archives of datastores expand several times; ask for 3x the
	// tarball next to /data (the old data is moved, not copied).
	if free < sizeKiB+1 {
		return "", fmt.Errorf("not enough space for the download: %d MiB free in /tmp, the tarball is %d MiB", free>>10, sizeKiB>>10)
	}
	if dataFree < 3*sizeKiB {
		return "", fmt.Errorf("not enough space in /data: %d MiB free, and the %d MiB tarball may expand to about %d MiB; free space or grow the volume first", dataFree>>10, sizeKiB>>10, 3*sizeKiB>>10)
	}
	op.Data["aside_before"] = strings.TrimSpace(field(r.Stdout, resultPrefix+"aside"))
	return fmt.Sprintf("`%s` reachable; %d MiB free in /tmp, %d MiB in /data", plan.InstanceID, free>>10, dataFree>>10), nil
}

// download fetches the object onto the box through a presigned URL and
// checks its size and, when known, its sha256.
func (t *TarballRestore) download(ctx context.Context, op *journal.Op, plan TarballRestorePlan) (detail string, err error) {
	defer func() { err = redactURLs(err) }()
	expiry := t.URLExpiry
	if expiry <= 0 {
		expiry = time.Hour
	}
	req, err := t.Presign.PresignGetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(plan.Bucket), Key: aws.String(plan.Key), IfMatch: aws.String(`"` + plan.ETag + `"`)},
		func(o *s3.PresignOptions) { o.Expires = expiry })
	if err != nil {
		return "", fmt.Errorf("sign the download: %w", err)
	}
	dir := scratchDir(op.ID)
	r, err := t.shell(plan.InstanceID).Run(ctx, "circlebot "+op.ID+": download the tarball", fmt.Sprintf(`d=%s
mkdir -p "$d"
f="$d/backup.tar.bz2"
curl -fsS --retry 3 -o "$f" '%s'
echo "%ssize=$(stat -c %%s "$f")"
echo "%ssha256=$(sha256sum "$f" | cut -d' ' -f1)"`, dir, req.URL, resultPrefix, resultPrefix), expiry)
	if err != nil {
		return "", fmt.Errorf("download onto the box: %w", err)
	}
	size, _ := strconv.ParseInt(field(r.Stdout, resultPrefix+"size"), 10, 64)
	sum := field(r.Stdout, resultPrefix+"sha256")
	if size != plan.Size {
		return "", fmt.Errorf("the box downloaded %d bytes, the object has %d", size, plan.Size)
	}
	checked := "size checked"
	if plan.SHA256 != "" {
		if sum != plan.SHA256 {
			return "", fmt.Errorf("the downloaded tarball's sha256 is %s, the backup recorded %s: not restoring it", sum, plan.SHA256)
		}
		checked = "sha256 matches the backup's"
	}
	return fmt.Sprintf("%d bytes, %s", size, checked), nil
}

func (t *TarballRestore) app(ctx context.Context, op *journal.Op, plan TarballRestorePlan, command, what string) (string, error) {
	if command == "" {
		return "skipped: no command configured (`services_box.app_" + strings.Fields(what)[0] + "_command`)", nil
	}
	r, err := t.shell(plan.InstanceID).Run(ctx, "circlebot "+op.ID+": "+what, command, 10*time.Minute)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	out := lastLine(r.Stdout)
	if out == "" {
		out = "exit 0"
	}
	return out, nil
}

// restore runs circleci-restore and finds the directory it moved the old
// data into. Run again after a crash, it restores again: the
// half-restored data is moved aside in turn, never deleted.
func (t *TarballRestore) restore(ctx context.Context, op *journal.Op, plan TarballRestorePlan) (string, error) {
	dir := scratchDir(op.ID)
	r, err := t.shell(plan.InstanceID).Run(ctx, "circlebot "+op.ID+": circleci-restore", fmt.Sprintf(`d=%s
if ! circleci-restore "$d/backup.tar.bz2" >"$d/restore.log" 2>&1; then
	echo "circleci-restore failed; the end of its output:" >&2
	tail -n 20 "$d/restore.log" >&2
	exit 1
fi
echo "%saside=$(cd "${BOX_ROOT:-}/data" && ls -d circleci-restore-* 2>/dev/null | tr '\n' ' ')"`, dir, resultPrefix), 6*time.Hour)
	if err != nil {
		return "", err
	}
	before := map[string]bool{}
	for _, d := range strings.Fields(op.Data["aside_before"]) {
		before[d] = true
	}
	var made []string
	for _, d := range strings.Fields(field(r.Stdout, resultPrefix+"aside")) {
		if !before[d] {
			made = append(made, "/data/"+d)
		}
	}
	if len(made) == 0 {
		return "restored into an empty /data (nothing to move aside)", nil
	}
	op.Data["moved_aside"] = strings.Join(made, " ")
	return "restored; the previous data is in `" + strings.Join(made, "`, `") + "`", nil
}

func (t *TarballRestore) cleanup(ctx context.Context, op *journal.Op, plan TarballRestorePlan) (string, error) {
	if _, err := t.shell(plan.InstanceID).Run(ctx, "circlebot "+op.ID+": clean up", `rm -rf -- `+scratchDir(op.ID), time.Minute); err != nil {
		return "", errors.New("could not remove /tmp/circlebot-" + op.ID + " on the box: " + Explain(err))
	}
	return "removed /tmp/circlebot-" + op.ID, nil
}
