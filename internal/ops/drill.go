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

	"github.com/circlebot/circlebot/internal/journal"
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

// Get reads one drill's record.
func (d Drills) Get(ctx context.Context, id string) (*Drill, error) {
	var dr Drill
	if err := d.Store.Get(ctx, bucketDrills, id, &dr); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("drill %s: %w", id, ErrNotFound)
		}
		return nil, err
	}
	return &dr, nil
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
}

func (r *DrillRunner) poll() time.Duration { return cmpOr(r.Poll, 5*time.Second) }

func (r *DrillRunner) owner() string { return r.Restore.NameTag }

func (r *DrillRunner) tags(id string) []ec2types.Tag {
	return []ec2types.Tag{{Key: aws.String(TagDrill), Value: aws.String(id)}, {Key: aws.String(TagDrillOwner), Value: aws.String(r.owner())}}
}

// Ready refuses drills where they could touch production.
func (r *DrillRunner) Ready() error {
	if r.Subnet == "" || r.SecurityGroup == "" {
		return refusef("restore drills need an isolated `drill.subnet_id` and `drill.security_group_id`.")
	}
	return nil
}

// DrillWork is what a drill's steps hand on (the journal keeps it): its
// record, as saved in the store, and what later steps need.
type DrillWork struct {
	Drill Drill        `json:"drill"`
	Plan  *RestorePlan `json:"plan,omitempty"`
	IP    string       `json:"ip,omitempty"`
	// Checks is how long "Wait until healthy" waited for running and both
	// status checks, before any health URL: the same AWS wait as a
	// rebuild's "Wait for running and status checks", which predictions
	// calibrate from it (engine/rto.go).
	Checks time.Duration `json:"checks,omitempty"`
}

// DrillRequest says who asked for a drill and where it reports.
type DrillRequest struct{ Trigger, Requester, Channel string }

func (r *DrillRunner) deadline(d *Drill) time.Time { return d.Started.Add(cmpOr(r.Timeout, time.Hour)) }

// Steps are a drill's journaled steps, for the engine. The last tears
// down what the drill made; a drill that stops before it is torn down by
// its kind's cleanup (Close), here or, after a crash, on whichever
// replica recovers it. A step that fails records the drill as failed.
func (r *DrillRunner) Steps(req DrillRequest) []journal.Def {
	step := func(name string, f func(ctx context.Context, w *DrillWork, p journal.Progress) (string, error)) journal.Def {
		return Def(name, func(ctx context.Context, w *Work[DrillWork], p journal.Progress) (string, error) {
			w.Result.Drill.ID = w.ID
			detail, err := f(ctx, w.Result, p)
			if err != nil && ctx.Err() == nil {
				d := &w.Result.Drill
				d.State, d.Error, d.Finished = DrillFailed, Explain(err), time.Now()
				if serr := r.Records.Save(ctx, d); serr != nil {
					p.Log("could not record the drill as failed: " + Explain(serr))
				}
			}
			return detail, err
		})
	}
	return []journal.Def{
		step(DrillSteps[0], func(ctx context.Context, w *DrillWork, p journal.Progress) (string, error) {
			d := &w.Drill
			d.State, d.Process = DrillRunning, r.Process
			d.Trigger, d.Requester, d.Channel = req.Trigger, req.Requester, req.Channel
			if d.Started.IsZero() {
				d.Started = time.Now()
			}
			if err := r.Records.Save(ctx, d); err != nil {
				return "", err
			}
			if err := r.Ready(); err != nil {
				return "", err
			}
			plan, err := r.Restore.Plan(ctx, "", true) // a drill builds a new box in its own subnet
			if err != nil {
				return "", err
			}
			if plan.Shape.SubnetID == r.Subnet {
				return "", refusef("`drill.subnet_id` is the Services box's own subnet (%s): a drill must run isolated from production.", r.Subnet)
			}
			if slices.Contains(plan.Shape.SecurityGroups, r.SecurityGroup) {
				return "", refusef("`drill.security_group_id` is the Services box's own security group: builders could reach the drill instance.")
			}
			d.Source, d.Snapshots = plan.Source, nil
			for _, s := range plan.Snapshots {
				d.Snapshots = append(d.Snapshots, s.ID)
			}
			w.Plan = &plan
			if err := r.Records.Save(ctx, d); err != nil {
				return "", err
			}
			for _, l := range plan.VolumeLines() {
				p.Log("volume " + l)
			}
			p.Log("boot: " + plan.BootLine())
			return fmt.Sprintf("`%s` (%s UTC, %d snapshots)", plan.Source, plan.SourceTime.UTC().Format("2006-01-02 15:04"), len(plan.Snapshots)), nil
		}),
		step(DrillSteps[1], func(ctx context.Context, w *DrillWork, p journal.Progress) (string, error) {
			d := &w.Drill
			var err error
			if d.ImageID, err = r.image(ctx, d, *w.Plan, r.deadline(d)); err != nil {
				return "", err
			}
			if err := r.Records.Save(ctx, d); err != nil {
				return "", err
			}
			return "`" + d.ImageID + "`", nil
		}),
		step(DrillSteps[2], func(ctx context.Context, w *DrillWork, p journal.Progress) (string, error) {
			d := &w.Drill
			ip, err := r.launch(ctx, d, *w.Plan)
			if err != nil {
				return "", err
			}
			w.IP = ip
			if err := r.Records.Save(ctx, d); err != nil {
				return "", err
			}
			return fmt.Sprintf("`%s` at %s in `%s`", d.InstanceID, ip, r.Subnet), nil
		}),
		step(DrillSteps[3], func(ctx context.Context, w *DrillWork, p journal.Progress) (string, error) {
			d := &w.Drill
			start := time.Now()
			h := health{EC2: r.EC2, HTTP: r.HTTP, Poll: r.poll(), Deadline: r.deadline(d)}
			if err := h.statusChecks(ctx, d.InstanceID); err != nil {
				return "", fmt.Errorf("the drill instance did not become healthy in time: %w", err)
			}
			w.Checks = time.Since(start)
			if r.HealthURL != "" {
				if err := h.probe(ctx, strings.ReplaceAll(r.HealthURL, "{ip}", w.IP)); err != nil {
					return "", fmt.Errorf("the drill instance did not become healthy in time: %w", err)
				}
			}
			d.RestoreTime = time.Since(d.Started)
			if err := r.Records.Save(ctx, d); err != nil {
				return "", err
			}
			// The status checks' share is said apart: it is what a
			// rebuild's "Wait for running and status checks" is
			// predicted from.
			what := fmt.Sprintf("status checks passed after %s, then %s answered", w.Checks.Round(time.Second), r.HealthURL)
			if r.HealthURL == "" {
				what = fmt.Sprintf("EC2 status checks passed after %s (no drill.health_url: the app itself was not probed)", w.Checks.Round(time.Second))
			}
			return "healthy: " + what + "; restore time " + d.RestoreTime.Round(time.Second).String(), nil
		}),
		// A bot that is shutting down still removes what the drill made:
		// the teardown runs on its own clock.
		step(DrillSteps[4], func(ctx context.Context, w *DrillWork, p journal.Progress) (string, error) {
			d := &w.Drill
			tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Minute)
			defer cancel()
			left, err := r.teardownRetrying(tctx, d.ID)
			d.Cleanup = append(d.Cleanup, left...)
			if err != nil {
				return "", err
			}
			d.State, d.Finished = DrillPassed, time.Now()
			if err := r.Records.Save(tctx, d); err != nil {
				return "", err
			}
			return strings.Join(left, "; "), nil
		}),
	}
}

// Close is the end of a drill that did not finish, whatever stopped it
// (a failed step, a shutdown, or a dead bot found by recovery): what it
// made is torn down, found by its tags, and the record says how it
// ended. cut: the bot stopped under it; then leftovers of drills the bot
// has no record of (a lost data_dir) are swept too — the caller holds
// the drill lock, so no running drill's resources are among them. It
// returns what it did, in words.
func (r *DrillRunner) Close(ctx context.Context, d *Drill, cut bool) []string {
	left, terr := r.teardownRetrying(ctx, d.ID)
	d.Cleanup = append(d.Cleanup, left...)
	var said []string
	if cut {
		said = append(said, fmt.Sprintf("drill `%s` was cut off by a bot restart; removed: %s", d.ID, orNothing(left)))
	} else if len(left) > 0 {
		said = append(said, "removed: "+strings.Join(left, "; "))
	}
	if terr != nil {
		d.Cleanup = append(d.Cleanup, "teardown incomplete: "+Explain(terr))
		said = append(said, "teardown incomplete: "+Explain(terr)+" Look for resources tagged `"+TagDrill+"`.")
	}
	if cut {
		more, err := r.teardownRetrying(ctx, "*")
		if len(more) > 0 {
			said = append(said, "removed drill leftovers: "+strings.Join(more, "; "))
		}
		if err != nil {
			said = append(said, "could not sweep drill leftovers: "+Explain(err))
		}
	}
	switch {
	case cut && d.State != DrillFailed:
		d.State, d.Error = DrillInterrupted, "the bot stopped during the drill"
	case d.State == DrillRunning || d.State == "":
		d.State = DrillFailed
		if d.Error == "" {
			d.Error = "the drill stopped before it was measured"
		}
	}
	if d.Finished.IsZero() {
		d.Finished = time.Now()
	}
	if d.Started.IsZero() {
		d.Started = d.Finished
	}
	if err := r.Records.Save(ctx, d); err != nil {
		said = append(said, "could not record it: "+Explain(err))
	}
	return said
}

func (r *DrillRunner) image(ctx context.Context, d *Drill, plan RestorePlan, deadline time.Time) (string, error) {
	// A drill's volumes go with its instance.
	out, err := r.EC2.RegisterImage(ctx, imageInput(plan, drillImagePrefix+d.ID, "circlebot restore drill "+d.ID+" of "+plan.Source, true, r.tags(d.ID)), onceEC2) // a lost answer fails the drill; the teardown finds the image by its tag
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
		BlockDeviceMappings: launchMappings(plan.Snapshots), MetadataOptions: metadataOptions(plan.Shape.Boot),
		TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance, Tags: tags}, {ResourceType: ec2types.ResourceTypeVolume, Tags: tags}},
	})
	if err != nil {
		return "", fmt.Errorf("launch the drill instance: %w", translate(err))
	}
	in := out.Instances[0]
	d.InstanceID = aws.ToString(in.InstanceId)
	return aws.ToString(in.PrivateIpAddress), nil
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
