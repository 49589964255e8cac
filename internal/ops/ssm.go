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
)

// SSM is the part of Systems Manager the bot uses to run commands on the
// Services box (circleci-backup, circleci-restore, replicated).
type SSM interface {
	SendCommand(context.Context, *ssm.SendCommandInput, ...func(*ssm.Options)) (*ssm.SendCommandOutput, error)
	GetCommandInvocation(context.Context, *ssm.GetCommandInvocationInput, ...func(*ssm.Options)) (*ssm.GetCommandInvocationOutput, error)
}

// Shell runs scripts on one instance through SSM Run Command and waits.
type Shell struct {
	SSM      SSM
	Poll     time.Duration
	Instance string
}

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
func (s *Shell) Run(ctx context.Context, comment, script string, timeout time.Duration) (Result, error) {
	lines := append([]string{"#!/bin/bash", "set -euo pipefail"}, strings.Split(strings.TrimSpace(script), "\n")...)
	secs := int(timeout.Seconds())
	out, err := s.SSM.SendCommand(ctx, &ssm.SendCommandInput{
		DocumentName: aws.String("AWS-RunShellScript"),
		InstanceIds:  []string{s.Instance},
		Comment:      aws.String(trimTo(comment, 100)),
		Parameters: map[string][]string{
			"commands":         lines,
			"executionTimeout": {fmt.Sprint(secs)},
		},
	})
	if err != nil {
		if errorCode(err) == "InvalidInstanceId" {
			return Result{}, fmt.Errorf("run %q on %s: the instance is not reachable through SSM (agent offline, no instance profile, or stopped): %w", comment, s.Instance, err)
		}
		return Result{}, fmt.Errorf("run %q on %s: %w", comment, s.Instance, err)
	}
	id := aws.ToString(out.Command.CommandId)
	poll := cmpOr(s.Poll, 500*time.Millisecond)
	deadline := time.Now().Add(timeout + time.Minute)
	for {
		inv, err := s.SSM.GetCommandInvocation(ctx, &ssm.GetCommandInvocationInput{CommandId: aws.String(id), InstanceId: aws.String(s.Instance)})
		switch {
		case err != nil && errorCode(err) == "InvocationDoesNotExist":
			// SSM takes a moment to register a new command.
		case err != nil && !retryable(errorCode(err)):
			return Result{CommandID: id}, fmt.Errorf("read result of %q (%s): %w", comment, id, err)
		case err == nil:
			r := Result{CommandID: id, Status: string(inv.Status), Code: inv.ResponseCode, Stdout: aws.ToString(inv.StandardOutputContent), Stderr: aws.ToString(inv.StandardErrorContent)}
			switch inv.Status {
			case ssmtypes.CommandInvocationStatusSuccess:
				return r, nil
			case ssmtypes.CommandInvocationStatusPending, ssmtypes.CommandInvocationStatusInProgress, ssmtypes.CommandInvocationStatusDelayed:
			default:
				return r, fmt.Errorf("%q (%s) ended %s with code %d: %s: %w", comment, id, r.Status, r.Code, lastLine(r.Stderr), ErrRemote)
			}
		}
		if time.Now().After(deadline) {
			return Result{CommandID: id}, fmt.Errorf("%q (%s) did not finish within %s", comment, id, timeout)
		}
		if err := sleep(ctx, poll); err != nil {
			return Result{CommandID: id}, err
		}
	}
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

// field reads "key=value" lines a script prints.
func field(out, key string) string {
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), key+"="); ok {
			return v
		}
	}
	return ""
}
