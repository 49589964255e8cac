package ssmbox_test

import (
	"archive/tar"
	"bytes"
	"compress/bzip2"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/circlebot/circlebot/internal/testenv/motoserver"
	"github.com/circlebot/circlebot/internal/testenv/ssmbox"
)

const boxID = "i-0123456789abcdef0"

func setup(t *testing.T, opts ...ssmbox.Option) (*ssmbox.Server, *ssmbox.Box, *ssm.Client) {
	t.Helper()
	srv := ssmbox.New(t, opts...)
	box := srv.AddBox(boxID)
	return srv, box, ssm.NewFromConfig(motoserver.AWSConfig(srv.URL))
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func send(t *testing.T, c *ssm.Client, instance string, params map[string][]string, lines ...string) string {
	t.Helper()
	if params == nil {
		params = map[string][]string{}
	}
	params["commands"] = lines
	out, err := c.SendCommand(ctxT(t), &ssm.SendCommandInput{
		DocumentName: aws.String("AWS-RunShellScript"),
		InstanceIds:  []string{instance},
		Parameters:   params,
		Comment:      aws.String("circlebot test"),
	})
	if err != nil {
		t.Fatalf("SendCommand: %v", err)
	}
	if out.Command.Status != types.CommandStatusPending {
		t.Errorf("SendCommand status %q, want Pending", out.Command.Status)
	}
	return aws.ToString(out.Command.CommandId)
}

// poll calls cond every few milliseconds until it is true or 30 s pass.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

func invocation(t *testing.T, c *ssm.Client, cmdID, instance string) *ssm.GetCommandInvocationOutput {
	t.Helper()
	out, err := c.GetCommandInvocation(ctxT(t), &ssm.GetCommandInvocationInput{CommandId: &cmdID, InstanceId: &instance})
	if err != nil {
		t.Fatalf("GetCommandInvocation: %v", err)
	}
	return out
}

func finished(s types.CommandInvocationStatus) bool {
	switch s {
	case types.CommandInvocationStatusSuccess, types.CommandInvocationStatusFailed,
		types.CommandInvocationStatusTimedOut, types.CommandInvocationStatusCancelled:
		return true
	}
	return false
}

func wait(t *testing.T, c *ssm.Client, cmdID, instance string) *ssm.GetCommandInvocationOutput {
	t.Helper()
	var out *ssm.GetCommandInvocationOutput
	poll(t, "command "+cmdID+" to finish", func() bool {
		out = invocation(t, c, cmdID, instance)
		return finished(out.Status)
	})
	return out
}

func run(t *testing.T, c *ssm.Client, lines ...string) *ssm.GetCommandInvocationOutput {
	t.Helper()
	return wait(t, c, send(t, c, boxID, nil, lines...), boxID)
}

func wantSuccess(t *testing.T, out *ssm.GetCommandInvocationOutput) {
	t.Helper()
	if out.Status != types.CommandInvocationStatusSuccess || out.ResponseCode != 0 {
		t.Fatalf("status %s code %d\nstdout:\n%s\nstderr:\n%s", out.Status, out.ResponseCode, aws.ToString(out.StandardOutputContent), aws.ToString(out.StandardErrorContent))
	}
}

func wantFailure(t *testing.T, out *ssm.GetCommandInvocationOutput, code int32, stderr string) {
	t.Helper()
	if out.Status != types.CommandInvocationStatusFailed || out.ResponseCode != code || !strings.Contains(aws.ToString(out.StandardErrorContent), stderr) {
		t.Fatalf("status %s code %d stderr %q; want Failed, %d, stderr containing %q", out.Status, out.ResponseCode, aws.ToString(out.StandardErrorContent), code, stderr)
	}
}

// readTarball returns the regular files of a .tar.bz2 by name without "./".
func readTarball(t *testing.T, p string) map[string][]byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(bzip2.NewReader(f))
	files := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatalf("read %s: %v", p, err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[strings.TrimPrefix(h.Name, "./")] = b
	}
}

func backupLines(dir string) []string {
	return []string{
		"#!/bin/bash",
		"set -euo pipefail",
		`mkdir -p "${BOX_ROOT:-}` + dir + `"`,
		`circleci-backup "${BOX_ROOT:-}` + dir + `"`,
	}
}

func TestBackupWritesRealTarball(t *testing.T) {
	srv, box, c := setup(t)
	out := run(t, c, backupLines("/tmp/backup-1")...)
	wantSuccess(t, out)
	if !strings.Contains(aws.ToString(out.StandardOutputContent), "Backup complete") {
		t.Errorf("stdout %q", aws.ToString(out.StandardOutputContent))
	}
	got := readTarball(t, box.Path("/tmp/backup-1/circleci-data-export.tar.bz2"))
	want := ssmbox.DefaultData()
	if len(got) != len(want) {
		t.Errorf("tarball has %d files, want %d: %v", len(got), len(want), slicesOfKeys(got))
	}
	for name, content := range want {
		if !bytes.Equal(got[name], content) {
			t.Errorf("tarball %s: %d bytes, want %d identical bytes", name, len(got[name]), len(content))
		}
	}

	cmds := srv.Commands()
	if len(cmds) != 1 {
		t.Fatalf("Commands() = %d, want 1", len(cmds))
	}
	rec := cmds[0]
	if rec.CommandID != aws.ToString(out.CommandId) || rec.InstanceIDs[0] != boxID || rec.Comment != "circlebot test" ||
		rec.DocumentName != "AWS-RunShellScript" || strings.Join(rec.Lines, "\n") != strings.Join(backupLines("/tmp/backup-1"), "\n") || rec.Rejected != "" {
		t.Errorf("Commands()[0] = %+v", rec)
	}
	if aws.ToString(out.ExecutionStartDateTime) == "" || aws.ToString(out.ExecutionEndDateTime) == "" || !strings.HasPrefix(aws.ToString(out.ExecutionElapsedTime), "PT") {
		t.Errorf("times: start %q end %q elapsed %q", aws.ToString(out.ExecutionStartDateTime), aws.ToString(out.ExecutionEndDateTime), aws.ToString(out.ExecutionElapsedTime))
	}
	if _, err := time.Parse(time.RFC3339Nano, aws.ToString(out.ExecutionStartDateTime)); err != nil {
		t.Errorf("ExecutionStartDateTime: %v", err)
	}
}

func slicesOfKeys[V any](m map[string]V) []string {
	var out []string
	for k := range maps.Keys(m) {
		out = append(out, k)
	}
	return out
}

func TestBackupFailures(t *testing.T) {
	_, box, c := setup(t)
	t.Run("MissingDirectory", func(t *testing.T) {
		out := run(t, c, `circleci-backup "${BOX_ROOT:-}/tmp/nope"`)
		wantFailure(t, out, 1, "does not exist")
	})
	t.Run("NoArgument", func(t *testing.T) {
		wantFailure(t, run(t, c, "circleci-backup"), 1, "you must specify a directory")
	})
	t.Run("PathOutsideBox", func(t *testing.T) {
		out := run(t, c, "circleci-backup /tmp/backup-forgot-prefix")
		wantFailure(t, out, 1, "outside this box's filesystem")
		if !strings.Contains(aws.ToString(out.StandardErrorContent), "${BOX_ROOT:-}") {
			t.Errorf("stderr does not explain the convention: %q", aws.ToString(out.StandardErrorContent))
		}
	})
	t.Run("NotEnoughSpace", func(t *testing.T) {
		box.SetFreeSpace(100 << 10)
		out := run(t, c, backupLines("/tmp/full")...)
		wantFailure(t, out, 1, "not enough disk space")
		if m, _ := filepath.Glob(box.Path("/tmp/full/*")); len(m) != 0 {
			t.Errorf("failed backup left %v", m)
		}
		box.SetFreeSpace(10 << 20)
		wantSuccess(t, run(t, c, backupLines("/tmp/full")...))
		box.SetFreeSpace(-1)
	})
}

func TestRestoreMovesDataAsideAndExtracts(t *testing.T) {
	_, box, c := setup(t)
	before, err := box.DataTree()
	if err != nil {
		t.Fatal(err)
	}
	wantSuccess(t, run(t, c, backupLines("/tmp/b")...))

	// Change the live data after the backup.
	if err := os.WriteFile(box.Path("/data/mongodb/circle_ghe.ns"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(box.Path("/data/redis/new.rdb"), []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}

	out := run(t, c, "#!/bin/bash", "set -euo pipefail",
		`circleci-restore "${BOX_ROOT:-}/tmp/b/circleci-data-export.tar.bz2"`)
	wantSuccess(t, out)
	after, err := box.DataTree()
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(before, after) {
		t.Errorf("data after restore differs from data at backup:\nbefore %v\nafter  %v", before, after)
	}
	aside := box.RestoreAsideDirs()
	if len(aside) != 1 || !regexp.MustCompile(`^/data/circleci-restore-\d{14}$`).MatchString(aside[0]) {
		t.Fatalf("RestoreAsideDirs = %v", aside)
	}
	if !strings.Contains(aws.ToString(out.StandardOutputContent), "moved to "+aside[0]) {
		t.Errorf("stdout %q does not name %s", aws.ToString(out.StandardOutputContent), aside[0])
	}
	if b, err := os.ReadFile(box.Path(aside[0] + "/redis/new.rdb")); err != nil || string(b) != "new" {
		t.Errorf("moved-aside data lost: %q %v", b, err)
	}

	// A second restore keeps the first set-aside copy and adds another.
	wantSuccess(t, run(t, c, `circleci-restore "${BOX_ROOT:-}/tmp/b/circleci-data-export.tar.bz2"`))
	if got := box.RestoreAsideDirs(); len(got) != 2 {
		t.Errorf("after second restore: %v", got)
	}
	// Set-aside copies are not part of the next backup.
	wantSuccess(t, run(t, c, backupLines("/tmp/c")...))
	for name := range readTarball(t, box.Path("/tmp/c/circleci-data-export.tar.bz2")) {
		if strings.HasPrefix(name, "circleci-restore-") {
			t.Fatalf("backup contains %s", name)
		}
	}

	t.Run("BadTarballTouchesNothing", func(t *testing.T) {
		if err := os.WriteFile(box.Path("/tmp/bad.tar.bz2"), []byte("not bzip2"), 0o644); err != nil {
			t.Fatal(err)
		}
		n := len(box.RestoreAsideDirs())
		wantFailure(t, run(t, c, `circleci-restore "${BOX_ROOT:-}/tmp/bad.tar.bz2"`), 1, "not a readable .tar.bz2")
		if len(box.RestoreAsideDirs()) != n {
			t.Errorf("a failed restore moved data aside")
		}
	})
}

func TestFailedCommand(t *testing.T) {
	srv, _, c := setup(t)
	id := send(t, c, boxID, nil, "echo out", "echo oops >&2", "exit 3")
	out := wait(t, c, id, boxID)
	wantFailure(t, out, 3, "oops\nfailed to run commands: exit status 3")
	if aws.ToString(out.StandardOutputContent) != "out\n" {
		t.Errorf("stdout %q", aws.ToString(out.StandardOutputContent))
	}
	list, err := c.ListCommands(ctxT(t), &ssm.ListCommandsInput{CommandId: &id})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Commands) != 1 || list.Commands[0].Status != types.CommandStatusFailed || list.Commands[0].ErrorCount != 1 || list.Commands[0].CompletedCount != 1 {
		t.Errorf("ListCommands = %+v", list.Commands)
	}
	if n := srv.CallCount("ListCommands"); n != 1 {
		t.Errorf("CallCount(ListCommands) = %d", n)
	}
}

// Like the SSM agent, the script runs under sh without -e: only the last
// command's status counts unless the script sets -e itself.
func TestShellSemantics(t *testing.T) {
	_, box, c := setup(t)
	out := run(t, c, "false", "echo after")
	wantSuccess(t, out)
	wantFailure(t, run(t, c, "set -e", "false", "echo after"), 1, "")
	// /bin/sh by default; a #! line picks the interpreter.
	wantSuccess(t, run(t, c, "#!/bin/bash", `[[ -n "$BASH_VERSION" ]]`))

	// Environment and working directory.
	out = run(t, c, `echo "$BOX_ROOT"`, "pwd", `echo "$HOME"`, "command -v circleci-backup", "command -v replicated")
	lines := strings.Split(strings.TrimSpace(aws.ToString(out.StandardOutputContent)), "\n")
	if len(lines) != 5 || lines[0] != box.Root() || !strings.HasPrefix(lines[1], box.Path("/var/lib/amazon/ssm/"+boxID+"/document/orchestration/")) ||
		lines[2] != box.Path("/root") || lines[3] != box.Path("/bin/circleci-backup") || lines[4] != box.Path("/bin/replicated") {
		t.Errorf("env/cwd lines %q", lines)
	}
	out = wait(t, c, send(t, c, boxID, map[string][]string{"workingDirectory": {"/data"}}, "pwd"), boxID)
	if strings.TrimSpace(aws.ToString(out.StandardOutputContent)) != box.Path("/data") {
		t.Errorf("workingDirectory /data: pwd = %q", aws.ToString(out.StandardOutputContent))
	}
	out = wait(t, c, send(t, c, boxID, map[string][]string{"workingDirectory": {"/nope"}}, "pwd"), boxID)
	wantFailure(t, out, 1, "Invalid workingDirectory /nope")

	t.Run("WithShellBashE", func(t *testing.T) {
		_, _, c := setup(t, ssmbox.WithShell("bash", "-e"))
		wantFailure(t, run(t, c, "false", "echo after"), 1, "")
	})
}

func TestCancelKillsProcessGroup(t *testing.T) {
	_, box, c := setup(t)
	id := send(t, c, boxID, nil,
		`sleep 60 & echo $! > "$BOX_ROOT/tmp/child.pid"`,
		`echo started`,
		`wait`)
	pidFile := box.Path("/tmp/child.pid")
	poll(t, "the command to start its child", func() bool {
		b, err := os.ReadFile(pidFile)
		return err == nil && strings.HasSuffix(string(b), "\n")
	})
	if s := invocation(t, c, id, boxID).Status; s != types.CommandInvocationStatusInProgress {
		t.Fatalf("status while running = %s", s)
	}
	if _, err := c.CancelCommand(ctxT(t), &ssm.CancelCommandInput{CommandId: &id}); err != nil {
		t.Fatalf("CancelCommand: %v", err)
	}
	out := wait(t, c, id, boxID)
	if out.Status != types.CommandInvocationStatusCancelled || out.ResponseCode != ssmbox.StoppedExitCode {
		t.Fatalf("after cancel: %s code %d", out.Status, out.ResponseCode)
	}
	b, _ := os.ReadFile(pidFile)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	poll(t, "the background child to die", func() bool {
		return syscall.Kill(pid, 0) == syscall.ESRCH || isZombie(pid)
	})

	list, err := c.ListCommands(ctxT(t), &ssm.ListCommandsInput{CommandId: &id})
	if err != nil || len(list.Commands) != 1 || list.Commands[0].Status != types.CommandStatusCancelled {
		t.Errorf("ListCommands after cancel: %+v %v", list, err)
	}
	// Cancelling a finished command is a no-op; an unknown one is an error.
	if _, err := c.CancelCommand(ctxT(t), &ssm.CancelCommandInput{CommandId: &id}); err != nil {
		t.Errorf("second CancelCommand: %v", err)
	}
	var bad *types.InvalidCommandId
	if _, err := c.CancelCommand(ctxT(t), &ssm.CancelCommandInput{CommandId: aws.String("00000000-0000-4000-8000-000000000000")}); !errors.As(err, &bad) {
		t.Errorf("CancelCommand unknown id: %v, want InvalidCommandId", err)
	}
}

// isZombie: a killed child of a dead shell may wait a moment for init to
// reap it.
func isZombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return os.IsNotExist(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	return len(f) > 0 && f[0] == "Z"
}

func TestExecutionTimeout(t *testing.T) {
	_, _, c := setup(t)
	id := send(t, c, boxID, map[string][]string{"executionTimeout": {"1"}}, "echo before", "sleep 30")
	out := wait(t, c, id, boxID)
	if out.Status != types.CommandInvocationStatusTimedOut || aws.ToString(out.StatusDetails) != "ExecutionTimedOut" || out.ResponseCode != ssmbox.StoppedExitCode {
		t.Fatalf("timed-out command: %s/%s code %d", out.Status, aws.ToString(out.StatusDetails), out.ResponseCode)
	}
	if aws.ToString(out.StandardOutputContent) != "before\n" {
		t.Errorf("stdout %q", aws.ToString(out.StandardOutputContent))
	}
}

func TestOfflineAndUnknownInstances(t *testing.T) {
	srv, box, c := setup(t)
	other := srv.AddBox("i-0fedcba9876543210")
	box.SetOnline(false)
	ctx := ctxT(t)

	_, err := c.SendCommand(ctx, &ssm.SendCommandInput{
		DocumentName: aws.String("AWS-RunShellScript"),
		InstanceIds:  []string{boxID},
		Parameters:   map[string][]string{"commands": {"echo hi"}},
	})
	var invalid *types.InvalidInstanceId
	if !errors.As(err, &invalid) || !strings.Contains(err.Error(), boxID) {
		t.Fatalf("SendCommand to offline box: %v, want InvalidInstanceId naming it", err)
	}
	_, err = c.SendCommand(ctx, &ssm.SendCommandInput{
		DocumentName: aws.String("AWS-RunShellScript"),
		InstanceIds:  []string{"i-00000000000000000"},
		Parameters:   map[string][]string{"commands": {"echo hi"}},
	})
	if !errors.As(err, &invalid) {
		t.Fatalf("SendCommand to unknown instance: %v, want InvalidInstanceId", err)
	}
	cmds := srv.Commands()
	if len(cmds) != 2 || cmds[0].Rejected != "InvalidInstanceId" || cmds[0].CommandID != "" {
		t.Errorf("Commands() = %+v", cmds)
	}

	info, err := c.DescribeInstanceInformation(ctx, &ssm.DescribeInstanceInformationInput{})
	if err != nil {
		t.Fatal(err)
	}
	status := map[string]types.PingStatus{}
	for _, i := range info.InstanceInformationList {
		status[aws.ToString(i.InstanceId)] = i.PingStatus
	}
	if len(status) != 2 || status[boxID] != types.PingStatusConnectionLost || status[other.InstanceID()] != types.PingStatusOnline {
		t.Errorf("PingStatus = %v", status)
	}
	info, err = c.DescribeInstanceInformation(ctx, &ssm.DescribeInstanceInformationInput{
		InstanceInformationFilterList: []types.InstanceInformationFilter{{Key: types.InstanceInformationFilterKeyInstanceIds, ValueSet: []string{other.InstanceID()}}},
	})
	if err != nil || len(info.InstanceInformationList) != 1 || aws.ToString(info.InstanceInformationList[0].InstanceId) != other.InstanceID() {
		t.Errorf("filtered DescribeInstanceInformation: %+v %v", info, err)
	}
	info, err = c.DescribeInstanceInformation(ctx, &ssm.DescribeInstanceInformationInput{
		Filters: []types.InstanceInformationStringFilter{{Key: aws.String("PingStatus"), Values: []string{"Online"}}},
	})
	if err != nil || len(info.InstanceInformationList) != 1 {
		t.Errorf("PingStatus=Online: %+v %v", info, err)
	}

	box.SetOnline(true)
	wantSuccess(t, run(t, c, "echo back"))
}

func TestOutputTruncation(t *testing.T) {
	_, _, c := setup(t)
	id := send(t, c, boxID, nil, `head -c 30000 /dev/zero | tr '\0' x`, `head -c 30000 /dev/zero | tr '\0' e >&2`)
	out := wait(t, c, id, boxID)
	wantSuccess(t, out)
	if n := len(aws.ToString(out.StandardOutputContent)); n != ssmbox.StdoutLimit {
		t.Errorf("stdout %d chars, want %d", n, ssmbox.StdoutLimit)
	}
	if n := len(aws.ToString(out.StandardErrorContent)); n != ssmbox.StderrLimit {
		t.Errorf("stderr %d chars, want %d", n, ssmbox.StderrLimit)
	}
	list, err := c.ListCommandInvocations(ctxT(t), &ssm.ListCommandInvocationsInput{CommandId: &id, Details: true})
	if err != nil {
		t.Fatal(err)
	}
	plugin := list.CommandInvocations[0].CommandPlugins[0]
	o := aws.ToString(plugin.Output)
	if len(o) > ssmbox.PluginOutputLimit || !strings.Contains(o, "---Output truncated---") || !strings.Contains(o, "----------ERROR-------") {
		t.Errorf("plugin output: %d chars, %q...", len(o), o[:min(len(o), 80)])
	}
}

func TestListCommandInvocations(t *testing.T) {
	srv, _, c := setup(t)
	other := srv.AddBox("i-0fedcba9876543210")
	ctx := ctxT(t)
	out, err := c.SendCommand(ctx, &ssm.SendCommandInput{
		DocumentName: aws.String("AWS-RunShellScript"),
		InstanceIds:  []string{boxID, other.InstanceID()},
		Parameters:   map[string][]string{"commands": {`echo "hello from $BOX_ROOT"`, "echo warn >&2"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	id := aws.ToString(out.Command.CommandId)
	if out.Command.TargetCount != 2 || len(out.Command.InstanceIds) != 2 || out.Command.RequestedDateTime == nil {
		t.Errorf("Command = %+v", out.Command)
	}
	var list *ssm.ListCommandInvocationsOutput
	poll(t, "both invocations to finish", func() bool {
		list, err = c.ListCommandInvocations(ctx, &ssm.ListCommandInvocationsInput{CommandId: &id, Details: true})
		if err != nil {
			t.Fatal(err)
		}
		done := 0
		for _, inv := range list.CommandInvocations {
			if finished(types.CommandInvocationStatus(inv.Status)) {
				done++
			}
		}
		return done == 2
	})
	if len(list.CommandInvocations) != 2 {
		t.Fatalf("%d invocations", len(list.CommandInvocations))
	}
	for _, inv := range list.CommandInvocations {
		iid := aws.ToString(inv.InstanceId)
		if inv.Status != types.CommandInvocationStatusSuccess || len(inv.CommandPlugins) != 1 {
			t.Fatalf("%s: %+v", iid, inv)
		}
		p := inv.CommandPlugins[0]
		if aws.ToString(p.Name) != "aws:runShellScript" || p.ResponseCode != 0 || p.ResponseStartDateTime == nil || p.ResponseFinishDateTime == nil ||
			!strings.HasPrefix(aws.ToString(p.Output), "hello from ") || !strings.HasSuffix(aws.ToString(p.Output), "\n----------ERROR-------\nwarn\n") {
			t.Errorf("%s plugin: %+v output %q", iid, p, aws.ToString(p.Output))
		}
		if !strings.Contains(aws.ToString(p.Output), "/"+iid) {
			t.Errorf("%s ran outside its own root: %q", iid, aws.ToString(p.Output))
		}
	}
	// Without Details no plugins; by instance; and paginated.
	brief, err := c.ListCommandInvocations(ctx, &ssm.ListCommandInvocationsInput{CommandId: &id, InstanceId: aws.String(other.InstanceID())})
	if err != nil || len(brief.CommandInvocations) != 1 || len(brief.CommandInvocations[0].CommandPlugins) != 0 {
		t.Errorf("by instance without details: %+v %v", brief, err)
	}
	p1, err := c.ListCommandInvocations(ctx, &ssm.ListCommandInvocationsInput{CommandId: &id, MaxResults: aws.Int32(1)})
	if err != nil || len(p1.CommandInvocations) != 1 || p1.NextToken == nil {
		t.Fatalf("page 1: %+v %v", p1, err)
	}
	p2, err := c.ListCommandInvocations(ctx, &ssm.ListCommandInvocationsInput{CommandId: &id, MaxResults: aws.Int32(1), NextToken: p1.NextToken})
	if err != nil || len(p2.CommandInvocations) != 1 || p2.NextToken != nil ||
		aws.ToString(p2.CommandInvocations[0].InstanceId) == aws.ToString(p1.CommandInvocations[0].InstanceId) {
		t.Fatalf("page 2: %+v %v", p2, err)
	}
	// Unknown command: empty, not an error.
	none, err := c.ListCommandInvocations(ctx, &ssm.ListCommandInvocationsInput{CommandId: aws.String("00000000-0000-4000-8000-000000000000")})
	if err != nil || len(none.CommandInvocations) != 0 {
		t.Errorf("unknown command: %+v %v", none, err)
	}
	cmds, err := c.ListCommands(ctx, &ssm.ListCommandsInput{InstanceId: aws.String(other.InstanceID())})
	if err != nil || len(cmds.Commands) != 1 || cmds.Commands[0].Status != types.CommandStatusSuccess || cmds.Commands[0].CompletedCount != 2 {
		t.Errorf("ListCommands: %+v %v", cmds, err)
	}
}

func TestReplicated(t *testing.T) {
	_, box, c := setup(t)
	tok := box.SecretToken()
	if !regexp.MustCompile(`^[0-9a-f]{40}$`).MatchString(tok) {
		t.Fatalf("SecretToken %q is not 40 hex", tok)
	}
	out := run(t, c, "sudo replicated admin get-secret-token")
	wantSuccess(t, out)
	if got, want := aws.ToString(out.StandardOutputContent), "export CIRCLE_SECRET_PASSPHRASE='"+tok+"'\n"; got != want {
		t.Errorf("get-secret-token printed %q, want %q", got, want)
	}

	// The runbook's start line, verbatim (sh, sudo and all).
	box.SetAppState(ssmbox.AppStopped)
	start := `sudo replicated app $(sudo replicated apps | grep Enterprise | awk '{print $1;}') start`
	wantSuccess(t, run(t, c, start))
	if s := box.AppState(); s != ssmbox.AppStarted {
		t.Errorf("AppState after start = %q", s)
	}
	out = run(t, c, "replicated app "+ssmbox.AppID+" status")
	wantSuccess(t, out)
	if !strings.Contains(aws.ToString(out.StandardOutputContent), `"State":"started"`) {
		t.Errorf("status %q", aws.ToString(out.StandardOutputContent))
	}
	wantSuccess(t, run(t, c, "replicated app "+ssmbox.AppID+" stop"))
	if s := box.AppState(); s != ssmbox.AppStopped {
		t.Errorf("AppState after stop = %q", s)
	}
	wantFailure(t, run(t, c, "replicated app 0000 start"), 1, "not found")

	box.SetSecretToken("300c61ca5e1551167f73612a3f0845c54cdb3c27")
	out = run(t, c, "replicated admin get-secret-token")
	if !strings.Contains(aws.ToString(out.StandardOutputContent), "'300c61ca5e1551167f73612a3f0845c54cdb3c27'") {
		t.Errorf("after SetSecretToken: %q", aws.ToString(out.StandardOutputContent))
	}
}

func TestInvocationLagAndWaiter(t *testing.T) {
	_, _, c := setup(t, ssmbox.WithInvocationLag(2))
	id := send(t, c, boxID, nil, "echo hi")
	ctx := ctxT(t)
	for i := range 2 {
		_, err := c.GetCommandInvocation(ctx, &ssm.GetCommandInvocationInput{CommandId: &id, InstanceId: aws.String(boxID)})
		var missing *types.InvocationDoesNotExist
		if !errors.As(err, &missing) {
			t.Fatalf("call %d: %v, want InvocationDoesNotExist", i+1, err)
		}
	}
	wantSuccess(t, wait(t, c, id, boxID))

	// The SDK's waiter retries InvocationDoesNotExist and accepts Success.
	id = send(t, c, boxID, nil, "echo again")
	w := ssm.NewCommandExecutedWaiter(c, func(o *ssm.CommandExecutedWaiterOptions) {
		o.MinDelay = 10 * time.Millisecond
		o.MaxDelay = 50 * time.Millisecond
	})
	got, err := w.WaitForOutput(ctx, &ssm.GetCommandInvocationInput{CommandId: &id, InstanceId: aws.String(boxID)}, 30*time.Second)
	if err != nil || aws.ToString(got.StandardOutputContent) != "again\n" {
		t.Fatalf("CommandExecuted waiter: %+v %v", got, err)
	}

	var missing *types.InvocationDoesNotExist
	_, err = c.GetCommandInvocation(ctx, &ssm.GetCommandInvocationInput{CommandId: aws.String("00000000-0000-4000-8000-000000000000"), InstanceId: aws.String(boxID)})
	if !errors.As(err, &missing) {
		t.Errorf("unknown command: %v, want InvocationDoesNotExist", err)
	}
}

func TestRequestValidation(t *testing.T) {
	srv, _, c := setup(t)
	ctx := ctxT(t)
	_, err := c.SendCommand(ctx, &ssm.SendCommandInput{
		DocumentName: aws.String("AWS-RunPowerShellScript"), InstanceIds: []string{boxID},
		Parameters: map[string][]string{"commands": {"dir"}},
	})
	var doc *types.InvalidDocument
	if !errors.As(err, &doc) {
		t.Errorf("other document: %v, want InvalidDocument", err)
	}
	_, err = c.SendCommand(ctx, &ssm.SendCommandInput{
		DocumentName: aws.String("AWS-RunShellScript"), InstanceIds: []string{boxID},
		Parameters: map[string][]string{"commands": {"true"}, "bogus": {"1"}},
	})
	var params *types.InvalidParameters
	if !errors.As(err, &params) {
		t.Errorf("unknown parameter: %v, want InvalidParameters", err)
	}
	_, err = c.SendCommand(ctx, &ssm.SendCommandInput{
		DocumentName: aws.String("AWS-RunShellScript"), InstanceIds: []string{boxID},
		Parameters: map[string][]string{"commands": {"true"}, "executionTimeout": {"soon"}},
	})
	if !errors.As(err, &params) {
		t.Errorf("bad executionTimeout: %v, want InvalidParameters", err)
	}

	// Raw protocol: an operation the stand-in lacks.
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/", strings.NewReader("{}"))
	req.Header.Set("X-Amz-Target", "AmazonSSM.GetParameter")
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), `"__type":"UnknownOperationException"`) {
		t.Errorf("unknown op: HTTP %d %s", resp.StatusCode, body)
	}
}

func TestCloseKillsRunningCommands(t *testing.T) {
	srv, box, c := setup(t)
	// A command that leaves a detached background child finishes (as with
	// the agent) and the child lives on until Close.
	out := run(t, c, `nohup sleep 60 >/dev/null 2>&1 & echo $! > "$BOX_ROOT/tmp/bg.pid"`, "echo done")
	wantSuccess(t, out)
	b, _ := os.ReadFile(box.Path("/tmp/bg.pid"))
	bg, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(bg, 0); err != nil {
		t.Fatalf("background child gone before Close: %v", err)
	}

	send(t, c, boxID, nil, "sleep 60")
	poll(t, "the command to start", func() bool {
		list, err := c.ListCommandInvocations(ctxT(t), &ssm.ListCommandInvocationsInput{Filters: []types.CommandFilter{{Key: types.CommandFilterKeyStatus, Value: aws.String("InProgress")}}})
		return err == nil && len(list.CommandInvocations) == 1
	})
	done := make(chan struct{})
	go func() { srv.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return with a command running")
	}
	poll(t, "the background child to die", func() bool {
		return syscall.Kill(bg, 0) == syscall.ESRCH || isZombie(bg)
	})
}

// The box's aws CLI is the test machine's; with SetEnv it reaches moto.
// This is the path a tarball backup takes to S3.
func TestBoxAWSCLIReachesMoto(t *testing.T) {
	if _, err := exec.LookPath("aws"); err != nil {
		t.Skip("aws CLI not installed")
	}
	moto := motoserver.ForTest(t)
	_, box, c := setup(t)
	ctx := ctxT(t)
	s3c := s3.NewFromConfig(motoserver.AWSConfig(moto.URL), func(o *s3.Options) { o.UsePathStyle = true })
	if _, err := s3c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String("circleci-backups")}); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{
		"AWS_ENDPOINT_URL": moto.URL, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": motoserver.Region,
	} {
		box.SetEnv(k, v)
	}
	lines := append(backupLines("/tmp/s3"),
		`aws s3 cp --only-show-errors "${BOX_ROOT:-}/tmp/s3/circleci-data-export.tar.bz2" s3://circleci-backups/backup.tar.bz2`)
	wantSuccess(t, run(t, c, lines...))
	obj, err := s3c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String("circleci-backups"), Key: aws.String("backup.tar.bz2")})
	if err != nil {
		t.Fatal(err)
	}
	defer obj.Body.Close()
	uploaded, _ := io.ReadAll(obj.Body)
	local, _ := os.ReadFile(box.Path("/tmp/s3/circleci-data-export.tar.bz2"))
	a, b := sha256.Sum256(uploaded), sha256.Sum256(local)
	if len(local) == 0 || a != b {
		t.Errorf("uploaded %d bytes (%s), local %d (%s)", len(uploaded), hex.EncodeToString(a[:4]), len(local), hex.EncodeToString(b[:4]))
	}
}

func TestMain(m *testing.M) { motoserver.Main(m) }

// TestAgentGate: while the gate says an instance's agent is not up, a
// command to it is refused as to an offline box; once it says yes, the
// same box takes it.
func TestAgentGate(t *testing.T) {
	srv, _, c := setup(t)
	var up atomic.Bool
	srv.SetAgentGate(func(id string) bool { return id != boxID || up.Load() })
	_, err := c.SendCommand(ctxT(t), &ssm.SendCommandInput{
		DocumentName: aws.String("AWS-RunShellScript"),
		InstanceIds:  []string{boxID},
		Parameters:   map[string][]string{"commands": {"echo hi"}},
	})
	var invalid *types.InvalidInstanceId
	if !errors.As(err, &invalid) {
		t.Fatalf("SendCommand while the gate is shut: %v, want InvalidInstanceId", err)
	}
	up.Store(true)
	send(t, c, boxID, nil, "echo hi")
}
