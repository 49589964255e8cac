package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/circlebot/circlebot/internal/app"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/sandbox"
	"github.com/circlebot/circlebot/internal/testenv/motoserver"
)

// `bot backup --reason … --wait` against a running bot on moto: it asks
// through the API, follows the backup and exits 0 when it completes; a
// backup that fails (no Services box to back up) makes it exit non-zero;
// a wrong token and a missing reason are refused.
func TestBackupClientWaitsForTheBackup(t *testing.T) {
	moto := motoserver.ForTest(t)
	awsCfg := motoserver.AWSConfig(moto.URL)
	inst, err := sandbox.Seed(context.Background(), awsCfg, sandbox.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Defaults()
	cfg.DataDir = t.TempDir()
	cfg.Metrics.Listen = ""
	cfg.Secrets = config.SecretsFromEnv(func(k string) string {
		return map[string]string{"SLACK_BOT_TOKEN": "xoxb-x", "BOT_API_TOKEN": "client-token"}[k]
	})
	a, err := app.New(context.Background(), app.Options{Config: cfg, Version: "test", AWS: &awsCfg, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	a.Backups.EBS.PollMin, a.Backups.EBS.PollMax = 20*time.Millisecond, 50*time.Millisecond
	a.Engine.MinInterval = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	srv := a.NewServer(ctx)
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { hs.Close(); srv.Wait(); cancel(); a.Close() })

	env := func(token string) func(string) string {
		return func(k string) string { return map[string]string{"BOT_API_TOKEN": token}[k] }
	}
	var out, errOut bytes.Buffer
	args := []string{"backup", "--reason", "upgrade to 2.x", "--wait", "--url", hs.URL, "--poll", "20ms", "--caller", "pipeline-1"}
	if err := run(ctx, args, env("client-token"), nil, &out, &errOut); err != nil {
		t.Fatalf("bot backup: %v\n%s%s", err, out.String(), errOut.String())
	}
	if !strings.Contains(out.String(), "accepted") || !strings.Contains(out.String(), "completed") {
		t.Errorf("output: %s", out.String())
	}

	out.Reset()
	if err := run(ctx, args, env("wrong"), nil, &out, &errOut); err == nil || !strings.Contains(err.Error(), "HTTP 401") {
		t.Errorf("wrong token: %v", err)
	}
	if err := run(ctx, []string{"backup", "--wait", "--url", hs.URL}, env("client-token"), nil, &out, &errOut); err == nil {
		t.Errorf("no reason: accepted")
	} else if _, ok := err.(usageError); !ok {
		t.Errorf("no reason: %v is not a usage error", err)
	}

	// No box to back up: the backup starts, fails, and so does the client.
	// (The box is free again a moment after the record says completed.)
	for deadline := time.Now().Add(10 * time.Second); ; {
		if l, _ := a.Store.Locks(ctx); len(l) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first backup still holds the box")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := ec2.NewFromConfig(awsCfg).CreateTags(context.Background(), &ec2.CreateTagsInput{Resources: []string{inst.ServicesBox.ID},
		Tags: []ec2types.Tag{{Key: aws.String("Name"), Value: aws.String("renamed")}}}); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	err = run(ctx, args, env("client-token"), nil, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "failed") {
		t.Errorf("a failed backup: %v\n%s", err, out.String())
	}
}
