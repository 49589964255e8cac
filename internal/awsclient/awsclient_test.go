package awsclient

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
)

// A server that fails every call with a 500: the SDK tries a call
// MaxAttempts times, or the config's own lower RetryMaxAttempts, and the
// error counter hears the call once, after the retries.
func TestInstrumentAppliesTheRetryPolicy(t *testing.T) {
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.Header().Set("Content-Type", "text/xml")
		w.WriteHeader(http.StatusInternalServerError)
		io.WriteString(w, `<Response><Errors><Error><Code>InternalError</Code><Message>An internal error has occurred.</Message></Error></Errors><RequestID>r-1</RequestID></Response>`)
	}))
	defer srv.Close()
	for _, tc := range []struct {
		name     string
		cap      int
		attempts int32
	}{
		{"policy", 0, MaxAttempts},
		{"the config's cap", 2, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			requests.Store(0)
			cfg := aws.Config{Region: "us-east-1", BaseEndpoint: aws.String(srv.URL), RetryMaxAttempts: tc.cap,
				Credentials: credentials.NewStaticCredentialsProvider("test", "test", "")}
			var counted []string
			Instrument(&cfg, func(service, op, code string) { counted = append(counted, service+" "+op+" "+code) })
			_, err := ec2.NewFromConfig(cfg).DescribeInstances(context.Background(), &ec2.DescribeInstancesInput{})
			if err == nil {
				t.Fatal("no error from a server that fails everything")
			}
			if n := requests.Load(); n != tc.attempts {
				t.Errorf("%d attempts, want %d", n, tc.attempts)
			}
			if len(counted) != 1 || counted[0] != "EC2 DescribeInstances InternalError" {
				t.Errorf("error counter heard %q, want one EC2 DescribeInstances InternalError", counted)
			}
		})
	}
}
