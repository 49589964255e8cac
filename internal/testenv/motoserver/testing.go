package motoserver

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// One moto per test binary: starting moto costs about a second, resetting it
// a few milliseconds. Packages test in parallel processes, each with its own
// server on its own port.
var shared struct {
	once sync.Once
	srv  *Server
	err  error

	mu     sync.Mutex
	active []string // names of tests currently using the server
}

// ForTest returns this test binary's moto, started on first use and reset
// for this test. The process outlives the test; use Main in TestMain to stop
// it when the binary ends.
//
// The shared server holds one state, so tests that use it must not run in
// parallel with each other (a parallel Reset would wipe the other test's
// resources). ForTest fails the test if that happens rather than letting it
// flake; subtests of the test that holds the server may call it again.
func ForTest(t testing.TB) *Server {
	t.Helper()
	shared.once.Do(func() {
		shared.srv, shared.err = Start(context.Background()) // Start bounds its own wait
	})
	if shared.err != nil {
		t.Fatalf("%v", shared.err)
	}
	if err := claim(t); err != nil {
		t.Fatalf("%v", err)
	}
	// Generous: a loaded CI machine can stall moto for seconds.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := shared.srv.Reset(ctx); err != nil {
		t.Fatalf("%v", err)
	}
	return shared.srv
}

func claim(t testing.TB) error {
	name := t.Name()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	for _, holder := range shared.active {
		if holder != name && !strings.HasPrefix(name, holder+"/") {
			return fmt.Errorf("motoserver.ForTest: %s would reset moto while %s still uses it; tests sharing the server must not run in parallel (use Start for a private server)", name, holder)
		}
	}
	shared.active = append(shared.active, name)
	t.Cleanup(func() {
		shared.mu.Lock()
		defer shared.mu.Unlock()
		for i, n := range shared.active {
			if n == name {
				shared.active = append(shared.active[:i], shared.active[i+1:]...)
				break
			}
		}
	})
	return nil
}

// Main runs the package's tests and then stops the shared server, for use as
//
//	func TestMain(m *testing.M) { motoserver.Main(m) }
//
// When tests failed, moto's log (with the traceback behind any HTTP 500) is
// kept and its path printed to stderr. It returns m.Run's code, for a
// TestMain with more to do after the tests.
func Main(m *testing.M) int {
	code := m.Run()
	if shared.srv == nil {
		return code
	}
	if code != 0 {
		shared.srv.closeKeepLog()
		fmt.Fprintf(os.Stderr, "motoserver: moto_server log kept at %s\n", shared.srv.LogPath)
		return code
	}
	if err := shared.srv.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "%v\n", err)
	}
	return code
}
