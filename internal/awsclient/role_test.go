package awsclient_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"

	"github.com/circlebot/circlebot/internal/awsclient"
)

const roleARN = "arn:aws:iam::123456789012:role/circlebot-ops"

// request is one call the fake AWS received.
type request struct {
	Service, Action, AccessKey string
	Form                       url.Values
}

// fakeAWS answers STS AssumeRole (fresh keys ASIA1, ASIA2… valid for
// expires) and EC2 DescribeInstances (nothing), and records who signed
// each call.
type fakeAWS struct {
	t       *testing.T
	srv     *httptest.Server
	mu      sync.Mutex
	calls   []request
	n       int
	expires func() time.Time
	refuse  string // STS answers 403 with this code
}

func newFakeAWS(t *testing.T) *fakeAWS {
	f := &fakeAWS{t: t, expires: func() time.Time { return time.Now().Add(time.Hour) }}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeAWS) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	form, _ := url.ParseQuery(string(body))
	// Authorization: AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/ec2/aws4_request, …
	_, cred, _ := strings.Cut(r.Header.Get("Authorization"), "Credential=")
	cred, _, _ = strings.Cut(cred, ",")
	scope := strings.Split(cred, "/")
	if len(scope) != 5 {
		http.Error(w, "unsigned", http.StatusBadRequest)
		return
	}
	req := request{Service: scope[3], Action: form.Get("Action"), AccessKey: scope[0], Form: form}
	f.mu.Lock()
	f.calls = append(f.calls, req)
	refuse := f.refuse
	if req.Service == "sts" && refuse == "" {
		f.n++
	}
	n := f.n
	f.mu.Unlock()
	w.Header().Set("Content-Type", "text/xml")
	switch {
	case req.Service == "sts" && refuse != "":
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprintf(w, `<ErrorResponse><Error><Type>Sender</Type><Code>%s</Code><Message>User: arn:aws:iam::123456789012:user/bot is not authorized to perform: sts:AssumeRole on resource: %s</Message></Error><RequestId>r</RequestId></ErrorResponse>`, refuse, roleARN)
	case req.Service == "sts" && req.Action == "AssumeRole":
		fmt.Fprintf(w, `<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>
<Credentials><AccessKeyId>ASIA%d</AccessKeyId><SecretAccessKey>secret%d</SecretAccessKey><SessionToken>token%d</SessionToken><Expiration>%s</Expiration></Credentials>
<AssumedRoleUser><AssumedRoleId>AROA:%s</AssumedRoleId><Arn>arn:aws:sts::123456789012:assumed-role/circlebot-ops/%s</Arn></AssumedRoleUser>
</AssumeRoleResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></AssumeRoleResponse>`,
			n, n, n, f.expires().UTC().Format(time.RFC3339), form.Get("RoleSessionName"), form.Get("RoleSessionName"))
	case req.Service == "ec2":
		fmt.Fprint(w, `<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>r</requestId><reservationSet/></DescribeInstancesResponse>`)
	default:
		http.Error(w, "unexpected "+req.Service+" "+req.Action, http.StatusBadRequest)
	}
}

func (f *fakeAWS) take() []request {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.calls
	f.calls = nil
	return out
}

// config is what app.New builds with ops.role_arn set: the base
// credentials "BASEKEY", and the role for operations.
func (f *fakeAWS) config() (aws.Config, *awsclient.OperationCredentials) {
	base := aws.Config{
		Region:           "us-east-1",
		Credentials:      aws.NewCredentialsCache(credentials.NewStaticCredentialsProvider("BASEKEY", "basesecret", "")),
		BaseEndpoint:     aws.String(f.srv.URL),
		RetryMaxAttempts: 1,
	}
	cfg := awsclient.WithOperationRole(base, roleARN)
	return cfg, cfg.Credentials.(*awsclient.OperationCredentials)
}

func describe(t *testing.T, api *ec2.Client, ctx context.Context) error {
	t.Helper()
	_, err := api.DescribeInstances(ctx, &ec2.DescribeInstancesInput{})
	return err
}

var (
	opA = awsclient.Operation{ID: "op-20260101-120000-abcd", Requester: "U0ALICE", Approver: "U0BOB"}
	opB = awsclient.Operation{ID: "op-20260101-130000-ef01", Requester: "U0CAROL", Approver: "U0ALICE"}
)

// The heart of it: through one client built from one aws.Config, calls
// of an operation are signed with that operation's role session, calls
// of another operation with another, and every other call with the base
// credentials — the SDK keeps no cache that hands one caller's
// credentials to the next.
func TestOperationCallsAreSignedWithTheirOwnRoleSession(t *testing.T) {
	f := newFakeAWS(t)
	cfg, _ := f.config()
	api := ec2.NewFromConfig(cfg)
	ctx := context.Background()

	step := func(ctx context.Context, wantKey string, wantSTS int) []request {
		t.Helper()
		if err := describe(t, api, ctx); err != nil {
			t.Fatal(err)
		}
		calls := f.take()
		var sts []request
		for _, c := range calls {
			switch c.Service {
			case "sts":
				sts = append(sts, c)
			case "ec2":
				if c.AccessKey != wantKey {
					t.Errorf("EC2 call signed with %s, want %s", c.AccessKey, wantKey)
				}
			}
		}
		if len(sts) != wantSTS {
			t.Errorf("%d AssumeRole calls, want %d", len(sts), wantSTS)
		}
		return sts
	}

	step(ctx, "BASEKEY", 0)
	sts := step(awsclient.WithOperation(ctx, opA), "ASIA1", 1)
	a := sts[0]
	// The STS call itself is signed with the base credentials (no
	// recursion), and carries who asked and who approved.
	want := map[string]string{
		"Action": "AssumeRole", "RoleArn": roleARN, "RoleSessionName": "circlebot-" + opA.ID,
		"SourceIdentity": "U0ALICE", "DurationSeconds": "3600",
		"Tags.member.1.Key": "circlebot:approver", "Tags.member.1.Value": "U0BOB",
		"Tags.member.2.Key": "circlebot:op", "Tags.member.2.Value": opA.ID,
	}
	for k, v := range want {
		if got := a.Form.Get(k); got != v {
			t.Errorf("AssumeRole %s = %q, want %q", k, got, v)
		}
	}
	if a.AccessKey != "BASEKEY" {
		t.Errorf("AssumeRole signed with %s, want the base credentials", a.AccessKey)
	}
	step(awsclient.WithOperation(ctx, opA), "ASIA1", 0) // kept
	step(ctx, "BASEKEY", 0)                             // a scheduled call meanwhile
	step(awsclient.WithOperation(ctx, opB), "ASIA2", 1) // another operation
	step(awsclient.WithOperation(ctx, opA), "ASIA1", 0)
}

func TestSessionIsRenewedBeforeItExpires(t *testing.T) {
	f := newFakeAWS(t)
	cfg, p := f.config()
	now := time.Now()
	var mu sync.Mutex
	p.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	f.expires = func() time.Time { return now.Add(time.Hour) }
	api := ec2.NewFromConfig(cfg)
	ctx := awsclient.WithOperation(context.Background(), opA)
	keys := func() string {
		t.Helper()
		if err := describe(t, api, ctx); err != nil {
			t.Fatal(err)
		}
		var ks []string
		for _, c := range f.take() {
			ks = append(ks, c.Service+":"+c.AccessKey)
		}
		return strings.Join(ks, " ")
	}
	if got := keys(); got != "sts:BASEKEY ec2:ASIA1" {
		t.Fatalf("first call: %s", got)
	}
	mu.Lock()
	now = now.Add(time.Hour - awsclient.DefaultRefreshMargin - time.Second)
	mu.Unlock()
	if got := keys(); got != "ec2:ASIA1" {
		t.Fatalf("before the margin: %s", got)
	}
	mu.Lock()
	now = now.Add(2 * time.Second)
	mu.Unlock()
	if got := keys(); got != "sts:BASEKEY ec2:ASIA2" {
		t.Fatalf("within the margin: %s", got)
	}
}

// A role that cannot be assumed fails the call with an error naming the
// role and STS's answer, and the call is never sent — with the base
// credentials or any other.
func TestRefusedRoleFailsTheCallAndSendsNothing(t *testing.T) {
	f := newFakeAWS(t)
	f.refuse = "AccessDenied"
	cfg, _ := f.config()
	api := ec2.NewFromConfig(cfg)
	err := describe(t, api, awsclient.WithOperation(context.Background(), opA))
	if err == nil {
		t.Fatal("the call succeeded without its role session")
	}
	for _, c := range f.take() {
		if c.Service != "sts" {
			t.Errorf("%s %s sent (signed %s) although the role was refused", c.Service, c.Action, c.AccessKey)
		}
	}
	var ae smithy.APIError
	if !errors.As(err, &ae) || ae.ErrorCode() != "AccessDenied" || !strings.Contains(ae.ErrorMessage(), "cannot assume ops.role_arn "+roleARN+" for "+opA.ID+": User: ") {
		t.Errorf("first API error in the chain: %v (%T)", ae, ae)
	}
	if !strings.Contains(err.Error(), "cannot assume ops.role_arn "+roleARN) || awsclient.ErrorCode(err) != "AccessDenied" {
		t.Errorf("error: %v (code %s)", err, awsclient.ErrorCode(err))
	}
	// Without an operation the base credentials still work.
	if err := describe(t, api, context.Background()); err != nil {
		t.Errorf("a call outside the operation: %v", err)
	}
}

// STS refuses a SourceIdentity or a tag outside its pattern; the bot says
// so itself, before asking, and never runs the call otherwise.
func TestPeopleSTSWouldRefuseAreRefusedBeforeAsking(t *testing.T) {
	f := newFakeAWS(t)
	cfg, _ := f.config()
	api := ec2.NewFromConfig(cfg)
	for _, op := range []awsclient.Operation{
		{ID: opA.ID, Requester: "scheduler x", Approver: "U0BOB"},
		{ID: opA.ID, Requester: "U", Approver: "U0BOB"},
		{ID: opA.ID, Requester: strings.Repeat("U", 65), Approver: "U0BOB"},
		{ID: opA.ID, Requester: "aws:U0ALICE", Approver: "U0BOB"},
		{ID: opA.ID, Requester: "U0ALICE", Approver: ""},
		{ID: opA.ID, Requester: "U0ALICE", Approver: "U0BOB;drop"},
		{ID: "", Requester: "U0ALICE", Approver: "U0BOB"},
	} {
		err := describe(t, api, awsclient.WithOperation(context.Background(), op))
		if err == nil || !strings.Contains(err.Error(), "cannot assume ops.role_arn") {
			t.Errorf("%+v: %v", op, err)
		}
		if calls := f.take(); len(calls) != 0 {
			t.Errorf("%+v: %d calls sent", op, len(calls))
		}
	}
}

func TestConcurrentCallsOfOneOperationAssumeOnce(t *testing.T) {
	f := newFakeAWS(t)
	cfg, _ := f.config()
	api := ec2.NewFromConfig(cfg)
	var wg sync.WaitGroup
	for i := range 16 {
		op := opA
		if i%2 == 1 {
			op = opB
		}
		wg.Go(func() {
			if err := describe(t, api, awsclient.WithOperation(context.Background(), op)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	bySession, keys := map[string]int{}, map[string]bool{}
	for _, c := range f.take() {
		if c.Service == "sts" {
			bySession[c.Form.Get("SourceIdentity")]++
		} else {
			keys[c.AccessKey] = true
		}
	}
	if bySession["U0ALICE"] != 1 || bySession["U0CAROL"] != 1 {
		t.Errorf("AssumeRole per requester: %v, want one each", bySession)
	}
	if len(keys) != 2 || keys["BASEKEY"] {
		t.Errorf("EC2 calls signed with %v, want the two sessions' keys", keys)
	}
}

func TestSessionName(t *testing.T) {
	for in, want := range map[string]string{
		"op-20260101-120000-abcd": "circlebot-op-20260101-120000-abcd",
		"op/with space":           "circlebot-op_with_space",
		strings.Repeat("x", 70):   "circlebot-" + strings.Repeat("x", 54),
	} {
		if got := awsclient.SessionName(in); got != want || len(got) > 64 {
			t.Errorf("SessionName(%q) = %q, want %q", in, got, want)
		}
	}
}

// A tarball restore's download URL, presigned in the operation's context,
// is signed by its role session too (README: the role needs s3:GetObject).
func TestPresignedURLsOfAnOperationAreSignedByItsSession(t *testing.T) {
	f := newFakeAWS(t)
	cfg, _ := f.config()
	presign := s3.NewPresignClient(s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true }))
	in := &s3.GetObjectInput{Bucket: aws.String("backups"), Key: aws.String("circleci-backups/bk-1/x.tar.bz2")}
	for _, tc := range []struct {
		ctx  context.Context
		want string
	}{
		{awsclient.WithOperation(context.Background(), opA), "X-Amz-Credential=ASIA1%2F"},
		{context.Background(), "X-Amz-Credential=BASEKEY%2F"},
	} {
		req, err := presign.PresignGetObject(tc.ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(req.URL, tc.want) {
			t.Errorf("presigned URL %s lacks %s", req.URL, tc.want)
		}
	}
}
