package slackfake

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/slack-go/slack"
	"github.com/slack-go/slack/slacktest"
)

// maxBody bounds what one request may send; uploads in tests are small.
const maxBody = 64 << 20

// maxTextRunes is where chat.postMessage starts answering msg_too_long.
const maxTextRunes = 40000

// slacktestDefaults are the routes slacktest serves itself that this fake
// leaves alone. They are served by a second slacktest server behind a proxy
// so that they, too, are recorded and obey FailNext and SetToken: a route
// registered here directly would shadow slacktest's handler for good.
// "/ws" is not listed: websocket clients connect to the URL rtm.connect
// returns, which is the inner server's own.
var slacktestDefaults = []string{
	"rtm.start", "rtm.connect",
	"conversations.create", "conversations.setTopic", "conversations.setPurpose",
	"conversations.rename", "conversations.invite", "conversations.inviteShared",
	"users.info", "users.lookupByEmail", "bots.info", "reactions.add",
	"apps.connections.open",
}

// noAuth lists methods that do not take the bot token: response_url and the
// upload URL are pre-authorised URLs, apps.connections.open takes the app
// token.
var noAuth = map[string]bool{
	MethodResponseURL:       true,
	MethodUpload:            true,
	"apps.connections.open": true,
}

type request struct {
	r         *http.Request
	body      []byte
	form      url.Values
	json      bool
	multipart bool
	file      []byte // the file part of a multipart body
}

// reply is an answer decided under the lock and written after it is released.
type reply struct {
	status int
	header http.Header
	json   any    // JSON body when non-nil
	text   string // plain-text body otherwise
	err    string // recorded as Call.Error
}

func (rp reply) write(w http.ResponseWriter) {
	for k, v := range rp.header {
		w.Header()[k] = v
	}
	if rp.json != nil {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(rp.status)
		_ = json.NewEncoder(w).Encode(rp.json)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(rp.status)
	_, _ = io.WriteString(w, rp.text)
}

type obj = map[string]any

func okReply(fields obj) reply {
	fields["ok"] = true
	return reply{status: http.StatusOK, json: fields}
}

// slackError is Slack's usual failure: HTTP 200 with ok false. messages
// become response_metadata.messages, which is where Slack explains
// invalid_blocks and slack-go surfaces it in SlackErrorResponse.
func slackError(code string, messages ...string) reply {
	body := obj{"ok": false, "error": code}
	if len(messages) > 0 {
		body["response_metadata"] = obj{"messages": messages}
	}
	return reply{status: http.StatusOK, json: body, err: code}
}

func httpError(status int, text string) reply {
	return reply{status: status, text: text, err: text}
}

// handler decides the answer to one call and fills in c; it runs with s.mu
// held so that state changes and the call's place in Calls agree.
type handler func(req *request, c *Call) reply

func (s *Server) bind(cz slacktest.Customize) {
	api := map[string]handler{
		"chat.postMessage":             s.postMessage,
		"chat.update":                  s.update,
		"chat.postEphemeral":           s.postEphemeral,
		"auth.test":                    s.authTest,
		"conversations.info":           s.conversationsInfo,
		"files.getUploadURLExternal":   s.getUploadURL,
		"files.completeUploadExternal": s.completeUpload,
	}
	for method, h := range api {
		cz.Handle("/"+method, func(w http.ResponseWriter, r *http.Request) {
			s.serve(w, r, method, h)
		})
	}
	cz.Handle("/"+MethodResponseURL+"/", func(w http.ResponseWriter, r *http.Request) {
		s.serve(w, r, MethodResponseURL, s.responseURL)
	})
	cz.Handle("/"+MethodUpload+"/", func(w http.ResponseWriter, r *http.Request) {
		s.serve(w, r, MethodUpload, s.upload)
	})
	for _, method := range slacktestDefaults {
		cz.Handle("/"+method, func(w http.ResponseWriter, r *http.Request) {
			s.serve(w, r, method, nil)
		})
	}
	// Unknown methods still get slacktest's 404, but show up in Calls so a
	// test dump reveals a method the fake does not serve.
	cz.Handle("/", func(w http.ResponseWriter, r *http.Request) {
		s.serve(w, r, strings.TrimPrefix(r.URL.Path, "/"), func(*request, *Call) reply {
			return httpError(http.StatusNotFound, "404 page not found")
		})
	})
}

// serve runs one call: failure injection, then the token check, then h, or
// the slacktest default when h is nil.
func (s *Server) serve(w http.ResponseWriter, r *http.Request, method string, h handler) {
	req, perr := readRequest(r)
	c := req.call(method)

	s.mu.Lock()
	var rp reply
	switch {
	case perr != nil:
		rp = httpError(http.StatusBadRequest, perr.Error())
	default:
		var failed bool
		if rp, failed = s.takeFault(method); failed {
			break
		}
		if s.token != "" && !noAuth[method] {
			if c.Token == "" {
				rp = slackError("not_authed")
				break
			}
			if c.Token != s.token {
				rp = slackError("invalid_auth")
				break
			}
		}
		if h == nil {
			s.mu.Unlock()
			s.forward(w, req, c)
			return
		}
		rp = h(req, &c)
	}
	c.Status, c.Error = rp.status, rp.err
	s.record(c)
	s.mu.Unlock()
	rp.write(w)
}

// forward hands a call to slacktest's default handler and records it once
// answered.
func (s *Server) forward(w http.ResponseWriter, req *request, c Call) {
	r := req.r
	r.Body = io.NopCloser(bytes.NewReader(req.body))
	r.ContentLength = int64(len(req.body))
	sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
	s.proxy.ServeHTTP(sw, r)
	c.Status = sw.status
	if sw.status != http.StatusOK {
		c.Error = http.StatusText(sw.status)
	}
	s.mu.Lock()
	s.record(c)
	s.mu.Unlock()
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach Flush and Hijack underneath.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (s *Server) takeFault(method string) (reply, bool) {
	q := s.faults[method]
	if len(q) == 0 {
		return reply{}, false
	}
	f := q[0]
	if f.n--; f.n <= 0 {
		s.faults[method] = q[1:]
	}
	switch {
	case f.status == http.StatusTooManyRequests:
		return reply{
			status: http.StatusTooManyRequests,
			header: http.Header{"Retry-After": {strconv.Itoa(max(f.retryAfter, 0))}},
			json:   obj{"ok": false, "error": "ratelimited"},
			err:    "ratelimited",
		}, true
	case f.status == 0 || f.status == http.StatusOK:
		code := f.slackError
		if code == "" {
			code = "internal_error"
		}
		return slackError(code), true
	default:
		text := f.slackError
		if text == "" {
			text = http.StatusText(f.status)
		}
		return httpError(f.status, text), true
	}
}

func readRequest(r *http.Request) (*request, error) {
	req := &request{r: r, form: url.Values{}}
	for k, v := range r.URL.Query() {
		req.form[k] = v
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
	if err != nil {
		return req, fmt.Errorf("reading body: %w", err)
	}
	req.body = body
	ct, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch {
	case ct == "application/json":
		req.json = true
		if len(bytes.TrimSpace(body)) == 0 {
			return req, nil
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(body, &m); err != nil {
			return req, fmt.Errorf("invalid JSON body: %w", err)
		}
		for k, raw := range m {
			req.form.Set(k, flatten(raw))
		}
	case strings.HasPrefix(ct, "multipart/"):
		req.multipart = true
		mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
		for {
			p, err := mr.NextPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				return req, fmt.Errorf("invalid multipart body: %w", err)
			}
			data, err := io.ReadAll(p)
			if err != nil {
				return req, fmt.Errorf("invalid multipart body: %w", err)
			}
			if p.FileName() != "" && req.file == nil {
				req.file = data
				continue
			}
			req.form.Add(p.FormName(), string(data))
		}
	case ct == "" || ct == "application/x-www-form-urlencoded":
		vals, err := url.ParseQuery(string(body))
		if err != nil && ct != "" {
			return req, fmt.Errorf("invalid form body: %w", err)
		}
		for k, v := range vals {
			req.form[k] = append(req.form[k], v...)
		}
	}
	return req, nil
}

// flatten turns a top-level JSON value into a form value: strings as they
// are, null as "", anything else as its JSON text, which matches how
// form-encoded methods carry blocks and booleans.
func flatten(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	if string(raw) == "null" {
		return ""
	}
	var buf bytes.Buffer
	if json.Compact(&buf, raw) == nil {
		return buf.String()
	}
	return string(raw)
}

// call fills in what every method has in common; handlers refine it.
func (req *request) call(method string) Call {
	f := req.form
	c := Call{
		Method:     method,
		Channel:    f.Get("channel"),
		TS:         f.Get("ts"),
		ThreadTS:   f.Get("thread_ts"),
		User:       f.Get("user"),
		Text:       f.Get("text"),
		BlocksJSON: f.Get("blocks"),
		Form:       f,
		At:         time.Now(),
	}
	if c.Channel == "" {
		c.Channel = f.Get("channel_id")
	}
	if a := req.r.Header.Get("Authorization"); strings.HasPrefix(a, "Bearer ") {
		c.Token = strings.TrimPrefix(a, "Bearer ")
	} else {
		c.Token = f.Get("token")
	}
	if c.BlocksJSON != "" {
		_ = json.Unmarshal([]byte(c.BlocksJSON), &c.Blocks)
	}
	return c
}

// checkContent applies Slack's message limits so that a message the real API
// would reject fails here too.
func checkContent(c *Call, form url.Values) (reply, bool) {
	if c.BlocksJSON != "" {
		if msgs := validateBlocks(c.BlocksJSON); len(msgs) > 0 {
			return slackError("invalid_blocks", msgs...), false
		}
	}
	if utf8.RuneCountInString(c.Text) > maxTextRunes {
		return slackError("msg_too_long"), false
	}
	att := form.Get("attachments")
	if c.Text == "" && len(c.Blocks.BlockSet) == 0 && (att == "" || att == "[]") {
		return slackError("no_text"), false
	}
	return reply{}, true
}

func (s *Server) channel(id string) *channelState {
	cs := s.channels[id]
	if cs == nil {
		cs = &channelState{byTS: map[string]*Message{}}
		s.channels[id] = cs
	}
	return cs
}

func wireMessage(m *Message, blocksJSON string) obj {
	o := obj{
		"type": "message", "subtype": "bot_message",
		"text": m.Text, "ts": m.TS,
		"user": BotUserID, "bot_id": BotID,
	}
	if m.ThreadTS != "" {
		o["thread_ts"] = m.ThreadTS
	}
	if blocksJSON != "" {
		o["blocks"] = json.RawMessage(blocksJSON)
	}
	return o
}

func (s *Server) postMessage(req *request, c *Call) reply {
	if c.Channel == "" {
		return slackError("channel_not_found")
	}
	if s.notIn[c.Channel] {
		return slackError("not_in_channel")
	}
	if rp, ok := checkContent(c, req.form); !ok {
		return rp
	}
	m := &Message{
		TS: s.nextTS(), ThreadTS: c.ThreadTS, Channel: c.Channel,
		Text: c.Text, Blocks: c.Blocks,
	}
	cs := s.channel(c.Channel)
	cs.msgs = append(cs.msgs, m)
	cs.byTS[m.TS] = m
	c.TS = m.TS
	return okReply(obj{"channel": c.Channel, "ts": m.TS, "message": wireMessage(m, c.BlocksJSON)})
}

func (s *Server) update(req *request, c *Call) reply {
	if c.Channel == "" {
		return slackError("channel_not_found")
	}
	if s.notIn[c.Channel] {
		return slackError("not_in_channel")
	}
	var m *Message
	if cs := s.channels[c.Channel]; cs != nil {
		m = cs.byTS[c.TS]
	}
	if m == nil {
		return slackError("message_not_found")
	}
	if rp, ok := checkContent(c, req.form); !ok {
		return rp
	}
	// Slack keeps whatever an update does not mention; blocks=[] clears.
	if req.form.Has("text") {
		m.Text = c.Text
	}
	if req.form.Has("blocks") {
		m.Blocks = c.Blocks
	}
	m.Updates++
	c.ThreadTS = m.ThreadTS
	return okReply(obj{"channel": c.Channel, "ts": m.TS, "text": m.Text, "message": wireMessage(m, c.BlocksJSON)})
}

func (s *Server) postEphemeral(req *request, c *Call) reply {
	if c.Channel == "" {
		return slackError("channel_not_found")
	}
	if c.User == "" {
		return slackError("user_not_found")
	}
	if rp, ok := checkContent(c, req.form); !ok {
		return rp
	}
	c.TS = s.nextTS()
	return okReply(obj{"message_ts": c.TS})
}

func (s *Server) authTest(*request, *Call) reply {
	return okReply(obj{
		"url": TeamURL, "team": TeamName, "user": BotName,
		"team_id": TeamID, "user_id": BotUserID, "bot_id": BotID,
	})
}

func (s *Server) conversationsInfo(_ *request, c *Call) reply {
	if c.Channel == "" {
		return slackError("channel_not_found")
	}
	name := strings.ToLower(c.Channel)
	return okReply(obj{"channel": obj{
		"id": c.Channel, "name": name, "name_normalized": name,
		"is_channel": true, "is_private": false, "is_archived": false,
		"is_member": !s.notIn[c.Channel], "created": s.tsBase,
	}})
}

func (s *Server) getUploadURL(req *request, c *Call) reply {
	name := req.form.Get("filename")
	length, err := strconv.Atoi(req.form.Get("length"))
	if name == "" || err != nil || length <= 0 {
		return slackError("invalid_arguments")
	}
	s.fileSeq++
	id := fmt.Sprintf("F%08d", s.fileSeq)
	s.uploads[id] = &upload{filename: name, length: length}
	c.Files = []slack.FileSummary{{ID: id}}
	return okReply(obj{"upload_url": s.base + MethodUpload + "/" + id, "file_id": id})
}

func (s *Server) upload(req *request, c *Call) reply {
	id := strings.TrimPrefix(req.r.URL.Path, "/"+MethodUpload+"/")
	u := s.uploads[id]
	if u == nil {
		return httpError(http.StatusNotFound, "file not found")
	}
	data := req.body
	if req.multipart {
		data = req.file
	}
	u.data, u.uploaded = slices.Clone(data), true
	c.Files = []slack.FileSummary{{ID: id}}
	return reply{status: http.StatusOK, text: fmt.Sprintf("OK - %d", len(data))}
}

func (s *Server) completeUpload(req *request, c *Call) reply {
	var files []slack.FileSummary
	if err := json.Unmarshal([]byte(req.form.Get("files")), &files); err != nil || len(files) == 0 {
		return slackError("invalid_arguments")
	}
	for i, f := range files {
		u := s.uploads[f.ID]
		if u == nil || !u.uploaded {
			return slackError("file_not_found")
		}
		if f.Title == "" {
			files[i].Title = u.filename
		}
	}
	if c.Channel == "" {
		c.Channel, _, _ = strings.Cut(req.form.Get("channels"), ",")
	}
	c.Text = req.form.Get("initial_comment")
	c.Files = files
	return okReply(obj{"files": files})
}

func (s *Server) responseURL(req *request, c *Call) reply {
	id := strings.TrimPrefix(req.r.URL.Path, "/"+MethodResponseURL+"/")
	c.ResponseID, c.Channel = id, id
	if !req.json {
		return httpError(http.StatusBadRequest, "invalid_payload")
	}
	c.ResponseType = req.form.Get("response_type")
	if c.ResponseType == "" {
		c.ResponseType = "ephemeral" // Slack's default
	}
	c.ReplaceOriginal = req.form.Get("replace_original") == "true"
	c.DeleteOriginal = req.form.Get("delete_original") == "true"
	if s.respLimit > 0 && s.respUses[id] >= s.respLimit {
		return httpError(http.StatusNotFound, "expired_url")
	}
	if c.BlocksJSON != "" && len(validateBlocks(c.BlocksJSON)) > 0 {
		return httpError(http.StatusBadRequest, "invalid_blocks")
	}
	if !c.DeleteOriginal && c.Text == "" && len(c.Blocks.BlockSet) == 0 {
		return httpError(http.StatusBadRequest, "no_text")
	}
	s.respUses[id]++
	return okReply(obj{})
}
