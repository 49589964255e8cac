package motoserver

import (
	"bytes"
	"context"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
)

// LagServices are the services whose reads Lagged makes lag: the ones
// whose documentation says their reads are eventually consistent and
// whose state a restore, failover, rotation or drill reads back.
var LagServices = []string{"ec2", "elasticloadbalancing", "autoscaling"}

// LagProxy sits in front of moto and answers reads as an eventually
// consistent AWS may: for Lag after each mutating call, a read that was
// answered before that call gets the same answer again (the state before
// the mutation), however moto's state changed. moto itself is always
// consistent, so without it code that reads back right after a write
// passes tests and stops mid-incident on AWS ("remapping an IP address
// is an asynchronous operation", EC2's AssignPrivateIpAddresses).
//
// Only query-protocol calls of LagServices lag. A read is an action named
// Describe*, Get* or List*; anything else (DryRun calls excepted) is a
// mutation. Reads are keyed by their whole request body (action and
// parameters), so another read of the same thing gets its own answer.
type LagProxy struct {
	URL string
	Lag time.Duration

	srv *httptest.Server
	rp  *httputil.ReverseProxy

	mu      sync.Mutex
	mutated time.Time             // when the last mutation was answered
	answers map[string]*lagAnswer // the last fresh answer per read
	served  map[string]int        // stale answers served, by action
}

type lagAnswer struct {
	at     time.Time
	status int
	header http.Header
	body   []byte
}

// Lagged starts a LagProxy in front of target (moto's URL). Close it when
// done.
func Lagged(target string, lag time.Duration) *LagProxy {
	u, err := url.Parse(target)
	if err != nil || u.Host == "" {
		panic("motoserver: lag proxy target " + target + " is not a URL")
	}
	p := &LagProxy{Lag: lag, answers: map[string]*lagAnswer{}, served: map[string]int{}}
	p.rp = &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(u)
		r.Out.Host = r.In.Host
	}}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	p.URL = p.srv.URL
	return p
}

// Close stops the proxy.
func (p *LagProxy) Close() { p.srv.Close() }

// Stale reports how many reads of each action were answered with a state
// from before a mutation.
func (p *LagProxy) Stale() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.served)
}

func (p *LagProxy) serve(w http.ResponseWriter, r *http.Request) {
	service := signingServiceOf(r.Header.Get("Authorization"))
	if !slices.Contains(LagServices, service) || r.Method != http.MethodPost || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		p.rp.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(r.Body)
	r.Body.Close()
	if err != nil {
		http.Error(w, "lag proxy: read body: "+err.Error(), http.StatusBadRequest)
		return
	}
	form, _ := url.ParseQuery(string(body))
	action := form.Get("Action")
	read := strings.HasPrefix(action, "Describe") || strings.HasPrefix(action, "Get") || strings.HasPrefix(action, "List")
	key := service + "\x00" + canonical(form)
	if read {
		p.mu.Lock()
		a := p.answers[key]
		stale := a != nil && a.at.Before(p.mutated) && time.Since(p.mutated) < p.Lag
		if stale {
			p.served[action]++
		}
		p.mu.Unlock()
		if stale {
			h := w.Header()
			for k, v := range a.header {
				h[k] = slices.Clone(v)
			}
			w.WriteHeader(a.status)
			w.Write(a.body)
			return
		}
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	rec := httptest.NewRecorder()
	p.rp.ServeHTTP(rec, r)
	res := rec.Result()
	out := rec.Body.Bytes()
	now := time.Now()
	p.mu.Lock()
	switch {
	case read && res.StatusCode < 500:
		p.answers[key] = &lagAnswer{at: now, status: res.StatusCode, header: res.Header.Clone(), body: slices.Clone(out)}
	case !read && form.Get("DryRun") != "true" && res.StatusCode < 300:
		p.mutated = now
	}
	p.mu.Unlock()
	for k, v := range res.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(res.StatusCode)
	w.Write(out)
}

// canonical is a query form without the parts that differ between two
// sends of the same read.
func canonical(form url.Values) string {
	return form.Encode() // Encode sorts by key
}

// signingServiceOf reads the service from a SigV4 credential scope,
// "Credential=AKID/20261128/us-east-1/ec2/aws4_request".
func signingServiceOf(auth string) string {
	_, rest, ok := strings.Cut(auth, "Credential=")
	if !ok {
		return ""
	}
	scope, _, _ := strings.Cut(rest, ",")
	parts := strings.Split(scope, "/")
	if len(parts) != 5 {
		return ""
	}
	return parts[3]
}

// Settle waits until the lag after the last mutation has passed, so that
// every read answers moto's state as it is: for a test that changed AWS
// behind the bot's back (the proxy sees only the bot's calls) and wants
// the bot to see that change, as an operator would wait for it.
func (p *LagProxy) Settle(ctx context.Context) error {
	p.mu.Lock()
	until := p.mutated.Add(p.Lag)
	p.mu.Unlock()
	d := time.Until(until)
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
