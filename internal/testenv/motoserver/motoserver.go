// Package motoserver runs Python moto's moto_server as a real AWS endpoint
// for tests and the demo, so the bot's AWS code is exercised through the real
// SDK over HTTP instead of through mocks of our own interfaces.
package motoserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
)

// Region is the region AWSConfig uses and the sandbox is seeded in.
const Region = "us-east-1"

const (
	// moto_server usually answers within a second, but a cold Python import
	// of every moto backend on a loaded CI machine can take much longer.
	defaultStartTimeout = 30 * time.Second
	pollInterval        = 50 * time.Millisecond
	// The port is chosen by binding and releasing it; another process can
	// grab it before moto binds, so a few fresh ports are tried.
	maxPortAttempts = 5
	stopGrace       = 5 * time.Second
)

// Server is one running moto_server process.
type Server struct {
	URL string // http://127.0.0.1:PORT
	// LogPath holds the process's stdout and stderr, including the Python
	// traceback behind any HTTP 500 from moto.
	LogPath string

	cmd       *exec.Cmd
	log       *os.File
	done      chan struct{} // closed when the process has exited
	waitErr   error         // valid after done is closed
	closeOnce sync.Once
	closeErr  error
}

type options struct {
	launcher string
	amis     string   // $MOTO_AMIS_PATH for the process, if set
	s3strict string   // WithStrictS3's script, run in front of the rest
	extraEnv []string // further KEY=value for the process (WithTiming)
}

// Option changes how Start launches moto.
type Option func(*options)

// WithLauncher runs `python3 pythonScript -H 127.0.0.1 -p PORT` instead of
// moto_server, so a script can patch moto (for example to keep snapshots
// pending) before serving. The script must accept moto_server's -H and -p.
func WithLauncher(pythonScript string) Option {
	return func(o *options) { o.launcher = pythonScript }
}

var errAddrInUse = errors.New("address already in use")

// Start launches moto_server on a free 127.0.0.1 port and returns once it
// answers HTTP. ctx bounds only the start-up (at most ~30 s); the process
// lives until Close. The binary is $MOTO_SERVER if set, else moto_server on
// PATH; a pyenv shim is resolved once to what it runs (see unshim). The
// process runs in its own process group so Close also stops any children
// (a wrapper or shim may fork Python rather than exec it).
func Start(ctx context.Context, opts ...Option) (*Server, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	name, args, err := command(o)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, defaultStartTimeout)
	defer cancel()

	var lastErr error
	for attempt := 0; attempt < maxPortAttempts; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, fmt.Errorf("motoserver: pick a free port: %w", err)
		}
		s, err := launch(ctx, name, slices.Concat(args, []string{"-H", "127.0.0.1", "-p", strconv.Itoa(port)}), port, o.env())
		if err == nil {
			return s, nil
		}
		if !errors.Is(err, errAddrInUse) {
			return nil, err
		}
		lastErr = err
	}
	return nil, fmt.Errorf("motoserver: no free port after %d attempts: %w", maxPortAttempts, lastErr)
}

func command(o options) (string, []string, error) {
	if o.s3strict != "" {
		return o.strictCommand()
	}
	if o.launcher != "" {
		if _, err := os.Stat(o.launcher); err != nil {
			return "", nil, fmt.Errorf("motoserver: launcher script: %w", err)
		}
		py, err := exec.LookPath("python3")
		if err != nil {
			return "", nil, fmt.Errorf("motoserver: python3 not found on PATH (needed for launcher %s): %w", o.launcher, err)
		}
		return unshim(py), []string{o.launcher}, nil
	}
	if bin := os.Getenv("MOTO_SERVER"); bin != "" {
		path, err := exec.LookPath(bin)
		if err != nil {
			return "", nil, fmt.Errorf("motoserver: $MOTO_SERVER=%q is not an executable: %w", bin, err)
		}
		return unshim(path), nil, nil
	}
	path, err := exec.LookPath("moto_server")
	if err != nil {
		return "", nil, fmt.Errorf("motoserver: moto_server not found on PATH: install Python moto[server] (pip install 'moto[server]') or set $MOTO_SERVER to its path: %w", err)
	}
	return unshim(path), nil, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// env is what the options add to the process's environment.
func (o options) env() []string {
	env := slices.Concat(o.strictEnv(), o.extraEnv)
	if o.amis != "" {
		env = append(env, "MOTO_AMIS_PATH="+o.amis)
	}
	return env
}

func launch(ctx context.Context, name string, args []string, port int, env []string) (*Server, error) {
	logf, err := os.CreateTemp("", "moto_server-*.log")
	if err != nil {
		return nil, fmt.Errorf("motoserver: create log file: %w", err)
	}
	// Not exec.CommandContext: ctx bounds start-up only, not the server's life.
	cmd := exec.Command(name, args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	// moto builds some URLs (presigned S3, SQS queue URLs) from $MOTO_PORT
	// and keeps an inherited value, which would point them at another server.
	cmd.Env = slices.Concat(os.Environ(), []string{"MOTO_PORT=" + strconv.Itoa(port)}, env)
	cmd.SysProcAttr = sysProcAttr()
	s := &Server{
		URL:     "http://127.0.0.1:" + strconv.Itoa(port),
		LogPath: logf.Name(),
		cmd:     cmd,
		log:     logf,
		done:    make(chan struct{}),
	}

	started := make(chan error, 1)
	go func() {
		// On Linux the child gets SIGKILL when the thread that forked it
		// exits (Pdeathsig), so a test binary killed by -timeout does not
		// leave moto running. Pinning this goroutine to that thread until the
		// child exits keeps the runtime from retiring the thread under it.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		s.waitErr = cmd.Wait()
		close(s.done)
	}()
	if err := <-started; err != nil {
		logf.Close()
		os.Remove(logf.Name())
		return nil, fmt.Errorf("motoserver: start %s: %w", name, err)
	}

	if err := s.waitReady(ctx); err != nil {
		s.stop()
		logf.Close()
		if errors.Is(err, errAddrInUse) {
			os.Remove(logf.Name())
			return nil, fmt.Errorf("motoserver: port %d: %w", port, err)
		}
		return nil, fmt.Errorf("motoserver: %s did not come up (log: %s): %w", filepath.Base(name), logf.Name(), err)
	}
	return s, nil
}

func (s *Server) waitReady(ctx context.Context) error {
	client := &http.Client{Timeout: time.Second}
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		select {
		case <-s.done:
			return s.exitError()
		default:
		}
		// Another test binary's moto may own the port if two picked the same
		// free port: an answer counts only once our own process has said it
		// is serving there (moto takes a second to import before it binds,
		// so being alive proves nothing).
		if s.bound() && s.answers(ctx, client) {
			select {
			case <-s.done:
				return s.exitError()
			default:
				return nil
			}
		}
		select {
		case <-s.done:
			return s.exitError()
		case <-ctx.Done():
			return fmt.Errorf("no answer from %s: %w", s.URL, ctx.Err())
		case <-tick.C:
		}
	}
}

// bound reports whether our process logged werkzeug's "Running on <URL>".
func (s *Server) bound() bool {
	out, err := os.ReadFile(s.LogPath)
	return err == nil && bytes.Contains(out, []byte("Running on "+s.URL))
}

func (s *Server) answers(ctx context.Context, client *http.Client) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+"/moto-api/", nil)
	if err != nil {
		return false
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return true
}

func (s *Server) exitError() error {
	out, _ := os.ReadFile(s.LogPath)
	if bytes.Contains(out, []byte("Address already in use")) || bytes.Contains(out, []byte("is in use by another program")) {
		return errAddrInUse
	}
	return fmt.Errorf("process exited early (%v): %s", s.waitErr, lastLines(out, 20))
}

func lastLines(b []byte, n int) string {
	b = bytes.TrimRight(b, "\n")
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == '\n' {
			n--
			if n == 0 {
				return string(b[i+1:])
			}
		}
	}
	return string(b)
}

// Reset drops every resource in moto (POST /moto-api/reset).
func (s *Server) Reset(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL+"/moto-api/reset", nil)
	if err != nil {
		return fmt.Errorf("motoserver: reset: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("motoserver: reset %s: %w", s.URL, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("motoserver: reset %s: HTTP %d: %s", s.URL, resp.StatusCode, bytes.TrimSpace(body))
	}
	return nil
}

// Close stops the process group (SIGTERM, then SIGKILL after a grace
// period) and removes the log file. Safe to call more than once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.closeErr = s.stop()
		s.log.Close()
		os.Remove(s.LogPath)
	})
	return s.closeErr
}

// closeKeepLog stops the process but leaves the log for a failed run.
func (s *Server) closeKeepLog() error {
	s.closeOnce.Do(func() {
		s.closeErr = s.stop()
		s.log.Close()
	})
	return s.closeErr
}

func (s *Server) stop() error {
	select {
	case <-s.done:
		return nil
	default:
	}
	if err := terminate(s.cmd.Process); err != nil {
		return fmt.Errorf("motoserver: stop %s: %w", s.URL, err)
	}
	select {
	case <-s.done:
		return nil
	case <-time.After(stopGrace):
	}
	if err := kill(s.cmd.Process); err != nil {
		return fmt.Errorf("motoserver: kill %s: %w", s.URL, err)
	}
	<-s.done
	return nil
}

// AWSConfig returns a config for the moto (or proxy) at endpoint: region
// us-east-1, static credentials test/test, and at most 3 attempts so an API
// moto lacks (HTTP 500) fails fast instead of backing off for seconds.
//
// It is built by hand rather than with config.LoadDefaultConfig so that
// nothing from the developer's environment (AWS_PROFILE, AWS_ENDPOINT_URL,
// real credentials) leaks into a test.
//
// S3 callers must set path-style addressing, because moto at 127.0.0.1
// cannot serve virtual-hosted bucket names:
//
//	s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true })
func AWSConfig(endpoint string) aws.Config {
	return aws.Config{
		Region:           Region,
		Credentials:      credentials.NewStaticCredentialsProvider("test", "test", ""),
		BaseEndpoint:     aws.String(endpoint),
		RetryMaxAttempts: 3,
	}
}
