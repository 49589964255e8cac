package app_test

import (
	"archive/tar"
	"compress/bzip2"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/circlebot/circlebot/internal/app"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/testenv/motoserver"
	"github.com/circlebot/circlebot/internal/testenv/ssmbox"
)

func tarballEnv(t *testing.T) (*env, *ssmbox.Box) {
	t.Helper()
	ssmSrv := ssmbox.New(t)
	var bucket string
	e := newEnvOn(t, motoserver.ForTest(t), func(c *config.Config) {
		c.Backup.Bucket = "circleci-backups-sandbox"
		bucket = c.Backup.Bucket
	}, func(o *app.Options) { o.SSMEndpoint = ssmSrv.URL })
	if e.inst.Bucket != bucket {
		t.Fatalf("sandbox bucket %s", e.inst.Bucket)
	}
	return e, ssmSrv.AddBox(e.inst.ServicesBox.ID)
}

func TestTarballBackupRunsOnTheBoxAndLandsVerifiedInS3(t *testing.T) {
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
	// The bot's scratch directory is gone from the box.
	left, _ := os.ReadDir(box.Path("/tmp"))
	for _, d := range left {
		if strings.HasPrefix(d.Name(), "circlebot-") {
			t.Errorf("scratch directory %s left on the box", d.Name())
		}
	}
	m := e.finalMessage(b.ID, "Restore point")
	if !strings.Contains(m.AllText(), "s3://"+b.Bucket+"/"+b.Key) {
		t.Errorf("final message lacks the object: %s", m.AllText())
	}
}

func TestTarballBackupWithoutScratchSpaceFailsClearly(t *testing.T) {
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
	e, box := tarballEnv(t)
	box.SetOnline(false)
	e.slash(alice, incident, "backup now tarball")
	b := e.lastBackup(ops.StateFailed)
	if !strings.Contains(b.Error, "not reachable through SSM") {
		t.Errorf("error: %s", b.Error)
	}
}
