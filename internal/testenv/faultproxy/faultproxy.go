// Package faultproxy sits between the AWS SDK and moto and answers a chosen
// share of calls with throttling errors, server errors or delays, in the
// wire shape the real service uses, so the SDK's own retry and error
// handling run exactly as they would against AWS.
package faultproxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Fault names as recorded in Call.Fault.
const (
	FaultNone     = ""
	FaultThrottle = "throttle"
	Fault5xx      = "5xx"
	FaultDelay    = "delay"
	// FaultLostAnswer: the call reaches moto and takes effect, and the
	// client gets a 500 instead of the answer — a response lost on the way
	// back. What idempotency (client tokens, look-ups) must survive.
	FaultLostAnswer = "lost-answer"
	// FaultDenied: the call is answered with the service's access-denied
	// error (403) and never reaches moto — a permission or role the
	// account refuses (Faults.Deny).
	FaultDenied = "denied"
)

// Faults chooses which calls go wrong. Each candidate call takes one draw u
// in [0,1): u < ThrottleRate throttles it, the next ServerErrorRate answers
// 500, the next DelayRate delays it and then forwards it; the rest pass
// untouched. The rates are shares of candidate calls as long as they sum to
// at most 1.
//
// Faulted calls are answered by the proxy and never reach moto, in the shape
// of the protocol (throttle / server error):
//
//	EC2 query:              503 RequestLimitExceeded / 500 InternalError, <Response><Errors><Error>
//	awsJson (X-Amz-Target): 400 ThrottlingException / 500 InternalServerError, {"__type":...}
//	other query services:   400 Throttling (Sender) / 500 InternalError (Receiver), <ErrorResponse>
//	S3:                     503 SlowDown / 500 InternalError, <Error>
type Faults struct {
	ThrottleRate    float64
	ServerErrorRate float64
	DelayRate       float64
	// LostAnswerRate: the next share of calls is forwarded and its answer
	// replaced by a server error (FaultLostAnswer).
	LostAnswerRate float64
	Delay          time.Duration
	// Seed makes the choice of faulted calls repeatable: the n-th candidate
	// call after New or SetFaults always gets the same draw.
	Seed int64
	// Match limits faults to calls it returns true for (nil: every call).
	// It sees Service and Action only, and may be called concurrently.
	Match func(Call) bool
	// Deny answers every call it returns true for with FaultDenied,
	// before and apart from the draws above (EC2 UnauthorizedOperation,
	// S3 AccessDenied, awsJson AccessDeniedException, other query
	// services AccessDenied). It sees the call as Match does, AccessKey too.
	Deny func(Call) bool
}

// Call is one request the proxy received.
type Call struct {
	Service string // from the SigV4 credential scope: "ec2", "ssm", "s3", "autoscaling", ...
	Action  string // "DescribeInstances", "SendCommand", "PutObject", ...
	// Params are a query-protocol call's parameters (EC2, Auto Scaling…),
	// e.g. "Filter.1.Value.1", for a Match that faults only some calls.
	Params url.Values
	Fault  string // FaultNone, FaultThrottle, Fault5xx, FaultDelay, FaultLostAnswer or FaultDenied
	Status int    // HTTP status the client got; 0 while still in flight or if the client went away
	At     time.Time

	// AccessKey is the access key ID the call was signed with (the
	// credential scope's first part): whose credentials made it.
	AccessKey string
}

// Proxy is a running fault-injecting reverse proxy.
type Proxy struct {
	URL string // http://127.0.0.1:PORT, to use as the SDK's BaseEndpoint

	srv *httptest.Server
	rp  *httputil.ReverseProxy

	mu     sync.Mutex
	faults Faults
	rng    *rand.Rand
	calls  []*Call
	reqSeq int
}

// New starts a proxy on 127.0.0.1 that forwards to target (moto's URL).
// Like httptest.NewServer it panics if it cannot start, including on a
// target that is not an absolute http(s) URL.
func New(target string, f Faults) *Proxy {
	u, err := url.Parse(target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		panic(fmt.Sprintf("faultproxy: target %q is not an http(s) URL: %v", target, err))
	}
	p := &Proxy{}
	p.setFaultsLocked(f)
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			// The SDK signed the proxy's host; moto ignores signatures but
			// builds response URLs from Host, which should point back here.
			r.Out.Host = r.In.Host
		},
		ModifyResponse: func(resp *http.Response) error {
			if c, ok := resp.Request.Context().Value(callKey{}).(*Call); ok {
				p.mu.Lock()
				c.Status = resp.StatusCode
				p.mu.Unlock()
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if c, ok := r.Context().Value(callKey{}).(*Call); ok {
				p.mu.Lock()
				c.Status = http.StatusBadGateway
				p.mu.Unlock()
			}
			http.Error(w, "faultproxy: forward to "+target+": "+err.Error(), http.StatusBadGateway)
		},
	}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	p.URL = p.srv.URL
	return p
}

type callKey struct{}

// SetFaults replaces the fault settings and restarts the seeded sequence of
// draws, so a test can switch faults on for exactly the step it exercises.
func (p *Proxy) SetFaults(f Faults) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.setFaultsLocked(f)
}

func (p *Proxy) setFaultsLocked(f Faults) {
	p.faults = f
	p.rng = rand.New(rand.NewPCG(uint64(f.Seed), 0x9e3779b97f4a7c15))
}

// Calls returns every call since New or Reset, in arrival order.
func (p *Proxy) Calls() []Call {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Call, len(p.calls))
	for i, c := range p.calls {
		out[i] = *c
	}
	return out
}

// Count returns how many calls with that Action arrived, faulted or
// forwarded; "" counts all calls.
func (p *Proxy) Count(action string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, c := range p.calls {
		if action == "" || c.Action == action {
			n++
		}
	}
	return n
}

// Reset clears the call log. Fault settings and the draw sequence stay.
func (p *Proxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = nil
}

// Close stops the proxy and waits for in-flight calls.
func (p *Proxy) Close() { p.srv.Close() }

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	call, err := identify(r)
	if err != nil {
		http.Error(w, "faultproxy: "+err.Error(), http.StatusBadRequest)
		return
	}
	call.At = time.Now()

	p.mu.Lock()
	f := p.faults
	p.mu.Unlock()
	// Match is the caller's code: run it outside the lock so it may use
	// the proxy (Count, Calls) without deadlocking.
	denied := f.Deny != nil && f.Deny(call)
	candidate := !denied && (f.Match == nil || f.Match(call))

	p.mu.Lock()
	if denied {
		call.Fault = FaultDenied
	}
	if candidate {
		call.Fault = p.draw()
	}
	c := &call
	p.calls = append(p.calls, c)
	p.reqSeq++
	reqID := fmt.Sprintf("faultproxy-%08d", p.reqSeq)
	p.mu.Unlock()

	switch call.Fault {
	case FaultThrottle, Fault5xx, FaultDenied:
		status := writeFault(w, r, call, reqID)
		p.mu.Lock()
		c.Status = status
		p.mu.Unlock()
		return
	case FaultLostAnswer:
		rec := httptest.NewRecorder()
		p.rp.ServeHTTP(rec, r.WithContext(contextWithCall(r, c)))
		lost := *c
		lost.Fault = Fault5xx
		status := writeFault(w, r, lost, reqID)
		p.mu.Lock()
		c.Status = status
		p.mu.Unlock()
		return
	case FaultDelay:
		t := time.NewTimer(f.Delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	p.rp.ServeHTTP(w, r.WithContext(contextWithCall(r, c)))
}

func (p *Proxy) draw() string {
	u := p.rng.Float64()
	f := p.faults
	switch {
	case u < f.ThrottleRate:
		return FaultThrottle
	case u < f.ThrottleRate+f.ServerErrorRate:
		return Fault5xx
	case u < f.ThrottleRate+f.ServerErrorRate+f.DelayRate:
		return FaultDelay
	case u < f.ThrottleRate+f.ServerErrorRate+f.DelayRate+f.LostAnswerRate:
		return FaultLostAnswer
	}
	return FaultNone
}

// identify names the service and action of a request without consuming it:
// a query-protocol body is read and put back for forwarding.
func identify(r *http.Request) (Call, error) {
	c := Call{Service: signingService(r.Header.Get("Authorization")), AccessKey: accessKey(r.Header.Get("Authorization"))}
	if target := r.Header.Get("X-Amz-Target"); target != "" {
		// awsJson: "AmazonSSM.SendCommand"
		c.Action = target[strings.LastIndexByte(target, '.')+1:]
		if c.Service == "" {
			c.Service = strings.ToLower(strings.TrimPrefix(target[:max(0, strings.IndexByte(target, '.'))], "Amazon"))
		}
		return c, nil
	}
	if a := r.URL.Query().Get("Action"); a != "" {
		c.Action, c.Params = a, r.URL.Query()
		return c, nil
	}
	if r.Method == http.MethodPost && strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		body, err := io.ReadAll(r.Body)
		r.Body.Close()
		if err != nil {
			return c, fmt.Errorf("read request body: %w", err)
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		form, err := url.ParseQuery(string(body))
		if err != nil {
			return c, fmt.Errorf("parse query-protocol body: %w", err)
		}
		c.Action, c.Params = form.Get("Action"), form
		return c, nil
	}
	if c.Service == "" || c.Service == "s3" {
		c.Service = "s3"
		c.Action = s3Action(r)
	}
	return c, nil
}

// accessKey reads the access key ID from a SigV4 Authorization header.
func accessKey(auth string) string {
	_, rest, ok := strings.Cut(auth, "Credential=")
	if !ok {
		return ""
	}
	key, _, _ := strings.Cut(rest, "/")
	return key
}

// signingService reads the service from a SigV4 credential scope,
// "Credential=AKID/20261128/us-east-1/ec2/aws4_request".
func signingService(auth string) string {
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

// s3Action maps a path-style S3 request to its operation name. It covers
// what a backup tool uses; anything else is "METHOD /bucket[/key]".
func s3Action(r *http.Request) string {
	q := r.URL.Query()
	path := strings.TrimPrefix(r.URL.Path, "/")
	bucket, key, _ := strings.Cut(path, "/")
	switch {
	case bucket == "":
		if r.Method == http.MethodGet {
			return "ListBuckets"
		}
	case key == "":
		switch r.Method {
		case http.MethodGet:
			switch {
			case q.Has("location"):
				return "GetBucketLocation"
			case q.Has("versioning"):
				return "GetBucketVersioning"
			case q.Has("tagging"):
				return "GetBucketTagging"
			case q.Has("uploads"):
				return "ListMultipartUploads"
			case q.Has("versions"):
				return "ListObjectVersions"
			case q.Get("list-type") == "2":
				return "ListObjectsV2"
			}
			return "ListObjects"
		case http.MethodPut:
			switch {
			case q.Has("tagging"):
				return "PutBucketTagging"
			case q.Has("versioning"):
				return "PutBucketVersioning"
			case q.Has("lifecycle"):
				return "PutBucketLifecycleConfiguration"
			}
			return "CreateBucket"
		case http.MethodHead:
			return "HeadBucket"
		case http.MethodDelete:
			if q.Has("tagging") {
				return "DeleteBucketTagging"
			}
			return "DeleteBucket"
		case http.MethodPost:
			if q.Has("delete") {
				return "DeleteObjects"
			}
		}
	default:
		switch r.Method {
		case http.MethodGet:
			switch {
			case q.Has("tagging"):
				return "GetObjectTagging"
			case q.Has("uploadId"):
				return "ListParts"
			}
			return "GetObject"
		case http.MethodHead:
			return "HeadObject"
		case http.MethodPut:
			switch {
			case q.Has("partNumber") && r.Header.Get("X-Amz-Copy-Source") != "":
				return "UploadPartCopy"
			case q.Has("partNumber"):
				return "UploadPart"
			case q.Has("tagging"):
				return "PutObjectTagging"
			case r.Header.Get("X-Amz-Copy-Source") != "":
				return "CopyObject"
			}
			return "PutObject"
		case http.MethodDelete:
			if q.Has("uploadId") {
				return "AbortMultipartUpload"
			}
			return "DeleteObject"
		case http.MethodPost:
			switch {
			case q.Has("uploads"):
				return "CreateMultipartUpload"
			case q.Has("uploadId"):
				return "CompleteMultipartUpload"
			}
		}
	}
	name := "/" + bucket
	if key != "" {
		name += "/" + key
	}
	return r.Method + " " + name
}

type errorShape struct {
	status      int
	contentType string
	body        string
}

// writeFault answers the way the real service does, so the SDK's
// deserializer yields the genuine error code and its retryer classifies it
// (throttle vs. transient) as it would in production.
func writeFault(w http.ResponseWriter, r *http.Request, c Call, reqID string) int {
	throttle := c.Fault == FaultThrottle
	var e errorShape
	switch {
	case c.Fault == FaultDenied:
		e = deniedError(r, c, reqID)
	case r.Header.Get("X-Amz-Target") != "":
		e = jsonError(throttle)
	case c.Service == "ec2":
		e = ec2Error(throttle, reqID)
	case c.Service == "s3":
		e = s3Error(throttle, reqID)
	default:
		e = queryError(throttle, reqID)
	}
	h := w.Header()
	h.Set("Content-Type", e.contentType)
	h.Set("Content-Length", strconv.Itoa(len(e.body)))
	h.Set("X-Amzn-Requestid", reqID)
	h.Set("X-Amz-Request-Id", reqID)
	w.WriteHeader(e.status)
	io.WriteString(w, e.body)
	return e.status
}

func ec2Error(throttle bool, reqID string) errorShape {
	status, code, msg := http.StatusInternalServerError, "InternalError", "An internal error has occurred."
	if throttle {
		status, code, msg = http.StatusServiceUnavailable, "RequestLimitExceeded", "Request limit exceeded."
	}
	return errorShape{status, "text/xml;charset=UTF-8", `<?xml version="1.0" encoding="UTF-8"?>` +
		`<Response><Errors><Error><Code>` + code + `</Code><Message>` + msg + `</Message></Error></Errors>` +
		`<RequestID>` + reqID + `</RequestID></Response>`}
}

func s3Error(throttle bool, reqID string) errorShape {
	status, code, msg := http.StatusInternalServerError, "InternalError", "We encountered an internal error. Please try again."
	if throttle {
		status, code, msg = http.StatusServiceUnavailable, "SlowDown", "Please reduce your request rate."
	}
	return errorShape{status, "application/xml", `<?xml version="1.0" encoding="UTF-8"?>` +
		`<Error><Code>` + code + `</Code><Message>` + msg + `</Message><RequestId>` + reqID + `</RequestId></Error>`}
}

func queryError(throttle bool, reqID string) errorShape {
	status, typ, code, msg := http.StatusInternalServerError, "Receiver", "InternalError", "An internal error has occurred."
	if throttle {
		status, typ, code, msg = http.StatusBadRequest, "Sender", "Throttling", "Rate exceeded"
	}
	return errorShape{status, "text/xml", `<?xml version="1.0" encoding="UTF-8"?>` +
		`<ErrorResponse><Error><Type>` + typ + `</Type><Code>` + code + `</Code><Message>` + msg + `</Message></Error>` +
		`<RequestId>` + reqID + `</RequestId></ErrorResponse>`}
}

// jsonError uses InternalServerError, not InternalError, for 500s: that is
// the name awsJson services such as SSM model, so the SDK yields its typed
// error.
func jsonError(throttle bool) errorShape {
	status, code, msg := http.StatusInternalServerError, "InternalServerError", "An internal error has occurred."
	if throttle {
		status, code, msg = http.StatusBadRequest, "ThrottlingException", "Rate exceeded"
	}
	return errorShape{status, "application/x-amz-json-1.1", `{"__type":"` + code + `","message":"` + msg + `"}`}
}

// deniedError is the service's answer to a caller without the permission.
func deniedError(r *http.Request, c Call, reqID string) errorShape {
	msg := "User: arn:aws:iam::123456789012:user/faultproxy is not authorized to perform: " + c.Service + ":" + c.Action
	switch {
	case r.Header.Get("X-Amz-Target") != "":
		return errorShape{http.StatusBadRequest, "application/x-amz-json-1.1", `{"__type":"AccessDeniedException","message":"` + msg + `"}`}
	case c.Service == "ec2":
		return errorShape{http.StatusForbidden, "text/xml;charset=UTF-8", `<?xml version="1.0" encoding="UTF-8"?>` +
			`<Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>You are not authorized to perform this operation.</Message></Error></Errors>` +
			`<RequestID>` + reqID + `</RequestID></Response>`}
	case c.Service == "s3":
		return errorShape{http.StatusForbidden, "application/xml", `<?xml version="1.0" encoding="UTF-8"?>` +
			`<Error><Code>AccessDenied</Code><Message>Access Denied</Message><RequestId>` + reqID + `</RequestId></Error>`}
	}
	return errorShape{http.StatusForbidden, "text/xml", `<?xml version="1.0" encoding="UTF-8"?>` +
		`<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>` + msg + `</Message></Error>` +
		`<RequestId>` + reqID + `</RequestId></ErrorResponse>`}
}

func contextWithCall(r *http.Request, c *Call) context.Context {
	return context.WithValue(r.Context(), callKey{}, c)
}
