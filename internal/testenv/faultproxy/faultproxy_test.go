package faultproxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/smithy-go"

	"github.com/circlebot/circlebot/internal/testenv/motoserver"
)

func TestMain(m *testing.M) { motoserver.Main(m) }

type env struct {
	moto  *motoserver.Server
	proxy *Proxy
}

func newEnv(t *testing.T, f Faults) env {
	t.Helper()
	moto := motoserver.ForTest(t)
	p := New(moto.URL, f)
	t.Cleanup(p.Close)
	return env{moto: moto, proxy: p}
}

// oneShot is a config through the proxy whose SDK gives up after the first
// attempt, so a single injected fault reaches the caller.
func (e env) oneShot() aws.Config {
	cfg := motoserver.AWSConfig(e.proxy.URL)
	cfg.RetryMaxAttempts = 1
	return cfg
}

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func s3Client(cfg aws.Config) *s3.Client {
	return s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true })
}

type protocolCase struct {
	name, service, action string
	call                  func(ctx context.Context, cfg aws.Config) error
}

func protocolCases(t *testing.T, moto *motoserver.Server) []protocolCase {
	// S3 needs a bucket that exists, made directly on moto so the proxy's
	// log holds only the call under test.
	if _, err := s3Client(motoserver.AWSConfig(moto.URL)).CreateBucket(ctxT(t), &s3.CreateBucketInput{Bucket: aws.String("fp-bucket")}); err != nil {
		t.Fatalf("CreateBucket: %v", err)
	}
	return []protocolCase{
		{"ec2 query", "ec2", "DescribeInstances", func(ctx context.Context, cfg aws.Config) error {
			_, err := ec2.NewFromConfig(cfg).DescribeInstances(ctx, &ec2.DescribeInstancesInput{})
			return err
		}},
		{"awsJson", "ssm", "DescribeParameters", func(ctx context.Context, cfg aws.Config) error {
			_, err := ssm.NewFromConfig(cfg).DescribeParameters(ctx, &ssm.DescribeParametersInput{})
			return err
		}},
		{"s3 rest-xml", "s3", "ListObjectsV2", func(ctx context.Context, cfg aws.Config) error {
			_, err := s3Client(cfg).ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String("fp-bucket")})
			return err
		}},
		{"other query", "autoscaling", "DescribeAutoScalingGroups", func(ctx context.Context, cfg aws.Config) error {
			_, err := autoscaling.NewFromConfig(cfg).DescribeAutoScalingGroups(ctx, &autoscaling.DescribeAutoScalingGroupsInput{})
			return err
		}},
	}
}

func apiCode(t *testing.T, err error) string {
	t.Helper()
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		t.Fatalf("error is not a smithy.APIError: %v", err)
	}
	return ae.ErrorCode()
}

func TestThrottleLooksLikeTheService(t *testing.T) {
	want := map[string]struct {
		code   string
		status int
	}{
		"ec2":         {"RequestLimitExceeded", 503},
		"ssm":         {"ThrottlingException", 400},
		"s3":          {"SlowDown", 503},
		"autoscaling": {"Throttling", 400},
	}
	e := newEnv(t, Faults{ThrottleRate: 1})
	for _, tc := range protocolCases(t, e.moto) {
		t.Run(tc.name, func(t *testing.T) {
			e.proxy.Reset()
			err := tc.call(ctxT(t), e.oneShot())
			if err == nil {
				t.Fatal("call succeeded through a proxy throttling everything")
			}
			if got := apiCode(t, err); got != want[tc.service].code {
				t.Errorf("ErrorCode() = %q, want %q (err: %v)", got, want[tc.service].code, err)
			}
			// The point of the wire shape: the SDK must treat it as throttling.
			if retry.IsErrorThrottles(retry.DefaultThrottles).IsErrorThrottle(err) != aws.TrueTernary {
				t.Errorf("SDK does not classify %v as throttling", err)
			}
			calls := e.proxy.Calls()
			if len(calls) != 1 {
				t.Fatalf("calls = %+v, want exactly one", calls)
			}
			c := calls[0]
			if c.Service != tc.service || c.Action != tc.action || c.Fault != FaultThrottle || c.Status != want[tc.service].status {
				t.Errorf("call = %+v, want %s %s throttle status %d", c, tc.service, tc.action, want[tc.service].status)
			}
		})
	}
}

func TestServerErrorLooksLikeTheService(t *testing.T) {
	want := map[string]string{
		"ec2":         "InternalError",
		"ssm":         "InternalServerError",
		"s3":          "InternalError",
		"autoscaling": "InternalError",
	}
	e := newEnv(t, Faults{ServerErrorRate: 1})
	for _, tc := range protocolCases(t, e.moto) {
		t.Run(tc.name, func(t *testing.T) {
			e.proxy.Reset()
			err := tc.call(ctxT(t), e.oneShot())
			if err == nil {
				t.Fatal("call succeeded through a proxy failing everything")
			}
			if got := apiCode(t, err); got != want[tc.service] {
				t.Errorf("ErrorCode() = %q, want %q (err: %v)", got, want[tc.service], err)
			}
			if !retry.IsErrorRetryables(retry.DefaultRetryables).IsErrorRetryable(err).Bool() {
				t.Errorf("SDK does not classify %v as retryable", err)
			}
			calls := e.proxy.Calls()
			if len(calls) != 1 || calls[0].Fault != Fault5xx || calls[0].Status != 500 {
				t.Errorf("calls = %+v, want one 5xx with status 500", calls)
			}
		})
	}
}

func TestSDKRetriesThroughThrottling(t *testing.T) {
	e := newEnv(t, Faults{ThrottleRate: 0.2, Seed: 7})
	cfg := motoserver.AWSConfig(e.proxy.URL)
	// RetryMaxAttempts, when set, overrides the Retryer's own maximum.
	cfg.RetryMaxAttempts = 10
	cfg.Retryer = func() aws.Retryer {
		return retry.AddWithMaxBackoffDelay(retry.NewStandard(), time.Millisecond)
	}
	client := ec2.NewFromConfig(cfg)
	const n = 30
	for i := range n {
		if _, err := client.DescribeVpcs(ctxT(t), &ec2.DescribeVpcsInput{}); err != nil {
			t.Fatalf("DescribeVpcs #%d failed despite retries: %v", i, err)
		}
	}
	throttled := 0
	for _, c := range e.proxy.Calls() {
		switch c.Fault {
		case FaultThrottle:
			throttled++
		case FaultNone:
			if c.Status != http.StatusOK {
				t.Errorf("forwarded call %+v, want status 200", c)
			}
		default:
			t.Errorf("unexpected fault in %+v", c)
		}
	}
	if throttled == 0 {
		t.Fatal("no call was throttled at rate 0.2; the test proves nothing")
	}
	// Every throttled attempt was re-sent by the SDK.
	if got := e.proxy.Count("DescribeVpcs"); got != n+throttled {
		t.Errorf("Count(DescribeVpcs) = %d, want %d successes + %d throttled", got, n, throttled)
	}
	t.Logf("%d of %d attempts throttled", throttled, n+throttled)
}

func countVPCs(t *testing.T, endpoint, cidr string) int {
	t.Helper()
	out, err := ec2.NewFromConfig(motoserver.AWSConfig(endpoint)).DescribeVpcs(ctxT(t), &ec2.DescribeVpcsInput{
		Filters: []ec2types.Filter{{Name: aws.String("cidr"), Values: []string{cidr}}},
	})
	if err != nil {
		t.Fatalf("DescribeVpcs: %v", err)
	}
	return len(out.Vpcs)
}

func TestFaultedCallIsNotForwarded(t *testing.T) {
	onlyCreateVpc := func(c Call) bool { return c.Action == "CreateVpc" }
	e := newEnv(t, Faults{ThrottleRate: 1, Match: onlyCreateVpc})
	cfg := motoserver.AWSConfig(e.proxy.URL) // 3 attempts, all throttled
	cfg.Retryer = func() aws.Retryer { return retry.AddWithMaxBackoffDelay(retry.NewStandard(), time.Millisecond) }
	_, err := ec2.NewFromConfig(cfg).CreateVpc(ctxT(t), &ec2.CreateVpcInput{CidrBlock: aws.String("10.77.0.0/16")})
	if err == nil {
		t.Fatal("CreateVpc succeeded through a throttling proxy")
	}
	if got := e.proxy.Count("CreateVpc"); got != 3 {
		t.Errorf("Count(CreateVpc) = %d, want 3 attempts", got)
	}
	if n := countVPCs(t, e.moto.URL, "10.77.0.0/16"); n != 0 {
		t.Fatalf("throttled CreateVpc reached moto: %d VPCs", n)
	}

	e.proxy.SetFaults(Faults{})
	if _, err := ec2.NewFromConfig(cfg).CreateVpc(ctxT(t), &ec2.CreateVpcInput{CidrBlock: aws.String("10.77.0.0/16")}); err != nil {
		t.Fatalf("CreateVpc without faults: %v", err)
	}
	if n := countVPCs(t, e.moto.URL, "10.77.0.0/16"); n != 1 {
		t.Fatalf("forwarded CreateVpc made %d VPCs, want 1", n)
	}
}

// A lost answer took effect: the SDK sees a 500 and retries, and each
// attempt reaches moto.
func TestLostAnswerIsForwarded(t *testing.T) {
	onlyCreateVpc := func(c Call) bool { return c.Action == "CreateVpc" }
	e := newEnv(t, Faults{LostAnswerRate: 1, Match: onlyCreateVpc})
	cfg := motoserver.AWSConfig(e.proxy.URL)
	cfg.Retryer = func() aws.Retryer { return retry.AddWithMaxBackoffDelay(retry.NewStandard(), time.Millisecond) }
	_, err := ec2.NewFromConfig(cfg).CreateVpc(ctxT(t), &ec2.CreateVpcInput{CidrBlock: aws.String("10.78.0.0/16")})
	if err == nil || !strings.Contains(err.Error(), "InternalError") {
		t.Fatalf("CreateVpc with its answers lost: %v", err)
	}
	if n := countVPCs(t, e.moto.URL, "10.78.0.0/16"); n != 3 {
		t.Fatalf("%d VPCs, want one per attempt (3)", n)
	}
	for _, c := range e.proxy.Calls() {
		if c.Fault != FaultLostAnswer || c.Status != 500 {
			t.Errorf("call %+v", c)
		}
	}
}

func TestMatchLimitsFaults(t *testing.T) {
	e := newEnv(t, Faults{ServerErrorRate: 1, Match: func(c Call) bool { return c.Service == "ec2" && c.Action == "DescribeSubnets" }})
	client := ec2.NewFromConfig(e.oneShot())
	if _, err := client.DescribeVpcs(ctxT(t), &ec2.DescribeVpcsInput{}); err != nil {
		t.Fatalf("unmatched DescribeVpcs: %v", err)
	}
	if _, err := client.DescribeSubnets(ctxT(t), &ec2.DescribeSubnetsInput{}); err == nil {
		t.Fatal("matched DescribeSubnets succeeded")
	}
	calls := e.proxy.Calls()
	if len(calls) != 2 || calls[0].Fault != FaultNone || calls[1].Fault != Fault5xx {
		t.Fatalf("calls = %+v, want DescribeVpcs clean then DescribeSubnets 5xx", calls)
	}
}

func TestCountAndReset(t *testing.T) {
	e := newEnv(t, Faults{})
	client := ec2.NewFromConfig(e.oneShot())
	for range 3 {
		if _, err := client.DescribeVpcs(ctxT(t), &ec2.DescribeVpcsInput{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := client.DescribeSubnets(ctxT(t), &ec2.DescribeSubnetsInput{}); err != nil {
		t.Fatal(err)
	}
	if got := e.proxy.Count("DescribeVpcs"); got != 3 {
		t.Errorf("Count(DescribeVpcs) = %d, want 3", got)
	}
	if got := e.proxy.Count("DescribeSubnets"); got != 1 {
		t.Errorf("Count(DescribeSubnets) = %d, want 1", got)
	}
	if got := e.proxy.Count(""); got != 4 {
		t.Errorf("Count(\"\") = %d, want 4", got)
	}
	calls := e.proxy.Calls()
	for i := 1; i < len(calls); i++ {
		if calls[i].At.Before(calls[i-1].At) {
			t.Errorf("calls out of order: %v before %v", calls[i].At, calls[i-1].At)
		}
	}
	e.proxy.Reset()
	if got := e.proxy.Count(""); got != 0 || len(e.proxy.Calls()) != 0 {
		t.Errorf("after Reset: Count = %d, Calls = %v", got, e.proxy.Calls())
	}
}

func TestDelayHoldsTheCall(t *testing.T) {
	e := newEnv(t, Faults{DelayRate: 1, Delay: time.Millisecond, Match: func(c Call) bool { return c.Action == "DescribeVpcs" }})
	client := ec2.NewFromConfig(e.oneShot())
	if _, err := client.DescribeVpcs(ctxT(t), &ec2.DescribeVpcsInput{}); err != nil {
		t.Fatalf("delayed DescribeVpcs: %v", err)
	}
	if _, err := client.DescribeSubnets(ctxT(t), &ec2.DescribeSubnetsInput{}); err != nil {
		t.Fatalf("DescribeSubnets: %v", err)
	}
	calls := e.proxy.Calls()
	if len(calls) != 2 || calls[0].Fault != FaultDelay || calls[0].Status != 200 || calls[1].Fault != FaultNone {
		t.Fatalf("calls = %+v, want a delayed-then-forwarded DescribeVpcs and a clean DescribeSubnets", calls)
	}

	// A delay far beyond the test: the caller gives up while the call is
	// held, and the held call is dropped instead of reaching moto.
	e.proxy.Reset()
	e.proxy.SetFaults(Faults{DelayRate: 1, Delay: time.Hour, Match: func(c Call) bool { return c.Action == "CreateVpc" }})
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := client.CreateVpc(ctx, &ec2.CreateVpcInput{CidrBlock: aws.String("10.78.0.0/16")})
		errc <- err
	}()
	waitFor(t, time.Minute, "CreateVpc to be held", func() bool { return e.proxy.Count("CreateVpc") == 1 })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("CreateVpc held for an hour, then canceled: err = %v, want context.Canceled", err)
	}
	if c := e.proxy.Calls(); len(c) != 1 || c[0].Fault != FaultDelay || c[0].Status != 0 {
		t.Errorf("calls = %+v, want one delayed call with no status", c)
	}
	if n := countVPCs(t, e.moto.URL, "10.78.0.0/16"); n != 0 {
		t.Fatalf("a call abandoned during its delay reached moto: %d VPCs", n)
	}
}

func TestSeedRepeatsTheSameFaults(t *testing.T) {
	e := newEnv(t, Faults{})
	client := ec2.NewFromConfig(e.oneShot())
	run := func(seed int64) string {
		e.proxy.Reset()
		e.proxy.SetFaults(Faults{ThrottleRate: 0.3, ServerErrorRate: 0.2, DelayRate: 0.2, Delay: time.Microsecond, Seed: seed})
		for range 25 {
			client.DescribeVpcs(ctxT(t), &ec2.DescribeVpcsInput{}) // faults expected
		}
		var b strings.Builder
		for _, c := range e.proxy.Calls() {
			b.WriteString(c.Fault + ",")
		}
		return b.String()
	}
	a, b, c := run(42), run(42), run(43)
	if a != b {
		t.Fatalf("same seed, different faults:\n%s\n%s", a, b)
	}
	if a == c {
		t.Fatalf("seeds 42 and 43 gave the same 25 faults: %s", a)
	}
	for _, f := range []string{FaultThrottle, Fault5xx, FaultDelay} {
		if !strings.Contains(a, f+",") {
			t.Errorf("25 calls at these rates never drew %q: %s", f, a)
		}
	}
}

// TestIdentify checks request naming and that a read query body is passed
// on intact, against a plain HTTP target rather than moto.
func TestIdentify(t *testing.T) {
	var gotBody string
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		gotBody = string(b)
	}))
	defer target.Close()
	p := New(target.URL, Faults{})
	defer p.Close()

	auth := func(svc string) string {
		return "AWS4-HMAC-SHA256 Credential=test/20261128/us-east-1/" + svc + "/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc"
	}
	cases := []struct {
		method, path, body string
		header             map[string]string
		service, action    string
	}{
		{"POST", "/", "Action=DescribeInstances&Version=2016-11-15", map[string]string{"Content-Type": "application/x-www-form-urlencoded; charset=utf-8", "Authorization": auth("ec2")}, "ec2", "DescribeInstances"},
		{"POST", "/", "Action=SetDesiredCapacity&Version=2011-01-01", map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Authorization": auth("autoscaling")}, "autoscaling", "SetDesiredCapacity"},
		{"GET", "/?Action=GetCallerIdentity&Version=2011-06-15", "", map[string]string{"Authorization": auth("sts")}, "sts", "GetCallerIdentity"},
		{"POST", "/", `{"InstanceIds":["i-1"]}`, map[string]string{"X-Amz-Target": "AmazonSSM.SendCommand", "Content-Type": "application/x-amz-json-1.1", "Authorization": auth("ssm")}, "ssm", "SendCommand"},
		{"POST", "/", `{}`, map[string]string{"X-Amz-Target": "AmazonSSM.GetCommandInvocation"}, "ssm", "GetCommandInvocation"},
		{"PUT", "/bkt/backups/a.tar.bz2", "data", map[string]string{"Authorization": auth("s3")}, "s3", "PutObject"},
		{"PUT", "/bkt/backups/a.tar.bz2", "", map[string]string{"Authorization": auth("s3"), "X-Amz-Copy-Source": "/bkt/x"}, "s3", "CopyObject"},
		{"GET", "/bkt/backups/a.tar.bz2", "", map[string]string{"Authorization": auth("s3")}, "s3", "GetObject"},
		{"HEAD", "/bkt/backups/a.tar.bz2", "", map[string]string{"Authorization": auth("s3")}, "s3", "HeadObject"},
		{"DELETE", "/bkt/backups/a.tar.bz2", "", map[string]string{"Authorization": auth("s3")}, "s3", "DeleteObject"},
		{"GET", "/bkt?list-type=2&prefix=backups%2F", "", map[string]string{"Authorization": auth("s3")}, "s3", "ListObjectsV2"},
		{"GET", "/bkt", "", map[string]string{"Authorization": auth("s3")}, "s3", "ListObjects"},
		{"PUT", "/bkt", "", map[string]string{"Authorization": auth("s3")}, "s3", "CreateBucket"},
		{"HEAD", "/bkt", "", map[string]string{"Authorization": auth("s3")}, "s3", "HeadBucket"},
		{"POST", "/bkt/big?uploads", "", map[string]string{"Authorization": auth("s3")}, "s3", "CreateMultipartUpload"},
		{"PUT", "/bkt/big?partNumber=1&uploadId=u", "part", map[string]string{"Authorization": auth("s3")}, "s3", "UploadPart"},
		{"GET", "/", "", map[string]string{"Authorization": auth("s3")}, "s3", "ListBuckets"},
		{"PATCH", "/bkt/k", "", map[string]string{"Authorization": auth("s3")}, "s3", "PATCH /bkt/k"},
	}
	for _, tc := range cases {
		p.Reset()
		gotBody = ""
		req, err := http.NewRequest(tc.method, p.URL+tc.path, strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range tc.header {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		resp.Body.Close()
		calls := p.Calls()
		if len(calls) != 1 || calls[0].Service != tc.service || calls[0].Action != tc.action {
			t.Errorf("%s %s: calls = %+v, want service %q action %q", tc.method, tc.path, calls, tc.service, tc.action)
			continue
		}
		if calls[0].Status != http.StatusOK {
			t.Errorf("%s %s: recorded status %d, want 200", tc.method, tc.path, calls[0].Status)
		}
		if tc.method != "HEAD" && tc.method != "GET" && gotBody != tc.body {
			t.Errorf("%s %s: target got body %q, want %q", tc.method, tc.path, gotBody, tc.body)
		}
	}
}

func TestNewPanicsOnBadTarget(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("New accepted a target without scheme")
		}
	}()
	New("127.0.0.1:5000", Faults{})
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDenyLooksLikeTheServiceAndRecordsTheSigner(t *testing.T) {
	want := map[string]struct {
		code   string
		status int
	}{
		"ec2":         {"UnauthorizedOperation", 403},
		"ssm":         {"AccessDeniedException", 400},
		"s3":          {"AccessDenied", 403},
		"autoscaling": {"AccessDenied", 403},
	}
	e := newEnv(t, Faults{Deny: func(Call) bool { return true }, ThrottleRate: 1})
	for _, tc := range protocolCases(t, e.moto) {
		t.Run(tc.name, func(t *testing.T) {
			e.proxy.Reset()
			err := tc.call(ctxT(t), e.oneShot())
			if err == nil {
				t.Fatal("call succeeded through a proxy denying everything")
			}
			if got := apiCode(t, err); got != want[tc.service].code {
				t.Errorf("ErrorCode() = %q, want %q (err: %v)", got, want[tc.service].code, err)
			}
			calls := e.proxy.Calls()
			if len(calls) != 1 {
				t.Fatalf("calls = %+v, want exactly one", calls)
			}
			// Deny comes before the draws: a denied call is not throttled.
			if c := calls[0]; c.Fault != FaultDenied || c.Status != want[tc.service].status || c.AccessKey != "test" {
				t.Errorf("call = %+v, want denied with status %d signed by test", c, want[tc.service].status)
			}
		})
	}
}
