package motoserver

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"
)

// Serialized returns the address of a proxy to moto at target that lets
// one request through at a time. moto 5.2.1 serves requests in threads
// and checks a DynamoDB condition and writes the item without one lock
// between them, so two racing conditional writes can both pass; DynamoDB
// applies each conditional write atomically. Tests of conditional-write
// races (locks, claims, counters, leases) go through this so that what
// they race is the bot's code, not moto's threads.
func Serialized(t testing.TB, target string) string {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatalf("motoserver: %v", err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}
