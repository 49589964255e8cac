package motoserver

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// A pool of moto servers per test binary, so that tests using moto can run
// in parallel, each on a server of its own. Measured on a 2-core machine:
// starting moto costs about 0.7 s of CPU (1 s or more of wall time, more
// under load) and the first sandbox seed on a fresh server another ~2 s of
// CPU while moto builds its EC2 catalogue; a reset costs a few
// milliseconds. So servers are reused: a test takes an idle one (reset
// for it), or starts one when none is idle, and gives it back when it ends.
//
// Nothing caps the pool: it grows to the largest number of tests holding a
// server at once, which the testing package keeps to -test.parallel
// (GOMAXPROCS by default) plus tests waiting for their parallel subtests.
// A hard cap could deadlock a parent that holds a server while its
// subtests wait for one.
var pool struct {
	mu      sync.Mutex
	idle    map[string][]*Server // by poolKey
	all     []*Server
	held    map[heldKey]*Server
	keepLog map[*Server]bool // used by a failed test: the log outlives Main
}

type heldKey struct {
	t   testing.TB
	key string
}

// ForTest returns a moto server for this test alone, reset for it: plain
// moto_server, or what opts such as WithPatchedSnapshots ask for. The
// server stays the test's until the test (with its subtests) ends and then
// goes back to the binary's pool; use Main in TestMain to stop the pool's
// processes when the binary ends.
//
// Tests that use ForTest may call t.Parallel: each parallel test gets its
// own server, so a Reset never wipes another test's resources. Calling
// ForTest again from the same test (or benchmark round) returns the same
// server, reset again; a subtest gets a server of its own and leaves its
// parent's state alone.
//
// ForTest's servers load only moto's classic stock AMIs (WithClassicAMIs),
// which makes filtered EC2 Describe calls an order of magnitude cheaper.
//
// If the test fails, the path of the server's log (with the Python
// traceback behind any HTTP 500) is logged and the log kept.
func ForTest(t testing.TB, opts ...Option) *Server {
	t.Helper()
	opts = append([]Option{WithClassicAMIs()}, opts...)
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	pk, err := poolKey(o)
	if err != nil {
		t.Fatalf("%v", err)
	}
	key := heldKey{t, pk}

	pool.mu.Lock()
	s := pool.held[key]
	pool.mu.Unlock()
	if s != nil {
		if err := resetForTest(s); err != nil {
			t.Fatalf("%v", err)
		}
		return s
	}

	s, err = take(key.key, opts)
	if err != nil {
		t.Fatalf("%v", err)
	}
	pool.mu.Lock()
	if pool.held == nil {
		pool.held = map[heldKey]*Server{}
	}
	pool.held[key] = s
	pool.mu.Unlock()
	t.Cleanup(func() {
		pool.mu.Lock()
		defer pool.mu.Unlock()
		delete(pool.held, key)
		if t.Failed() {
			if pool.keepLog == nil {
				pool.keepLog = map[*Server]bool{}
			}
			pool.keepLog[s] = true
			t.Logf("motoserver: moto_server log (kept): %s", s.LogPath)
		}
		select {
		case <-s.done:
			return // it died: not given to another test
		default:
		}
		if pool.idle == nil {
			pool.idle = map[string][]*Server{}
		}
		pool.idle[key.key] = append(pool.idle[key.key], s)
	})
	return s
}

// poolKey tells apart servers ForTest may not give for one another: the
// command (which a test's $MOTO_SERVER may change), the AMI catalogue and
// the environment (the timing model's scale).
func poolKey(o options) (string, error) {
	name, args, err := command(o)
	if err != nil {
		return "", err
	}
	// env: a strict-S3 server names the launcher it hands over to there.
	return strings.Join(slices.Concat([]string{name}, o.env(), args), "\x00"), nil
}

// take returns an idle server started with these options, reset, or a new
// one.
func take(key string, opts []Option) (*Server, error) {
	for {
		pool.mu.Lock()
		idle := pool.idle[key]
		if len(idle) == 0 {
			pool.mu.Unlock()
			break
		}
		s := idle[len(idle)-1]
		pool.idle[key] = idle[:len(idle)-1]
		pool.mu.Unlock()
		if err := resetForTest(s); err == nil {
			return s, nil
		}
		// A server that cannot reset is of no use to anyone: replace it.
		discard(s)
	}
	s, err := Start(context.Background(), opts...) // Start bounds its own wait
	if err != nil {
		return nil, err
	}
	pool.mu.Lock()
	pool.all = append(pool.all, s)
	pool.mu.Unlock()
	return s, nil
}

func resetForTest(s *Server) error {
	// Generous: a loaded CI machine can stall moto for seconds.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return s.Reset(ctx)
}

func discard(s *Server) {
	pool.mu.Lock()
	keep := pool.keepLog[s]
	pool.all = slices.DeleteFunc(pool.all, func(x *Server) bool { return x == s })
	pool.mu.Unlock()
	if keep {
		s.closeKeepLog()
		return
	}
	s.Close()
}

// Main runs the package's tests and then stops the pool's servers, for use
// as
//
//	func TestMain(m *testing.M) { motoserver.Main(m) }
//
// It returns m.Run's code, for a TestMain with more to do after the tests. When tests
// failed, the moto logs are kept and their paths printed to stderr (each
// failed test has also logged the path of its own server's).
func Main(m *testing.M) int {
	code := m.Run()
	pool.mu.Lock()
	all := slices.Clone(pool.all)
	keep := pool.keepLog
	pool.all, pool.idle = nil, nil
	pool.mu.Unlock()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		kept []string
		errs []string
	)
	for _, s := range all {
		keepThis := code != 0 || keep[s]
		if keepThis {
			kept = append(kept, s.LogPath)
		}
		wg.Go(func() {
			var err error
			if keepThis {
				err = s.closeKeepLog()
			} else {
				err = s.Close()
			}
			if err != nil {
				mu.Lock()
				errs = append(errs, err.Error())
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(kept) > 0 {
		fmt.Fprintf(os.Stderr, "motoserver: moto_server logs kept at %s\n", strings.Join(kept, ", "))
	}
	for _, e := range errs {
		fmt.Fprintln(os.Stderr, e)
	}
	return code
}
