// Package slackfake is a fake Slack Web API for tests and benchmarks.
//
// It is slack-go's slacktest server with the routes the bot depends on
// replaced, because slacktest's own versions hand out colliding timestamps,
// keep no message state and cannot be told to fail. Point the real client at
// it with slack.New(token, slack.OptionAPIURL(fake.APIURL())) so that
// slack-go's request encoding and response decoding are exercised exactly as
// in production.
//
// Every request is recorded as a Call, including those to the slacktest
// routes that are left alone and to methods nobody serves, so a test can
// always see what the bot actually sent.
package slackfake

import (
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/slack-go/slack"
	"github.com/slack-go/slack/slacktest"
)

// Identity the fake answers auth.test with. Exported so tests can assert
// the bot ignores its own messages or mentions itself correctly.
const (
	BotUserID = "UBOT"
	BotID     = "BBOT"
	BotName   = "circlebot"
	TeamID    = "T0001"
	TeamName  = "sandbox"
	TeamURL   = "https://sandbox.slack.com/"
)

// DefaultResponseURLUses is how many times Slack accepts a POST to one
// response_url; the sixth answers 404 "expired_url".
const DefaultResponseURLUses = 5

// Method names recorded for the two endpoints that are not Web API methods.
const (
	MethodResponseURL = "response_url"
	MethodUpload      = "upload"
)

// Call is one request the fake received. Treat Form and Blocks as read-only:
// they are shared between copies.
type Call struct {
	Method     string // "chat.postMessage", "response_url", "upload", ...
	Channel    string // also the id of a response_url, so filtering by channel finds those when the channel ID is used as id
	TS         string // chat.update: the ts updated; chat.postMessage/postEphemeral: the ts assigned
	ThreadTS   string
	User       string // chat.postEphemeral: the user addressed
	Text       string // files.completeUploadExternal: initial_comment
	Blocks     slack.Blocks
	BlocksJSON string

	ResponseID      string // response_url: the id given to ResponseURL
	ResponseType    string // response_url: "ephemeral" or "in_channel"
	ReplaceOriginal bool   // response_url
	DeleteOriginal  bool   // response_url

	Files []slack.FileSummary // files.completeUploadExternal and upload: the files concerned

	Token  string     // Bearer token from the Authorization header, else the token form field
	Form   url.Values // all parameters; JSON bodies are flattened to their top-level fields
	Status int        // HTTP status answered
	Error  string     // Slack error code answered ("" when ok)
	At     time.Time
}

// String is one line for failure dumps.
func (c Call) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s status=%d", c.At.Format("15:04:05.000"), c.Method, c.Status)
	if c.Error != "" {
		fmt.Fprintf(&b, " error=%s", c.Error)
	}
	for _, kv := range [][2]string{
		{"channel", c.Channel}, {"ts", c.TS}, {"thread_ts", c.ThreadTS},
		{"user", c.User}, {"response_type", c.ResponseType},
	} {
		if kv[1] != "" {
			fmt.Fprintf(&b, " %s=%s", kv[0], kv[1])
		}
	}
	if c.Text != "" {
		fmt.Fprintf(&b, " text=%q", clip(c.Text, 120))
	}
	if n := len(c.Blocks.BlockSet); n > 0 {
		fmt.Fprintf(&b, " blocks=%d", n)
	}
	return b.String()
}

// Message is the current state of a message posted with chat.postMessage.
type Message struct {
	TS, ThreadTS, Channel, Text string
	Blocks                      slack.Blocks
	Updates                     int
}

// AllText is Text(Call) for a message's current state.
func (m Message) AllText() string { return joinText(m.Text, m.Blocks, "") }

type channelState struct {
	msgs []*Message // in ts order, because ts only ever grows
	byTS map[string]*Message
}

type upload struct {
	filename string
	length   int
	data     []byte
	uploaded bool
}

type fault struct {
	n          int
	status     int
	retryAfter int
	slackError string
}

// Server is a running fake. All methods are safe for concurrent use.
type Server struct {
	st    *slacktest.Server
	inner *slacktest.Server // serves slacktest's default routes behind a recording proxy
	proxy *httputil.ReverseProxy
	tr    *http.Transport
	base  string
	once  sync.Once

	mu        sync.Mutex
	calls     []Call
	gen       int           // bumped by Reset so waiters restart their scan
	changed   chan struct{} // closed and replaced whenever calls changes
	token     string
	faults    map[string][]*fault
	notIn     map[string]bool
	channels  map[string]*channelState
	uploads   map[string]*upload
	respUses  map[string]int
	respLimit int
	tsBase    int64
	seq       int64
	fileSeq   int
}

// New starts a fake.
func New() *Server {
	s := &Server{
		changed:   make(chan struct{}),
		faults:    map[string][]*fault{},
		notIn:     map[string]bool{},
		channels:  map[string]*channelState{},
		uploads:   map[string]*upload{},
		respUses:  map[string]int{},
		respLimit: DefaultResponseURLUses,
		// Real ts values are near the current time; bots that derive ages
		// from a ts then behave as in production.
		tsBase: time.Now().Unix(),
	}

	s.inner = slacktest.NewTestServer()
	s.inner.Start()
	target, err := url.Parse(s.inner.GetAPIURL())
	if err != nil {
		panic(err)
	}
	s.tr = &http.Transport{}
	s.proxy = &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport: s.tr,
	}

	s.st = slacktest.NewTestServer(s.bind)
	s.base = s.st.GetAPIURL()
	s.st.Start()
	return s
}

// Close stops the fake. Calls made so far stay readable.
func (s *Server) Close() {
	s.once.Do(func() {
		s.st.Stop()
		s.inner.Stop()
		s.tr.CloseIdleConnections()
	})
}

// APIURL is the base for slack.OptionAPIURL (with trailing slash).
func (s *Server) APIURL() string { return s.base }

// ResponseURL is a slash command response_url on this server. POSTs to it
// are recorded as MethodResponseURL calls with ResponseID (and Channel) id.
func (s *Server) ResponseURL(id string) string {
	return s.base + "response_url/" + url.PathEscape(id)
}

// SetResponseURLUses sets how many POSTs each response_url accepts before
// answering 404 "expired_url"; n <= 0 means unlimited. Default
// DefaultResponseURLUses, as on Slack.
func (s *Server) SetResponseURLUses(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.respLimit = n
}

// SetToken makes every Web API method other than the token-less endpoints
// (response_url, upload, apps.connections.open which takes an app token)
// answer invalid_auth for any other token, and not_authed for none.
// "" turns checking off.
func (s *Server) SetToken(tok string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.token = tok
}

// FailNext makes the next n calls of method fail, after any failures
// already queued for it:
//   - status 429: HTTP 429 with Retry-After: retryAfter, which slack-go turns
//     into *slack.RateLimitedError;
//   - status 0 or 200: HTTP 200 {"ok":false,"error":slackError}
//     (slackError defaults to "internal_error");
//   - any other status: that status, with slackError (or the status text)
//     as a plain-text body.
//
// method is a Web API method name or MethodResponseURL / MethodUpload.
func (s *Server) FailNext(method string, n int, status int, retryAfter int, slackError string) {
	if n <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults[method] = append(s.faults[method], &fault{n: n, status: status, retryAfter: retryAfter, slackError: slackError})
}

// NotInChannel makes chat.postMessage and chat.update to channel answer
// not_in_channel, and conversations.info report is_member false.
func (s *Server) NotInChannel(channel string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.notIn[channel] = true
}

// JoinChannel undoes NotInChannel, as inviting the bot would.
func (s *Server) JoinChannel(channel string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.notIn, channel)
}

// Calls returns every call so far, in the order they were answered.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

// Messages returns the current state of the messages posted to channel, in
// ts order (thread replies included; ThreadTS tells them apart).
func (s *Server) Messages(channel string) []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	cs := s.channels[channel]
	if cs == nil {
		return nil
	}
	out := make([]Message, len(cs.msgs))
	for i, m := range cs.msgs {
		out[i] = *m
	}
	return out
}

// Uploads returns the bytes received for each file ID through the external
// upload flow (whether or not it was completed).
func (s *Server) Uploads() map[string][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string][]byte{}
	for id, u := range s.uploads {
		if u.uploaded {
			out[id] = slices.Clone(u.data)
		}
	}
	return out
}

// Reset forgets calls, messages, uploads and response_url uses, keeping the
// configuration (token, queued failures, channel membership). Benchmarks
// use it to keep memory flat.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = nil
	s.channels = map[string]*channelState{}
	s.uploads = map[string]*upload{}
	s.respUses = map[string]int{}
	s.gen++
	s.notifyLocked()
}

// Text returns c.Text plus all text inside its blocks (section text and
// fields, headers, context elements, rich text, buttons, ...) and uploaded
// file titles, one piece per line, so a test can look for a string however
// the bot chose to format it.
func (s *Server) Text(c Call) string {
	var titles []string
	for _, f := range c.Files {
		if f.Title != "" {
			titles = append(titles, f.Title)
		}
	}
	return joinText(c.Text, c.Blocks, c.BlocksJSON, titles...)
}

// WaitFor returns the first call, made before or during the wait, that pred
// accepts. It wakes on every new call rather than polling. On timeout it
// fails t with what and a dump of the calls seen. pred runs without the
// fake's lock held, so it may call the fake's methods.
func (s *Server) WaitFor(t testing.TB, timeout time.Duration, what string, pred func(Call) bool) Call {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	next, gen := 0, -1
	scan := func() (Call, bool, <-chan struct{}) {
		s.mu.Lock()
		if gen != s.gen {
			next, gen = 0, s.gen
		}
		batch := slices.Clone(s.calls[next:])
		next = len(s.calls)
		changed := s.changed
		s.mu.Unlock()
		for _, c := range batch {
			if pred(c) {
				return c, true, nil
			}
		}
		return Call{}, false, changed
	}
	for {
		c, ok, changed := scan()
		if ok {
			return c
		}
		select {
		case <-changed:
		case <-timer.C:
			// A call may have landed together with the timer firing.
			if c, ok, _ := scan(); ok {
				return c
			}
			calls := s.Calls()
			var b strings.Builder
			fmt.Fprintf(&b, "slackfake: timed out after %s waiting for %s; %d calls seen:", timeout, what, len(calls))
			for i, c := range calls {
				fmt.Fprintf(&b, "\n  #%d %s", i, c)
			}
			t.Fatalf("%s", b.String())
			// Only reached with a fake TB whose Fatalf returns.
			return Call{}
		}
	}
}

// record appends c and wakes waiters; s.mu must be held.
func (s *Server) record(c Call) {
	s.calls = append(s.calls, c)
	s.notifyLocked()
}

func (s *Server) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// nextTS hands out unique, increasing ts values 100µs apart; s.mu must be
// held. Fixed-width seconds keep string order equal to numeric order.
func (s *Server) nextTS() string {
	s.seq++
	micros := s.seq * 100
	return fmt.Sprintf("%d.%06d", s.tsBase+micros/1_000_000, micros%1_000_000)
}

func clip(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n]) + "…"
}
