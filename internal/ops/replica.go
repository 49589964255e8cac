package ops

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/circlebot/circlebot/internal/journal"
)

// The runbook's preparation for a cold failover: "Create an AMI out of
// the current running instance", "Start a new replica instance using the
// AMI you just created ... in another availability zone", and "recreate
// the replica node, e.g. primarily after upgrades". `replica build` does
// the first two; `replica refresh` does them again and retires the old
// replica.

// Tags a replica build leaves. TagReplicaOp marks the image, its
// snapshots, the replica and its volumes: a step run again finds what an
// earlier run made by it, so a crash never makes a second image or a
// second replica. The others record what the replica was built from, for
// its age and the warnings when the box changed since.
const (
	TagReplicaOp   = "circlebot:replica-op"
	TagReplicaOf   = "circlebot:replica-of" // the Services box's instance ID
	TagBoxImage    = "circlebot:box-image"  // the box's AMI at the time
	TagBoxType     = "circlebot:box-type"   // the box's instance type at the time
	TagReplicaData = "circlebot:data-as-of" // RFC 3339: when the box was imaged
	TagRetiredBy   = "circlebot:retired-by"
)

// Retire modes (replica.retire).
const (
	RetireStop      = "stop"
	RetireTerminate = "terminate"
)

// ReplicaEC2 is the part of EC2 a replica build uses.
type ReplicaEC2 interface {
	EC2
	CreateImage(context.Context, *ec2.CreateImageInput, ...func(*ec2.Options)) (*ec2.CreateImageOutput, error)
	DescribeImages(context.Context, *ec2.DescribeImagesInput, ...func(*ec2.Options)) (*ec2.DescribeImagesOutput, error)
	RunInstances(context.Context, *ec2.RunInstancesInput, ...func(*ec2.Options)) (*ec2.RunInstancesOutput, error)
	StopInstances(context.Context, *ec2.StopInstancesInput, ...func(*ec2.Options)) (*ec2.StopInstancesOutput, error)
	TerminateInstances(context.Context, *ec2.TerminateInstancesInput, ...func(*ec2.Options)) (*ec2.TerminateInstancesOutput, error)
	CreateTags(context.Context, *ec2.CreateTagsInput, ...func(*ec2.Options)) (*ec2.CreateTagsOutput, error)
	DescribeSubnets(context.Context, *ec2.DescribeSubnetsInput, ...func(*ec2.Options)) (*ec2.DescribeSubnetsOutput, error)
}

// Replicas builds and refreshes the replica.
type Replicas struct {
	EC2        ReplicaEC2
	NameTag    string
	ReplicaTag string
	Region     string
	// Subnet is replica.subnet; Retire replica.retire (stop|terminate).
	Subnet string
	Retire string
	// ImageReboot makes the image with EC2's reboot (file-system
	// consistent, downtime) instead of NoReboot (crash-consistent).
	ImageReboot bool
	// Pace is the poll interval, read when used (nil or 0: 2 s).
	Pace         func() time.Duration
	ImageTimeout time.Duration
	// Timeout bounds the replica's start and the old one's stop, each.
	Timeout time.Duration
}

// ReplicaPlan is what a replica build or refresh acts on.
type ReplicaPlan struct {
	Region     string  `json:"region"`
	NameTag    string  `json:"name_tag"`
	ReplicaTag string  `json:"replica_tag"`
	Refresh    bool    `json:"refresh"`
	Box        InPlace `json:"box"`
	// Shape is what the replica is launched like: the box's security
	// groups, instance profile, key and tags.
	Shape Shape  `json:"shape"`
	VPC   string `json:"vpc"`
	// Subnet is where the replica goes, SubnetAZ its zone, SubnetFrom
	// where the choice came from (--subnet, replica.subnet, the old
	// replica's).
	Subnet     string `json:"subnet"`
	SubnetAZ   string `json:"subnet_az"`
	SubnetFrom string `json:"subnet_from"`
	// Old is the replica a refresh retires.
	Old          *Node         `json:"old,omitempty"`
	Retire       string        `json:"retire,omitempty"`
	NoReboot     bool          `json:"no_reboot"`
	ImageTimeout time.Duration `json:"image_timeout"`
	Timeout      time.Duration `json:"timeout"`
}

// Facts are what an approval of the plan is bound to.
func (p ReplicaPlan) Facts() map[string]string {
	f := map[string]string{
		"region": p.Region, "box": p.Box.ID, "box_state": p.Box.State, "type": p.Box.Type, "image": p.Box.ImageID,
		"volumes": p.Box.volumeFact(), "subnet": p.Subnet, "az": p.SubnetAZ, "no_reboot": fmt.Sprint(p.NoReboot),
		"replica_tag": p.ReplicaTag, "old": "none",
	}
	if p.Old != nil {
		f["old"] = p.Old.ID + " (" + p.Old.State + ")"
		f["retire"] = p.Retire
	}
	return f
}

// ReplicaResult is what the steps of a replica build hand on.
type ReplicaResult struct {
	ImageID string `json:"image_id,omitempty"`
	// Imaged is when CreateImage was accepted: the replica's data is as
	// of then.
	Imaged     time.Time `json:"imaged,omitzero"`
	InstanceID string    `json:"instance_id,omitempty"`
	PrivateIP  string    `json:"private_ip,omitempty"`
	// Retired is what became of the old replica (stopped, terminated).
	Retired string `json:"retired,omitempty"`
	// Named: a refresh's new replica carries the replica's Name (until
	// then it is a candidate, which no failover picks).
	Named bool `json:"named,omitempty"`
}

func (r *Replicas) poll() time.Duration {
	if r.Pace != nil {
		return cmpOr(r.Pace(), 2*time.Second)
	}
	return 2 * time.Second
}

func (r *Replicas) imageTimeout() time.Duration { return cmpOr(r.ImageTimeout, 45*time.Minute) }
func (r *Replicas) timeout() time.Duration      { return cmpOr(r.Timeout, 10*time.Minute) }

// RetiredName is the Name a stopped-and-kept old replica gets, so that
// the replica's tag names one instance again.
func RetiredName(replicaTag string) string { return replicaTag + "-retired" }

// CandidateName is the Name a refresh launches the new replica under.
// Until the refresh's last step retires the old replica and renames the
// new one, the replica's tag names the old one alone: a failover, status
// and doctor, which find the replica by its tag, never see two, and never
// a replica that is still being built and verified.
//
// Why a second Name rather than a marker tag on an instance that already
// carries the replica's Name: every reader of the replica (failover,
// status, doctor, the IAM policy's conditions, people in the console)
// goes by Name; a marker would have to be known to all of them, and one
// that forgot it would pick the half-built replica.
func CandidateName(replicaTag string) string { return replicaTag + "-candidate" }

// Plan reads the box, the replica(s) and the subnet. A build is refused
// when a replica exists (never two replicas: refresh replaces one), a
// refresh when there is none; either without a subnet to launch in.
func (r *Replicas) Plan(ctx context.Context, refresh bool, subnetFlag string) (ReplicaPlan, error) {
	verb := "build"
	if refresh {
		verb = "refresh"
	}
	if r.ReplicaTag == "" {
		return ReplicaPlan{}, refusef("no replica is configured: set `replica.name_tag` (the Name tag the replica carries) first. Nothing was requested.")
	}
	boxIn, err := FindBox(ctx, r.EC2, r.NameTag)
	var amb *AmbiguousError
	switch {
	case errors.Is(err, ErrNotFound):
		return ReplicaPlan{}, refusef("no instance is tagged Name=%s: there is no Services box to image. Nothing was requested.", r.NameTag)
	case errors.As(err, &amb):
		return ReplicaPlan{}, refusef("%s. Nothing was requested.", strings.TrimSuffix(amb.Error(), "."))
	case err != nil:
		return ReplicaPlan{}, err
	}
	box := inPlaceOf(boxIn)
	switch {
	case box.State != string(ec2types.InstanceStateNameRunning) && box.State != string(ec2types.InstanceStateNameStopped):
		return ReplicaPlan{}, refusef("the Services box `%s` is %s: an image is made of a running or stopped box. Nothing was requested; try again once it is.", box.ID, box.State)
	case box.RootType == string(ec2types.DeviceTypeInstanceStore):
		return ReplicaPlan{}, refusef("the Services box `%s` boots from an instance-store volume: EC2 makes images only of EBS-backed instances. Nothing was requested.", box.ID)
	}
	p := ReplicaPlan{Region: r.Region, NameTag: r.NameTag, ReplicaTag: r.ReplicaTag, Refresh: refresh, Box: box, Shape: ShapeOf(boxIn),
		VPC: aws.ToString(boxIn.VpcId), NoReboot: !r.ImageReboot, ImageTimeout: r.imageTimeout(), Timeout: r.timeout()}

	existing, err := FindByName(ctx, r.EC2, r.ReplicaTag)
	if err != nil {
		return ReplicaPlan{}, err
	}
	switch {
	case !refresh && len(existing) > 0:
		return ReplicaPlan{}, refusef("a replica exists already (%s): `replica build` never makes a second one. `replica refresh` replaces it with a new one. Nothing was requested.", instanceList(existing))
	case refresh && len(existing) == 0:
		return ReplicaPlan{}, refusef("there is no replica tagged Name=%s to refresh: `replica build` makes one. Nothing was requested.", r.ReplicaTag)
	case refresh && len(existing) > 1:
		return ReplicaPlan{}, refusef("%d instances are tagged Name=%s (%s): retag or remove the extra one first, so that it is clear which one a refresh retires. Nothing was requested.", len(existing), r.ReplicaTag, instanceList(existing))
	}
	if refresh {
		cands, err := FindByName(ctx, r.EC2, CandidateName(r.ReplicaTag))
		if err != nil {
			return ReplicaPlan{}, err
		}
		if len(cands) > 0 {
			return ReplicaPlan{}, refusef("%s already carries Name=%s: %s. Finish or give that up first, and terminate (or rename) what it left, so that one new replica is built at a time. Nothing was requested.", instanceList(cands), CandidateName(r.ReplicaTag), candidateWhose(cands))
		}
		old := nodeOf(existing[0])
		p.Old = &old
		p.Retire = cmpOrStr(r.Retire, RetireStop)
		if old.ID == box.ID {
			return ReplicaPlan{}, refusef("`%s` carries both Name tags: fix its tag first. Nothing was requested.", old.ID)
		}
	}

	switch {
	case subnetFlag != "":
		p.Subnet, p.SubnetFrom = subnetFlag, "--subnet"
	case r.Subnet != "":
		p.Subnet, p.SubnetFrom = r.Subnet, "replica.subnet"
	case p.Old != nil && p.Old.Subnet != "":
		p.Subnet, p.SubnetFrom = p.Old.Subnet, "the old replica's subnet"
	default:
		return ReplicaPlan{}, refusef("no subnet to launch the replica in: give `replica %s --subnet <subnet-id>` or set `replica.subnet` (a subnet of the box's VPC %s in another zone than %s). Nothing was requested.", verb, p.VPC, box.AZ)
	}
	out, err := r.EC2.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{SubnetIds: []string{p.Subnet}})
	if err = translate(err); errors.Is(err, ErrNotFound) || errors.Is(err, ErrMalformedID) || (err == nil && len(out.Subnets) == 0) {
		return ReplicaPlan{}, refusef("subnet `%s` (%s) does not exist in %s. Nothing was requested.", p.Subnet, p.SubnetFrom, r.Region)
	}
	if err != nil {
		return ReplicaPlan{}, fmt.Errorf("read subnet %s: %w", p.Subnet, err)
	}
	sub := out.Subnets[0]
	if vpc := aws.ToString(sub.VpcId); p.VPC != "" && vpc != p.VPC {
		return ReplicaPlan{}, refusef("subnet `%s` (%s) is in %s, the Services box in %s: the replica takes the box's security groups, which belong to its VPC. Nothing was requested.", p.Subnet, p.SubnetFrom, vpc, p.VPC)
	}
	p.SubnetAZ = aws.ToString(sub.AvailabilityZone)
	return p, nil
}

// Candidate is a new replica a refresh is building: launched under
// CandidateName, it is not the replica until the refresh names it.
type Candidate struct {
	ID    string `json:"id"`
	State string `json:"state"`
	Op    string `json:"op,omitempty"` // the refresh that launched it ("": not the bot)
}

// Candidates lists the new replicas being built (any refresh's).
func Candidates(ctx context.Context, api EC2, replicaTag string) ([]Candidate, error) {
	insts, err := FindByName(ctx, api, CandidateName(replicaTag))
	if err != nil {
		return nil, err
	}
	var out []Candidate
	for _, in := range insts {
		c := Candidate{ID: aws.ToString(in.InstanceId), Op: tagValue(in.Tags, TagReplicaOp)}
		if in.State != nil {
			c.State = string(in.State.Name)
		}
		out = append(out, c)
	}
	return out, nil
}

// CandidateLines says, in a sentence per candidate, what it is.
func CandidateLines(cs []Candidate, replicaTag string) string {
	var s []string
	for _, c := range cs {
		by := "an instance the bot did not launch"
		if c.Op != "" {
			by = "the new replica the replica refresh `" + c.Op + "` is building"
		}
		s = append(s, fmt.Sprintf("`%s` (%s, Name=%s) is %s", c.ID, c.State, CandidateName(replicaTag), by))
	}
	return strings.Join(s, "; ")
}

// candidateWhose names the refreshes that launched candidates.
func candidateWhose(insts []ec2types.Instance) string {
	var s []string
	for _, in := range insts {
		if op := tagValue(in.Tags, TagReplicaOp); op != "" {
			s = append(s, fmt.Sprintf("`%s` was launched by the replica refresh `%s`", aws.ToString(in.InstanceId), op))
		} else {
			s = append(s, fmt.Sprintf("`%s` was not launched by the bot", aws.ToString(in.InstanceId)))
		}
	}
	return strings.Join(s, "; ")
}

func instanceList(insts []ec2types.Instance) string {
	var s []string
	for _, in := range insts {
		st := ""
		if in.State != nil {
			st = string(in.State.Name)
		}
		az := ""
		if in.Placement != nil {
			az = ", " + aws.ToString(in.Placement.AvailabilityZone)
		}
		s = append(s, fmt.Sprintf("`%s` (%s%s)", aws.ToString(in.InstanceId), st, az))
	}
	return strings.Join(s, ", ")
}

// Steps are the journaled steps of a build or a refresh.
func (r *Replicas) Steps(p ReplicaPlan) []journal.Def {
	type w = *Work[ReplicaResult]
	steps := []struct {
		name string
		run  StepFunc[ReplicaResult]
	}{
		{ReplicaImageStep, func(ctx context.Context, op w, pr journal.Progress) (string, error) {
			return r.image(ctx, op, p, pr)
		}},
		{"Wait until the image is available", func(ctx context.Context, op w, pr journal.Progress) (string, error) {
			return r.waitImage(ctx, op, p, pr)
		}},
		{launchStep(p), func(ctx context.Context, op w, pr journal.Progress) (string, error) {
			return r.launch(ctx, op, p, pr)
		}},
		{"Wait until the replica runs", func(ctx context.Context, op w, _ journal.Progress) (string, error) {
			start := time.Now()
			if _, err := waitInstanceState(ctx, r.EC2, op.Result.InstanceID, r.poll(), p.Timeout, ec2types.InstanceStateNameRunning); err != nil {
				return "", err
			}
			return fmt.Sprintf("`%s` running after %s", op.Result.InstanceID, since(start)), nil
		}},
	}
	steps = append(steps, struct {
		name string
		run  StepFunc[ReplicaResult]
	}{verifyStep(p), func(ctx context.Context, op w, _ journal.Progress) (string, error) {
		return r.verify(ctx, op, p)
	}})
	if p.Refresh {
		// Last, and one step: the old replica is retired and the new one
		// named only once it is verified, so that at every step boundary
		// (and so at every crash or cancel) one instance at most carries
		// the replica's Name.
		steps = append(steps, struct {
			name string
			run  StepFunc[ReplicaResult]
		}{ReplicaCommitStep, func(ctx context.Context, op w, pr journal.Progress) (string, error) {
			return r.commit(ctx, op, p, pr)
		}})
	}
	defs := make([]journal.Def, len(steps))
	for i, st := range steps {
		defs[i] = journal.Def{Name: st.name, Run: retrying(typed(st.run), r.poll())}
	}
	return defs
}

// ReplicaImageStep is a replica build's first step: past it the box is
// no longer needed (the image is of the box as it was then).
// ReplicaCommitStep is a refresh's last: the only one that acts on the
// old replica.
const (
	ReplicaImageStep  = "Make an image of the Services box"
	ReplicaCommitStep = "Retire the old replica and name the new one the replica"
)

func launchStep(p ReplicaPlan) string {
	if p.Refresh {
		return "Launch the new replica as Name=" + CandidateName(p.ReplicaTag)
	}
	return "Launch the replica"
}

func verifyStep(p ReplicaPlan) string {
	if p.Refresh {
		return "Verify the new replica"
	}
	return "Verify the replica"
}

func (r *Replicas) opTags(opID string) []ec2types.Tag {
	return []ec2types.Tag{{Key: aws.String(TagReplicaOp), Value: aws.String(opID)}}
}

// image makes the box's image once: an image this operation made before
// (found by its tag) is used again. CreateImage has no client token, so
// the call is not retried blind (onceEC2); an answer lost on the way back
// is found by the tag, or by the name it took.
func (r *Replicas) image(ctx context.Context, op *Work[ReplicaResult], p ReplicaPlan, pr journal.Progress) (string, error) {
	id, attempts, err := r.findImage(ctx, op.ID)
	if err != nil {
		return "", err
	}
	if id != "" {
		op.Result.ImageID = id
		pr.Log(fmt.Sprintf("Image `%s` was made by this operation before; using it.", id))
		return fmt.Sprintf("`%s` (made before)", id), nil
	}
	in, ok, err := describeInstance(ctx, r.EC2, p.Box.ID)
	switch {
	case err != nil:
		return "", err
	case !ok || in.State.Name == ec2types.InstanceStateNameTerminated:
		return "", fmt.Errorf("the Services box %s is gone: there is nothing to image", p.Box.ID)
	case in.State.Name != ec2types.InstanceStateNameRunning && in.State.Name != ec2types.InstanceStateNameStopped:
		return "", fmt.Errorf("the Services box %s is %s: it is imaged running or stopped; resume once it is", p.Box.ID, in.State.Name)
	}
	name := "circleci-replica-" + op.ID
	if attempts > 0 {
		name += fmt.Sprintf("-%d", attempts+1)
	}
	tags := append(r.opTags(op.ID), ec2types.Tag{Key: aws.String("Name"), Value: aws.String(name)})
	imaged := time.Now()
	out, err := r.EC2.CreateImage(ctx, &ec2.CreateImageInput{
		InstanceId:  aws.String(p.Box.ID),
		Name:        aws.String(name),
		Description: aws.String(fmt.Sprintf("CircleCI Services box %s for its replica, by circlebot %s", p.Box.ID, op.ID)),
		NoReboot:    aws.Bool(p.NoReboot),
		TagSpecifications: []ec2types.TagSpecification{
			{ResourceType: ec2types.ResourceTypeImage, Tags: tags},
			{ResourceType: ec2types.ResourceTypeSnapshot, Tags: r.opTags(op.ID)},
		},
	}, onceEC2)
	if err == nil {
		id = aws.ToString(out.ImageId)
	} else {
		err = translate(err)
		if !errors.Is(err, ErrDuplicate) && !errors.Is(err, ErrUnavailable) && !errors.Is(err, ErrNoAnswer) {
			return "", fmt.Errorf("make the image of %s: %w", p.Box.ID, err)
		}
		// Made, or maybe made: DescribeImages may lag behind.
		lerr := waitFor(ctx, r.poll(), time.Now().Add(readLag*r.poll()), func() (bool, error) {
			var err error
			id, _, err = r.findImage(ctx, op.ID)
			return id != "", err
		})
		var to *waitTimeout
		switch {
		case id != "":
		case lerr != nil && !errors.As(lerr, &to):
			return "", lerr
		case errors.Is(err, ErrDuplicate):
			return "", fmt.Errorf("an image named %s exists but is not this operation's (no %s=%s tag): rename or deregister it, then resume", name, TagReplicaOp, op.ID)
		default:
			return "", fmt.Errorf("make the image of %s: %w", p.Box.ID, err)
		}
	}
	op.Result.ImageID, op.Result.Imaged = id, imaged
	// Kept at once: a bot that dies now finds the image by its tag, but
	// the time it was made is only here.
	_ = op.Save()
	how := "without a reboot (crash-consistent)"
	if !p.NoReboot {
		how = "with a reboot of the box (file-system consistent)"
	}
	return fmt.Sprintf("`%s` requested %s", id, how), nil
}

// findImage returns this operation's usable image (pending or available),
// if any, and how many it made in all.
func (r *Replicas) findImage(ctx context.Context, opID string) (string, int, error) {
	out, err := r.EC2.DescribeImages(ctx, &ec2.DescribeImagesInput{Owners: []string{"self"}, Filters: []ec2types.Filter{{Name: aws.String("tag:" + TagReplicaOp), Values: []string{opID}}}})
	if err != nil {
		return "", 0, fmt.Errorf("look for this operation's image: %w", translate(err))
	}
	for _, img := range out.Images {
		if img.State == ec2types.ImageStatePending || img.State == ec2types.ImageStateAvailable {
			return aws.ToString(img.ImageId), len(out.Images), nil
		}
	}
	return "", len(out.Images), nil
}

func (r *Replicas) waitImage(ctx context.Context, op *Work[ReplicaResult], p ReplicaPlan, pr journal.Progress) (string, error) {
	id := op.Result.ImageID
	if id == "" {
		return "", errors.New("no image was recorded by the step before")
	}
	start := time.Now()
	nextNote := time.Now().Add(5 * time.Minute)
	err := waitFor(ctx, r.poll(), time.Now().Add(p.ImageTimeout), func() (bool, error) {
		out, err := r.EC2.DescribeImages(ctx, &ec2.DescribeImagesInput{ImageIds: []string{id}})
		if err = translate(err); errors.Is(err, ErrNotFound) {
			return false, nil // just made: EC2's reads lag its writes
		}
		if err != nil {
			return false, fmt.Errorf("check image %s: %w", id, err)
		}
		if len(out.Images) == 0 {
			return false, nil
		}
		img := out.Images[0]
		switch img.State {
		case ec2types.ImageStateAvailable:
			return true, nil
		case ec2types.ImageStateFailed, ec2types.ImageStateError, ec2types.ImageStateInvalid, ec2types.ImageStateDeregistered:
			why := ""
			if img.StateReason != nil {
				why = ": " + aws.ToString(img.StateReason.Message)
			}
			op.Result.ImageID = "" // a resume makes a new one
			return false, fmt.Errorf("image %s is %s%s; nothing was launched, and `resume` makes a new image", id, img.State, why)
		}
		if time.Now().After(nextNote) {
			pr.Log(fmt.Sprintf("Image `%s` is still pending after %s: AWS copies every volume of the box first. Waiting up to %s.", id, since(start), p.ImageTimeout))
			nextNote = time.Now().Add(5 * time.Minute)
		}
		return false, nil
	})
	var to *waitTimeout
	switch {
	case errors.As(err, &to):
		return "", fmt.Errorf("image %s is still pending after %s (replica.image_timeout); it is kept, and `resume` waits for it again", id, p.ImageTimeout)
	case err != nil:
		return "", err
	}
	return fmt.Sprintf("`%s` available after %s", id, since(start)), nil
}

// launch starts the replica once: one this operation launched before
// (found by its tag) is used again, and the launch carries a client
// token, so a lost answer cannot make a second one. Before launching it
// checks that no other replica appeared meanwhile.
func (r *Replicas) launch(ctx context.Context, op *Work[ReplicaResult], p ReplicaPlan, pr journal.Progress) (string, error) {
	in, err := r.launched(ctx, op.ID)
	if err != nil {
		return "", err
	}
	if in != nil {
		pr.Log(fmt.Sprintf("Instance `%s` was launched by this operation before; using it.", aws.ToString(in.InstanceId)))
	} else {
		existing, err := FindByName(ctx, r.EC2, p.ReplicaTag)
		if err != nil {
			return "", err
		}
		existing = slices.DeleteFunc(existing, func(in ec2types.Instance) bool { return p.Old != nil && aws.ToString(in.InstanceId) == p.Old.ID })
		if len(existing) > 0 {
			return "", fmt.Errorf("another replica appeared since this was approved (%s): not launching a second one; remove it or give this operation up", instanceList(existing))
		}
		if p.Refresh {
			if err := r.oldStillReplica(ctx, p); err != nil {
				return "", fmt.Errorf("%w; nothing was launched", err)
			}
			cands, err := FindByName(ctx, r.EC2, CandidateName(p.ReplicaTag))
			if err != nil {
				return "", err
			}
			if len(cands) > 0 {
				return "", fmt.Errorf("%s carries Name=%s already (%s): not launching a second new replica; terminate or rename it, then resume", instanceList(cands), CandidateName(p.ReplicaTag), candidateWhose(cands))
			}
		}
		if in, err = r.run(ctx, op, p); err != nil {
			switch {
			case errors.Is(err, ErrInsufficientCapacity), errors.Is(err, ErrInstanceLimit), errors.Is(err, ErrUnsupported):
				return "", fmt.Errorf("AWS cannot launch %s in %s now (%s): `resume` tries again, or give it up and build in another subnet with `replica build --subnet`: %w", p.Box.Type, p.SubnetAZ, awsCode(err), err)
			}
			return "", fmt.Errorf("launch the replica: %w", err)
		}
	}
	op.Result.InstanceID, op.Result.PrivateIP = aws.ToString(in.InstanceId), aws.ToString(in.PrivateIpAddress)
	return fmt.Sprintf("`%s` (%s) at %s in %s", op.Result.InstanceID, in.InstanceType, op.Result.PrivateIP, p.SubnetAZ), nil
}

func (r *Replicas) launched(ctx context.Context, opID string) (*ec2types.Instance, error) {
	return launchedBy(ctx, r.EC2, TagReplicaOp, opID, "this operation's replica")
}

func (r *Replicas) run(ctx context.Context, op *Work[ReplicaResult], p ReplicaPlan) (*ec2types.Instance, error) {
	var tags []ec2types.Tag
	for k, v := range p.Shape.Tags {
		if k == "Name" || strings.HasPrefix(k, "aws:") || strings.HasPrefix(k, "circlebot:") {
			continue
		}
		tags = append(tags, ec2types.Tag{Key: aws.String(k), Value: aws.String(v)})
	}
	imaged := op.Result.Imaged
	if imaged.IsZero() {
		imaged = time.Now()
	}
	name := p.ReplicaTag
	if p.Refresh {
		name = CandidateName(p.ReplicaTag)
	}
	tags = append(tags,
		ec2types.Tag{Key: aws.String("Name"), Value: aws.String(name)},
		ec2types.Tag{Key: aws.String(TagReplicaOp), Value: aws.String(op.ID)},
		ec2types.Tag{Key: aws.String(TagReplicaOf), Value: aws.String(p.Box.ID)},
		ec2types.Tag{Key: aws.String(TagBoxImage), Value: aws.String(p.Box.ImageID)},
		ec2types.Tag{Key: aws.String(TagBoxType), Value: aws.String(p.Box.Type)},
		ec2types.Tag{Key: aws.String(TagReplicaData), Value: aws.String(imaged.UTC().Format(time.RFC3339))})
	slices.SortFunc(tags, func(a, b ec2types.Tag) int { return strings.Compare(*a.Key, *b.Key) })
	in := &ec2.RunInstancesInput{
		ImageId:          aws.String(op.Result.ImageID),
		InstanceType:     ec2types.InstanceType(p.Box.Type),
		MinCount:         aws.Int32(1),
		MaxCount:         aws.Int32(1),
		ClientToken:      aws.String(clientToken(op.ID, "replica")),
		SubnetId:         aws.String(p.Subnet),
		SecurityGroupIds: p.Shape.SecurityGroups,
		TagSpecifications: []ec2types.TagSpecification{
			{ResourceType: ec2types.ResourceTypeInstance, Tags: tags},
			{ResourceType: ec2types.ResourceTypeVolume, Tags: r.opTags(op.ID)},
		},
	}
	if p.Shape.KeyName != "" {
		in.KeyName = aws.String(p.Shape.KeyName)
	}
	if prof := p.Shape.IAMProfile; prof != "" {
		if strings.HasPrefix(prof, "arn:") {
			in.IamInstanceProfile = &ec2types.IamInstanceProfileSpecification{Arn: aws.String(prof)}
		} else {
			in.IamInstanceProfile = &ec2types.IamInstanceProfileSpecification{Name: aws.String(prof)}
		}
	}
	out, err := r.EC2.RunInstances(ctx, in)
	if err != nil {
		return nil, translate(err)
	}
	if len(out.Instances) != 1 {
		return nil, fmt.Errorf("RunInstances returned %d instances", len(out.Instances))
	}
	return &out.Instances[0], nil
}

// oldStillReplica checks, before a new replica is launched, that the old
// one still carries the replica's Name: one a failover promoted meanwhile
// carries the box's, and a replica of the box that was is of no use.
func (r *Replicas) oldStillReplica(ctx context.Context, p ReplicaPlan) error {
	in, ok, err := describeInstance(ctx, r.EC2, p.Old.ID)
	if err != nil || !ok || in.State.Name == ec2types.InstanceStateNameTerminated {
		return err // gone: there is no replica to keep; the new one replaces none
	}
	if name := tagValue(in.Tags, "Name"); name != p.ReplicaTag {
		return fmt.Errorf("the old replica %s is now tagged Name=%s, not %s (was it promoted by a failover?): a replica made from the image of the box before is of no use; give this refresh up, then `replica build` one of the Services box as it is now", p.Old.ID, name, p.ReplicaTag)
	}
	return nil
}

// commit retires the old replica, then names the new one the replica: it
// is the only step that acts on the old replica, and the engine takes the
// Services box back for it (Kind.Retake), so no failover runs meanwhile;
// one that runs or stopped part-way holds the box and this step does
// nothing. Each change is looked for before it is made, so a run again
// after a crash anywhere in it goes on where it stopped (stopped, renamed
// -retired or terminated, new one named) and repeats nothing. Between the
// two renames no instance carries the replica's Name, never two.
func (r *Replicas) commit(ctx context.Context, op *Work[ReplicaResult], p ReplicaPlan, pr journal.Progress) (string, error) {
	newID, candidate := op.Result.InstanceID, CandidateName(p.ReplicaTag)
	nin, ok, err := describeInstance(ctx, r.EC2, newID)
	switch {
	case err != nil:
		return "", err
	case !ok || nin.State.Name == ec2types.InstanceStateNameTerminated || nin.State.Name == ec2types.InstanceStateNameShuttingDown:
		return "", fmt.Errorf("the new replica %s is gone: the old one %s is not retired and stays the replica; give this operation up", newID, p.Old.ID)
	}
	newName := tagValue(nin.Tags, "Name")
	if newName != candidate && newName != p.ReplicaTag {
		return "", fmt.Errorf("the new replica %s is now tagged Name=%s, not %s: it is not named the replica and the old one %s is not retired; check it, then give this operation up", newID, newName, candidate, p.Old.ID)
	}
	all, err := FindByName(ctx, r.EC2, p.ReplicaTag)
	if err != nil {
		return "", err
	}
	if others := slices.DeleteFunc(all, func(in ec2types.Instance) bool {
		id := aws.ToString(in.InstanceId)
		return id == p.Old.ID || id == newID
	}); len(others) > 0 {
		return "", fmt.Errorf("%s carries Name=%s too: nothing was retired or renamed; retag or remove it, then resume", instanceList(others), p.ReplicaTag)
	}
	retired, err := r.retire(ctx, op, p, pr)
	if err != nil {
		return "", err
	}
	if newName != p.ReplicaTag {
		_, err := r.EC2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{newID}, Tags: []ec2types.Tag{{Key: aws.String("Name"), Value: aws.String(p.ReplicaTag)}}})
		if err != nil {
			return "", fmt.Errorf("name the new replica %s %s (the old one is retired: until this is done no instance is the replica; resume tries again): %w", newID, p.ReplicaTag, translate(err))
		}
	}
	op.Result.Named = true
	_ = op.Save()
	// EC2's reads lag its writes: the new Name is looked for until seen.
	var got []ec2types.Instance
	lerr := waitFor(ctx, r.poll(), time.Now().Add(readLag*r.poll()), func() (bool, error) {
		var err error
		got, err = FindByName(ctx, r.EC2, p.ReplicaTag)
		return len(got) == 1 && aws.ToString(got[0].InstanceId) == newID, err
	})
	var to *waitTimeout
	switch {
	case errors.As(lerr, &to):
		return "", fmt.Errorf("Name=%s is on %s, not on the new replica alone", p.ReplicaTag, instanceList(got))
	case lerr != nil:
		return "", lerr
	}
	return fmt.Sprintf("%s; `%s` is now Name=%s, the replica", retired, newID, p.ReplicaTag), nil
}

// retire stops (and renames) or terminates the old replica. It acts only
// on an instance that is still the replica: one a failover promoted
// meanwhile carries the box's Name and is left alone.
func (r *Replicas) retire(ctx context.Context, op *Work[ReplicaResult], p ReplicaPlan, pr journal.Progress) (string, error) {
	id := p.Old.ID
	in, ok, err := describeInstance(ctx, r.EC2, id)
	if err != nil {
		return "", err
	}
	if !ok || in.State.Name == ec2types.InstanceStateNameTerminated {
		op.Result.Retired = "terminated"
		_ = op.Save()
		return fmt.Sprintf("the old replica `%s` is gone", id), nil
	}
	name := tagValue(in.Tags, "Name")
	if name != p.ReplicaTag && name != RetiredName(p.ReplicaTag) {
		return "", fmt.Errorf("the old replica %s is now tagged Name=%s, not %s: it is not retired (was it promoted?), and the new one %s stays Name=%s; check it, then give this operation up", id, name, p.ReplicaTag, op.Result.InstanceID, CandidateName(p.ReplicaTag))
	}
	start := time.Now()
	if p.Retire == RetireTerminate {
		if _, err := r.EC2.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{id}}); err != nil {
			if err = translate(err); !errors.Is(err, ErrNotFound) {
				return "", fmt.Errorf("terminate the old replica %s: %w", id, err)
			}
		}
		if _, err := waitInstanceState(ctx, r.EC2, id, r.poll(), p.Timeout, ec2types.InstanceStateNameTerminated); err != nil {
			return "", err
		}
		op.Result.Retired = "terminated"
		_ = op.Save()
		return fmt.Sprintf("the old replica `%s` terminated after %s", id, since(start)), nil
	}
	switch in.State.Name {
	case ec2types.InstanceStateNameStopped:
	default:
		if in.State.Name != ec2types.InstanceStateNameStopping {
			if _, err := r.EC2.StopInstances(ctx, &ec2.StopInstancesInput{InstanceIds: []string{id}}); err != nil {
				return "", fmt.Errorf("stop the old replica %s: %w", id, translate(err))
			}
		}
		if _, err := waitInstanceState(ctx, r.EC2, id, r.poll(), p.Timeout, ec2types.InstanceStateNameStopped); err != nil {
			return "", err
		}
	}
	// Stopped, it still carries the replica's Name: renamed, the tag
	// names the new replica alone (a failover finds one).
	if name != RetiredName(p.ReplicaTag) {
		_, err := r.EC2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{id}, Tags: []ec2types.Tag{
			{Key: aws.String("Name"), Value: aws.String(RetiredName(p.ReplicaTag))},
			{Key: aws.String(TagRetiredBy), Value: aws.String(op.ID)},
		}})
		if err != nil {
			return "", fmt.Errorf("rename the old replica %s to %s: %w", id, RetiredName(p.ReplicaTag), translate(err))
		}
	}
	op.Result.Retired = "stopped"
	_ = op.Save()
	return fmt.Sprintf("the old replica `%s` stopped and kept as Name=%s (volumes kept)", id, RetiredName(p.ReplicaTag)), nil
}

// verify checks the replica as launched: the box's type, one volume per
// device of the box with the box's size, and the replica's tag naming it
// alone.
func (r *Replicas) verify(ctx context.Context, op *Work[ReplicaResult], p ReplicaPlan) (string, error) {
	id := op.Result.InstanceID
	in, ok, err := describeInstance(ctx, r.EC2, id)
	switch {
	case err != nil:
		return "", err
	case !ok:
		return "", fmt.Errorf("the new replica %s is gone", id)
	}
	if string(in.InstanceType) != p.Box.Type {
		return "", fmt.Errorf("the replica %s is %s, the box %s", id, in.InstanceType, p.Box.Type)
	}
	boxVols, err := volumeSizes(ctx, r.EC2, p.Box.Volumes)
	if err != nil {
		return "", err
	}
	repVols, err := volumeSizes(ctx, r.EC2, volumesOf(in))
	if err != nil {
		return "", err
	}
	var missing []string
	for dev, size := range boxVols {
		if got, ok := repVols[dev]; !ok || got != size {
			missing = append(missing, fmt.Sprintf("%s (%d GiB on the box, %d on the replica)", dev, size, got))
		}
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		return "", fmt.Errorf("the replica's volumes are not the box's: %s", strings.Join(missing, ", "))
	}
	all, err := FindByName(ctx, r.EC2, p.ReplicaTag)
	if err != nil {
		return "", err
	}
	if p.Refresh {
		// Named the replica only by the next step (or, journaled by a
		// version before candidates, already at its launch).
		if name := tagValue(in.Tags, "Name"); name != CandidateName(p.ReplicaTag) && name != p.ReplicaTag {
			return "", fmt.Errorf("the new replica %s is tagged Name=%s, not %s: check it, then give this operation up", id, name, CandidateName(p.ReplicaTag))
		}
		if others := slices.DeleteFunc(all, func(in ec2types.Instance) bool {
			return aws.ToString(in.InstanceId) == id || aws.ToString(in.InstanceId) == p.Old.ID
		}); len(others) > 0 {
			return "", fmt.Errorf("Name=%s is on %s too, besides the old replica %s", p.ReplicaTag, instanceList(others), p.Old.ID)
		}
	} else if len(all) != 1 || aws.ToString(all[0].InstanceId) != id {
		return "", fmt.Errorf("Name=%s is on %s, not on the new replica alone", p.ReplicaTag, instanceList(all))
	}
	var devs []string
	for dev, size := range repVols {
		devs = append(devs, fmt.Sprintf("%s %d GiB", dev, size))
	}
	slices.Sort(devs)
	return fmt.Sprintf("`%s`: %s, volumes %s, as the box", id, in.InstanceType, strings.Join(devs, ", ")), nil
}

// volumeSizes maps device to size in GiB.
func volumeSizes(ctx context.Context, api EC2, vols []VolumeRef) (map[string]int32, error) {
	out := map[string]int32{}
	if len(vols) == 0 {
		return out, nil
	}
	res, err := api.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: ids(vols)})
	if err != nil {
		return nil, fmt.Errorf("read volumes: %w", translate(err))
	}
	size := map[string]int32{}
	for _, v := range res.Volumes {
		size[aws.ToString(v.VolumeId)] = aws.ToInt32(v.Size)
	}
	for _, v := range vols {
		out[v.Device] = size[v.ID]
	}
	return out, nil
}

func tagValue(tags []ec2types.Tag, key string) string {
	for _, t := range tags {
		if aws.ToString(t.Key) == key {
			return aws.ToString(t.Value)
		}
	}
	return ""
}

// ReplicaAge is how old the replica's data is and what changed on the box
// since, for status, the report and doctor.
type ReplicaAge struct {
	// AsOf is when the replica's data was taken: when the box was imaged
	// for it (its tag), else its launch.
	AsOf time.Time
	// Built says AsOf comes from the bot's build tag.
	Built bool
	// Warnings: the box changed since (another AMI or type, a newer
	// launch), or the replica is older than replica.max_age.
	Warnings []string
}

// AgeOf compares the replica with the box. maxAge 0: no age limit.
func AgeOf(box, replica ec2types.Instance, maxAge time.Duration, now time.Time) ReplicaAge {
	a := ReplicaAge{AsOf: aws.ToTime(replica.LaunchTime)}
	if t, err := time.Parse(time.RFC3339, tagValue(replica.Tags, TagReplicaData)); err == nil {
		a.AsOf, a.Built = t, true
	}
	boxType, boxImage := string(box.InstanceType), aws.ToString(box.ImageId)
	builtType := cmpOrStr(tagValue(replica.Tags, TagBoxType), string(replica.InstanceType))
	if boxType != "" && builtType != boxType {
		a.Warnings = append(a.Warnings, fmt.Sprintf("the Services box is %s now; the replica was built when it was %s: `replica refresh`", boxType, builtType))
	}
	if img := tagValue(replica.Tags, TagBoxImage); img != "" && boxImage != "" && img != boxImage {
		a.Warnings = append(a.Warnings, fmt.Sprintf("the Services box runs a new AMI (%s; the replica was built from a box on %s): `replica refresh`", boxImage, img))
	}
	if launched := aws.ToTime(box.LaunchTime); !a.AsOf.IsZero() && launched.After(a.AsOf) {
		a.Warnings = append(a.Warnings, fmt.Sprintf("the Services box was launched (%s UTC) after the replica's data was taken: `replica refresh`", launched.UTC().Format("2006-01-02 15:04")))
	}
	if maxAge > 0 && !a.AsOf.IsZero() && now.Sub(a.AsOf) > maxAge {
		a.Warnings = append(a.Warnings, fmt.Sprintf("the replica is %s old, more than replica.max_age (%s): `replica refresh`", Span(now.Sub(a.AsOf)), Span(maxAge)))
	}
	return a
}

// Replication lag: replica.replication_check_command runs on the replica
// through SSM (e.g. `drbdadm status`, or a script printing the seconds
// the replica is behind) and its answer becomes a verdict.

// Lag verdicts.
const (
	LagInSync  = "in-sync"
	LagBehind  = "behind"
	LagUnknown = "unknown"
)

// Lag is what the replication check found.
type Lag struct {
	State string `json:"state"`
	// Seconds behind, when the check said (State behind; -1: not said).
	Seconds float64 `json:"seconds,omitempty"`
	// Why: what the check printed (behind), or why it could not tell
	// (unknown).
	Why string    `json:"why,omitempty"`
	At  time.Time `json:"at,omitzero"`
}

func (l Lag) String() string {
	switch l.State {
	case LagInSync:
		if l.Why != "" {
			return "in sync (" + l.Why + ")"
		}
		return "in sync"
	case LagBehind:
		if l.Seconds >= 0 {
			return fmt.Sprintf("%s seconds behind", strconv.FormatFloat(l.Seconds, 'f', -1, 64))
		}
		return "not in sync (" + l.Why + ")"
	}
	return "unknown (" + l.Why + ")"
}

// LagCheck runs the replication check on an instance.
type LagCheck struct {
	SSM     SSM
	Command string
	Poll    time.Duration
	Timeout time.Duration // default 1m
	// MaxLag: a replica this many seconds behind or less is in sync
	// (replica.max_lag).
	MaxLag time.Duration
}

// Check runs the command on the instance and reads its verdict. It never
// fails: what cannot be told is "unknown", with why.
func (c LagCheck) Check(ctx context.Context, instanceID string) Lag {
	l := Lag{State: LagUnknown, At: time.Now()}
	if c.SSM == nil || strings.TrimSpace(c.Command) == "" {
		l.Why = "no replica.replication_check_command"
		return l
	}
	sh := &Shell{SSM: c.SSM, Instance: instanceID, Poll: c.Poll}
	res, err := sh.Run(ctx, "circlebot: replication check", c.Command, cmpOr(c.Timeout, time.Minute))
	if err != nil {
		why := Explain(err)
		if errors.Is(err, ErrRemote) {
			why = fmt.Sprintf("the check exited %d: %s", res.Code, cmpOrStr(lastLine(res.Stderr), lastLine(res.Stdout)))
		}
		l.Why = strings.TrimSuffix(why, ".")
		return l
	}
	return ParseLag(res.Stdout, l.At).Within(c.MaxLag)
}

// Within counts a replica at most max behind as in sync, saying by how
// much it is behind.
func (l Lag) Within(max time.Duration) Lag {
	if l.State == LagBehind && l.Seconds >= 0 && max > 0 && l.Seconds <= max.Seconds() {
		l.Why = fmt.Sprintf("%s seconds behind, within replica.max_lag %s", strconv.FormatFloat(l.Seconds, 'f', -1, 64), max)
		l.State, l.Seconds = LagInSync, 0
	}
	return l
}

// ParseLag reads a check's output: "in sync" (or 0) is in sync; a number
// is the seconds behind; `drbdadm status` output is in sync when every
// disk is UpToDate, and behind when one is syncing, outdated or
// inconsistent; anything else is unknown.
func ParseLag(out string, at time.Time) Lag {
	l := Lag{State: LagUnknown, At: at}
	s := strings.TrimSpace(out)
	low := strings.ToLower(s)
	switch {
	case s == "":
		l.Why = "the check printed nothing"
		return l
	case low == "in sync" || low == "in-sync" || low == "insync" || low == "ok":
		l.State = LagInSync
		return l
	}
	if n, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSuffix(low, "s"), " seconds"), 64); err == nil && n >= 0 {
		if n == 0 {
			l.State = LagInSync
		} else {
			l.State, l.Seconds = LagBehind, n
		}
		return l
	}
	if strings.Contains(s, "disk:") {
		// drbdadm status: only this node's own disk counts ("disk:…" on
		// the resource's lines; "peer-disk:" and the peer's connection
		// are the other side's). After the primary died its peer lines
		// say Connecting or DUnknown for good, while this disk is still
		// UpToDate: the data as of the disconnect, which is what a
		// failover gets. Waiting would not change that.
		var local []string
		for _, f := range strings.Fields(s) {
			if st, ok := strings.CutPrefix(f, "disk:"); ok {
				local = append(local, st)
			}
		}
		if len(local) > 0 {
			for _, st := range local {
				if st != "UpToDate" {
					l.State, l.Seconds, l.Why = LagBehind, -1, "DRBD: this node's disk is "+st
					return l
				}
			}
			l.State = LagInSync
			if strings.Contains(s, "Connecting") || strings.Contains(s, "StandAlone") || strings.Contains(s, "DUnknown") {
				l.Why = "DRBD: up to date as of the disconnect from the primary"
			}
			return l
		}
	}
	l.Why = "unrecognised output: " + trimTo(lastLine(s), 80)
	return l
}
