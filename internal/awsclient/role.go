package awsclient

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	ststypes "github.com/aws/aws-sdk-go-v2/service/sts/types"
	"github.com/aws/smithy-go"
)

// Operation names the people behind an approved operation: its AWS calls
// run in a role session that carries them (see OperationCredentials).
type Operation struct {
	ID        string // op-…: the role session's name and its circlebot:op tag
	Requester string // Slack user ID: the session's SourceIdentity
	Approver  string // Slack user ID: the session's circlebot:approver tag
}

type operationKey struct{}

// WithOperation marks ctx as the context of an approved operation's steps:
// AWS calls made with it are signed with credentials of a role session for
// op (when ops.role_arn is set; else nothing changes).
func WithOperation(ctx context.Context, op Operation) context.Context {
	return context.WithValue(ctx, operationKey{}, op)
}

// OperationFrom returns the operation ctx was marked with.
func OperationFrom(ctx context.Context) (Operation, bool) {
	op, ok := ctx.Value(operationKey{}).(Operation)
	return op, ok
}

// Session tag keys the role session carries.
const (
	TagApprover = "circlebot:approver"
	TagOp       = "circlebot:op"
)

// Defaults of OperationCredentials.
const (
	// DefaultSessionDuration is what STS gives by default, and the most a
	// chained role session may last (a bot whose own credentials are an
	// instance profile, ECS task role or another role session chains).
	DefaultSessionDuration = time.Hour
	// DefaultRefreshMargin: a session's credentials are replaced this long
	// before they expire, so that a presigned URL (15 minutes for a
	// tarball's download) is never signed with credentials about to end.
	DefaultRefreshMargin = 15 * time.Minute
)

// AssumeRoleAPI is the STS call OperationCredentials makes; *sts.Client is
// the real one.
type AssumeRoleAPI interface {
	AssumeRole(ctx context.Context, in *sts.AssumeRoleInput, optFns ...func(*sts.Options)) (*sts.AssumeRoleOutput, error)
}

// OperationCredentials is the credentials provider of the bot's AWS
// clients when ops.role_arn is set. A call whose context carries an
// Operation (WithOperation) is signed with credentials from
// sts:AssumeRole of RoleARN, with the requester as SourceIdentity and the
// approver and operation as session tags, so CloudTrail names the people
// behind every call of an approved operation. Any other call (scheduled
// backups and retention, reads, status, the monitor) gets Base.
//
// Sessions are kept per operation until RefreshMargin before they expire.
// A session that cannot be had fails the call: it never falls back to
// Base.
//
// It must be the aws.Config's Credentials as it is, never wrapped in an
// aws.CredentialsCache: a cache keeps one set of credentials for every
// call, whoever's context it came with. (config.LoadDefaultConfig wraps
// what it loads, which is Base here; service clients of this SDK version
// use Config.Credentials unwrapped.)
type OperationCredentials struct {
	Base    aws.CredentialsProvider
	STS     AssumeRoleAPI // must sign with Base, never with this provider
	RoleARN string
	// Duration is the session length asked for (0: DefaultSessionDuration);
	// RefreshMargin is how long before expiry a session is replaced (0:
	// DefaultRefreshMargin).
	Duration, RefreshMargin time.Duration
	Now                     func() time.Time // tests

	mu       sync.Mutex
	sessions map[Operation]*session
}

type session struct {
	turn    chan struct{} // one AssumeRole at a time per operation
	creds   aws.Credentials
	created time.Time
}

// WithOperationRole returns a copy of cfg whose calls run in a role
// session of roleARN when their context carries an Operation, and with
// cfg's own credentials otherwise. The STS client uses cfg as it is.
func WithOperationRole(cfg aws.Config, roleARN string) aws.Config {
	out := cfg.Copy()
	out.Credentials = &OperationCredentials{Base: cfg.Credentials, STS: sts.NewFromConfig(cfg), RoleARN: roleARN}
	return out
}

// Retrieve implements aws.CredentialsProvider.
func (p *OperationCredentials) Retrieve(ctx context.Context) (aws.Credentials, error) {
	op, ok := OperationFrom(ctx)
	if !ok {
		if p.Base == nil {
			return aws.Credentials{}, fmt.Errorf("no AWS credentials configured")
		}
		return p.Base.Retrieve(ctx)
	}
	s := p.session(op)
	select {
	case s.turn <- struct{}{}:
	case <-ctx.Done():
		return aws.Credentials{}, ctx.Err()
	}
	defer func() { <-s.turn }()
	if s.creds.HasKeys() && p.now().Before(s.creds.Expires.Add(-p.margin())) {
		return s.creds, nil
	}
	creds, err := p.assume(ctx, op)
	if err != nil {
		return aws.Credentials{}, err
	}
	s.creds = creds
	return creds, nil
}

func (p *OperationCredentials) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

func (p *OperationCredentials) duration() time.Duration {
	if p.Duration > 0 {
		return p.Duration
	}
	return DefaultSessionDuration
}

func (p *OperationCredentials) margin() time.Duration {
	if p.RefreshMargin > 0 {
		return p.RefreshMargin
	}
	return DefaultRefreshMargin
}

// session returns op's session, made if new; sessions that have expired,
// or that never got credentials and are older than a session could last,
// are forgotten on the way.
func (p *OperationCredentials) session(op Operation) *session {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if s, ok := p.sessions[op]; ok {
		return s
	}
	for k, s := range p.sessions {
		if (s.creds.HasKeys() && now.After(s.creds.Expires)) || (!s.creds.HasKeys() && now.Sub(s.created) > p.duration()) {
			delete(p.sessions, k)
		}
	}
	if p.sessions == nil {
		p.sessions = map[Operation]*session{}
	}
	s := &session{turn: make(chan struct{}, 1), created: now}
	p.sessions[op] = s
	return s
}

// STS's patterns (API reference, AssumeRole): RoleSessionName and
// SourceIdentity are 2–64 of [\w+=,.@-] (a SourceIdentity must not begin
// with "aws:", which the pattern already excludes); a session tag value is
// at most 256 of letters, spaces, digits and _.:/=+-@.
var (
	stsName  = regexp.MustCompile(`^[\w+=,.@-]{2,64}$`)
	tagValue = regexp.MustCompile(`^[\p{L}\p{Z}\p{N}_.:/=+\-@]{0,256}$`)
	notName  = regexp.MustCompile(`[^\w+=,.@-]`)
)

// SessionName is the role session name of an operation: "circlebot-" and
// its ID, cut to STS's 64 characters. CloudTrail shows it in every call's
// ARN (assumed-role/<role>/<session name>).
func SessionName(opID string) string {
	n := "circlebot-" + notName.ReplaceAllString(opID, "_")
	if len(n) > 64 {
		n = n[:64]
	}
	return n
}

func (p *OperationCredentials) assume(ctx context.Context, op Operation) (aws.Credentials, error) {
	fail := func(err error) error { return p.assumeFailed(op, err) }
	switch {
	case !stsName.MatchString(op.Requester):
		return aws.Credentials{}, fail(fmt.Errorf("the requester %q cannot be a role session's SourceIdentity (2–64 letters, digits or _+=,.@-)", op.Requester))
	case op.Approver == "" || !tagValue.MatchString(op.Approver):
		return aws.Credentials{}, fail(fmt.Errorf("the approver %q cannot be a session tag value", op.Approver))
	case op.ID == "" || !tagValue.MatchString(op.ID):
		return aws.Credentials{}, fail(fmt.Errorf("the operation ID %q cannot be a session tag value", op.ID))
	}
	// The call's own context minus the operation: the STS client signs
	// with the base credentials whatever its context carries, and this
	// keeps it so should it ever be given this provider.
	out, err := p.STS.AssumeRole(withoutOperation{ctx}, &sts.AssumeRoleInput{
		RoleArn:         aws.String(p.RoleARN),
		RoleSessionName: aws.String(SessionName(op.ID)),
		SourceIdentity:  aws.String(op.Requester),
		DurationSeconds: aws.Int32(int32(p.duration() / time.Second)),
		Tags: []ststypes.Tag{
			{Key: aws.String(TagApprover), Value: aws.String(op.Approver)},
			{Key: aws.String(TagOp), Value: aws.String(op.ID)},
		},
	})
	if err != nil {
		return aws.Credentials{}, fail(err)
	}
	c := out.Credentials
	if c == nil || c.AccessKeyId == nil || c.SecretAccessKey == nil || c.Expiration == nil {
		return aws.Credentials{}, fail(fmt.Errorf("STS answered without credentials"))
	}
	return aws.Credentials{
		AccessKeyID: *c.AccessKeyId, SecretAccessKey: *c.SecretAccessKey, SessionToken: aws.ToString(c.SessionToken),
		Source: "circlebot:" + SessionName(op.ID), CanExpire: true, Expires: *c.Expiration,
	}, nil
}

// withoutOperation hides the operation of its context.
type withoutOperation struct{ context.Context }

func (c withoutOperation) Value(key any) any {
	if _, ok := key.(operationKey); ok {
		return nil
	}
	return c.Context.Value(key)
}

// assumeFailed wraps why an operation's role session could not be had.
// An answer of STS (AccessDenied…) becomes an *AssumeError, which reads
// as an AWS error of that code whose message names ops.role_arn; anything
// else (a timeout, a requester STS would refuse) stays what it is, named.
func (p *OperationCredentials) assumeFailed(op Operation, err error) error {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return &AssumeError{RoleARN: p.RoleARN, Op: op.ID, API: ae, Err: err}
	}
	return fmt.Errorf("cannot assume ops.role_arn %s for %s: %w", p.RoleARN, op.ID, err)
}

// AssumeError: STS refused an operation's role session. It is a
// smithy.APIError of STS's code, so that whoever explains AWS errors
// finds it, naming the role, before the STS error inside it.
type AssumeError struct {
	RoleARN, Op string
	API         smithy.APIError
	Err         error // the SDK's error, API inside it
}

func (e *AssumeError) Error() string {
	return fmt.Sprintf("cannot assume ops.role_arn %s for %s: %s: %s", e.RoleARN, e.Op, e.API.ErrorCode(), e.API.ErrorMessage())
}

func (e *AssumeError) Unwrap() error { return e.Err }

func (e *AssumeError) ErrorCode() string { return e.API.ErrorCode() }

func (e *AssumeError) ErrorMessage() string {
	m := e.API.ErrorMessage()
	if m == "" {
		m = "no message"
	}
	return fmt.Sprintf("cannot assume ops.role_arn %s for %s: %s", e.RoleARN, e.Op, m)
}

func (e *AssumeError) ErrorFault() smithy.ErrorFault { return e.API.ErrorFault() }
