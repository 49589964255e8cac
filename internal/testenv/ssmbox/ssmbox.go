// Package ssmbox is a protocol-level stand-in for AWS Systems Manager Run
// Command that really runs the commands it is sent, each registered instance
// playing a CircleCI Enterprise Services box. moto's SSM runs nothing and
// lacks ListCommandInvocations; this server answers the real AWS JSON 1.1
// protocol (X-Amz-Target AmazonSSM.<Op>), so the bot's SSM code runs through
// the real SDK:
//
//	srv := ssmbox.New(t)
//	box := srv.AddBox(instanceID)
//	client := ssm.NewFromConfig(motoserver.AWSConfig(srv.URL))
//
// (For the bot binary, point only SSM here and the rest at moto with the
// SDK's per-service variable: AWS_ENDPOINT_URL=<moto>, AWS_ENDPOINT_URL_SSM=
// <srv.URL>.)
//
// Operations: SendCommand (AWS-RunShellScript only; parameters commands,
// executionTimeout, workingDirectory; InstanceIds, not Targets),
// GetCommandInvocation, ListCommandInvocations, ListCommands, CancelCommand,
// DescribeInstanceInformation. Anything else answers
// UnknownOperationException.
//
// # How a command runs
//
// Like the SSM agent on Linux, the commands are joined with newlines into
// _script.sh in a per-command orchestration directory
// ($BOX_ROOT/var/lib/amazon/ssm/<instance>/document/orchestration/<command>/
// awsrunShellScript/0.awsrunShellScript) and run as `sh -c <script>` in its
// own process group, with that directory as working directory unless
// workingDirectory is given. That is /bin/sh (dash here and on the Ubuntu
// Services box) without -e: a script that wants bash and errexit must say so
// itself, which is what works on a real box too:
//
//	#!/bin/bash
//	set -euo pipefail
//
// (WithShell("bash", "-e") changes this for tests that want it.) Output is
// reported when the command ends, as the agent does: the first 24,000
// characters of stdout and stderr in GetCommandInvocation, 2,500 characters
// of both in ListCommandInvocations' plugin Output. A failed command's stderr
// ends with the agent's "failed to run commands: exit status N". Timeouts
// (executionTimeout, default 3600 s) and CancelCommand kill the process
// group; ResponseCode is then 137 as the agent reports it, and -1 while a
// command has not finished. As with the agent, a background child that keeps
// stdout or stderr open keeps the command running; one that redirects them
// (nohup ... >/dev/null 2>&1 &) outlives the command, until Close kills it.
// A box set offline does not stop commands already running on it.
//
// # Paths: the box's filesystem is $BOX_ROOT
//
// Each box has its own root directory, and every absolute path P of a real
// Services box is $BOX_ROOT$P here: /data is $BOX_ROOT/data, /tmp is
// $BOX_ROOT/tmp. Commands run with BOX_ROOT set to that root; on a real box
// it is unset. So the bot's scripts must write every box path as
// ${BOX_ROOT:-}P, which is the same path on a real box:
//
//	mkdir -p "${BOX_ROOT:-}/tmp/backup-$ts"
//	circleci-backup "${BOX_ROOT:-}/tmp/backup-$ts"
//	aws s3 cp "${BOX_ROOT:-}/tmp/backup-$ts/circleci-data-export.tar.bz2" "s3://$bucket/$key"
//
// Programs are found by name on PATH, never by absolute path. The
// workingDirectory parameter is a box path and is mapped the same way. The
// stand-ins refuse a path outside $BOX_ROOT with a message naming this
// convention, so a script that forgets the prefix fails in tests instead of
// writing into the test machine's own /tmp. (A mount namespace would let
// scripts say /data verbatim, but needs root and Linux; the prefix is
// portable and keeps scripts honest about which paths are the box's.)
//
// # The box
//
// $BOX_ROOT/bin comes first on PATH and holds bash stand-ins for the box's
// CircleCI tools: circleci-backup DIR, circleci-restore TARBALL, replicated
// (apps; app <id> start|stop|restart|status; admin get-secret-token) and
// sudo (runs its command: SSM commands already run as root). Everything else
// (tar, bzip2, df, curl, aws) is the test machine's own. $BOX_ROOT/data holds
// a small fake datastore (DefaultData). The environment is minimal and
// built here, not inherited: BOX_ROOT, PATH, HOME=$BOX_ROOT/root,
// TMPDIR=$BOX_ROOT/tmp, LANG, AWS_EC2_METADATA_DISABLED=true (so an aws CLI
// without credentials fails at once instead of probing the metadata
// service), plus Box.SetEnv values, e.g. AWS_ENDPOINT_URL and test
// credentials so the box's `aws s3 cp` reaches moto. The box's settings
// and the fake Replicated state live in $BOX_ROOT/.ssmbox.
package ssmbox

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Account is the account ID in error messages.
const Account = "123456789012"

// Region is reported as the output region of commands.
const Region = "us-east-1"

// DocumentName is the only SSM document the stand-in runs.
const DocumentName = "AWS-RunShellScript"

const (
	// PluginName is the one plugin of AWS-RunShellScript.
	PluginName = "aws:runShellScript"
	// StdoutLimit and StderrLimit are how many characters of output
	// GetCommandInvocation returns, as in real SSM.
	StdoutLimit = 24000
	StderrLimit = 24000
	// PluginOutputLimit is how many characters of combined output
	// ListCommandInvocations returns per plugin.
	PluginOutputLimit = 2500
	// StoppedExitCode is the SSM agent's ResponseCode for a command killed by
	// a timeout or a cancel (128 + SIGKILL).
	StoppedExitCode = 137

	defaultExecutionTimeout = 3600
	maxExecutionTimeout     = 172800
	defaultDeliveryTimeout  = 3600
	captureLimit            = 1 << 20
	targetPrefix            = "AmazonSSM."
)

// Server is a running SSM stand-in. Its methods are safe for concurrent use.
type Server struct {
	// URL is the endpoint for the SDK (BaseEndpoint or AWS_ENDPOINT_URL_SSM).
	URL string

	t     testing.TB
	http  *httptest.Server
	base  string // parent of the boxes' roots
	shell []string

	mu       sync.Mutex
	boxes    map[string]*Box
	commands []*command // in order sent, rejected ones included
	byID     map[string]*command
	lag      int
	register func(instanceID string) bool
	gate     func(instanceID string) bool
	calls    map[string]int
	closed   bool
	running  sync.WaitGroup
}

// Option configures New.
type Option func(*Server)

// WithInvocationLag makes GetCommandInvocation answer InvocationDoesNotExist
// to the first k calls for each invocation, as real SSM does for a moment
// after SendCommand. SetInvocationLag changes it later.
func WithInvocationLag(k int) Option {
	return func(s *Server) { s.lag = max(k, 0) }
}

// WithShell runs each command's script as `argv... <script path>` instead
// of the agent's `sh -c <script path>`; WithShell("bash", "-e") runs it
// with bash and errexit.
func WithShell(argv ...string) Option {
	return func(s *Server) {
		if len(argv) > 0 {
			s.shell = slices.Clone(argv)
		}
	}
}

// RegisterNew makes an instance the server has not seen a box — as the
// SSM agent of a freshly launched instance registers itself — the first
// time a command is sent to it, if fn says yes (e.g. the instance exists
// in moto). It stands in for a restored Services box coming up.
func (s *Server) RegisterNew(fn func(instanceID string) bool) {
	s.mu.Lock()
	s.register = fn
	s.mu.Unlock()
}

// SetAgentGate makes SendCommand to an instance fail as to an offline one
// (InvalidInstanceId) while up(instanceID) says no, whatever SetOnline
// said: the SSM agent of a box that is stopped, booting or rebooting does
// not answer. A timing model (motoserver.WithTiming's AgentOnline) is the
// usual gate; nil removes it. up is called without the server's lock.
func (s *Server) SetAgentGate(up func(instanceID string) bool) {
	s.mu.Lock()
	s.gate = up
	s.mu.Unlock()
}

func (s *Server) agentsAway(ids []string) map[string]bool {
	s.mu.Lock()
	up := s.gate
	s.mu.Unlock()
	if up == nil {
		return nil
	}
	away := map[string]bool{}
	for _, id := range ids {
		if !up(id) {
			away[id] = true
		}
	}
	return away
}

func (s *Server) registerNew(ids []string) {
	s.mu.Lock()
	fn := s.register
	var unknown []string
	for _, id := range ids {
		if s.boxes[id] == nil {
			unknown = append(unknown, id)
		}
	}
	s.mu.Unlock()
	for _, id := range unknown {
		if fn != nil && fn(id) {
			// A restored box's app does not start by itself (the seed's
			// note), so its app starts stopped.
			if b, err := s.addBox(id); err == nil {
				_ = b.writeSetting("app_state", AppStopped)
			}
		}
	}
}

// Box returns the box of an instance, or nil.
func (s *Server) Box(instanceID string) *Box {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.boxes[instanceID]
}

// New starts a server; t.Cleanup closes it (killing any command still
// running) before the boxes' directories are removed.
func New(t testing.TB, opts ...Option) *Server {
	t.Helper()
	if err := checkTools(); err != nil {
		t.Fatalf("ssmbox: %v", err)
	}
	s := &Server{
		t:     t,
		base:  t.TempDir(), // registered before Close's cleanup: removed after it
		shell: []string{"sh", "-c"},
		boxes: map[string]*Box{},
		byID:  map[string]*command{},
		calls: map[string]int{},
	}
	for _, o := range opts {
		o(s)
	}
	s.http = httptest.NewServer(http.HandlerFunc(s.serveHTTP))
	s.URL = s.http.URL
	t.Cleanup(s.Close)
	return s
}

// Close kills every running command, waits for them, and stops the server.
// Safe to call more than once.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	for _, c := range s.commands {
		for _, inv := range c.invocations {
			if inv.finished() {
				killPgid(inv.pgid) // background children it left running
			} else {
				inv.stop(false)
			}
		}
	}
	s.mu.Unlock()
	s.running.Wait()
	s.http.Close()
}

// SetInvocationLag sets how many GetCommandInvocation calls for each
// invocation of commands sent from now on answer InvocationDoesNotExist.
func (s *Server) SetInvocationLag(k int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lag = max(k, 0)
}

// CallCount is how many requests for operation op (e.g. "GetCommandInvocation")
// the server has answered, errors included.
func (s *Server) CallCount(op string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[op]
}

// Command is one SendCommand request as received.
type Command struct {
	CommandID      string // empty when rejected
	InstanceIDs    []string
	DocumentName   string
	Lines          []string            // Parameters["commands"]
	Parameters     map[string][]string // as sent
	Comment        string
	TimeoutSeconds int32 // delivery timeout as sent; 0 when absent
	RequestedAt    time.Time
	// Rejected is the error code SendCommand answered (e.g.
	// "InvalidInstanceId"), empty when the command was accepted.
	Rejected string
}

// Commands returns every SendCommand received, rejected ones included, in
// order.
func (s *Server) Commands() []Command {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Command, 0, len(s.commands))
	for _, c := range s.commands {
		out = append(out, c.record())
	}
	return out
}

// apiError is an AWS JSON 1.1 error answer.
type apiError struct {
	status  int
	code    string
	message string
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func errf(status int, code, format string, args ...any) *apiError {
	return &apiError{status: status, code: code, message: fmt.Sprintf(format, args...)}
}

func validation(format string, args ...any) *apiError {
	return errf(http.StatusBadRequest, "ValidationException", format, args...)
}

type handler func(s *Server, body []byte) (any, *apiError)

var handlers = map[string]handler{
	"SendCommand":                 (*Server).sendCommand,
	"GetCommandInvocation":        (*Server).getCommandInvocation,
	"ListCommandInvocations":      (*Server).listCommandInvocations,
	"ListCommands":                (*Server).listCommands,
	"CancelCommand":               (*Server).cancelCommand,
	"DescribeInstanceInformation": (*Server).describeInstanceInformation,
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	reqID := newUUID()
	w.Header().Set("x-amzn-RequestId", reqID)
	target := r.Header.Get("X-Amz-Target")
	op, ok := strings.CutPrefix(target, targetPrefix)
	if r.Method != http.MethodPost || !ok {
		writeError(w, errf(http.StatusBadRequest, "UnknownOperationException", "ssmbox: want POST with X-Amz-Target %s<Operation>, got %s %q", targetPrefix, r.Method, target))
		return
	}
	s.mu.Lock()
	s.calls[op]++
	s.mu.Unlock()
	h, ok := handlers[op]
	if !ok {
		writeError(w, errf(http.StatusBadRequest, "UnknownOperationException", "ssmbox does not implement %s", op))
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 4<<20))
	if err != nil {
		writeError(w, errf(http.StatusBadRequest, "SerializationException", "read body: %v", err))
		return
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		body = []byte("{}")
	}
	out, aerr := h(s, body)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	b, err := json.Marshal(out)
	if err != nil {
		writeError(w, errf(http.StatusInternalServerError, "InternalServerError", "encode answer: %v", err))
		return
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Write(b)
}

func writeError(w http.ResponseWriter, e *apiError) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-ErrorType", e.code)
	w.WriteHeader(e.status)
	b, _ := json.Marshal(map[string]string{"__type": e.code, "Message": e.message})
	w.Write(b)
}

func decode(body []byte, v any) *apiError {
	if err := json.Unmarshal(body, v); err != nil {
		return errf(http.StatusBadRequest, "SerializationException", "ssmbox: cannot parse request: %v", err)
	}
	return nil
}

// --- SendCommand -------------------------------------------------------------

type sendCommandInput struct {
	DocumentName   string
	InstanceIds    []string
	Targets        []json.RawMessage
	Parameters     map[string][]string
	Comment        string
	TimeoutSeconds *int32
}

func (s *Server) sendCommand(body []byte) (any, *apiError) {
	var in sendCommandInput
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	now := time.Now().UTC()
	c := &command{
		server:       s,
		instanceIDs:  slices.Clone(in.InstanceIds),
		documentName: in.DocumentName,
		parameters:   in.Parameters,
		comment:      in.Comment,
		requested:    now,
		executionTO:  defaultExecutionTimeout,
	}
	if in.TimeoutSeconds != nil {
		c.timeoutSeconds = *in.TimeoutSeconds
	}
	s.registerNew(in.InstanceIds)
	away := s.agentsAway(in.InstanceIds)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errf(http.StatusInternalServerError, "InternalServerError", "ssmbox is closed")
	}
	s.commands = append(s.commands, c)
	boxes, e := s.validateSend(&in, c, away)
	if e != nil {
		c.rejected = e.code
		return nil, e
	}
	c.id = newUUID()
	s.byID[c.id] = c
	for _, b := range boxes {
		inv := &invocation{cmd: c, box: b, status: statusPending, exitCode: -1, lagLeft: s.lag}
		c.invocations = append(c.invocations, inv)
		s.running.Add(1)
		go inv.run()
	}
	return map[string]any{"Command": c.wire()}, nil
}

// validateSend checks a SendCommand as SSM would; s.mu is held. away are
// the instances whose agent the gate says is not up.
func (s *Server) validateSend(in *sendCommandInput, c *command, away map[string]bool) ([]*Box, *apiError) {
	doc := in.DocumentName
	if i := strings.LastIndex(doc, ":document/"); i >= 0 {
		doc = doc[i+len(":document/"):]
	}
	if doc == "" {
		return nil, validation("1 validation error detected: Value null at 'documentName' failed to satisfy constraint: Member must not be null")
	}
	if doc != DocumentName {
		return nil, errf(http.StatusBadRequest, "InvalidDocument", "Document %s does not exist (ssmbox runs only %s)", in.DocumentName, DocumentName)
	}
	if len(in.Targets) > 0 {
		return nil, validation("ssmbox supports InstanceIds, not Targets")
	}
	if len(in.InstanceIds) == 0 {
		return nil, validation("1 validation error detected: InstanceIds or Targets must be specified")
	}
	if len(in.InstanceIds) > 50 {
		return nil, validation("1 validation error detected: Value at 'instanceIds' failed to satisfy constraint: Member must have length less than or equal to 50")
	}
	if c.timeoutSeconds != 0 && (c.timeoutSeconds < 30 || c.timeoutSeconds > 2592000) {
		return nil, validation("1 validation error detected: Value '%d' at 'timeoutSeconds' failed to satisfy constraint: Member must have value between 30 and 2592000", c.timeoutSeconds)
	}
	for k, v := range in.Parameters {
		switch k {
		case "commands":
			if len(v) == 0 {
				return nil, errf(http.StatusBadRequest, "InvalidParameters", "Parameter \"commands\" must not be empty.")
			}
		case "executionTimeout":
			n, err := strconv.Atoi(firstOf(v))
			if len(v) != 1 || err != nil || n < 1 || n > maxExecutionTimeout {
				return nil, errf(http.StatusBadRequest, "InvalidParameters", "Parameter \"executionTimeout\" %q is not valid: it must be a whole number of seconds from 1 to %d.", v, maxExecutionTimeout)
			}
			c.executionTO = n
		case "workingDirectory":
			if len(v) > 1 {
				return nil, errf(http.StatusBadRequest, "InvalidParameters", "Parameter \"workingDirectory\" takes one value.")
			}
		default:
			return nil, errf(http.StatusBadRequest, "InvalidParameters", "Parameter %q is not defined in document %s (parameters: commands, workingDirectory, executionTimeout).", k, DocumentName)
		}
	}
	if len(in.Parameters["commands"]) == 0 {
		return nil, errf(http.StatusBadRequest, "InvalidParameters", "Parameters are not valid: required parameter \"commands\" is missing.")
	}
	seen := map[string]bool{}
	var bad []string
	boxes := make([]*Box, 0, len(in.InstanceIds))
	for _, id := range in.InstanceIds {
		if seen[id] {
			return nil, errf(http.StatusBadRequest, "DuplicateInstanceId", "Instance %s appears more than once.", id)
		}
		seen[id] = true
		b := s.boxes[id]
		if b == nil || !b.online || away[id] {
			bad = append(bad, id)
			continue
		}
		boxes = append(boxes, b)
	}
	if len(bad) > 0 {
		return nil, errf(http.StatusBadRequest, "InvalidInstanceId", "Instances [[%s]] not in a valid state for account %s", strings.Join(bad, ", "), Account)
	}
	return boxes, nil
}

// --- GetCommandInvocation ----------------------------------------------------

func (s *Server) getCommandInvocation(body []byte) (any, *apiError) {
	var in struct {
		CommandId  string
		InstanceId string
		PluginName string
	}
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	if in.CommandId == "" || in.InstanceId == "" {
		return nil, validation("1 validation error detected: CommandId and InstanceId are required")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	inv := s.invocation(in.CommandId, in.InstanceId)
	if inv == nil || inv.lagLeft > 0 {
		if inv != nil {
			inv.lagLeft--
		}
		return nil, errf(http.StatusBadRequest, "InvocationDoesNotExist", "An invocation of command %s on instance %s does not exist.", in.CommandId, in.InstanceId)
	}
	if in.PluginName != "" && in.PluginName != PluginName {
		return nil, errf(http.StatusBadRequest, "InvalidPluginName", "Plugin %s is not part of the command's document.", in.PluginName)
	}
	c := inv.cmd
	out := map[string]any{
		"CommandId":              c.id,
		"InstanceId":             inv.box.id,
		"Comment":                c.comment,
		"DocumentName":           c.documentName,
		"DocumentVersion":        "$DEFAULT",
		"PluginName":             PluginName,
		"ResponseCode":           inv.exitCode,
		"ExecutionStartDateTime": fmtTime(inv.start),
		"ExecutionElapsedTime":   inv.elapsed(),
		"ExecutionEndDateTime":   fmtTime(inv.end),
		"Status":                 inv.status,
		"StatusDetails":          inv.statusDetails(),
		"StandardOutputContent":  "",
		"StandardOutputUrl":      "",
		"StandardErrorContent":   "",
		"StandardErrorUrl":       "",
		"CloudWatchOutputConfig": map[string]any{"CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": false},
	}
	if inv.finished() {
		out["StandardOutputContent"] = truncate(inv.stdout.String(), StdoutLimit)
		out["StandardErrorContent"] = truncate(inv.stderr.String(), StderrLimit)
	}
	return out, nil
}

// invocation finds an invocation; s.mu is held.
func (s *Server) invocation(commandID, instanceID string) *invocation {
	c := s.byID[commandID]
	if c == nil {
		return nil
	}
	for _, inv := range c.invocations {
		if inv.box.id == instanceID {
			return inv
		}
	}
	return nil
}

// --- ListCommandInvocations / ListCommands ----------------------------------

type commandFilter struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

type listInput struct {
	CommandId  string
	InstanceId string
	Details    bool
	Filters    []commandFilter
	MaxResults *int32
	NextToken  string
}

// filterMatch reports whether a command (or one invocation's status) passes
// the ListCommands/ListCommandInvocations filters.
func filterMatch(fs []commandFilter, c *command, status string) (bool, *apiError) {
	for _, f := range fs {
		switch f.Key {
		case "Status":
			if !strings.EqualFold(f.Value, status) {
				return false, nil
			}
		case "DocumentName":
			if !strings.HasPrefix(c.documentName, f.Value) {
				return false, nil
			}
		case "InvokedAfter", "InvokedBefore":
			t, err := time.Parse(time.RFC3339, f.Value)
			if err != nil {
				return false, errf(http.StatusBadRequest, "InvalidFilterValue", "%s %q is not an ISO 8601 date-time", f.Key, f.Value)
			}
			if f.Key == "InvokedAfter" && c.requested.Before(t) || f.Key == "InvokedBefore" && c.requested.After(t) {
				return false, nil
			}
		case "ExecutionStage":
			done := status == statusSuccess || status == statusFailed || status == statusTimedOut || status == statusCancelled
			if f.Value == "Executing" && done || f.Value == "Complete" && !done {
				return false, nil
			}
		default:
			return false, errf(http.StatusBadRequest, "InvalidFilterKey", "Filter key %q is not valid (ssmbox knows Status, DocumentName, InvokedAfter, InvokedBefore, ExecutionStage)", f.Key)
		}
	}
	return true, nil
}

// page cuts items to MaxResults (max 50) starting at NextToken.
func page[T any](items []T, maxResults *int32, token string) ([]T, string, *apiError) {
	limit := 50
	if maxResults != nil {
		if *maxResults < 1 || *maxResults > 50 {
			return nil, "", validation("1 validation error detected: Value '%d' at 'maxResults' failed to satisfy constraint: Member must have value between 1 and 50", *maxResults)
		}
		limit = int(*maxResults)
	}
	start := 0
	if token != "" {
		n, err := strconv.Atoi(token)
		if err != nil || n < 0 || n > len(items) {
			return nil, "", errf(http.StatusBadRequest, "InvalidNextToken", "The specified token is not valid.")
		}
		start = n
	}
	end := min(start+limit, len(items))
	next := ""
	if end < len(items) {
		next = strconv.Itoa(end)
	}
	return items[start:end], next, nil
}

// newestFirst lists accepted commands, newest first; s.mu is held.
func (s *Server) newestFirst() []*command {
	var out []*command
	for i := len(s.commands) - 1; i >= 0; i-- {
		if s.commands[i].id != "" {
			out = append(out, s.commands[i])
		}
	}
	return out
}

func (s *Server) listCommandInvocations(body []byte) (any, *apiError) {
	var in listInput
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var items []map[string]any
	for _, c := range s.newestFirst() {
		if in.CommandId != "" && c.id != in.CommandId {
			continue
		}
		for _, inv := range c.invocations {
			if in.InstanceId != "" && inv.box.id != in.InstanceId {
				continue
			}
			ok, e := filterMatch(in.Filters, c, inv.status)
			if e != nil {
				return nil, e
			}
			if ok {
				items = append(items, inv.wire(in.Details))
			}
		}
	}
	items, next, e := page(items, in.MaxResults, in.NextToken)
	if e != nil {
		return nil, e
	}
	out := map[string]any{"CommandInvocations": nonNil(items)}
	if next != "" {
		out["NextToken"] = next
	}
	return out, nil
}

func (s *Server) listCommands(body []byte) (any, *apiError) {
	var in listInput
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if in.CommandId != "" && s.byID[in.CommandId] == nil {
		return nil, errf(http.StatusBadRequest, "InvalidCommandId", "Command %s does not exist.", in.CommandId)
	}
	var items []map[string]any
	for _, c := range s.newestFirst() {
		if in.CommandId != "" && c.id != in.CommandId {
			continue
		}
		if in.InstanceId != "" && !slices.Contains(c.instanceIDs, in.InstanceId) {
			continue
		}
		status, _ := c.status()
		ok, e := filterMatch(in.Filters, c, status)
		if e != nil {
			return nil, e
		}
		if ok {
			items = append(items, c.wire())
		}
	}
	items, next, e := page(items, in.MaxResults, in.NextToken)
	if e != nil {
		return nil, e
	}
	out := map[string]any{"Commands": nonNil(items)}
	if next != "" {
		out["NextToken"] = next
	}
	return out, nil
}

// --- CancelCommand -----------------------------------------------------------

func (s *Server) cancelCommand(body []byte) (any, *apiError) {
	var in struct {
		CommandId   string
		InstanceIds []string
	}
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	if in.CommandId == "" {
		return nil, validation("1 validation error detected: Value null at 'commandId' failed to satisfy constraint: Member must not be null")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.byID[in.CommandId]
	if c == nil {
		return nil, errf(http.StatusBadRequest, "InvalidCommandId", "Command %s does not exist.", in.CommandId)
	}
	for _, inv := range c.invocations {
		if len(in.InstanceIds) == 0 || slices.Contains(in.InstanceIds, inv.box.id) {
			inv.stop(true)
		}
	}
	return map[string]any{}, nil
}

// --- DescribeInstanceInformation ---------------------------------------------

func (s *Server) describeInstanceInformation(body []byte) (any, *apiError) {
	var in struct {
		InstanceInformationFilterList []struct {
			Key      string   `json:"key"`
			ValueSet []string `json:"valueSet"`
		}
		Filters []struct {
			Key    string
			Values []string
		}
		MaxResults *int32
		NextToken  string
	}
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	type filter struct {
		key    string
		values []string
	}
	var fs []filter
	for _, f := range in.InstanceInformationFilterList {
		fs = append(fs, filter{f.Key, f.ValueSet})
	}
	for _, f := range in.Filters {
		fs = append(fs, filter{f.Key, f.Values})
	}
	for _, f := range fs {
		if f.key != "InstanceIds" && f.key != "PingStatus" {
			return nil, errf(http.StatusBadRequest, "InvalidInstanceInformationFilterValue", "ssmbox filters instances by InstanceIds and PingStatus only, not %q", f.key)
		}
		if len(f.values) == 0 {
			return nil, errf(http.StatusBadRequest, "InvalidInstanceInformationFilterValue", "Filter %s has no values", f.key)
		}
		if f.key == "InstanceIds" {
			// An agent registers itself once its instance runs, not when
			// the first command is sent (RegisterNew).
			s.registerNew(f.values)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]string, 0, len(s.boxes))
	for id := range s.boxes {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var items []map[string]any
	for _, id := range ids {
		b := s.boxes[id]
		info := b.wire()
		ok := true
		for _, f := range fs {
			v := id
			if f.key == "PingStatus" {
				v = info["PingStatus"].(string)
			}
			ok = ok && slices.Contains(f.values, v)
		}
		if ok {
			items = append(items, info)
		}
	}
	if in.MaxResults != nil && (*in.MaxResults < 5 || *in.MaxResults > 50) {
		return nil, validation("1 validation error detected: Value '%d' at 'maxResults' failed to satisfy constraint: Member must have value between 5 and 50", *in.MaxResults)
	}
	items, next, e := page(items, in.MaxResults, in.NextToken)
	if e != nil {
		return nil, e
	}
	out := map[string]any{"InstanceInformationList": nonNil(items)}
	if next != "" {
		out["NextToken"] = next
	}
	return out, nil
}

// --- helpers -------------------------------------------------------------------

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func firstOf(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// epoch is how AWS JSON protocols carry timestamps.
func epoch(t time.Time) float64 {
	return float64(t.UnixMilli()) / 1000
}

// fmtTime is GetCommandInvocation's date-time string; "" when unset.
func fmtTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z")
}

// truncate keeps the first n characters (runes) of s.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := 0
	for pos := range s {
		if i == n {
			return s[:pos]
		}
		i++
	}
	return s
}

func newUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func checkTools() error {
	for _, tool := range []string{"sh", "bash", "tar", "bzip2", "realpath", "du"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found on PATH: the Services box stand-in needs it", tool)
		}
	}
	return nil
}

// hostEnv lists variables passed from the test process to box commands.
var hostEnv = []string{"PATH", "PYENV_ROOT", "PYENV_VERSION", "SSL_CERT_FILE", "SSL_CERT_DIR", "TZ"}
