package ssmbox

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Invocation and command statuses, as SSM spells them.
const (
	statusPending    = "Pending"
	statusInProgress = "InProgress"
	statusSuccess    = "Success"
	statusFailed     = "Failed"
	statusTimedOut   = "TimedOut"
	statusCancelled  = "Cancelled"
	statusCancelling = "Cancelling"
)

// command is one SendCommand; its fields are guarded by server.mu except the
// ones fixed at creation.
type command struct {
	server         *Server
	id             string // "" when rejected
	rejected       string
	instanceIDs    []string
	documentName   string
	parameters     map[string][]string
	comment        string
	timeoutSeconds int32
	executionTO    int // seconds
	requested      time.Time
	invocations    []*invocation
}

func (c *command) record() Command {
	params := make(map[string][]string, len(c.parameters))
	for k, v := range c.parameters {
		params[k] = slices.Clone(v)
	}
	return Command{
		CommandID:      c.id,
		InstanceIDs:    slices.Clone(c.instanceIDs),
		DocumentName:   c.documentName,
		Lines:          slices.Clone(c.parameters["commands"]),
		Parameters:     params,
		Comment:        c.comment,
		TimeoutSeconds: c.timeoutSeconds,
		RequestedAt:    c.requested,
		Rejected:       c.rejected,
	}
}

// status aggregates the invocations as SSM does; server.mu is held.
func (c *command) status() (status string, counts [3]int) {
	var pending, running, cancelling, success, failed, timedOut, cancelled int
	for _, inv := range c.invocations {
		switch inv.status {
		case statusPending:
			pending++
		case statusInProgress:
			running++
		case statusCancelling:
			cancelling++
		case statusSuccess:
			success++
		case statusFailed:
			failed++
		case statusTimedOut:
			timedOut++
		case statusCancelled:
			cancelled++
		}
	}
	completed := success + failed + timedOut + cancelled
	counts = [3]int{len(c.invocations), completed, failed + timedOut}
	switch {
	case cancelling > 0:
		return statusCancelling, counts
	case running > 0 || pending > 0 && completed > 0:
		return statusInProgress, counts
	case pending > 0:
		return statusPending, counts
	case cancelled > 0:
		return statusCancelled, counts
	case timedOut > 0:
		return statusTimedOut, counts
	case failed > 0:
		return statusFailed, counts
	default:
		return statusSuccess, counts
	}
}

// wire is the Command shape; server.mu is held.
func (c *command) wire() map[string]any {
	status, counts := c.status()
	timeout := c.timeoutSeconds
	if timeout == 0 {
		timeout = defaultDeliveryTimeout
	}
	params := c.parameters
	if params == nil {
		params = map[string][]string{}
	}
	return map[string]any{
		"CommandId":              c.id,
		"DocumentName":           c.documentName,
		"DocumentVersion":        "$DEFAULT",
		"Comment":                c.comment,
		"ExpiresAfter":           epoch(c.requested.Add(time.Duration(int(timeout)+c.executionTO) * time.Second)),
		"Parameters":             params,
		"InstanceIds":            nonNil(c.instanceIDs),
		"Targets":                []any{},
		"RequestedDateTime":      epoch(c.requested),
		"Status":                 status,
		"StatusDetails":          status,
		"OutputS3Region":         Region,
		"OutputS3BucketName":     "",
		"OutputS3KeyPrefix":      "",
		"MaxConcurrency":         "50",
		"MaxErrors":              "0",
		"TargetCount":            counts[0],
		"CompletedCount":         counts[1],
		"ErrorCount":             counts[2],
		"DeliveryTimedOutCount":  0,
		"ServiceRole":            "",
		"TimeoutSeconds":         timeout,
		"NotificationConfig":     map[string]any{"NotificationArn": "", "NotificationEvents": []string{}, "NotificationType": ""},
		"CloudWatchOutputConfig": map[string]any{"CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": false},
	}
}

// invocation is a command on one box; mutable fields are guarded by
// cmd.server.mu.
type invocation struct {
	cmd *command
	box *Box

	status    string
	exitCode  int
	start     time.Time
	end       time.Time
	lagLeft   int
	cancelled bool
	timedOut  bool
	proc      *os.Process // while running
	pgid      int         // its process group, kept for Close
	stdout    capBuffer
	stderr    capBuffer
}

func (inv *invocation) finished() bool {
	switch inv.status {
	case statusSuccess, statusFailed, statusTimedOut, statusCancelled:
		return true
	}
	return false
}

func (inv *invocation) statusDetails() string {
	if inv.status == statusTimedOut {
		return "ExecutionTimedOut"
	}
	return inv.status
}

func (inv *invocation) elapsed() string {
	if inv.start.IsZero() || inv.end.IsZero() {
		return ""
	}
	return "PT" + strconv.FormatFloat(inv.end.Sub(inv.start).Seconds(), 'f', 3, 64) + "S"
}

// wire is the CommandInvocation shape; server.mu is held.
func (inv *invocation) wire(details bool) map[string]any {
	c := inv.cmd
	out := map[string]any{
		"CommandId":              c.id,
		"InstanceId":             inv.box.id,
		"InstanceName":           "",
		"Comment":                c.comment,
		"DocumentName":           c.documentName,
		"DocumentVersion":        "$DEFAULT",
		"RequestedDateTime":      epoch(c.requested),
		"Status":                 inv.status,
		"StatusDetails":          inv.statusDetails(),
		"TraceOutput":            "",
		"StandardOutputUrl":      "",
		"StandardErrorUrl":       "",
		"ServiceRole":            "",
		"CommandPlugins":         []any{},
		"NotificationConfig":     map[string]any{"NotificationArn": "", "NotificationEvents": []string{}, "NotificationType": ""},
		"CloudWatchOutputConfig": map[string]any{"CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": false},
	}
	if details {
		plugin := map[string]any{
			"Name":               PluginName,
			"Status":             inv.status,
			"StatusDetails":      inv.statusDetails(),
			"ResponseCode":       inv.exitCode,
			"Output":             "",
			"StandardOutputUrl":  "",
			"StandardErrorUrl":   "",
			"OutputS3Region":     Region,
			"OutputS3BucketName": "",
			"OutputS3KeyPrefix":  "",
		}
		if inv.status == statusCancelling {
			plugin["Status"] = statusInProgress
		}
		if !inv.start.IsZero() {
			plugin["ResponseStartDateTime"] = epoch(inv.start)
		}
		if !inv.end.IsZero() {
			plugin["ResponseFinishDateTime"] = epoch(inv.end)
		}
		if inv.finished() {
			plugin["Output"] = pluginOutput(inv.stdout.String(), inv.stderr.String(), PluginOutputLimit)
		}
		out["CommandPlugins"] = []any{plugin}
	}
	return out
}

const (
	errorSeparator  = "\n----------ERROR-------\n"
	truncatedMarker = "\n---Output truncated---"
)

// pluginOutput combines stdout and stderr as the SSM agent's plugin Output:
// stdout, then the error separator and stderr, each cut so the whole fits
// limit characters.
func pluginOutput(stdout, stderr string, limit int) string {
	n := func(s string) int { return len([]rune(s)) }
	whole := stdout
	if stderr != "" {
		whole += errorSeparator + stderr
	}
	if n(whole) <= limit {
		return whole
	}
	if stderr == "" {
		return truncate(stdout, limit-n(truncatedMarker)) + truncatedMarker
	}
	half := (limit - n(errorSeparator)) / 2
	cut := func(s string, room int) string {
		if n(s) <= room {
			return s
		}
		return truncate(s, room-n(truncatedMarker)) + truncatedMarker
	}
	// Give stderr what stdout does not need, and the other way round.
	outRoom, errRoom := half, half
	if n(stdout) < half {
		errRoom = limit - n(errorSeparator) - n(stdout)
	} else if n(stderr) < half {
		outRoom = limit - n(errorSeparator) - n(stderr)
	}
	return cut(stdout, outRoom) + errorSeparator + cut(stderr, errRoom)
}

// stop kills a pending or running invocation for a cancel; server.mu is
// held.
func (inv *invocation) stop(cancel bool) {
	if inv.finished() {
		return
	}
	if cancel {
		inv.cancelled = true
		if inv.status == statusInProgress {
			inv.status = statusCancelling
		}
	}
	if inv.proc != nil {
		killGroup(inv.proc)
	}
}

// run executes the invocation to the end; it owns s.running's count.
func (inv *invocation) run() {
	s := inv.cmd.server
	defer s.running.Done()

	s.mu.Lock()
	env := inv.box.environ()
	shell := slices.Clone(s.shell)
	s.mu.Unlock()

	c := inv.cmd
	root := inv.box.root
	orch := filepath.Join(root, "var/lib/amazon/ssm", inv.box.id, "document/orchestration", c.id, "awsrunShellScript/0.awsrunShellScript")
	script := filepath.Join(orch, "_script.sh")
	prepErr := func() error {
		if err := os.MkdirAll(orch, 0o755); err != nil {
			return err
		}
		return os.WriteFile(script, []byte(strings.Join(c.parameters["commands"], "\n")+"\n"), 0o700)
	}()
	dir := orch
	if wd := firstOf(c.parameters["workingDirectory"]); wd != "" && prepErr == nil {
		dir = filepath.Join(root, filepath.FromSlash(path.Clean("/"+wd)))
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			prepErr = fmt.Errorf("Invalid workingDirectory %s, directory doesn't exist", wd)
		}
	}

	cmd := exec.Command(shell[0], append(shell[1:], script)...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.Stdout = &inv.stdout
	cmd.Stderr = &inv.stderr
	cmd.SysProcAttr = sysProcAttr()
	// Like the agent, wait for background children that keep stdout or
	// stderr open, but not past the execution timeout (one that escaped the
	// process group with setsid would otherwise hold Wait and Close forever).
	cmd.WaitDelay = time.Duration(c.executionTO) * time.Second

	s.mu.Lock()
	inv.start = time.Now().UTC()
	if inv.cancelled || s.closed {
		inv.finish(statusCancelled, -1, nil)
		s.mu.Unlock()
		return
	}
	if prepErr != nil {
		inv.stderr.Write([]byte(prepErr.Error() + "\n"))
		inv.finish(statusFailed, 1, nil)
		s.mu.Unlock()
		return
	}
	if err := cmd.Start(); err != nil {
		inv.stderr.Write([]byte("failed to run commands: " + err.Error() + "\n"))
		inv.finish(statusFailed, 1, nil)
		s.mu.Unlock()
		return
	}
	inv.proc = cmd.Process
	inv.pgid = cmd.Process.Pid
	inv.status = statusInProgress
	s.mu.Unlock()

	timer := time.AfterFunc(time.Duration(c.executionTO)*time.Second, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if !inv.finished() && !inv.cancelled {
			inv.timedOut = true
			killGroup(cmd.Process)
		}
	})
	waitErr := cmd.Wait()
	timer.Stop()

	s.mu.Lock()
	defer s.mu.Unlock()
	code := cmd.ProcessState.ExitCode() // -1 when killed by a signal
	switch {
	case inv.cancelled:
		inv.finish(statusCancelled, StoppedExitCode, nil)
	case inv.timedOut || errors.Is(waitErr, exec.ErrWaitDelay):
		inv.finish(statusTimedOut, StoppedExitCode, nil)
	case code == 0 && waitErr == nil:
		inv.finish(statusSuccess, 0, nil)
	default:
		if code < 0 {
			code = StoppedExitCode
		}
		var exitErr *exec.ExitError
		if errors.As(waitErr, &exitErr) {
			inv.finish(statusFailed, code, fmt.Errorf("exit status %d", code))
		} else {
			inv.finish(statusFailed, code, waitErr)
		}
	}
}

// finish records the end of an invocation; server.mu is held.
func (inv *invocation) finish(status string, code int, failure error) {
	if failure != nil {
		stderr := inv.stderr.String()
		if stderr != "" && !strings.HasSuffix(stderr, "\n") {
			inv.stderr.Write([]byte("\n"))
		}
		inv.stderr.Write([]byte("failed to run commands: " + failure.Error()))
	}
	inv.status = status
	inv.exitCode = code
	inv.end = time.Now().UTC()
	inv.proc = nil
}

// capBuffer keeps the first captureLimit bytes written to it.
type capBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *capBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := captureLimit - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *capBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
