package ops

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/circlebot/circlebot/internal/journal"
)

// Shell runs scripts on one instance through SSM Run Command and waits.
type Shell struct {
	SSM SSM
	// Poll is the first wait between result polls (default 500 ms); the
	// wait grows to MaxPoll so that a 6-hour command costs a few thousand
	// GetCommandInvocation calls, not tens of thousands.
	Poll     time.Duration
	Instance string
	// OnSend, when set, learns each command's ID as soon as SSM accepts
	// it, so that the caller can record what is running on the box.
	OnSend func(commandID string)
	// KeepOnCancel leaves a command running on the box when ctx ends (a
	// bot shutting down must not cut circleci-restore in half); the caller
	// recorded its ID with OnSend and follows it after the restart.
	KeepOnCancel bool
}

// MaxPoll caps the wait between result polls.
const MaxPoll = 10 * time.Second

// Result of one script.
type Result struct {
	CommandID string
	Status    string
	Code      int32
	Stdout    string
	Stderr    string
}

// ErrRemote is a script that ran and failed on the box.
var ErrRemote = errors.New("command failed on the Services box")

// Run sends script (bash, `set -euo pipefail` added) and polls until it
// ends. Box paths in scripts are written ${BOX_ROOT:-}/path: empty on a
// real box, the box's root directory in the test stand-in.
//
// When ctx ends while the command runs, Run cancels the command and waits
// (briefly, on its own time) for the box to stop it, so that whatever the
// caller does next on the box does not race the old command. A Result with
// an empty CommandID and an AWS error means SSM refused the command: it
// never ran.
func (s *Shell) Run(ctx context.Context, comment, script string, timeout time.Duration) (Result, error) {
	lines := append([]string{"#!/bin/bash", "set -euo pipefail"}, strings.Split(strings.TrimSpace(script), "\n")...)
	secs := int(timeout.Seconds())
	out, err := s.send(ctx, &ssm.SendCommandInput{
		DocumentName: aws.String("AWS-RunShellScript"),
		InstanceIds:  []string{s.Instance},
		Comment:      aws.String(trimTo(comment, 100)),
		Parameters: map[string][]string{
			"commands":         lines,
			"executionTimeout": {fmt.Sprint(secs)},
		},
	})
	if errors.Is(err, ErrAgentOffline) {
		return Result{}, fmt.Errorf("run %q on %s: the instance is not reachable through SSM (agent offline, no instance profile, or stopped): %w", comment, s.Instance, err)
	}
	if err != nil {
		return Result{}, fmt.Errorf("run %q on %s: %w", comment, s.Instance, err)
	}
	id := aws.ToString(out.Command.CommandId)
	if s.OnSend != nil {
		s.OnSend(id)
	}
	return s.Follow(ctx, id, comment, timeout)
}

// Follow waits for command id (sent by Run, possibly by an earlier bot
// process) to end, as Run does.
func (s *Shell) Follow(ctx context.Context, id, comment string, timeout time.Duration) (Result, error) {
	// The first read comes at a quarter of the poll, as a wait's do
	// (pace): most commands the bot sends (start the app, read the boot
	// time) end within a second or two, and on a recovery's path the time
	// until the bot reads the result is downtime. Long ones (a backup)
	// are read ever less often as the poll grows.
	poll := pace(cmpOr(s.Poll, 500*time.Millisecond), 0)
	deadline := time.Now().Add(timeout + time.Minute)
	for {
		inv, err := s.SSM.GetCommandInvocation(ctx, &ssm.GetCommandInvocationInput{CommandId: aws.String(id), InstanceId: aws.String(s.Instance)})
		switch err = translate(err); {
		case err != nil && ctx.Err() != nil:
			return Result{CommandID: id}, s.stop(ctx, id, fmt.Errorf("%q (%s) was stopped: %w", comment, id, ctx.Err()))
		case errors.Is(err, ErrNotFound):
			// SSM takes a moment to register a new command.
		case err != nil && !transient(err):
			// (A transient failure is a poll that saw nothing, as in
			// waitFor: the command runs on regardless.)
			return Result{CommandID: id}, fmt.Errorf("read result of %q (%s): %w", comment, id, err)
		case err == nil:
			r := Result{CommandID: id, Status: string(inv.Status), Code: inv.ResponseCode, Stdout: aws.ToString(inv.StandardOutputContent), Stderr: aws.ToString(inv.StandardErrorContent)}
			switch {
			case inv.Status == ssmtypes.CommandInvocationStatusSuccess:
				return r, nil
			case running(inv.Status):
			default:
				return r, fmt.Errorf("%q (%s) ended %s with code %d: %s: %w", comment, id, r.Status, r.Code, lastLine(r.Stderr), ErrRemote)
			}
		}
		if time.Now().After(deadline) {
			// SSM should have ended it at executionTimeout; make sure.
			return Result{CommandID: id}, s.stop(ctx, id, fmt.Errorf("%q (%s) did not finish within %s", comment, id, timeout))
		}
		if err := sleep(ctx, poll); err != nil {
			return Result{CommandID: id}, s.stop(ctx, id, fmt.Errorf("%q (%s) was stopped: %w", comment, id, err))
		}
		poll = nextPoll(poll)
	}
}

// send calls SendCommand once: an answer lost on the way back must not
// make the SDK send the script again, or a second circleci-backup would
// start next to the first. The SDK retries only throttled attempts
// (onceSSM), which SSM refused without running.
func (s *Shell) send(ctx context.Context, in *ssm.SendCommandInput) (*ssm.SendCommandOutput, error) {
	if err := ctx.Err(); err != nil {
		return nil, err // never sent
	}
	// A send in flight is not cut off when ctx ends: the command may
	// already run on the box, and only its answer says which one to
	// follow or cancel. (Two minutes leave room for the SDK's backoff
	// between throttled attempts.)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	out, err := s.SSM.SendCommand(sctx, in, onceSSM)
	return out, translate(err)
}

// stop cancels command id after ctx ended or the wait ran out, and waits
// for the box to report it stopped; cause is what the caller gets, with
// any failure to cancel added.
func (s *Shell) stop(ctx context.Context, id string, cause error) error {
	if s.KeepOnCancel && ctx.Err() != nil {
		// The command goes on on the box; the caller follows it later.
		return fmt.Errorf("%w (SSM command %s goes on on the box)", cause, id)
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	_, err := s.SSM.CancelCommand(cctx, &ssm.CancelCommandInput{CommandId: aws.String(id), InstanceIds: []string{s.Instance}})
	if err != nil {
		return errors.Join(cause, fmt.Errorf("cancel SSM command %s: %w", id, translate(err)))
	}
	// CancelCommand only asks the agent to stop the command.
	poll := cmpOr(s.Poll, 500*time.Millisecond)
	for {
		inv, err := s.SSM.GetCommandInvocation(cctx, &ssm.GetCommandInvocationInput{CommandId: aws.String(id), InstanceId: aws.String(s.Instance)})
		if err == nil && !running(inv.Status) && inv.Status != ssmtypes.CommandInvocationStatusCancelling {
			return cause
		}
		if serr := sleep(cctx, poll); serr != nil {
			return errors.Join(cause, fmt.Errorf("SSM command %s was cancelled but the box did not report it stopped within 2 minutes", id))
		}
		poll = nextPoll(poll)
	}
}

// startApp runs command on instance id through SSM, waiting (up to
// timeout) for the agent of a new instance to register first. The
// command runs once per operation (runOnce): a step run again follows it,
// and a bot shutting down leaves it running.
func startApp[R any](ctx context.Context, api SSM, id string, w *Work[R], cmds func(*R) *Commands, command string, poll, timeout time.Duration, p journal.Progress) (string, error) {
	sh := &Shell{SSM: api, Instance: id, Poll: poll, KeepOnCancel: true}
	h := health{Poll: poll, Deadline: time.Now().Add(timeout), Log: p.Log}
	res, err := h.online(ctx, id, func() (Result, error) {
		return runOnce(ctx, w, cmds, "app_start_command", sh, "circlebot "+w.ID+": start the app", command, 10*time.Minute)
	})
	if err != nil {
		return "", fmt.Errorf("start the app on %s: %w", id, err)
	}
	out := lastLine(res.Stdout)
	if strings.TrimSpace(res.Stdout) == "" {
		out = "exit 0"
	}
	return fmt.Sprintf("`%s`: %s", id, out), nil
}

// runOnce runs a script on the box at most once per operation step: its
// command ID is recorded the moment SSM accepts it, and a step run again
// (resume after a crash, a retry) follows that command instead of sending
// another. Only a command that ended without success is sent again (its
// failure stopped the step, visibly, before).
func runOnce[R any](ctx context.Context, w *Work[R], cmds func(*R) *Commands, key string, sh *Shell, comment, script string, timeout time.Duration) (Result, error) {
	w.mu.Lock()
	id := (*cmds(w.Result))[key]
	w.mu.Unlock()
	if id != "" {
		inv, err := sh.SSM.GetCommandInvocation(ctx, &ssm.GetCommandInvocationInput{CommandId: aws.String(id), InstanceId: aws.String(sh.Instance)})
		switch {
		case err == nil && (running(inv.Status) || inv.Status == ssmtypes.CommandInvocationStatusSuccess):
			return sh.Follow(ctx, id, comment, timeout)
		case err == nil:
			// It ended without success (cancelled, failed, timed out):
			// run it again, visibly.
		default:
			return Result{CommandID: id}, fmt.Errorf("find the earlier command %s (%s): %w", id, comment, translate(err))
		}
	}
	sh.OnSend = func(id string) {
		w.mu.Lock()
		c := cmds(w.Result)
		if *c == nil {
			*c = Commands{}
		}
		(*c)[key] = id
		w.mu.Unlock()
		// Unsaved, the result still has it at the step's end; only a crash
		// before then loses it.
		_ = w.Save()
	}
	return sh.Run(ctx, comment, script, timeout)
}

func running(st ssmtypes.CommandInvocationStatus) bool {
	switch st {
	case ssmtypes.CommandInvocationStatusPending, ssmtypes.CommandInvocationStatusInProgress, ssmtypes.CommandInvocationStatusDelayed:
		return true
	}
	return false
}

func nextPoll(d time.Duration) time.Duration {
	return max(min(d*3/2, MaxPoll), d)
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndex(s, "\n"); i >= 0 {
		// The agent appends "failed to run commands: exit status N"; the
		// line before it is the script's own message.
		last := s[i+1:]
		if strings.HasPrefix(last, "failed to run commands") {
			return lastLine(s[:i])
		}
		return last
	}
	if s == "" {
		return "no error output"
	}
	return s
}

func trimTo(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// field reads the value of the last "key=value" line a script printed.
// The last, because the bot's results come after anything the tools
// printed before them.
func field(out, key string) string {
	v := ""
	for _, l := range strings.Split(out, "\n") {
		if val, ok := strings.CutPrefix(strings.TrimSpace(l), key+"="); ok {
			v = val
		}
	}
	return v
}
