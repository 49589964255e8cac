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
	URLExpiry time.Duration // default 15 min: S3 checks it when the download starts
	// Records, when set, gives the SHA-256 the backup recorded for an
	// object the bot made: the download is checked against it even when
	// the object's metadata was lost (a copy, a re-upload by hand).
	Records interface {
		Backup(ctx context.Context, id string) (*Backup, error)
	}
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
	f := map[string]string{
		"region": p.Region, "bucket": p.Bucket, "key": p.Key, "etag": p.ETag, "size": strconv.FormatInt(p.Size, 10),
		"instance": p.InstanceID, "private_ip": p.PrivateIP, "app_start": p.AppStart, "app_stop": p.AppStop,
	}
	if p.SHA256 != "" {
		f["sha256"] = p.SHA256 // what the download is checked against
	}
	return f
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

// Plan checks that the object exists and the box runs, or refuses.
func (t *TarballRestore) Plan(ctx context.Context, bucket, key string) (TarballRestorePlan, error) {
	head, err := t.S3.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	switch err = translate(err); {
	case errors.Is(err, ErrNotFound):
		return TarballRestorePlan{}, refusef("`s3://%s/%s` does not exist (%s). `backup list` shows the tarball restore points.", bucket, key, awsCode(err))
	case errors.Is(err, ErrUnauthorized):
		return TarballRestorePlan{}, refusef("S3 refused to show `s3://%s/%s` (%s): either it does not exist (without s3:ListBucket, S3 says 403 for a missing object) or the bot's IAM policy does not cover it (see the README). `backup list` shows the tarball restore points.", bucket, key, awsCode(err))
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
	sum, err := t.recordedSHA256(ctx, bucket, key, head.Metadata["sha256"])
	if err != nil {
		return TarballRestorePlan{}, err
	}
	p := TarballRestorePlan{
		Bucket: bucket, Key: key, ETag: strings.Trim(aws.ToString(head.ETag), `"`), Size: aws.ToInt64(head.ContentLength),
		SHA256: sum, Modified: aws.ToTime(head.LastModified),
		InstanceID: aws.ToString(box.InstanceId), PrivateIP: aws.ToString(box.PrivateIpAddress),
		AppStart: t.AppStart, AppStop: t.AppStop, Region: t.Region,
	}
	return p, nil
}

// recordedSHA256 is the SHA-256 the download must have: the one the
// backup record holds for this object, else the one in the object's
// metadata (which the bot writes from the record), else "" (a hand-made
// tarball: size only). A record and metadata that disagree are refused.
func (t *TarballRestore) recordedSHA256(ctx context.Context, bucket, key, meta string) (string, error) {
	if t.Records == nil {
		return meta, nil
	}
	rec, err := t.Records.Backup(ctx, "s3://"+bucket+"/"+key)
	switch {
	case errors.Is(err, ErrNotFound):
		return meta, nil
	case err != nil:
		return "", fmt.Errorf("look up the backup record of s3://%s/%s: %w", bucket, key, err)
	case rec.State != StateCompleted || rec.SHA256 == "":
		return meta, nil
	case meta != "" && meta != rec.SHA256:
		return "", refusef("`s3://%s/%s` says its SHA-256 is %s, but backup %s recorded %s: the object is not the one the bot uploaded. Not restoring it.", bucket, key, meta, rec.ID, rec.SHA256)
	}
	return rec.SHA256, nil
}

// Steps returns the journal steps of plan, in order. Steps that send
// commands to the box are not tried again on an AWS error: a SendCommand
// whose answer was lost may have started the command. They find their
// command by its recorded ID instead (runOnce), on resume.
func (t *TarballRestore) Steps(plan TarballRestorePlan) []journal.Def {
	type fn = StepFunc[TarballRestoreResult]
	type w = *Work[TarballRestoreResult]
	wait := cmpOr(t.Poll, 2*time.Second)
	steps := []struct {
		name  string
		retry bool
		run   fn
	}{
		{"Check the tarball", true, func(ctx context.Context, _ w, _ journal.Progress) (string, error) {
			return t.checkObject(ctx, plan)
		}},
		{stepCheckBox, true, func(ctx context.Context, op w, _ journal.Progress) (string, error) {
			return t.checkBox(ctx, op, plan)
		}},
		{stepDownload, false, func(ctx context.Context, op w, _ journal.Progress) (string, error) {
			return t.download(ctx, op, plan)
		}},
		{stepStopApp, false, func(ctx context.Context, op w, _ journal.Progress) (string, error) {
			return t.app(ctx, op, plan, plan.AppStop, "stop the app")
		}},
		{stepRunRestore, false, func(ctx context.Context, op w, _ journal.Progress) (string, error) {
			return t.restore(ctx, op, plan)
		}},
		{stepStartApp, false, func(ctx context.Context, op w, _ journal.Progress) (string, error) {
			return t.app(ctx, op, plan, plan.AppStart, "start the app")
		}},
		{stepRmTarball, false, func(ctx context.Context, op w, _ journal.Progress) (string, error) {
			return t.cleanup(ctx, op, plan)
		}},
	}
	defs := make([]journal.Def, len(steps))
	for i, st := range steps {
		run := explainedStep(typed(st.run))
		if st.retry {
			run = retrying(typed(st.run), wait)
		}
		defs[i] = journal.Def{Name: st.name, Run: run}
	}
	return defs
}

func (t *TarballRestore) shell(id string) *Shell {
	return &Shell{SSM: t.SSM, Instance: id, Poll: t.Poll}
}

// Recheck runs the plan's read-only checks again before a resume.
func (t *TarballRestore) Recheck(ctx context.Context, plan TarballRestorePlan) error {
	_, err := t.checkObject(ctx, plan)
	return err
}

func (t *TarballRestore) checkObject(ctx context.Context, plan TarballRestorePlan) (string, error) {
	head, err := t.S3.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(plan.Bucket), Key: aws.String(plan.Key)})
	if err != nil {
		return "", fmt.Errorf("check s3://%s/%s: %w", plan.Bucket, plan.Key, translate(err))
	}
	if got := strings.Trim(aws.ToString(head.ETag), `"`); got != plan.ETag {
		return "", fmt.Errorf("s3://%s/%s changed since the plan (ETag %s, approved %s); cancel this restore and request a new one", plan.Bucket, plan.Key, got, plan.ETag)
	}
	return fmt.Sprintf("`s3://%s/%s`, %d bytes, unchanged", plan.Bucket, plan.Key, plan.Size), nil
}

// checkBox confirms it is the planned box, that SSM reaches it, and that
// there is room for the download and the extracted data, and notes which
// moved-aside directories exist already.
func (t *TarballRestore) checkBox(ctx context.Context, op *Work[TarballRestoreResult], plan TarballRestorePlan) (string, error) {
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
	if err := roomFor(plan.Size, free, dataFree); err != nil {
		return "", err
	}
	op.Result.AsideBefore = strings.TrimSpace(field(r.Stdout, resultPrefix+"aside"))
	return fmt.Sprintf("`%s` reachable; %d MiB free in /tmp, %d MiB in /data", plan.InstanceID, free>>10, dataFree>>10), nil
}

// roomFor says whether a tarball of size bytes fits: the download in the
// scratch directory's free KiB, the extracted data in /data's.
func roomFor(size, freeKiB, dataFreeKiB int64) error {
	sizeKiB := size >> 10
	// bzip2 archives of datastores expand several times; ask for 3x the
	// tarball next to /data (the old data is moved, not copied).
	if freeKiB < sizeKiB+1 {
		return fmt.Errorf("not enough space for the download: %d MiB free in /tmp, the tarball is %d MiB", freeKiB>>10, sizeKiB>>10)
	}
	if dataFreeKiB < 3*sizeKiB {
		return fmt.Errorf("not enough space in /data: %d MiB free, and the %d MiB tarball may expand to about %d MiB; free space or grow the volume first", dataFreeKiB>>10, sizeKiB>>10, 3*sizeKiB>>10)
	}
	return nil
}

// Preflight checks what a tarball restore needs before it is approved:
// it changes nothing in AWS (no call to dry-run) but sends commands, so
// the box's SSM agent must be online; S3 must let the bot read the
// object (the plan's HeadObject is the same permission, s3:GetObject,
// as the presigned download); and the box must have room for the
// download and the extracted data — what the runbook leaves to the
// reader ("assumes that you have enough disk space"), read with df
// through SSM, as the restore's own check does again before it
// downloads.
func (t *TarballRestore) Preflight(ctx context.Context, plan TarballRestorePlan) Preflight {
	var pf Preflight
	pf.ok("s3:GetObject", fmt.Sprintf("s3://%s/%s (HeadObject answered: %d MiB)", plan.Bucket, plan.Key, plan.Size>>20))
	pf.forSteps(0, stepDownload)
	n := len(pf.Checks)
	pf.checkAgent(ctx, t.SSM, plan.InstanceID, "the Services box")
	// Every step from the box's check on sends it commands.
	pf.forSteps(n, stepCheckBox, stepDownload, stepStopApp, stepRunRestore, stepStartApp, stepRmTarball)
	n = len(pf.Checks)
	if pf.Err() != nil {
		pf.skipped("ssm:SendCommand", plan.InstanceID+" (disk space)", "its agent is not online")
	} else {
		t.diskPreflight(ctx, &pf, plan)
	}
	// The disk space is the download's: once it is done, the tarball
	// itself takes that room.
	pf.forSteps(n, stepDownload)
	return pf
}

// diskPreflight reads the room on the box for the download and the
// extracted data.
func (t *TarballRestore) diskPreflight(ctx context.Context, pf *Preflight, plan TarballRestorePlan) {
	// The step's own directories (its scratch directory is made in
	// ${BOX_ROOT}/tmp), read where they exist: nothing is made here.
	r, err := t.shell(plan.InstanceID).Run(ctx, "circlebot: pre-flight of a tarball restore: disk space", fmt.Sprintf(`at() { d="$1"; while [ ! -d "$d" ]; do d=$(dirname "$d"); done; df -Pk "$d" | awk 'NR==2{print $4}'; }
echo "%sfree_kib=$(at "${BOX_ROOT:-}/tmp")"
echo "%sdata_free_kib=$(at "${BOX_ROOT:-}/data")"`, resultPrefix, resultPrefix), time.Minute)
	on := plan.InstanceID + " (disk space, df)"
	if err != nil {
		pf.refused("ssm:SendCommand", on, Explain(err))
		return
	}
	free, ferr := strconv.ParseInt(field(r.Stdout, resultPrefix+"free_kib"), 10, 64)
	dataFree, derr := strconv.ParseInt(field(r.Stdout, resultPrefix+"data_free_kib"), 10, 64)
	switch {
	case ferr != nil || derr != nil:
		pf.refused("ssm:SendCommand", on, fmt.Sprintf("the box did not report its disk space (it printed %q)", trimTo(r.Stdout, 200)))
	default:
		if err := roomFor(plan.Size, free, dataFree); err != nil {
			pf.refused("ssm:SendCommand", on, err.Error())
			return
		}
		pf.add(Check{Call: "ssm:SendCommand", On: on, Status: CheckOK, Reason: fmt.Sprintf("%d MiB free in /tmp, %d MiB in /data", free>>10, dataFree>>10)})
	}
}

// download fetches the object onto the box through a presigned URL and
// checks its size and, when known, its sha256.
func (t *TarballRestore) download(ctx context.Context, op *Work[TarballRestoreResult], plan TarballRestorePlan) (detail string, err error) {
	defer func() { err = redactURLs(err) }()
	expiry := t.URLExpiry
	if expiry <= 0 {
		expiry = 15 * time.Minute
	}
	// Only the host is signed (curl sends no other header); S3 checks the
	// expiry when the download starts, so it can be short. What was
	// approved is checked by the object's ETag (step 1), size and sha256.
	req, err := t.Presign.PresignGetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(plan.Bucket), Key: aws.String(plan.Key)},
		func(o *s3.PresignOptions) { o.Expires = expiry })
	if err != nil {
		return "", fmt.Errorf("sign the download: %w", translate(err))
	}
	if strings.ContainsAny(req.URL, "'\n") {
		return "", errors.New("the presigned download URL cannot be quoted for the shell")
	}
	dir := scratchDir(op.ID)
	r, err := runOnce(ctx, op, tarballCommands, "download_command", t.shell(plan.InstanceID), "circlebot "+op.ID+": download the tarball", fmt.Sprintf(`d=%s
mkdir -p "$d"
f="$d/backup.tar.bz2"
curl -fsS --retry 3 -o "$f" '%s'
echo "%ssize=$(stat -c %%s "$f")"
echo "%ssha256=$(sha256sum "$f" | cut -d' ' -f1)"`, dir, req.URL, resultPrefix, resultPrefix), time.Hour)
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

func (t *TarballRestore) app(ctx context.Context, op *Work[TarballRestoreResult], plan TarballRestorePlan, command, what string) (string, error) {
	if command == "" {
		return "skipped: no command configured (`services_box.app_" + strings.Fields(what)[0] + "_command`)", nil
	}
	r, err := runOnce(ctx, op, tarballCommands, strings.ReplaceAll(what, " ", "_")+"_command", t.shell(plan.InstanceID), "circlebot "+op.ID+": "+what, command, 10*time.Minute)
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
func (t *TarballRestore) restore(ctx context.Context, op *Work[TarballRestoreResult], plan TarballRestorePlan) (string, error) {
	dir := scratchDir(op.ID)
	sh := t.shell(plan.InstanceID)
	// A bot that stops mid-restore leaves circleci-restore running and
	// follows it after the restart: cut in half, it would leave /data
	// half-restored.
	sh.KeepOnCancel = true
	r, err := runOnce(ctx, op, tarballCommands, "restore_command", sh, "circlebot "+op.ID+": circleci-restore", fmt.Sprintf(`d=%s
if ! circleci-restore "$d/backup.tar.bz2" >"$d/restore.log" 2>&1; then
	echo "circleci-restore failed; the end of its output:" >&2
	tail -n 20 "$d/restore.log" >&2
	exit 1
fi
echo "%saside=$(cd "${BOX_ROOT:-}/data" && ls -d circleci-restore-* 2>/dev/null | tr '\n' ' ')"`, dir, resultPrefix), 6*time.Hour)
	if err != nil {
		if ctx.Err() != nil {
			return "", err
		}
		// Say where the data that was there went, even on failure.
		aside := t.asideNow(ctx, sh, op)
		return "", fmt.Errorf("%w. The app is stopped. %s", err, aside)
	}
	made := t.newAside(op, field(r.Stdout, resultPrefix+"aside"))
	if len(made) == 0 {
		return "restored into an empty /data (nothing to move aside)", nil
	}
	return "restored; the previous data is in `" + strings.Join(made, "`, `") + "`", nil
}

// newAside records the moved-aside directories that were not there before
// the restore.
func (t *TarballRestore) newAside(op *Work[TarballRestoreResult], now string) []string {
	before := map[string]bool{}
	for _, d := range strings.Fields(op.Result.AsideBefore) {
		before[d] = true
	}
	var made []string
	for _, d := range strings.Fields(now) {
		if !before[d] {
			made = append(made, "/data/"+d)
		}
	}
	if len(made) > 0 {
		op.Result.MovedAside = strings.Join(made, " ")
	}
	return made
}

func (t *TarballRestore) asideNow(ctx context.Context, sh *Shell, op *Work[TarballRestoreResult]) string {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	r, err := (&Shell{SSM: sh.SSM, Instance: sh.Instance, Poll: sh.Poll}).Run(cctx, "circlebot "+op.ID+": where is the data", fmt.Sprintf(`echo "%saside=$(cd "${BOX_ROOT:-}/data" && ls -d circleci-restore-* 2>/dev/null | tr '\n' ' ')"`, resultPrefix), time.Minute)
	if err != nil {
		return "Could not list /data/circleci-restore-* on the box: check there for the data that was in /data."
	}
	if made := t.newAside(op, field(r.Stdout, resultPrefix+"aside")); len(made) > 0 {
		return "The data that was in /data is in " + strings.Join(made, ", ") + "."
	}
	return "Nothing was moved aside: /data holds what was there before."
}

func (t *TarballRestore) cleanup(ctx context.Context, op *Work[TarballRestoreResult], plan TarballRestorePlan) (string, error) {
	if _, err := t.shell(plan.InstanceID).Run(ctx, "circlebot "+op.ID+": clean up", `rm -rf -- `+scratchDir(op.ID), time.Minute); err != nil {
		return "", errors.New("could not remove /tmp/circlebot-" + op.ID + " on the box: " + Explain(err))
	}
	return "removed /tmp/circlebot-" + op.ID, nil
}

func tarballCommands(r *TarballRestoreResult) *Commands { return &r.Commands }
