package ops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// The narrow AWS interfaces more than one operation uses. Each operation
// declares the rest of what it calls next to itself (RestoreEC2,
// FailoverEC2, BackupEC2…); tests pass a real client pointed at moto, or a
// small fake of just these methods.

// EC2 is the part of the EC2 API status reads, and every operation with it.
type EC2 interface {
	DescribeInstances(context.Context, *ec2.DescribeInstancesInput, ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error)
	DescribeInstanceStatus(context.Context, *ec2.DescribeInstanceStatusInput, ...func(*ec2.Options)) (*ec2.DescribeInstanceStatusOutput, error)
	DescribeVolumes(context.Context, *ec2.DescribeVolumesInput, ...func(*ec2.Options)) (*ec2.DescribeVolumesOutput, error)
	DescribeSnapshots(context.Context, *ec2.DescribeSnapshotsInput, ...func(*ec2.Options)) (*ec2.DescribeSnapshotsOutput, error)
}

// AutoScaling is the part of the Auto Scaling API status reads.
type AutoScaling interface {
	DescribeAutoScalingGroups(context.Context, *autoscaling.DescribeAutoScalingGroupsInput, ...func(*autoscaling.Options)) (*autoscaling.DescribeAutoScalingGroupsOutput, error)
}

// SSM is the part of Systems Manager the bot uses to run commands on the
// Services box (circleci-backup, circleci-restore, replicated).
type SSM interface {
	SendCommand(context.Context, *ssm.SendCommandInput, ...func(*ssm.Options)) (*ssm.SendCommandOutput, error)
	GetCommandInvocation(context.Context, *ssm.GetCommandInvocationInput, ...func(*ssm.Options)) (*ssm.GetCommandInvocationOutput, error)
	CancelCommand(context.Context, *ssm.CancelCommandInput, ...func(*ssm.Options)) (*ssm.CancelCommandOutput, error)
}

// instanceReader reads one instance (describeInstance, waitInstanceState).
type instanceReader interface {
	DescribeInstances(context.Context, *ec2.DescribeInstancesInput, ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error)
}

// launchedBy finds the instance an operation launched (tagged key=opID),
// if any, not counting one on its way out: what a launch step run again
// after a crash or a lost answer adopts instead of launching twice.
func launchedBy(ctx context.Context, api instanceReader, key, opID, what string) (*ec2types.Instance, error) {
	out, err := api.DescribeInstances(ctx, &ec2.DescribeInstancesInput{Filters: []ec2types.Filter{
		{Name: aws.String("tag:" + key), Values: []string{opID}},
		{Name: aws.String("instance-state-name"), Values: []string{"pending", "running", "stopping", "stopped"}},
	}})
	if err != nil {
		return nil, fmt.Errorf("look for %s: %w", what, translate(err))
	}
	for _, res := range out.Reservations {
		for _, in := range res.Instances {
			return &in, nil
		}
	}
	return nil, nil
}

// interfaceReader finds who holds an address (InterfacesHolding, ipHolderOf).
type interfaceReader interface {
	DescribeNetworkInterfaces(context.Context, *ec2.DescribeNetworkInterfacesInput, ...func(*ec2.Options)) (*ec2.DescribeNetworkInterfacesOutput, error)
}

// What AWS said, as the decisions in this package need it. translate
// turns an SDK error into one of these (keeping the SDK's error in the
// chain), and nothing else in the package looks at AWS error codes.
var (
	// ErrNotFound: the thing does not exist (any more), or not yet where
	// EC2's reads lag its writes.
	ErrNotFound = errors.New("not found")
	// ErrMalformedID: an ID that cannot name anything (i-123).
	ErrMalformedID = errors.New("malformed ID")
	// ErrThrottled: AWS refused the call for its rate; the call did not run.
	ErrThrottled = errors.New("throttled")
	// ErrUnavailable: AWS failed the call on its side (5xx). It may have
	// run.
	ErrUnavailable = errors.New("AWS failed the call")
	// ErrNoAnswer: no answer came back (time-out, connection reset,
	// refused). The call may have run.
	ErrNoAnswer = errors.New("no answer from AWS")
	// ErrUnauthorized: the bot's IAM policy does not allow the call.
	ErrUnauthorized = errors.New("not authorized")
	// ErrIncorrectState: the instance is in a state the call does not
	// apply to (stopping one that is terminated…).
	ErrIncorrectState = errors.New("incorrect instance state")
	// ErrIPInUse: a launch asked for a private IP that an interface holds.
	ErrIPInUse = errors.New("private IP in use")
	// ErrInterfaceInUse: a launch asked for a network interface attached
	// to another instance.
	ErrInterfaceInUse = errors.New("network interface in use")
	// ErrInsufficientCapacity: AWS has no capacity of that type in the zone.
	ErrInsufficientCapacity = errors.New("insufficient instance capacity")
	// ErrInstanceLimit: the account's limit of instances (or vCPUs).
	ErrInstanceLimit = errors.New("instance limit exceeded")
	// ErrUnsupported: not available here (an instance type in a zone,
	// CreateSnapshots in a region or partition).
	ErrUnsupported = errors.New("unsupported")
	// ErrDuplicate: the name is taken (an image of that name exists).
	ErrDuplicate = errors.New("name already in use")
	// ErrSnapshotLimit: too many snapshots in progress (per volume or
	// account); wait for some to finish.
	ErrSnapshotLimit = errors.New("too many snapshots in progress")
	// ErrNotInGroup: the instance is not (or no longer) in the Auto
	// Scaling group.
	ErrNotInGroup = errors.New("not in the Auto Scaling group")
	// ErrNotAssigned: the address is not on that interface.
	ErrNotAssigned = errors.New("address not assigned to the interface")
	// ErrAgentOffline: SSM does not reach the instance (agent offline, no
	// instance profile, or stopped). The command was not sent.
	ErrAgentOffline = errors.New("the instance is not reachable through SSM")
	// ErrDryRunOK: a call made with DryRun would have succeeded (AWS
	// answers DryRunOperation, an error, and does nothing).
	ErrDryRunOK = errors.New("the dry run would have succeeded")
	// ErrNoDefaultEncryption: the bucket has no default encryption
	// configuration of its own.
	ErrNoDefaultEncryption = errors.New("no default bucket encryption")
)

// The codes behind each sentinel. An operation name ("Op:Code") narrows
// a code that means something specific only for that call.
var errorCodes = map[string]error{
	"InvalidInstanceID.NotFound":            ErrNotFound,
	"InvalidSnapshot.NotFound":              ErrNotFound,
	"InvalidAMIID.NotFound":                 ErrNotFound,
	"InvalidNetworkInterfaceID.NotFound":    ErrNotFound,
	"InvalidVolume.NotFound":                ErrNotFound,
	"InvalidSubnetID.NotFound":              ErrNotFound,
	"NotFound":                              ErrNotFound, // S3 HEAD: no body, no code of its own
	"NoSuchKey":                             ErrNotFound,
	"NoSuchBucket":                          ErrNotFound,
	"NoSuchUpload":                          ErrNotFound,
	"InvocationDoesNotExist":                ErrNotFound, // SSM has not registered a new command yet
	"ResourceNotFoundException":             ErrNotFound,
	"InvalidInstanceID.Malformed":           ErrMalformedID,
	"InvalidSnapshotID.Malformed":           ErrMalformedID,
	"InvalidAMIID.Malformed":                ErrMalformedID,
	"InvalidSubnetID.Malformed":             ErrMalformedID,
	"InternalError":                         ErrUnavailable,
	"InternalFailure":                       ErrUnavailable,
	"InternalServerError":                   ErrUnavailable,
	"ServiceUnavailable":                    ErrUnavailable,
	"Unavailable":                           ErrUnavailable,
	"ServerUnavailable":                     ErrUnavailable,
	"RequestTimeout":                        ErrUnavailable,
	"RequestTimeoutException":               ErrUnavailable,
	"UnauthorizedOperation":                 ErrUnauthorized,
	"AccessDenied":                          ErrUnauthorized,
	"AccessDeniedException":                 ErrUnauthorized,
	"Forbidden":                             ErrUnauthorized, // S3 HEAD 403
	"IncorrectInstanceState":                ErrIncorrectState,
	"IncorrectState":                        ErrIncorrectState,
	"InvalidIPAddress.InUse":                ErrIPInUse,
	"InvalidNetworkInterface.InUse":         ErrInterfaceInUse,
	"InsufficientInstanceCapacity":          ErrInsufficientCapacity,
	"InstanceLimitExceeded":                 ErrInstanceLimit,
	"VcpuLimitExceeded":                     ErrInstanceLimit,
	"Unsupported":                           ErrUnsupported,
	"UnsupportedOperation":                  ErrUnsupported,
	"InvalidAMIName.Duplicate":              ErrDuplicate,
	"ConcurrentSnapshotLimitExceeded":       ErrSnapshotLimit,
	"SnapshotCreationPerVolumeRateExceeded": ErrSnapshotLimit,
	"InvalidInstanceId":                     ErrAgentOffline, // SSM's spelling; EC2's are InvalidInstanceID.*
	"DryRunOperation":                       ErrDryRunOK,

	"TerminateInstanceInAutoScalingGroup:ValidationError":                ErrNotInGroup,
	"UnassignPrivateIpAddresses:InvalidParameterValue":                   ErrNotAssigned,
	"GetBucketEncryption:ServerSideEncryptionConfigurationNotFoundError": ErrNoDefaultEncryption,
}

// readLag is how many polls a read-after-write looks before it gives up
// (a call whose answer was lost, then a look for what it made): EC2's
// reads lag its writes.
const readLag = 15

// awsError is an SDK error with the kind translate found for it: both
// errors.Is(err, ErrX) and errors.As(err, &smithy.APIError) hold, and its
// text is the SDK's.
type awsError struct {
	kind error
	err  error
}

func (e *awsError) Error() string   { return e.err.Error() }
func (e *awsError) Unwrap() []error { return []error{e.kind, e.err} }

// translate is the boundary: every error an AWS call returns passes
// through it (usually as the %w of the caller's wrap) before anything
// decides on it. It is idempotent, returns errors it does not know
// unchanged, and leaves cancellation alone.
func translate(err error) error {
	if err == nil || errors.Is(err, context.Canceled) {
		return err
	}
	var done *awsError
	if errors.As(err, &done) {
		return err
	}
	if kind := kindOf(err); kind != nil {
		return &awsError{kind: kind, err: err}
	}
	return err
}

func kindOf(err error) error {
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		var ne net.Error
		var send *smithyhttp.RequestSendError
		if errors.As(err, &send) || errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.ErrUnexpectedEOF) {
			return ErrNoAnswer
		}
		// A 5xx whose body is no AWS error (an HTML page from a proxy or
		// load balancer in between: "deserialization failed") is still
		// the service failing the call.
		var re *smithyhttp.ResponseError
		if errors.As(err, &re) && re.HTTPStatusCode() >= 500 {
			return ErrUnavailable
		}
		return nil
	}
	code := ae.ErrorCode()
	var op *smithy.OperationError
	if errors.As(err, &op) {
		if kind, ok := errorCodes[op.OperationName+":"+code]; ok {
			return kind
		}
	}
	if _, ok := retry.DefaultThrottleErrorCodes[code]; ok {
		return ErrThrottled
	}
	if kind, ok := errorCodes[code]; ok {
		return kind
	}
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) && re.HTTPStatusCode() >= 500 {
		return ErrUnavailable
	}
	return nil
}

// awsCode is the AWS error code of err for a log line ("" when AWS did
// not answer). Decisions use the sentinels, never this.
func awsCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// FindBox returns the one running-or-stopped instance with the Name tag;
// none or several is an error that says which.
func FindBox(ctx context.Context, api EC2, tag string) (ec2types.Instance, error) {
	insts, err := FindByName(ctx, api, tag)
	if err != nil {
		return ec2types.Instance{}, err
	}
	switch len(insts) {
	case 0:
		return ec2types.Instance{}, fmt.Errorf("find the Services box: no instance tagged Name=%s: %w", tag, ErrNotFound)
	case 1:
		return insts[0], nil
	}
	var ids []string
	for _, in := range insts {
		ids = append(ids, aws.ToString(in.InstanceId)+" ("+string(in.State.Name)+")")
	}
	return ec2types.Instance{}, &AmbiguousError{Tag: tag, Instances: ids}
}

// AmbiguousError: more than one instance carries the box's tag.
type AmbiguousError struct {
	Tag       string
	Instances []string
}

func (e *AmbiguousError) Error() string {
	return fmt.Sprintf("find the Services box: %d instances are tagged Name=%s (%s); retag or stop the extra one first", len(e.Instances), e.Tag, strings.Join(e.Instances, ", "))
}

// FindByName returns the non-terminated instances whose Name tag is tag.
func FindByName(ctx context.Context, api EC2, tag string) ([]ec2types.Instance, error) {
	in := &ec2.DescribeInstancesInput{Filters: []ec2types.Filter{
		{Name: aws.String("tag:Name"), Values: []string{tag}},
		{Name: aws.String("instance-state-name"), Values: []string{"pending", "running", "stopping", "stopped", "shutting-down"}},
	}}
	var out []ec2types.Instance
	p := ec2.NewDescribeInstancesPaginator(api, in)
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("find instances tagged Name=%s: %w", tag, translate(err))
		}
		for _, r := range page.Reservations {
			out = append(out, r.Instances...)
		}
	}
	return out, nil
}

// describeInstance returns the instance, or ok=false if AWS no longer
// knows it.
func describeInstance(ctx context.Context, api instanceReader, id string) (ec2types.Instance, bool, error) {
	out, err := api.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	if err = translate(err); errors.Is(err, ErrNotFound) {
		return ec2types.Instance{}, false, nil
	}
	if err != nil {
		return ec2types.Instance{}, false, fmt.Errorf("describe %s: %w", id, err)
	}
	for _, res := range out.Reservations {
		for _, in := range res.Instances {
			if in.State == nil {
				in.State = &ec2types.InstanceState{}
			}
			return in, true, nil
		}
	}
	return ec2types.Instance{}, false, nil
}

// instanceName is the Name tag of instance id, or "" if it cannot be read.
func instanceName(ctx context.Context, api instanceReader, id string) string {
	in, ok, err := describeInstance(ctx, api, id)
	if err != nil || !ok {
		return ""
	}
	return tag(in.Tags, "Name")
}

// waitInstanceState polls the instance every poll until its state is one
// of want (an instance AWS no longer knows counts as terminated) or the
// timeout passes. A read that fails for a moment is a poll that saw
// nothing (waitFor); the state last seen is returned with any error.
func waitInstanceState(ctx context.Context, api instanceReader, id string, poll, timeout time.Duration, want ...ec2types.InstanceStateName) (ec2types.InstanceStateName, error) {
	var state ec2types.InstanceStateName
	err := waitFor(ctx, poll, time.Now().Add(timeout), func() (bool, error) {
		in, ok, err := describeInstance(ctx, api, id)
		if err != nil {
			return false, err
		}
		state = ec2types.InstanceStateNameTerminated
		if ok {
			state = in.State.Name
		}
		return slices.Contains(want, state), nil
	})
	var to *waitTimeout
	if errors.As(err, &to) {
		return state, &stateTimeout{id: id, state: state, after: timeout, last: to.last}
	}
	return state, err
}

// stateTimeout: an instance did not reach the state waited for in time,
// or could not be read (last) when the time ran out.
type stateTimeout struct {
	id    string
	state ec2types.InstanceStateName // last seen; "" never
	after time.Duration
	last  error
}

func (e *stateTimeout) Error() string {
	if e.last != nil {
		return fmt.Sprintf("%s could not be read for %s (%s)", e.id, e.after, strings.TrimSuffix(Explain(e.last), "."))
	}
	return fmt.Sprintf("%s is still %s after %s", e.id, e.state, e.after)
}

// InterfacesHolding lists the network interfaces of subnet that hold ip,
// as primary or secondary address. (It reads the subnet's interfaces and
// matches here: the addresses.private-ip-address filter is not matched
// the same way for secondary addresses everywhere.)
func InterfacesHolding(ctx context.Context, api interfaceReader, ip, subnet, vpc string) ([]ec2types.NetworkInterface, error) {
	in := &ec2.DescribeNetworkInterfacesInput{}
	if subnet != "" {
		in.Filters = append(in.Filters, ec2types.Filter{Name: aws.String("subnet-id"), Values: []string{subnet}})
	}
	if vpc != "" {
		in.Filters = append(in.Filters, ec2types.Filter{Name: aws.String("vpc-id"), Values: []string{vpc}})
	}
	var out []ec2types.NetworkInterface
	pg := ec2.NewDescribeNetworkInterfacesPaginator(api, in)
	for pg.HasMorePages() {
		page, err := pg.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("find the interfaces holding %s: %w", ip, translate(err))
		}
		for _, n := range page.NetworkInterfaces {
			for _, a := range n.PrivateIpAddresses {
				if aws.ToString(a.PrivateIpAddress) == ip {
					out = append(out, n)
					break
				}
			}
		}
	}
	return out, nil
}

// ipHolder is the interface (and instance) that holds an address.
type ipHolder struct {
	eni, instance, name string
}

func (h *ipHolder) String() string {
	if h.instance == "" {
		return fmt.Sprintf("network interface `%s` (not attached to an instance)", h.eni)
	}
	s := fmt.Sprintf("network interface `%s` of instance `%s`", h.eni, h.instance)
	if h.name != "" {
		s += " (Name=" + h.name + ")"
	}
	return s
}

// ipHolderOf finds the interface that holds ip in subnet, if any.
func ipHolderOf(ctx context.Context, api interface {
	instanceReader
	interfaceReader
}, ip, subnet string) (*ipHolder, error) {
	out, err := api.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{Filters: []ec2types.Filter{
		{Name: aws.String("addresses.private-ip-address"), Values: []string{ip}},
		{Name: aws.String("subnet-id"), Values: []string{subnet}},
	}})
	if err != nil {
		return nil, fmt.Errorf("find what holds %s: %w", ip, translate(err))
	}
	for _, n := range out.NetworkInterfaces {
		h := &ipHolder{eni: aws.ToString(n.NetworkInterfaceId)}
		if n.Attachment != nil {
			h.instance = aws.ToString(n.Attachment.InstanceId)
			h.name = instanceName(ctx, api, h.instance)
		}
		return h, nil
	}
	return nil, nil
}
