// Command sandbox runs the bot against a local moto_server seeded like a
// real CircleCI Enterprise install, with no AWS account and no Slack
// workspace:
//
//	go run ./cmd/sandbox -- ./bin/bot console     (what `make demo` does)
//	go run ./cmd/sandbox                          (keep moto up, print the env to use)
//
// It starts moto on a free port, seeds it (VPC, two subnets, the Services
// box with three volumes and a secondary service IP, a replica, a backup
// bucket, a builder Auto Scaling group, one earlier backup), writes a config
// under a temp dir, runs the command with --config and AWS_ENDPOINT_URL
// pointed at moto, and removes everything when the command ends.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/circlebot/circlebot/internal/console"
	"github.com/circlebot/circlebot/internal/sandbox"
	"github.com/circlebot/circlebot/internal/testenv/motoserver"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "sandbox:", err)
		os.Exit(1)
	}
}

func run() error {
	keep := flag.Bool("keep", false, "keep the temp dir (config and bbolt file) afterwards")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: sandbox [--keep] [-- command args...]   (the command gets --config <sandbox config> appended)")
	}
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	dir, err := os.MkdirTemp("", "circlebot-sandbox-")
	if err != nil {
		return err
	}
	if !*keep {
		defer os.RemoveAll(dir)
	}
	fmt.Fprintln(os.Stderr, "sandbox: starting moto_server …")
	// The patched launcher behaves more like EC2 where the demo needs it:
	// snapshots are pending for a moment, a terminated instance frees its
	// IP (so a restore can keep it) and images keep their block devices.
	srv, err := motoserver.Start(ctx, motoserver.WithPatchedSnapshots())
	if err != nil {
		return err
	}
	defer srv.Close()
	if err := srv.AutoCompleteSnapshots(ctx, 2); err != nil {
		return err
	}

	seedCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	inst, err := sandbox.Seed(seedCtx, motoserver.AWSConfig(srv.URL), sandbox.Options{WithBackups: true})
	if err != nil {
		return fmt.Errorf("seed moto: %w", err)
	}
	fmt.Fprintf(os.Stderr, "sandbox: moto at %s holds the Services box %s (%s, service IP %s), replica %s, %d builders\n",
		srv.URL, inst.ServicesBox.ID, inst.ServicesBox.PrivateIP, inst.ServicesBox.SecondaryIP, inst.Replica.ID, len(inst.Builders))

	cfgPath := filepath.Join(dir, "bot.yaml")
	if err := os.WriteFile(cfgPath, []byte(configFor(inst, filepath.Join(dir, "data"))), 0o600); err != nil {
		return err
	}
	env := append(os.Environ(),
		"AWS_ENDPOINT_URL="+srv.URL,
		"AWS_ACCESS_KEY_ID=test",
		"AWS_SECRET_ACCESS_KEY=test",
		"AWS_REGION="+inst.Region,
		// Never pick up the user's real profile or SSO session by accident.
		"AWS_PROFILE=",
		"AWS_CONFIG_FILE=/dev/null",
		"AWS_SHARED_CREDENTIALS_FILE=/dev/null",
		// The console may switch users with /as here even on a shared
		// store: everybody in the sandbox is a demo user.
		console.SandboxEnv+"="+srv.URL,
	)

	if flag.NArg() == 0 {
		fmt.Printf("export AWS_ENDPOINT_URL=%s AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=%s %s=%s\n", srv.URL, inst.Region, console.SandboxEnv, srv.URL)
		fmt.Printf("# config: %s\n# moto stays up until Ctrl-C\n", cfgPath)
		<-ctx.Done()
		return nil
	}
	args := append(flag.Args()[1:], "--config", cfgPath)
	cmd := exec.Command(flag.Arg(0), args...)
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	// Ctrl-C reaches the child through the terminal's process group; we
	// only wait for it and then clean up.
	signal.Ignore(os.Interrupt)
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return fmt.Errorf("%s exited with %d", flag.Arg(0), ee.ExitCode())
	}
	return err
}

func configFor(inst *sandbox.Install, dataDir string) string {
	return fmt.Sprintf(`# Written by cmd/sandbox for the demo; see bot.example.yaml for every key.
listen: "127.0.0.1:0"
metrics:
  listen: "127.0.0.1:0"
data_dir: %q
aws:
  region: %s
slack:
  command: /circleci
  allowed_channels: [C0INCIDENT]
  report_channel: C0INCIDENT
roles:
  viewers: []
  operators: [U0ALICE, U0CAROL]
  approvers: [U0BOB, U0CAROL]
approvals:
  ttl: 30m
services_box:
  name_tag: circleci_services
replica:
  name_tag: circleci_services_replica
builders:
  asg_name: %s
backup:
  method: ebs
  bucket: %s
  rpo: 24h
  retention:
    keep_last: 2
drill:
  subnet_id: %s
  security_group_id: %s
`, dataDir, inst.Region, inst.BuilderASG, inst.Bucket, inst.DrillSubnet, inst.DrillSecurityGroup)
}
