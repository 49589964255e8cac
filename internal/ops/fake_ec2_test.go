package ops

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"
)

// fakeEC2 is a small, scripted EC2 for the safety paths moto cannot
// produce (an instance that never stops, a lost answer, a zone that does
// not answer, a read-back that lags). It keeps instances and network
// interfaces, answers the narrow interfaces' calls from them, and lets a
// test script failures and state changes with hooks. A call it does not
// implement panics (the embedded interfaces are nil): the code under test
// made a call the test did not expect.
type fakeEC2 struct {
	DrillEC2
	FailoverEC2

	mu      sync.Mutex
	calls   []string
	insts   map[string]*fakeInstance
	enis    map[string]*ec2types.NetworkInterface
	subnets map[string]string // subnet ID -> CIDR

	// Hooks run before the default behaviour; an error is the call's
	// answer. They run with the fake locked and may change its state.
	describeErr  func(n int, in *ec2.DescribeInstancesInput) error // n: the DescribeInstances calls so far, this one included
	onStop       func(id string, force bool) error
	onTerminate  func(id string) error
	onRun        func(in *ec2.RunInstancesInput) error
	onUnassign   func(eni string) error
	onAssign     func(eni string) error
	describeENIs func(n int) error
	onDetach     func(eni string, force bool) error
	onAttach     func(eni, instance string) error
	onModify     func(in *ec2.ModifyInstanceAttributeInput) error
	onTags       func(in *ec2.CreateTagsInput) error
	// ignoreModify: AWS takes ModifyInstanceAttribute but the instance
	// reads back unchanged.
	ignoreModify bool

	// eniLag: after a write to an interface, this many reads still see
	// the interfaces as they were before it (IP remapping on AWS is
	// asynchronous).
	eniLag     int
	staleReads int
	stale      map[string]*ec2types.NetworkInterface
	eniReads   int
	describes  int
	// dropENI removes an interface after that many more reads (an
	// instance's interface goes some time after the instance).
	dropENI map[string]int
}

// fakeInstance is an instance and the states its next reads see, one
// read each; the last stays.
type fakeInstance struct {
	ec2types.Instance
	next []ec2types.InstanceStateName
}

func newFakeEC2() *fakeEC2 {
	return &fakeEC2{insts: map[string]*fakeInstance{}, enis: map[string]*ec2types.NetworkInterface{}, subnets: map[string]string{}, dropENI: map[string]int{}}
}

// apiErr is an AWS error as the SDK returns it: an operation error
// around the API error.
func apiErr(op, code string) error {
	return &smithy.OperationError{ServiceID: "EC2", OperationName: op, Err: &smithy.GenericAPIError{Code: code, Message: "the test says " + code}}
}

func (f *fakeEC2) addInstance(id string, state ec2types.InstanceStateName, name string) *fakeInstance {
	in := &fakeInstance{Instance: ec2types.Instance{
		InstanceId: aws.String(id), State: &ec2types.InstanceState{Name: state},
		Tags: []ec2types.Tag{{Key: aws.String("Name"), Value: aws.String(name)}},
	}}
	f.insts[id] = in
	return in
}

// then makes the next reads of id see states, in turn.
func (f *fakeEC2) then(id string, states ...ec2types.InstanceStateName) {
	f.insts[id].next = append(f.insts[id].next[:0], states...)
}

func (f *fakeEC2) addENI(id, subnet, vpc, instance string, ips ...string) *ec2types.NetworkInterface {
	n := &ec2types.NetworkInterface{NetworkInterfaceId: aws.String(id), SubnetId: aws.String(subnet), VpcId: aws.String(vpc), Status: ec2types.NetworkInterfaceStatusInUse}
	if instance != "" {
		n.Attachment = &ec2types.NetworkInterfaceAttachment{AttachmentId: aws.String("attach-" + id), InstanceId: aws.String(instance), DeviceIndex: aws.Int32(0)}
	}
	for i, ip := range ips {
		n.PrivateIpAddresses = append(n.PrivateIpAddresses, ec2types.NetworkInterfacePrivateIpAddress{PrivateIpAddress: aws.String(ip), Primary: aws.Bool(i == 0)})
	}
	f.enis[id] = n
	return n
}

func (f *fakeEC2) record(format string, a ...any) {
	f.calls = append(f.calls, fmt.Sprintf(format, a...))
}

// Calls lists the calls made, in order ("StopInstances i-1 force").
func (f *fakeEC2) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeEC2) count(prefix string) int {
	n := 0
	for _, c := range f.Calls() {
		if strings.HasPrefix(c, prefix) {
			n++
		}
	}
	return n
}

func (f *fakeEC2) state(id string) ec2types.InstanceStateName {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.insts[id].State.Name
}

func (f *fakeEC2) DescribeInstances(_ context.Context, in *ec2.DescribeInstancesInput, _ ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.describes++
	f.record("DescribeInstances %s", strings.Join(in.InstanceIds, ","))
	if f.describeErr != nil {
		if err := f.describeErr(f.describes, in); err != nil {
			return nil, err
		}
	}
	var found []ec2types.Instance
	if len(in.InstanceIds) > 0 {
		for _, id := range in.InstanceIds {
			fi, ok := f.insts[id]
			if !ok {
				return nil, apiErr("DescribeInstances", "InvalidInstanceID.NotFound")
			}
			if len(fi.next) > 0 {
				fi.State = &ec2types.InstanceState{Name: fi.next[0]}
				if len(fi.next) > 1 {
					fi.next = fi.next[1:]
				}
			}
			found = append(found, fi.Instance)
		}
	} else {
		ids := make([]string, 0, len(f.insts))
		for id := range f.insts {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		for _, id := range ids {
			if fi := f.insts[id]; matches(fi.Instance, in.Filters) {
				found = append(found, fi.Instance)
			}
		}
	}
	if len(found) == 0 {
		return &ec2.DescribeInstancesOutput{}, nil
	}
	return &ec2.DescribeInstancesOutput{Reservations: []ec2types.Reservation{{Instances: found}}}, nil
}

// matches applies the tag:* and instance-state-name filters.
func matches(in ec2types.Instance, filters []ec2types.Filter) bool {
	for _, flt := range filters {
		name := aws.ToString(flt.Name)
		switch {
		case name == "instance-state-name":
			if !slices.Contains(flt.Values, string(in.State.Name)) {
				return false
			}
		case strings.HasPrefix(name, "tag:"):
			if !slices.Contains(flt.Values, tag(in.Tags, strings.TrimPrefix(name, "tag:"))) {
				return false
			}
		}
	}
	return true
}

func (f *fakeEC2) StopInstances(_ context.Context, in *ec2.StopInstancesInput, _ ...func(*ec2.Options)) (*ec2.StopInstancesOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	force := aws.ToBool(in.Force)
	id := in.InstanceIds[0]
	if force {
		f.record("StopInstances %s force", id)
	} else {
		f.record("StopInstances %s", id)
	}
	if f.onStop != nil {
		return &ec2.StopInstancesOutput{}, f.onStop(id, force)
	}
	f.then(id, ec2types.InstanceStateNameStopping, ec2types.InstanceStateNameStopped)
	return &ec2.StopInstancesOutput{}, nil
}

func (f *fakeEC2) TerminateInstances(_ context.Context, in *ec2.TerminateInstancesInput, _ ...func(*ec2.Options)) (*ec2.TerminateInstancesOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := in.InstanceIds[0]
	f.record("TerminateInstances %s", id)
	if f.onTerminate != nil {
		if err := f.onTerminate(id); err != nil {
			return nil, err
		}
	}
	if fi, ok := f.insts[id]; ok {
		f.then(id, ec2types.InstanceStateNameShuttingDown, ec2types.InstanceStateNameTerminated)
		for eid, n := range f.enis {
			if n.Attachment != nil && aws.ToString(n.Attachment.InstanceId) == aws.ToString(fi.InstanceId) {
				if _, set := f.dropENI[eid]; !set {
					f.dropENI[eid] = 2
				}
			}
		}
	}
	return &ec2.TerminateInstancesOutput{}, nil
}

func (f *fakeEC2) RunInstances(_ context.Context, in *ec2.RunInstancesInput, _ ...func(*ec2.Options)) (*ec2.RunInstancesOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if aws.ToBool(in.DryRun) {
		// As AWS: a dry run changes nothing and answers with an error.
		return nil, apiErr("RunInstances", "DryRunOperation")
	}
	f.record("RunInstances %s %s", in.InstanceType, aws.ToString(in.ClientToken))
	if f.onRun != nil {
		if err := f.onRun(in); err != nil {
			return nil, err
		}
	}
	id := fmt.Sprintf("i-new%d", len(f.insts))
	fi := &fakeInstance{Instance: ec2types.Instance{
		InstanceId: aws.String(id), InstanceType: in.InstanceType, State: &ec2types.InstanceState{Name: ec2types.InstanceStateNamePending},
		PrivateIpAddress: in.PrivateIpAddress, Tags: in.TagSpecifications[0].Tags,
	}}
	eni := f.addENI("eni-"+id, aws.ToString(in.SubnetId), "vpc-1", id, aws.ToString(in.PrivateIpAddress))
	fi.NetworkInterfaces = []ec2types.InstanceNetworkInterface{{NetworkInterfaceId: eni.NetworkInterfaceId, PrivateIpAddresses: []ec2types.InstancePrivateIpAddress{{PrivateIpAddress: in.PrivateIpAddress, Primary: aws.Bool(true)}}}}
	f.insts[id] = fi
	return &ec2.RunInstancesOutput{Instances: []ec2types.Instance{fi.Instance}}, nil
}

func (f *fakeEC2) DescribeNetworkInterfaces(_ context.Context, in *ec2.DescribeNetworkInterfacesInput, _ ...func(*ec2.Options)) (*ec2.DescribeNetworkInterfacesOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.eniReads++
	f.record("DescribeNetworkInterfaces")
	if f.describeENIs != nil {
		if err := f.describeENIs(f.eniReads); err != nil {
			return nil, err
		}
	}
	view := f.enis
	if f.staleReads > 0 {
		f.staleReads--
		view = f.stale
	}
	for id, n := range f.dropENI {
		if n <= 0 {
			delete(f.enis, id)
			delete(f.dropENI, id)
			continue
		}
		f.dropENI[id] = n - 1
	}
	ids := make([]string, 0, len(view))
	for id := range view {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	out := &ec2.DescribeNetworkInterfacesOutput{}
	for _, id := range ids {
		n := view[id]
		if len(in.NetworkInterfaceIds) > 0 && !slices.Contains(in.NetworkInterfaceIds, id) {
			continue
		}
		ok := true
		for _, flt := range in.Filters {
			switch aws.ToString(flt.Name) {
			case "subnet-id":
				ok = ok && slices.Contains(flt.Values, aws.ToString(n.SubnetId))
			case "vpc-id":
				ok = ok && slices.Contains(flt.Values, aws.ToString(n.VpcId))
			case "addresses.private-ip-address":
				ok = ok && slices.ContainsFunc(n.PrivateIpAddresses, func(a ec2types.NetworkInterfacePrivateIpAddress) bool {
					return slices.Contains(flt.Values, aws.ToString(a.PrivateIpAddress))
				})
			}
		}
		if ok {
			out.NetworkInterfaces = append(out.NetworkInterfaces, copyENI(n))
		}
	}
	return out, nil
}

func copyENI(n *ec2types.NetworkInterface) ec2types.NetworkInterface {
	c := *n
	c.PrivateIpAddresses = slices.Clone(n.PrivateIpAddresses)
	return c
}

// write notes a change to the interfaces, which reads see only after
// eniLag more reads.
func (f *fakeEC2) write() {
	if f.eniLag == 0 {
		return
	}
	if f.staleReads == 0 {
		f.stale = map[string]*ec2types.NetworkInterface{}
		for id, n := range f.enis {
			c := copyENI(n)
			f.stale[id] = &c
		}
	}
	f.staleReads = f.eniLag
}

func (f *fakeEC2) UnassignPrivateIpAddresses(_ context.Context, in *ec2.UnassignPrivateIpAddressesInput, _ ...func(*ec2.Options)) (*ec2.UnassignPrivateIpAddressesOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	eni := aws.ToString(in.NetworkInterfaceId)
	f.record("UnassignPrivateIpAddresses %s %s", eni, strings.Join(in.PrivateIpAddresses, ","))
	if f.onUnassign != nil {
		if err := f.onUnassign(eni); err != nil {
			return nil, err
		}
	}
	f.write()
	n := f.enis[eni]
	n.PrivateIpAddresses = slices.DeleteFunc(n.PrivateIpAddresses, func(a ec2types.NetworkInterfacePrivateIpAddress) bool {
		return slices.Contains(in.PrivateIpAddresses, aws.ToString(a.PrivateIpAddress))
	})
	return &ec2.UnassignPrivateIpAddressesOutput{}, nil
}

func (f *fakeEC2) AssignPrivateIpAddresses(_ context.Context, in *ec2.AssignPrivateIpAddressesInput, _ ...func(*ec2.Options)) (*ec2.AssignPrivateIpAddressesOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	eni := aws.ToString(in.NetworkInterfaceId)
	f.record("AssignPrivateIpAddresses %s %s reassign=%v", eni, strings.Join(in.PrivateIpAddresses, ","), aws.ToBool(in.AllowReassignment))
	if f.onAssign != nil {
		if err := f.onAssign(eni); err != nil {
			return nil, err
		}
	}
	f.write()
	for _, ip := range in.PrivateIpAddresses {
		if aws.ToBool(in.AllowReassignment) {
			for _, n := range f.enis {
				n.PrivateIpAddresses = slices.DeleteFunc(n.PrivateIpAddresses, func(a ec2types.NetworkInterfacePrivateIpAddress) bool {
					return aws.ToString(a.PrivateIpAddress) == ip
				})
			}
		}
		f.enis[eni].PrivateIpAddresses = append(f.enis[eni].PrivateIpAddresses, ec2types.NetworkInterfacePrivateIpAddress{PrivateIpAddress: aws.String(ip), Primary: aws.Bool(false)})
	}
	return &ec2.AssignPrivateIpAddressesOutput{}, nil
}

func (f *fakeEC2) DescribeSubnets(_ context.Context, in *ec2.DescribeSubnetsInput, _ ...func(*ec2.Options)) (*ec2.DescribeSubnetsOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("DescribeSubnets %s", strings.Join(in.SubnetIds, ","))
	out := &ec2.DescribeSubnetsOutput{}
	for _, id := range in.SubnetIds {
		if cidr, ok := f.subnets[id]; ok {
			out.Subnets = append(out.Subnets, ec2types.Subnet{SubnetId: aws.String(id), CidrBlock: aws.String(cidr)})
		}
	}
	return out, nil
}

func (f *fakeEC2) CreateTags(_ context.Context, in *ec2.CreateTagsInput, _ ...func(*ec2.Options)) (*ec2.CreateTagsOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("CreateTags %s", strings.Join(in.Resources, ","))
	if f.onTags != nil {
		if err := f.onTags(in); err != nil {
			return nil, err
		}
	}
	return &ec2.CreateTagsOutput{}, nil
}

// DetachNetworkInterface detaches by attachment ID, as AWS does, and
// refuses an instance's primary interface (device index 0) as AWS does.
func (f *fakeEC2) DetachNetworkInterface(_ context.Context, in *ec2.DetachNetworkInterfaceInput, _ ...func(*ec2.Options)) (*ec2.DetachNetworkInterfaceOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var id string
	for eid, n := range f.enis {
		if n.Attachment != nil && aws.ToString(n.Attachment.AttachmentId) == aws.ToString(in.AttachmentId) {
			id = eid
		}
	}
	force := aws.ToBool(in.Force)
	if force {
		f.record("DetachNetworkInterface %s force", id)
	} else {
		f.record("DetachNetworkInterface %s", id)
	}
	if f.onDetach != nil {
		if err := f.onDetach(id, force); err != nil {
			return nil, err
		}
	}
	n, ok := f.enis[id]
	switch {
	case !ok:
		return nil, apiErr("DetachNetworkInterface", "InvalidAttachmentID.NotFound")
	case aws.ToInt32(n.Attachment.DeviceIndex) == 0:
		return nil, apiErr("DetachNetworkInterface", "OperationNotPermitted")
	}
	f.write()
	n.Attachment, n.Status = nil, ec2types.NetworkInterfaceStatusAvailable
	return &ec2.DetachNetworkInterfaceOutput{}, nil
}

func (f *fakeEC2) AttachNetworkInterface(_ context.Context, in *ec2.AttachNetworkInterfaceInput, _ ...func(*ec2.Options)) (*ec2.AttachNetworkInterfaceOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id, inst, idx := aws.ToString(in.NetworkInterfaceId), aws.ToString(in.InstanceId), aws.ToInt32(in.DeviceIndex)
	f.record("AttachNetworkInterface %s %s %d", id, inst, idx)
	if f.onAttach != nil {
		if err := f.onAttach(id, inst); err != nil {
			return nil, err
		}
	}
	n, ok := f.enis[id]
	switch {
	case !ok:
		return nil, apiErr("AttachNetworkInterface", "InvalidNetworkInterfaceID.NotFound")
	case n.Attachment != nil:
		return nil, apiErr("AttachNetworkInterface", "InvalidNetworkInterface.InUse")
	}
	f.write()
	att := "attach-" + id + "-" + inst
	n.Attachment = &ec2types.NetworkInterfaceAttachment{AttachmentId: &att, InstanceId: aws.String(inst), DeviceIndex: aws.Int32(idx)}
	n.Status = ec2types.NetworkInterfaceStatusInUse
	return &ec2.AttachNetworkInterfaceOutput{AttachmentId: &att}, nil
}

// ModifyInstanceAttribute sets DeleteOnTermination of the block device
// mappings it names (all this fake knows of the call).
func (f *fakeEC2) ModifyInstanceAttribute(_ context.Context, in *ec2.ModifyInstanceAttributeInput, _ ...func(*ec2.Options)) (*ec2.ModifyInstanceAttributeOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := aws.ToString(in.InstanceId)
	var devs []string
	for _, m := range in.BlockDeviceMappings {
		devs = append(devs, fmt.Sprintf("%s DeleteOnTermination=%v", aws.ToString(m.DeviceName), aws.ToBool(m.Ebs.DeleteOnTermination)))
	}
	f.record("ModifyInstanceAttribute %s %s", id, strings.Join(devs, ","))
	if f.onModify != nil {
		if err := f.onModify(in); err != nil {
			return nil, err
		}
	}
	fi, ok := f.insts[id]
	if !ok {
		return nil, apiErr("ModifyInstanceAttribute", "InvalidInstanceID.NotFound")
	}
	if f.ignoreModify {
		return &ec2.ModifyInstanceAttributeOutput{}, nil
	}
	for _, m := range in.BlockDeviceMappings {
		for i, have := range fi.BlockDeviceMappings {
			if aws.ToString(have.DeviceName) == aws.ToString(m.DeviceName) && have.Ebs != nil {
				ebs := *have.Ebs
				ebs.DeleteOnTermination = m.Ebs.DeleteOnTermination
				fi.BlockDeviceMappings[i].Ebs = &ebs
			}
		}
	}
	return &ec2.ModifyInstanceAttributeOutput{}, nil
}

// The rest of EC2 both embedded interfaces declare: not used by these
// tests, declared so that the fake is unambiguous.

func (f *fakeEC2) DescribeInstanceStatus(context.Context, *ec2.DescribeInstanceStatusInput, ...func(*ec2.Options)) (*ec2.DescribeInstanceStatusOutput, error) {
	panic("fakeEC2: DescribeInstanceStatus not scripted")
}

func (f *fakeEC2) DescribeVolumes(context.Context, *ec2.DescribeVolumesInput, ...func(*ec2.Options)) (*ec2.DescribeVolumesOutput, error) {
	panic("fakeEC2: DescribeVolumes not scripted")
}

func (f *fakeEC2) DescribeSnapshots(context.Context, *ec2.DescribeSnapshotsInput, ...func(*ec2.Options)) (*ec2.DescribeSnapshotsOutput, error) {
	panic("fakeEC2: DescribeSnapshots not scripted")
}

// recorder is a journal.Progress that keeps the log lines.
type recorder struct {
	mu    sync.Mutex
	lines []string
}

func (r *recorder) Begin(int, string) {}
func (r *recorder) Done(int, string)  {}
func (r *recorder) Fail(int, error)   {}
func (r *recorder) Log(line string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, line)
}

func (r *recorder) has(sub string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.ContainsFunc(r.lines, func(l string) bool { return strings.Contains(l, sub) })
}

func wantCalls(t *testing.T, f *fakeEC2, want ...string) {
	t.Helper()
	got := f.Calls()
	// Only the calls that change something, in order.
	var changes []string
	for _, c := range got {
		if !strings.HasPrefix(c, "Describe") {
			changes = append(changes, c)
		}
	}
	if !slices.Equal(changes, want) {
		t.Errorf("calls that change something: %q, want %q\nall calls: %q", changes, want, got)
	}
}

// StartInstances is in both embedded interfaces (a restore in place starts
// the box too); the fake has no start of its own, so it panics like any
// call it does not implement.
func (f *fakeEC2) StartInstances(ctx context.Context, in *ec2.StartInstancesInput, o ...func(*ec2.Options)) (*ec2.StartInstancesOutput, error) {
	return f.FailoverEC2.StartInstances(ctx, in, o...)
}
