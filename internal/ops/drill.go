package ops

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/circlebot/circlebot/internal/store"
)

// DrillEC2 is what a restore drill uses: a restore's calls plus the
// teardown's.
type DrillEC2 interface {
	RestoreEC2
	DeregisterImage(context.Context, *ec2.DeregisterImageInput, ...func(*ec2.Options)) (*ec2.DeregisterImageOutput, error)
	DeleteVolume(context.Context, *ec2.DeleteVolumeInput, ...func(*ec2.Options)) (*ec2.DeleteVolumeOutput, error)
}

// TagDrill marks everything a drill makes; the start-up sweep finds
// leftovers by it (and by the image name prefix).
const (
	TagDrill = "circlebot:drill"
	// TagDrillOwner names the installation (the Services box's Name tag)
	// whose bot made the drill: a sweep removes only its own bot's.
	TagDrillOwner    = "circlebot:drill-owner"
	drillImagePrefix = "circleci-drill-"
)

// Drill states.
const (
	DrillRunning     = "running"
	DrillPassed      = "passed"
	DrillFailed      = "failed"
	DrillInterrupted = "interrupted"
)

// Drill is one restore drill as recorded in bbolt.
type Drill struct {
	ID          string        `json:"id"`
	State       string        `json:"state"`
	Trigger     string        `json:"trigger"`
	Requester   string        `json:"requester"`
	Channel     string        `json:"channel,omitempty"`
	Source      string        `json:"source,omitempty"`
	Snapshots   []string      `json:"snapshots,omitempty"`
	Started     time.Time     `json:"started"`
	Finished    time.Time     `json:"finished,omitzero"`
	ImageID     string        `json:"image_id,omitempty"`
	InstanceID  string        `json:"instance_id,omitempty"`
	RestoreTime time.Duration `json:"restore_time,omitempty"` // start to healthy: the measured RTO
	Error       string        `json:"error,omitempty"`
	Cleanup     []string      `json:"cleanup,omitempty"`
	Process     string        `json:"process,omitempty"`
}

// NewDrillID makes dr-YYYYMMDD-HHMMSS-xxxx.
func NewDrillID(t time.Time) string {
	var b [2]byte
	_, _ = rand.Read(b[:])
	return "dr-" + t.UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b[:])
}

const bucketDrills = "drills"

// Drills keeps drill records.
type Drills struct{ Store *store.Store }

func (d Drills) Save(ctx context.Context, dr *Drill) error {
	return d.Store.Put(ctx, bucketDrills, dr.ID, dr)
}

// All lists drills, newest first.
func (d Drills) All(ctx context.Context) ([]Drill, error) {
	var out []Drill
	err := d.Store.Each(ctx, bucketDrills, func(_ string, v []byte) error {
		var dr Drill
		if err := json.Unmarshal(v, &dr); err != nil {
			return err
		}
		out = append(out, dr)
		return nil
	})
	slices.SortFunc(out, func(a, b Drill) int { return b.Started.Compare(a.Started) })
	return out, err
}

// DrillSteps are the steps of a drill, for its progress message.
var DrillSteps = []string{"Pick the newest restore point", "Make an image", "Launch in the drill subnet", "Wait until healthy", "Tear down"}

// DrillRunner restores the newest EBS restore point into an isolated
// subnet and security group, measures how long until it is healthy, and
// removes everything it made. It never gives the instance a production
// IP: the address comes from the drill subnet.
type DrillRunner struct {
	EC2           DrillEC2
	Restore       *SnapshotRestore // plans from the newest restore point
	Records       Drills
	Subnet        string
	SecurityGroup string
	InstanceType  string // empty: the recorded type
	HealthURL     string // optional; {ip} is the drill instance's IP
	HTTP          *http.Client
	Poll          time.Duration
	Timeout       time.Duration // image + launch + healthy
	Process       string
	Alive         func(ctx context.Context, process string) bool // default: only this process
}

// Progress is what a drill reports to.
type DrillProgress interface {
	Begin(step int, detail string)
	Done(step int, detail string)
	Fail(step int, err error)
	Log(line string)
}

func (r *DrillRunner) poll() time.Duration { return cmpOr(r.Poll, 5*time.Second) }

func (r *DrillRunner) owner() string { return r.Restore.NameTag }

func (r *DrillRunner) alive(ctx context.Context, process string) bool {
	if r.Alive != nil {
		return r.Alive(ctx, process)
	}
	return process == r.Process
}

func (r *DrillRunner) tags(id string) []ec2types.Tag {
	return []ec2types.Tag{{Key: aws.String(TagDrill), Value: aws.String(id)}, {Key: aws.String(TagDrillOwner), Value: aws.String(r.owner())}}
}

// Run runs one drill; the teardown runs whatever happened before it, on
// its own clock. The record says what was measured and what was removed.
func (r *DrillRunner) Run(ctx context.Context, d *Drill, p DrillProgress) (err error) {
	d.State, d.Process = DrillRunning, r.Process
	if d.Started.IsZero() {
		d.Started = time.Now()
	}
	if err := r.Records.Save(ctx, d); err != nil {
		return err
	}
	step, reachedEnd := 0, false
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("the drill crashed in step %d: %v", step+1, p)
		}
		// Tear down always; a bot that is shutting down still removes
		// what the drill made (a crash is swept at the next start).
		p.Begin(4, "")
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Minute)
		defer cancel()
		left, terr := r.teardown(tctx, d.ID)
		d.Cleanup = append(d.Cleanup, left...)
		if terr != nil {
			p.Fail(4, errors.New(Explain(terr)))
			d.Cleanup = append(d.Cleanup, "teardown incomplete: "+Explain(terr))
		} else {
			p.Done(4, strings.Join(left, "; "))
		}
		d.Finished = time.Now()
		switch {
		case err == nil && reachedEnd:
			d.State = DrillPassed
		case err == nil:
			d.State, d.Error = DrillFailed, "the drill stopped before it was measured"
			err = errors.New(d.Error)
		case ctx.Err() != nil:
			d.State, d.Error = DrillInterrupted, "the bot stopped during step "+fmt.Sprint(step+1)
		default:
			d.State, d.Error = DrillFailed, Explain(err)
			p.Fail(step, errors.New(Explain(err)))
		}
		if serr := r.Records.Save(tctx, d); serr != nil && err == nil {
			err = serr
		}
		if err == nil && terr != nil {
			err = terr
		}
	}()
	if r.Subnet == "" || r.SecurityGroup == "" {
		return refusef("restore drills need an isolated `drill.subnet_id` and `drill.security_group_id`.")
	}
	p.Begin(0, "")
	plan, err := r.Restore.Plan(ctx, "")
	if err != nil {
		return err
	}
	if plan.Shape.SubnetID == r.Subnet {
		return refusef("`drill.subnet_id` is the Services box's own subnet (%s): a drill must run isolated from production.", r.Subnet)
	}
	if slices.Contains(plan.Shape.SecurityGroups, r.SecurityGroup) {
		return refusef("`drill.security_group_id` is the Services box's own security group: builders could reach the drill instance.")
	}
	d.Source = plan.Source
	for _, s := range plan.Snapshots {
		d.Snapshots = append(d.Snapshots, s.ID)
	}
	_ = r.Records.Save(ctx, d) // progress only: the save when the drill ends reports a failure
	p.Done(0, fmt.Sprintf("`%s` (%s UTC, %d snapshots)", plan.Source, plan.SourceTime.UTC().Format("2006-01-02 15:04"), len(plan.Snapshots)))

	step = 1
	p.Begin(1, "")
	deadline := time.Now().Add(cmpOr(r.Timeout, time.Hour))
	if d.ImageID, err = r.image(ctx, d, plan, deadline); err != nil {
		return err
	}
	_ = r.Records.Save(ctx, d) // progress only, as above
	p.Done(1, "`"+d.ImageID+"`")

	step = 2
	p.Begin(2, "")
	ip, err := r.launch(ctx, d, plan)
	if err != nil {
		return err
	}
	_ = r.Records.Save(ctx, d) // progress only, as above
	p.Done(2, fmt.Sprintf("`%s` at %s in `%s`", d.InstanceID, ip, r.Subnet))

	step = 3
	p.Begin(3, "")
	if err := r.healthy(ctx, d.InstanceID, ip, deadline); err != nil {
		return err
	}
	d.RestoreTime = time.Since(d.Started)
	what := "status checks and " + r.HealthURL
	if r.HealthURL == "" {
		what = "EC2 status checks only (no drill.health_url: the app itself was not probed)"
	}
	p.Done(3, "healthy ("+what+"); restore time "+d.RestoreTime.Round(time.Second).String())
	reachedEnd = true
	return nil
}

func (r *DrillRunner) image(ctx context.Context, d *Drill, plan RestorePlan, deadline time.Time) (string, error) {
	var bdm []ec2types.BlockDeviceMapping
	for _, s := range plan.Snapshots {
		// A drill's volumes go with its instance.
		bdm = append(bdm, ec2types.BlockDeviceMapping{DeviceName: aws.String(s.Device), Ebs: &ec2types.EbsBlockDevice{SnapshotId: aws.String(s.ID), DeleteOnTermination: aws.Bool(true)}})
	}
	arch := ec2types.ArchitectureValues(plan.Shape.Architecture)
	if arch == "" {
		arch = ec2types.ArchitectureValuesX8664
	}
	out, err := r.EC2.RegisterImage(ctx, &ec2.RegisterImageInput{
		Name: aws.String(drillImagePrefix + d.ID), Description: aws.String("circlebot restore drill " + d.ID + " of " + plan.Source),
		Architecture: arch, RootDeviceName: aws.String(plan.Shape.RootDevice), VirtualizationType: aws.String("hvm"), EnaSupport: aws.Bool(true),
		BlockDeviceMappings: bdm,
		TagSpecifications:   []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeImage, Tags: r.tags(d.ID)}},
	}, onceEC2) // a lost answer fails the drill; the teardown finds the image by its tag
	if err != nil {
		return "", fmt.Errorf("register the drill image: %w", translate(err))
	}
	id := aws.ToString(out.ImageId)
	err = waitFor(ctx, r.poll(), deadline, func() (bool, error) {
		img, err := r.EC2.DescribeImages(ctx, &ec2.DescribeImagesInput{ImageIds: []string{id}})
		if err = translate(err); errors.Is(err, ErrNotFound) {
			return false, nil // just registered: EC2's reads lag its writes
		}
		if err != nil {
			return false, fmt.Errorf("check the drill image %s: %w", id, err)
		}
		if len(img.Images) == 0 {
			return false, nil
		}
		switch img.Images[0].State {
		case ec2types.ImageStateAvailable:
			return true, nil
		case ec2types.ImageStateFailed, ec2types.ImageStateError, ec2types.ImageStateInvalid:
			return false, fmt.Errorf("the drill image %s is %s: the restore point may not be restorable", id, img.Images[0].State)
		}
		return false, nil
	})
	var to *waitTimeout
	if errors.As(err, &to) {
		return id, fmt.Errorf("the drill image %s is still pending at the drill's deadline", id)
	}
	return id, err
}

func (r *DrillRunner) launch(ctx context.Context, d *Drill, plan RestorePlan) (string, error) {
	typ := r.InstanceType
	if typ == "" {
		typ = plan.Shape.Type
	}
	tags := append(r.tags(d.ID), ec2types.Tag{Key: aws.String("Name"), Value: aws.String(drillImagePrefix + d.ID)})
	out, err := r.EC2.RunInstances(ctx, &ec2.RunInstancesInput{
		ImageId: aws.String(d.ImageID), InstanceType: ec2types.InstanceType(typ), MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
		ClientToken: aws.String(d.ID), SubnetId: aws.String(r.Subnet), SecurityGroupIds: []string{r.SecurityGroup},
		TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance, Tags: tags}, {ResourceType: ec2types.ResourceTypeVolume, Tags: tags}},
	})
	if err != nil {
		return "", fmt.Errorf("launch the drill instance: %w", translate(err))
	}
	in := out.Instances[0]
	d.InstanceID = aws.ToString(in.InstanceId)
	return aws.ToString(in.PrivateIpAddress), nil
}

// healthy waits for the drill instance's status checks and, when
// configured, its health URL (health.go).
func (r *DrillRunner) healthy(ctx context.Context, id, ip string, deadline time.Time) error {
	h := health{EC2: r.EC2, HTTP: r.HTTP, Poll: r.poll(), Deadline: deadline}
	if err := h.wait(ctx, id, strings.ReplaceAll(r.HealthURL, "{ip}", ip)); err != nil {
		return fmt.Errorf("the drill instance did not become healthy in time: %w", err)
	}
	return nil
}

// teardown removes everything drill id made: its instance (its volumes go
// with it), then any volume left, then its image. The restore point's
// snapshots are never touched: the image only refers to them.
func (r *DrillRunner) teardown(ctx context.Context, id string) ([]string, error) {
	var did []string
	// Only what carries the drill tag is ever removed: one drill's by its
	// ID, or (id "*", the start-up sweep) every drill of this bot's
	// installation.
	filter := func(_, value string) []ec2types.Filter {
		if value == "*" {
			return []ec2types.Filter{{Name: aws.String("tag-key"), Values: []string{TagDrill}}, {Name: aws.String("tag:" + TagDrillOwner), Values: []string{r.owner()}}}
		}
		return []ec2types.Filter{{Name: aws.String("tag:" + TagDrill), Values: []string{value}}}
	}
	out, err := r.EC2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{Filters: filter(TagDrill, id)})
	if err != nil {
		return did, fmt.Errorf("find the drill's instances: %w", translate(err))
	}
	var ids []string
	for _, res := range out.Reservations {
		for _, in := range res.Instances {
			if in.State.Name != ec2types.InstanceStateNameTerminated {
				ids = append(ids, aws.ToString(in.InstanceId))
			}
		}
	}
	if len(ids) > 0 {
		if _, err := r.EC2.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: ids}); err != nil {
			return did, fmt.Errorf("terminate %s: %w", strings.Join(ids, ", "), translate(err))
		}
		for _, i := range ids {
			if _, err := r.Restore.waitState(ctx, i, 5*time.Minute, ec2types.InstanceStateNameTerminated); err != nil {
				return did, err
			}
		}
		did = append(did, "terminated "+strings.Join(ids, ", "))
	}
	// A terminated instance's kept volumes become available some time
	// after it, and DescribeVolumes lags that too: read until none is
	// still in use, or the volumes in use are left behind unsaid.
	var vols *ec2.DescribeVolumesOutput
	err = readBack(ctx, r.poll(), r.Restore.ReadBack, "the drill's volumes detached", func() (bool, string, error) {
		var err error
		vols, err = r.EC2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{Filters: filter(TagDrill, id)})
		if err != nil {
			return false, "", fmt.Errorf("find the drill's volumes: %w", translate(err))
		}
		var busy []string
		for _, v := range vols.Volumes {
			if v.State == ec2types.VolumeStateInUse {
				busy = append(busy, aws.ToString(v.VolumeId)+" in use")
			}
		}
		return len(busy) == 0 || len(ids) == 0, strings.Join(busy, ", "), nil
	})
	if err != nil {
		return did, err
	}
	for _, v := range vols.Volumes {
		if v.State != ec2types.VolumeStateAvailable {
			continue
		}
		if _, err := r.EC2.DeleteVolume(ctx, &ec2.DeleteVolumeInput{VolumeId: v.VolumeId}); err != nil {
			return did, fmt.Errorf("delete drill volume %s: %w", aws.ToString(v.VolumeId), translate(err))
		}
		did = append(did, "deleted volume "+aws.ToString(v.VolumeId))
	}
	name := drillImagePrefix + id
	if id == "*" {
		name = drillImagePrefix + "*"
	}
	imgs, err := r.EC2.DescribeImages(ctx, &ec2.DescribeImagesInput{Owners: []string{"self"}, Filters: append(filter(TagDrill, id), ec2types.Filter{Name: aws.String("name"), Values: []string{name}})})
	if err != nil {
		return did, fmt.Errorf("find the drill's image: %w", translate(err))
	}
	for _, img := range imgs.Images {
		if img.State == ec2types.ImageStateDeregistered {
			continue
		}
		if _, err := r.EC2.DeregisterImage(ctx, &ec2.DeregisterImageInput{ImageId: img.ImageId}); err != nil {
			return did, fmt.Errorf("deregister drill image %s: %w", aws.ToString(img.ImageId), translate(err))
		}
		did = append(did, "deregistered "+aws.ToString(img.ImageId))
	}
	return did, nil
}

// Sweep runs at start-up: drills a dead process left running are marked
// interrupted, and anything tagged as a drill's (or named like a drill's
// image) that no running drill of this process owns is removed. It
// returns what it found and did, for the report channel.
func (r *DrillRunner) Sweep(ctx context.Context) ([]string, error) {
	all, err := r.Records.All(ctx)
	if err != nil {
		return nil, err
	}
	var said []string
	var errs []error
	for i := range all {
		d := all[i]
		if d.State != DrillRunning || r.alive(ctx, d.Process) {
			continue
		}
		left, terr := r.teardownRetrying(ctx, d.ID)
		d.State, d.Finished, d.Error = DrillInterrupted, time.Now(), "the bot stopped during the drill"
		d.Cleanup = append(d.Cleanup, left...)
		if terr != nil {
			d.Cleanup = append(d.Cleanup, "teardown incomplete: "+Explain(terr))
			errs = append(errs, terr)
		}
		_ = r.Records.Save(ctx, &d) // unsaved, the next sweep finds the drill again and says it again
		said = append(said, fmt.Sprintf("drill `%s` was cut off by a bot restart; removed: %s", d.ID, orNothing(left)))
	}
	// Leftovers of drills the bot has no record of (a lost data_dir).
	left, err := r.teardownRetrying(ctx, "*")
	if err != nil {
		errs = append(errs, err)
	}
	if len(left) > 0 {
		said = append(said, "removed drill leftovers: "+strings.Join(left, "; "))
	}
	return said, errors.Join(errs...)
}

// teardownRetrying tries a teardown again (retry.go) when AWS failed it
// with a transient error: what it did not reach the first time is found
// again by its tags.
func (r *DrillRunner) teardownRetrying(ctx context.Context, id string) ([]string, error) {
	var did []string
	err := again(ctx, stepPolicy(r.poll()), transient, func(int) error {
		left, err := r.teardown(ctx, id)
		did = append(did, left...)
		return err
	}, nil)
	return did, err
}

func orNothing(s []string) string {
	if len(s) == 0 {
		return "nothing was left"
	}
	return strings.Join(s, "; ")
}
