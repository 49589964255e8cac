package motoserver

import (
	"context"
	"encoding/json"
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
	"github.com/aws/aws-sdk-go-v2/service/s3"
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

// The tests of the process and the pool tell servers' state apart by S3
// buckets: moto's first S3 call costs ~0.2 s of CPU, its first EC2 call
// (importing moto's EC2 models) ~1.7 s.
func s3Client(endpoint string) *s3.Client {
	return s3.NewFromConfig(AWSConfig(endpoint), func(o *s3.Options) { o.UsePathStyle = true })
}

func createBucket(t *testing.T, endpoint, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := s3Client(endpoint).CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		t.Fatalf("CreateBucket: %v", err)
	}
}

func bucketsNamed(t *testing.T, endpoint, name string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := s3Client(endpoint).ListBuckets(ctx, &s3.ListBucketsInput{})
	if err != nil {
		t.Fatalf("ListBuckets: %v", err)
	}
	n := 0
	for _, b := range out.Buckets {
		if aws.ToString(b.Name) == name {
			n++
		}
	}
	return n
}

func TestStartResetClose(t *testing.T) {
	t.Parallel()
	s := startT(t)
	if !strings.HasPrefix(s.URL, "http://127.0.0.1:") {
		t.Fatalf("URL = %q, want http://127.0.0.1:PORT", s.URL)
	}
	createBucket(t, s.URL, "probe-42")
	if n := bucketsNamed(t, s.URL, "probe-42"); n != 1 {
		t.Fatalf("buckets after create = %d, want 1", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	if n := bucketsNamed(t, s.URL, "probe-42"); n != 0 {
		t.Fatalf("buckets after reset = %d, want 0", n)
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
	t.Parallel()
	a, b := startT(t), startT(t)
	if a.URL == b.URL {
		t.Fatalf("two servers on one URL %s", a.URL)
	}
	createBucket(t, a.URL, "probe-43")
	if n := bucketsNamed(t, b.URL, "probe-43"); n != 0 {
		t.Fatalf("bucket created on %s is visible on %s", a.URL, b.URL)
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
	createBucket(t, s.URL, "probe-44")
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
	createBucket(t, s.URL, "probe-47")
	pgid := s.cmd.Process.Pid
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	waitFor(t, 10*time.Second, "forked moto to exit", func() bool {
		return syscall.Kill(-pgid, 0) == syscall.ESRCH
	})
}

func TestWithLauncher(t *testing.T) {
	t.Parallel()
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
	createBucket(t, s.URL, "probe-45")

	if _, err := Start(context.Background(), WithLauncher(filepath.Join(t.TempDir(), "missing.py"))); err == nil {
		t.Fatal("Start with a missing launcher script succeeded")
	}
}

func pyQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `\'`) + "'" }

// Not parallel: which idle server "next" gets must not depend on other
// tests giving theirs back.
func TestForTestSharesAndResets(t *testing.T) {
	s1 := ForTest(t)
	createBucket(t, s1.URL, "probe-46")
	// Called again by the same test: the same server, reset.
	if again := ForTest(t); again != s1 {
		t.Fatal("ForTest gave the same test a second server")
	}
	if n := bucketsNamed(t, s1.URL, "probe-46"); n != 0 {
		t.Fatalf("ForTest did not reset: %d buckets left", n)
	}
	createBucket(t, s1.URL, "probe-46")
	var s2 *Server
	t.Run("sub", func(t *testing.T) {
		s2 = ForTest(t)
		if s2 == s1 {
			t.Fatal("a subtest was given the server its parent holds")
		}
		if n := bucketsNamed(t, s2.URL, "probe-46"); n != 0 {
			t.Fatalf("ForTest gave a subtest its parent's state: %d buckets", n)
		}
		createBucket(t, s2.URL, "probe-48")
	})
	// The next test (here a subtest) reuses the server given back, reset.
	t.Run("next", func(t *testing.T) {
		s3 := ForTest(t)
		if s3 != s2 {
			t.Fatalf("ForTest started %s instead of reusing %s, which was free", s3.URL, s2.URL)
		}
		if n := bucketsNamed(t, s3.URL, "probe-48"); n != 0 {
			t.Fatalf("ForTest did not reset a reused server: %d buckets left", n)
		}
	})
	if n := bucketsNamed(t, s1.URL, "probe-46"); n != 1 {
		t.Fatalf("the subtests' servers touched the parent's: %d buckets, want 1", n)
	}
}

// A server started from another command (here a test's $MOTO_SERVER) is
// not given to a test that asks for the usual one, nor the other way round.
func TestForTestKeysThePoolByCommand(t *testing.T) {
	real, err := exec.LookPath("moto_server")
	if err != nil {
		t.Fatalf("moto_server not on PATH: %v", err)
	}
	var plain *Server
	t.Run("plain", func(t *testing.T) { plain = ForTest(t) })
	t.Setenv("MOTO_SERVER", writeScript(t, "exec '"+real+"' \"$@\"\n"))
	t.Run("wrapped", func(t *testing.T) {
		if s := ForTest(t); s == plain {
			t.Errorf("ForTest gave the server of moto_server to a test whose $MOTO_SERVER is a wrapper")
		}
	})
}

func TestForTestGivesParallelTestsTheirOwnServers(t *testing.T) {
	t.Parallel()
	a := make(chan *Server)
	b := make(chan *Server)
	// Both hold a server at once; the group returns only when both
	// parallel subtests are done.
	t.Run("group", func(t *testing.T) {
		t.Run("a", func(t *testing.T) {
			t.Parallel()
			s := ForTest(t)
			createBucket(t, s.URL, "probe-49")
			a <- s
			<-b
		})
		t.Run("b", func(t *testing.T) {
			t.Parallel()
			s := ForTest(t)
			other := <-a
			if other == s || other.URL == s.URL {
				t.Errorf("two parallel tests share %s", s.URL)
			} else if n := bucketsNamed(t, s.URL, "probe-49"); n != 0 {
				t.Errorf("a parallel test's bucket is visible on another's server")
			}
			// The other still holds its state: this ForTest reset nothing of it.
			if n := bucketsNamed(t, other.URL, "probe-49"); n != 1 {
				t.Errorf("the other parallel test's bucket: %d, want 1", n)
			}
			close(b)
		})
	})
}

func TestForTestLoadsTheClassicAMIs(t *testing.T) {
	t.Parallel()
	var want []struct {
		ID    string `json:"ami_id"`
		Owner string `json:"owner_id"`
	}
	if err := json.Unmarshal(classicAMIs, &want); err != nil {
		t.Fatal(err)
	}
	s := ForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := ec2.NewFromConfig(AWSConfig(s.URL)).DescribeImages(ctx, &ec2.DescribeImagesInput{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, im := range out.Images {
		got[aws.ToString(im.ImageId)] = true
	}
	owners := map[string]bool{}
	for _, w := range want {
		if !got[w.ID] {
			t.Errorf("stock AMI %s missing", w.ID)
		}
		owners[w.Owner] = true
	}
	if len(out.Images) != len(want) || len(owners) < 2 {
		t.Errorf("%d images, want the %d of the classic catalogue (owners %v)", len(out.Images), len(want), owners)
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
	t.Parallel()
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
	second, err := launch(ctx, name, append(args, "-H", "127.0.0.1", "-p", strconv.Itoa(port)), port, nil)
	if err == nil {
		second.Close()
		t.Fatal("a moto that could not bind its port was taken to be serving on it")
	}
}

func TestUnshimResolvesPyenvShimsOnly(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	real := filepath.Join(dir, "versions", "3.11.7", "bin", "moto_server")
	if err := os.MkdirAll(filepath.Dir(real), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(real, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A stand-in for pyenv that logs its calls and answers `which`.
	calls := filepath.Join(dir, "calls")
	pyenv := filepath.Join(dir, "libexec", "pyenv")
	os.MkdirAll(filepath.Dir(pyenv), 0o755)
	if err := os.WriteFile(pyenv, []byte("#!/bin/sh\necho \"$PYENV_ROOT $*\" >>'"+calls+"'\n[ \"$1 $2\" = 'which moto_server' ] && echo '"+real+"' && exit 0\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	shim := func(name string) string {
		p := filepath.Join(dir, "shims", name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		// The shape of the shims pyenv 2 writes.
		body := "#!/usr/bin/env bash\nset -e\n[ -n \"$PYENV_DEBUG\" ] && set -x\n\nprogram=\"${0##*/}\"\n\nexport PYENV_ROOT=\"" + dir + "\"\n" +
			"exec \"" + pyenv + "\" exec \"$program\" \"$@\"\n"
		if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	moto := shim("moto_server")
	if got := unshim(moto); got != real {
		t.Errorf("unshim(%s) = %s, want %s", moto, got, real)
	}
	if got := unshim(moto); got != real {
		t.Errorf("second unshim = %s", got)
	}
	log, _ := os.ReadFile(calls)
	if string(log) != dir+" which moto_server\n" {
		t.Errorf("pyenv calls %q, want one `which moto_server` with the shim's PYENV_ROOT", log)
	}
	// pyenv cannot tell: the shim itself.
	if other := shim("other"); unshim(other) != other {
		t.Errorf("unshim of a shim pyenv cannot resolve = %s, want the shim", unshim(other))
	}
	// Not a shim: unchanged.
	if unshim(real) != real {
		t.Errorf("unshim of a plain script = %s", unshim(real))
	}
	wrapper := writeScript(t, "exec moto_server \"$@\"\n")
	if unshim(wrapper) != wrapper {
		t.Errorf("unshim of a wrapper = %s", unshim(wrapper))
	}
}
