package motoserver

import (
	"context"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

func TestMain(m *testing.M) { Main(m) }

func startT(t *testing.T, opts ...Option) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Start(ctx, opts...)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func createVPC(t *testing.T, endpoint, cidr string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := ec2.NewFromConfig(AWSConfig(endpoint)).CreateVpc(ctx, &ec2.CreateVpcInput{CidrBlock: aws.String(cidr)})
	if err != nil {
		t.Fatalf("CreateVpc: %v", err)
	}
	return aws.ToString(out.Vpc.VpcId)
}

func vpcsWithCIDR(t *testing.T, endpoint, cidr string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := ec2.NewFromConfig(AWSConfig(endpoint)).DescribeVpcs(ctx, &ec2.DescribeVpcsInput{
		Filters: []types.Filter{{Name: aws.String("cidr"), Values: []string{cidr}}},
	})
	if err != nil {
		t.Fatalf("DescribeVpcs: %v", err)
	}
	return len(out.Vpcs)
}

func TestStartResetClose(t *testing.T) {
	s := startT(t)
	if !strings.HasPrefix(s.URL, "http://127.0.0.1:") {
		t.Fatalf("URL = %q, want http://127.0.0.1:PORT", s.URL)
	}
	createVPC(t, s.URL, "10.42.0.0/16")
	if n := vpcsWithCIDR(t, s.URL, "10.42.0.0/16"); n != 1 {
		t.Fatalf("VPCs after create = %d, want 1", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	if n := vpcsWithCIDR(t, s.URL, "10.42.0.0/16"); n != 0 {
		t.Fatalf("VPCs after reset = %d, want 0", n)
	}

	pgid := s.cmd.Process.Pid
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// The whole group must be gone, including Python behind a pyenv shim.
	waitFor(t, 10*time.Second, "process group to exit", func() bool {
		return syscall.Kill(-pgid, 0) == syscall.ESRCH
	})
	if _, err := http.Get(s.URL + "/moto-api/"); err == nil {
		t.Fatal("moto still answers after Close")
	}
	if _, err := os.Stat(s.LogPath); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("log %s not removed: %v", s.LogPath, err)
	}
}

func TestServersAreIndependent(t *testing.T) {
	a, b := startT(t), startT(t)
	if a.URL == b.URL {
		t.Fatalf("two servers on one URL %s", a.URL)
	}
	createVPC(t, a.URL, "10.43.0.0/16")
	if n := vpcsWithCIDR(t, b.URL, "10.43.0.0/16"); n != 0 {
		t.Fatalf("VPC created on %s is visible on %s", a.URL, b.URL)
	}
}

func TestStartMissingBinary(t *testing.T) {
	t.Setenv("MOTO_SERVER", "")
	t.Setenv("PATH", t.TempDir())
	_, err := Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "moto_server not found on PATH: install Python moto[server]") {
		t.Fatalf("err = %v, want a plain 'moto_server not found on PATH' error", err)
	}

	t.Setenv("MOTO_SERVER", filepath.Join(t.TempDir(), "nope"))
	_, err = Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "$MOTO_SERVER") {
		t.Fatalf("err = %v, want it to name $MOTO_SERVER", err)
	}
}

func writeScript(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fake_moto")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestStartReportsEarlyExitWithLog(t *testing.T) {
	t.Setenv("MOTO_SERVER", writeScript(t, "echo 'ImportError: no module named flask' >&2\nexit 3\n"))
	_, err := Start(context.Background())
	if err == nil {
		t.Fatal("Start succeeded with a server that exits at once")
	}
	msg := err.Error()
	if !strings.Contains(msg, "ImportError: no module named flask") || !strings.Contains(msg, "log: ") {
		t.Fatalf("err = %q, want the process output and the log path", msg)
	}
	logPath := msg[strings.Index(msg, "log: ")+len("log: "):]
	logPath = logPath[:strings.IndexByte(logPath, ')')]
	if _, err := os.Stat(logPath); err != nil {
		t.Fatalf("log named in the error is not there: %v", err)
	}
	os.Remove(logPath)
}

func TestStartRetriesWhenPortIsTaken(t *testing.T) {
	real, err := exec.LookPath("moto_server")
	if err != nil {
		t.Fatalf("moto_server not on PATH: %v", err)
	}
	marker := filepath.Join(t.TempDir(), "first-run-done")
	// The first launch fails the way moto_server does when it loses the
	// race for the port; the second is the real server.
	t.Setenv("MOTO_SERVER", writeScript(t, `
if [ ! -e '`+marker+`' ]; then
  touch '`+marker+`'
  echo 'Address already in use' >&2
  echo 'Port is in use by another program.' >&2
  exit 1
fi
exec '`+real+`' "$@"
`))
	s := startT(t)
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("the failing first launch never ran: %v", err)
	}
	createVPC(t, s.URL, "10.44.0.0/16")
}

func TestCloseStopsForkedChildren(t *testing.T) {
	real, err := exec.LookPath("moto_server")
	if err != nil {
		t.Fatalf("moto_server not on PATH: %v", err)
	}
	// A wrapper that forks moto instead of exec-ing it: only a group kill
	// reaches the Python child.
	t.Setenv("MOTO_SERVER", writeScript(t, "'"+real+"' \"$@\" &\nwait\n"))
	s := startT(t)
	createVPC(t, s.URL, "10.47.0.0/16")
	pgid := s.cmd.Process.Pid
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	waitFor(t, 10*time.Second, "forked moto to exit", func() bool {
		return syscall.Kill(-pgid, 0) == syscall.ESRCH
	})
}

func TestWithLauncher(t *testing.T) {
	script := filepath.Join(t.TempDir(), "launcher.py")
	marker := filepath.Join(t.TempDir(), "launched")
	src := "import pathlib, sys\n" +
		"pathlib.Path(" + pyQuote(marker) + ").write_text(' '.join(sys.argv[1:]))\n" +
		"from moto.server import main\n" +
		"main(sys.argv[1:])\n"
	if err := os.WriteFile(script, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	s := startT(t, WithLauncher(script))
	args, err := os.ReadFile(marker)
	if err != nil {
		t.Fatalf("launcher did not run: %v", err)
	}
	port := s.URL[strings.LastIndexByte(s.URL, ':')+1:]
	if got, want := string(args), "-H 127.0.0.1 -p "+port; got != want {
		t.Fatalf("launcher args = %q, want %q", got, want)
	}
	createVPC(t, s.URL, "10.45.0.0/16")

	if _, err := Start(context.Background(), WithLauncher(filepath.Join(t.TempDir(), "missing.py"))); err == nil {
		t.Fatal("Start with a missing launcher script succeeded")
	}
}

func pyQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `\'`) + "'" }

func TestForTestSharesAndResets(t *testing.T) {
	s1 := ForTest(t)
	createVPC(t, s1.URL, "10.46.0.0/16")
	t.Run("sub", func(t *testing.T) {
		s2 := ForTest(t)
		if s2 != s1 {
			t.Fatal("ForTest started a second server")
		}
		if n := vpcsWithCIDR(t, s2.URL, "10.46.0.0/16"); n != 0 {
			t.Fatalf("ForTest did not reset: %d VPCs left", n)
		}
	})
}

func TestForTestRefusesParallelUsers(t *testing.T) {
	first := make(chan struct{})
	second := make(chan struct{})
	var errSecond error
	// claim, not ForTest: ForTest would Fatal, and the refusal is what is
	// under test. The group returns only when both parallel subtests are done.
	t.Run("group", func(t *testing.T) {
		t.Run("a", func(t *testing.T) {
			t.Parallel()
			if err := claim(t); err != nil {
				t.Errorf("first claim: %v", err)
			}
			close(first)
			<-second
		})
		t.Run("b", func(t *testing.T) {
			t.Parallel()
			<-first
			errSecond = claim(t)
			close(second)
		})
	})
	if errSecond == nil || !strings.Contains(errSecond.Error(), "must not run in parallel") {
		t.Fatalf("second parallel claim: err = %v, want a refusal", errSecond)
	}
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Two test binaries can pick the same free port. The one that loses the
// race to bind must not take the other's moto for its own (it would reset
// the other binary's state under its tests).
func TestLoserOfAPortRaceDoesNotAdoptTheWinner(t *testing.T) {
	first, err := Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	port, _ := strconv.Atoi(first.URL[strings.LastIndex(first.URL, ":")+1:])
	name, args, err := command(options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	second, err := launch(ctx, name, append(args, "-H", "127.0.0.1", "-p", strconv.Itoa(port)), port)
	if err == nil {
		second.Close()
		t.Fatal("a moto that could not bind its port was taken to be serving on it")
	}
}
