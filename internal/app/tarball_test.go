package app_test

import (
	"archive/tar"
	"bytes"
	"compress/bzip2"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/circlebot/circlebot/internal/app"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/progress"
	"github.com/circlebot/circlebot/internal/testenv/motoserver"
	"github.com/circlebot/circlebot/internal/testenv/ssmbox"
)

func tarballEnv(t *testing.T) (*env, *ssmbox.Box) {
	e, box, _ := tarballEnvSSM(t)
	return e, box
}

func tarballEnvSSM(t *testing.T) (*env, *ssmbox.Box, *ssmbox.Server) {
	t.Helper()
	ssmSrv := ssmbox.New(t)
	var bucket string
	// S3 as strict as the real one about multipart uploads: checksums
	// checked, signed headers required (see motoserver.WithStrictS3).
	e := newEnvOn(t, motoserver.ForTest(t, motoserver.WithStrictS3()), func(c *config.Config) {
		c.Backup.Bucket = "circleci-backups-sandbox"
		bucket = c.Backup.Bucket
	}, func(o *app.Options) { o.SSMEndpoint = ssmSrv.URL })
	if e.inst.Bucket != bucket {
		t.Fatalf("sandbox bucket %s", e.inst.Bucket)
	}
	return e, ssmSrv.AddBox(e.inst.ServicesBox.ID), ssmSrv
}

func TestTarballBackupRunsOnTheBoxAndLandsVerifiedInS3(t *testing.T) {
	t.Parallel()
	e, box := tarballEnv(t)
	e.slash(alice, incident, "backup now tarball")
	b := e.lastBackup(ops.StateCompleted)
	if b.Method != "tarball" || b.Size <= 0 || len(b.SHA256) != 64 {
		t.Fatalf("record: %+v", b)
	}
	obj, err := s3.NewFromConfig(e.aws, func(o *s3.Options) { o.UsePathStyle = true }).GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(b.Bucket), Key: aws.String(b.Key)})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(obj.Body)
	obj.Body.Close()
	sum := sha256.Sum256(body)
	if int64(len(body)) != b.Size || hex.EncodeToString(sum[:]) != b.SHA256 || obj.Metadata["sha256"] != b.SHA256 {
		t.Fatalf("object: %d bytes, sha %x, metadata %v; record %d %s", len(body), sum, obj.Metadata, b.Size, b.SHA256)
	}
	// It is the box's /data, as circleci-backup packed it.
	want := ssmbox.DefaultData()
	tr := tar.NewReader(bzip2.NewReader(strings.NewReader(string(body))))
	found := 0
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		for name := range want {
			if strings.HasSuffix(h.Name, strings.TrimPrefix(name, "/data/")) {
				found++
			}
		}
	}
	if found < len(want) {
		t.Errorf("tarball holds %d of the %d data files", found, len(want))
	}
	noScratchLeft(t, box)
	m := e.finalMessage(b.ID, "Restore point")
	if !strings.Contains(m.AllText(), "s3://"+b.Bucket+"/"+b.Key) {
		t.Errorf("final message lacks the object: %s", m.AllText())
	}
}

func TestTarballBackupWithoutScratchSpaceFailsClearly(t *testing.T) {
	t.Parallel()
	e, box := tarballEnv(t)
	box.SetFreeSpace(1024)
	e.slash(alice, incident, "backup now tarball")
	b := e.lastBackup(ops.StateFailed)
	if !strings.Contains(strings.ToLower(b.Error), "space") {
		t.Errorf("error: %s", b.Error)
	}
	e.finalMessage(b.ID, "is not a restore point")
}

func TestTarballBackupOfAnUnreachableBoxFails(t *testing.T) {
	t.Parallel()
	e, box := tarballEnv(t)
	box.SetOnline(false)
	e.slash(alice, incident, "backup now tarball")
	b := e.lastBackup(ops.StateFailed)
	if !strings.Contains(b.Error, "not reachable through SSM") {
		t.Errorf("error: %s", b.Error)
	}
}

func TestTarballBackupSurvivesAChattyCircleciBackup(t *testing.T) {
	t.Parallel()
	e, box := tarballEnv(t)
	// SSM keeps the first 24,000 characters of stdout: this much chatter,
	// some of it looking like results, must not hide the bot's own.
	real, err := os.ReadFile(box.Path("/bin/circleci-backup"))
	if err != nil {
		t.Fatal(err)
	}
	box.WriteCommand("circleci-backup-real", string(real))
	box.WriteCommand("circleci-backup", `#!/bin/bash
for i in $(seq 1 400); do
	echo "exporting chunk $i of the datastore: mongodb postgresql redis nomad vault"
	echo "size=$i"
done
echo "sha256=0000"
echo "chatter on stderr" >&2
exec circleci-backup-real "$@"
`)
	e.slash(alice, incident, "backup now tarball")
	b := e.lastBackup(ops.StateCompleted)
	body := e.object(b)
	sum := sha256.Sum256(body)
	if int64(len(body)) != b.Size || hex.EncodeToString(sum[:]) != b.SHA256 {
		t.Fatalf("object: %d bytes, sha %x; record %d %s", len(body), sum, b.Size, b.SHA256)
	}
	noScratchLeft(t, box)
}

func TestTarballBackupThatFailsToUploadCleansUp(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, command, script, want string
	}{
		// The fake curl echoes its URL as a confused client might; the
		// error must not carry it on.
		{"curl fails", "curl", "#!/bin/sh\nfor a; do u=$a; done\necho \"curl: (22) The requested URL returned error: 403 for $u\" >&2\nexit 22\n", "<presigned URL>"},
		// (A part damaged on the way: TestTarballPartCorruptedInTransitIsRefusedByS3.)
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e, box, _ := tarballEnvSSM(t)
			box.WriteCommand(tc.command, tc.script)
			tb, b, p := directTarball(e)
			err := tb.Run(context.Background(), b, p)
			if err == nil {
				t.Fatal("backup succeeded")
			}
			if b.State != ops.StateFailed || !strings.Contains(b.Error, tc.want) {
				t.Errorf("record: %s: %s", b.State, b.Error)
			}
			if b.UploadID == "" || b.CommandID == "" {
				t.Errorf("record lacks the upload (%q) or the command (%q)", b.UploadID, b.CommandID)
			}
			for _, s := range append(p.all(), err.Error(), b.Error, ops.Explain(err)) {
				if strings.Contains(s, "X-Amz-") {
					t.Errorf("a presigned URL got out: %s", s)
				}
			}
			noScratchLeft(t, box)
			e.noUploadsLeft(b)
			if _, err := e.s3().HeadObject(context.Background(), &s3.HeadObjectInput{Bucket: aws.String(b.Bucket), Key: aws.String(b.Key)}); err == nil {
				t.Errorf("s3://%s/%s exists", b.Bucket, b.Key)
			}
		})
	}
}

func TestCancelledTarballBackupCancelsTheCommandAndCleansUp(t *testing.T) {
	t.Parallel()
	e, box, srv := tarballEnvSSM(t)
	box.WriteCommand("circleci-backup", "#!/bin/bash\ntouch \"$1/started\"\nexec sleep 300\n")
	tb, b, p := directTarball(e)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- tb.Run(ctx, b, p) }()
	started := box.Path("/tmp/circlebot-" + b.ID + "/started")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(started); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("circleci-backup did not start")
		}
	}
	cancel()
	var err error
	select {
	case err = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("the backup did not stop")
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err: %v", err)
	}
	if n := srv.CallCount("CancelCommand"); n != 1 {
		t.Errorf("%d CancelCommand calls", n)
	}
	if b.State != ops.StateInterrupted || b.CommandID == "" {
		t.Errorf("record: %s, command %q", b.State, b.CommandID)
	}
	noScratchLeft(t, box)
	for _, c := range srv.Commands() {
		if strings.Contains(c.Comment, "clean up") {
			return
		}
	}
	t.Error("no clean-up command was sent")
}

// directTarball is the app's tarball backup, run without Slack so that a
// test holds its context and sees its progress.
func directTarball(e *env) (*ops.TarballBackup, *ops.Backup, *recProgress) {
	tb := *e.app.Backups.Tarball
	return &tb, &ops.Backup{ID: ops.NewBackupID(time.Now()), Trigger: "manual", Requester: alice}, &recProgress{}
}

type recProgress struct {
	mu    sync.Mutex
	lines []string
}

func (r *recProgress) add(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, fmt.Sprintf(format, args...))
}

func (r *recProgress) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.lines)
}

func (r *recProgress) Begin(step int, detail string) { r.add("begin %d %s", step, detail) }
func (r *recProgress) Done(step int, detail string)  { r.add("done %d %s", step, detail) }
func (r *recProgress) Skip(step int, why string)     { r.add("skip %d %s", step, why) }
func (r *recProgress) Fail(step int, err error)      { r.add("fail %d %v", step, err) }
func (r *recProgress) Log(line string)               { r.add("log %s", line) }
func (r *recProgress) Progress(step int, pct float64, detail string) {
	r.add("progress %d %.0f %s", step, pct, detail)
}

func (e *env) s3() *s3.Client {
	return s3.NewFromConfig(e.aws, func(o *s3.Options) { o.UsePathStyle = true })
}

func (e *env) object(b *ops.Backup) []byte {
	e.t.Helper()
	obj, err := e.s3().GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(b.Bucket), Key: aws.String(b.Key)})
	if err != nil {
		e.t.Fatal(err)
	}
	defer obj.Body.Close()
	// Read into a buffer of the object's size: io.ReadAll's regrowing
	// copies of a big object cost seconds under the race detector.
	var body bytes.Buffer
	body.Grow(int(aws.ToInt64(obj.ContentLength)) + bytes.MinRead)
	if _, err := body.ReadFrom(obj.Body); err != nil {
		e.t.Fatal(err)
	}
	return body.Bytes()
}

// objectDigest streams the object of b and returns its length and SHA-256
// (hex), without holding it in memory.
func (e *env) objectDigest(b *ops.Backup) (int64, string) {
	e.t.Helper()
	obj, err := e.s3().GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(b.Bucket), Key: aws.String(b.Key)})
	if err != nil {
		e.t.Fatal(err)
	}
	defer obj.Body.Close()
	h := sha256.New()
	n, err := io.Copy(h, obj.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return n, hex.EncodeToString(h.Sum(nil))
}

func (e *env) noUploadsLeft(b *ops.Backup) {
	e.t.Helper()
	out, err := e.s3().ListMultipartUploads(context.Background(), &s3.ListMultipartUploadsInput{Bucket: aws.String(b.Bucket)})
	if err != nil {
		e.t.Fatal(err)
	}
	for _, u := range out.Uploads {
		e.t.Errorf("multipart upload %s of %s left open", aws.ToString(u.UploadId), aws.ToString(u.Key))
	}
}

func noScratchLeft(t *testing.T, box *ssmbox.Box) {
	t.Helper()
	left, _ := os.ReadDir(box.Path("/tmp"))
	for _, d := range left {
		if strings.HasPrefix(d.Name(), "circlebot-") {
			t.Errorf("scratch directory %s left on the box", d.Name())
		}
	}
}

func TestBigTarballGoesUpInBatchesOfFreshURLs(t *testing.T) {
	t.Parallel()
	e, box, srv := tarballEnvSSM(t)
	// 6 parts of 16 MiB: two upload commands, each with its own URLs.
	box.WriteCommand("circleci-backup", "#!/bin/bash\nhead -c 90000000 /dev/urandom >\"$1/circleci-data-export.tar.bz2\"\n")
	tb, b, p := directTarball(e)
	if err := tb.Run(context.Background(), b, p); err != nil {
		t.Fatal(err)
	}
	if size, sum := e.objectDigest(b); size != b.Size || sum != b.SHA256 {
		t.Fatalf("object: %d bytes, sha %s; record %d %s", size, sum, b.Size, b.SHA256)
	}
	var batches []int
	for _, c := range srv.Commands() {
		if !strings.Contains(c.Comment, "upload parts") {
			continue
		}
		urls := 0
		for _, l := range c.Lines {
			urls += strings.Count(l, "X-Amz-Expires=3600&")
		}
		batches = append(batches, urls)
		if to := c.Parameters["executionTimeout"]; len(to) != 1 || to[0] != "3600" {
			t.Errorf("upload command timeout %v", to)
		}
	}
	if !slices.Equal(batches, []int{4, 2}) {
		t.Errorf("part URLs per upload command: %v", batches)
	}
	if !slices.ContainsFunc(p.all(), func(s string) bool {
		return strings.HasPrefix(s, "done 4 ") && strings.Contains(s, "SHA-256 of the parts matches")
	}) {
		t.Errorf("the object's content was not checked: %q", p.all())
	}
	noScratchLeft(t, box)
}

// A tarball backup whose bot died mid-way left a command running on the
// box, an unfinished multipart upload and a scratch directory. The next
// start cleans all three up, reports it, and does not retry the backup.
func TestTarballLeftByACrashIsCleanedUpAtStart(t *testing.T) {
	t.Parallel()
	e, box := tarballEnv(t)
	ctx := context.Background()
	tb := e.app.Backups.Tarball
	id := ops.NewBackupID(time.Now())
	scratch := box.Path("/tmp/circlebot-" + id)
	if err := os.MkdirAll(scratch, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(scratch+"/circleci-data-export.tar.bz2", []byte("half a tarball"), 0o644)
	sh := &ops.Shell{SSM: tb.SSM, Instance: e.inst.ServicesBox.ID, Poll: 20 * time.Millisecond}
	sent := make(chan string, 1)
	sh.OnSend = func(id string) { sent <- id }
	go func() {
		cctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		defer cancel()
		sh.Run(cctx, "circleci-backup stand-in", "sleep 60", 2*time.Minute) // the dead bot's command
	}()
	var cmdID string
	select {
	case cmdID = <-sent:
	case <-time.After(30 * time.Second):
		t.Fatal("the stand-in command was never accepted")
	}
	s3c := s3.NewFromConfig(e.aws, func(o *s3.Options) { o.UsePathStyle = true })
	key := "circleci-backups/" + id + "/circleci-data-export.tar.bz2"
	mp, err := s3c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: aws.String(e.inst.Bucket), Key: aws.String(key)})
	if err != nil {
		t.Fatal(err)
	}
	rec := &ops.Backup{ID: id, Method: "tarball", State: ops.StateRunning, Trigger: "manual", Requester: alice, Channel: incident,
		Started: time.Now(), Shape: ops.Shape{InstanceID: e.inst.ServicesBox.ID}, Bucket: e.inst.Bucket, Key: key,
		UploadID: aws.ToString(mp.UploadId), CommandID: cmdID}
	if err := e.app.Backups.Records.SaveBackup(t.Context(), rec); err != nil {
		t.Fatal(err)
	}

	e.app.Resume(ctx, func(string) progress.Poster { return e.slackPoster() })

	got, err := e.app.Backups.Records.Backup(t.Context(), id)
	if err != nil || got.State != ops.StateInterrupted {
		t.Fatalf("record after start-up: %+v %v", got, err)
	}
	if _, err := os.Stat(scratch); !os.IsNotExist(err) {
		t.Errorf("scratch directory still on the box: %v", err)
	}
	ups, err := s3c.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: aws.String(e.inst.Bucket)})
	if err != nil || len(ups.Uploads) != 0 {
		t.Errorf("unfinished uploads left: %v %v", ups, err)
	}
	inv, err := tb.SSM.GetCommandInvocation(ctx, &ssm.GetCommandInvocationInput{CommandId: aws.String(cmdID), InstanceId: aws.String(e.inst.ServicesBox.ID)})
	if err != nil || inv.Status != ssmtypes.CommandInvocationStatusCancelled {
		t.Errorf("the dead bot's command: %v %v", inv, err)
	}
	e.waitPost(incident, "interrupted tarball report", func(s string) bool {
		return strings.Contains(s, id) && strings.Contains(s, "cancelled SSM command "+cmdID) && strings.Contains(s, "removed /tmp/circlebot-"+id)
	})
}
