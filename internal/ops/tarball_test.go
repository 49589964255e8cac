package ops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"
	"github.com/aws/smithy-go"
)

// fakeSSM answers SendCommand with sendErrs in turn, then success, and
// reports every command as status.
type fakeSSM struct {
	mu       sync.Mutex
	sendErrs []error
	sends    int
	attempts []int // RetryMaxAttempts each SendCommand asked the SDK for
	status   ssmtypes.CommandInvocationStatus
	cancels  int
}

func (f *fakeSSM) SendCommand(_ context.Context, _ *ssm.SendCommandInput, opts ...func(*ssm.Options)) (*ssm.SendCommandOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var o ssm.Options
	for _, fn := range opts {
		fn(&o)
	}
	f.attempts = append(f.attempts, o.RetryMaxAttempts)
	f.sends++
	if len(f.sendErrs) > 0 {
		err := f.sendErrs[0]
		f.sendErrs = f.sendErrs[1:]
		return nil, err
	}
	return &ssm.SendCommandOutput{Command: &ssmtypes.Command{CommandId: aws.String(fmt.Sprint("cmd-", f.sends))}}, nil
}

func (f *fakeSSM) GetCommandInvocation(context.Context, *ssm.GetCommandInvocationInput, ...func(*ssm.Options)) (*ssm.GetCommandInvocationOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &ssm.GetCommandInvocationOutput{Status: f.status, StandardOutputContent: aws.String("circlebot:ok=yes\n")}, nil
}

func (f *fakeSSM) CancelCommand(context.Context, *ssm.CancelCommandInput, ...func(*ssm.Options)) (*ssm.CancelCommandOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cancels++
	f.status = ssmtypes.CommandInvocationStatusCancelled
	return &ssm.CancelCommandOutput{}, nil
}

// SendCommand goes through a real SSM client to a server that throttles,
// drops the connection or refuses: only throttled attempts (refused by
// SSM, never run) are sent again, by the SDK (onceSSM).
func TestTarballShellRetriesSendCommandOnlyWhenThrottled(t *testing.T) {
	for _, tc := range []struct {
		name      string
		faults    []string
		sends     int
		succeeded bool
	}{
		{"throttled twice", []string{"throttle", "throttle"}, 3, true},
		// The answer was lost: the command may be running already.
		{"connection reset", []string{"reset"}, 1, false},
		{"refused", []string{"refuse"}, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			faults, sends := slices.Clone(tc.faults), 0
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/x-amz-json-1.1")
				switch strings.TrimPrefix(r.Header.Get("X-Amz-Target"), "AmazonSSM.") {
				case "SendCommand":
					mu.Lock()
					sends++
					n, fault := sends, ""
					if len(faults) > 0 {
						fault, faults = faults[0], faults[1:]
					}
					mu.Unlock()
					switch fault {
					case "throttle":
						w.WriteHeader(http.StatusBadRequest)
						io.WriteString(w, `{"__type":"ThrottlingException","message":"Rate exceeded"}`)
					case "reset":
						conn, _, err := w.(http.Hijacker).Hijack()
						if err == nil {
							conn.Close()
						}
					case "refuse":
						w.WriteHeader(http.StatusBadRequest)
						io.WriteString(w, `{"__type":"InvalidInstanceId","message":"Instances not in a valid state"}`)
					default:
						fmt.Fprintf(w, `{"Command":{"CommandId":"cmd-%d"}}`, n)
					}
				case "GetCommandInvocation":
					io.WriteString(w, `{"Status":"Success","StandardOutputContent":"circlebot:ok=yes\n"}`)
				default:
					w.WriteHeader(http.StatusBadRequest)
					io.WriteString(w, `{"__type":"UnknownOperationException","message":"not here"}`)
				}
			}))
			defer srv.Close()
			client := ssm.NewFromConfig(aws.Config{
				Region: "us-east-1", BaseEndpoint: aws.String(srv.URL),
				Credentials: credentials.NewStaticCredentialsProvider("test", "test", ""),
				Retryer:     func() aws.Retryer { return retry.AddWithMaxBackoffDelay(retry.NewStandard(), time.Millisecond) },
			})
			sh := &Shell{SSM: client, Instance: "i-1", Poll: time.Millisecond}
			r, err := sh.Run(context.Background(), "test", "true", time.Minute)
			mu.Lock()
			defer mu.Unlock()
			if (err == nil) != tc.succeeded || sends != tc.sends {
				t.Fatalf("err %v after %d SendCommand calls", err, sends)
			}
			if tc.succeeded && field(r.Stdout, "circlebot:ok") != "yes" {
				t.Errorf("stdout %q", r.Stdout)
			}
			if tc.name == "refused" && !errors.Is(err, ErrAgentOffline) {
				t.Errorf("a refused send is not ErrAgentOffline: %v", err)
			}
		})
	}
}

func TestTarballShellCancelsTheCommandWhenTheContextEnds(t *testing.T) {
	f := &fakeSSM{status: ssmtypes.CommandInvocationStatusInProgress}
	var sent string
	sh := &Shell{SSM: f, Instance: "i-1", Poll: time.Millisecond, OnSend: func(id string) { sent = id }}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	r, err := sh.Run(ctx, "test", "sleep 100", time.Hour)
	if !errors.Is(err, context.DeadlineExceeded) || f.cancels != 1 || r.CommandID != sent || sent == "" {
		t.Fatalf("err %v, %d cancels, command %q (sent %q)", err, f.cancels, r.CommandID, sent)
	}
}

func TestTarballShellPollingBacksOff(t *testing.T) {
	calls, waited := 0, time.Duration(0)
	for d := 500 * time.Millisecond; waited < 6*time.Hour; d = nextPoll(d) {
		if d > MaxPoll {
			t.Fatalf("waited %s between polls", d)
		}
		calls++
		waited += d
	}
	if calls > 2500 {
		t.Errorf("a 6-hour command costs %d polls", calls)
	}
}

func TestTarballFieldReadsTheLastLineOfTheExactKey(t *testing.T) {
	out := "size=1\ncirclebot:size=2\nxcirclebot:size=3\n  circlebot:size=4  \ncirclebot:sizes=5\n"
	if got := field(out, "circlebot:size"); got != "4" {
		t.Errorf("got %q", got)
	}
	if got := field(out, "circlebot:sha256"); got != "" {
		t.Errorf("got %q", got)
	}
}

func TestTarballPresignedURLsAreCutFromErrors(t *testing.T) {
	url := "https://b.s3.amazonaws.com/k?partNumber=1&X-Amz-Credential=AKIA%2F&X-Amz-Signature=abc"
	api := &smithy.GenericAPIError{Code: "ValidationException", Message: "Parameter commands contains curl -T part '" + url + "'"}
	err := redactURLs(errors.Join(fmt.Errorf("run %q on i-1: %w", "upload", api), context.Canceled))
	for _, s := range []string{err.Error(), Explain(err)} {
		if strings.Contains(s, "X-Amz-") || !strings.Contains(s, "<presigned URL>") {
			t.Errorf("not redacted: %s", s)
		}
	}
	var ae smithy.APIError
	if !errors.Is(err, context.Canceled) || !errors.As(err, &ae) || ae.ErrorCode() != "ValidationException" {
		t.Errorf("redaction lost the error's kind: %v", err)
	}
	plain := errors.New("no URL here")
	if redactURLs(plain) != plain {
		t.Error("an error without URLs was rewritten")
	}
}
