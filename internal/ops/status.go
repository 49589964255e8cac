package ops

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// Target says where the installation is.
type Target struct {
	Region     string
	NameTag    string // Services box Name tag
	ReplicaTag string // empty: no replica configured
	BuilderASG string // empty: builders not managed
	RPO        time.Duration
	// ReplicaMaxAge is replica.max_age (0: no limit).
	ReplicaMaxAge time.Duration
}

type Volume struct {
	ID, Device, Type, State string
	SizeGiB                 int32
}

type Instance struct {
	ID, State, AZ, Type, PrivateIP, SubnetID string
	SecondaryIPs                             []string
	Volumes                                  []Volume
	SystemStatus, InstanceStatus             string // "ok", "impaired", "initializing", "not-applicable"; "" when unknown
	LaunchTime                               time.Time
}

// Box is what one Name tag found.
type Box struct {
	Tag       string
	Instances []Instance // non-terminated instances with the tag, running first
	Err       error
	raw       []ec2types.Instance
}

type RestorePoint struct {
	ID, Kind, State string
	Started         time.Time
	SizeGiB         int32
	Bytes           int64
}

type Fleet struct {
	Name                          string
	Desired, Min, Max, InService  int32
	Unhealthy, Pending, Instances int
}

type StatusReport struct {
	Target  Target
	At      time.Time
	Box     Box
	Replica *Box // nil: not configured
	// Building are new replicas a replica refresh is building (Name=
	// <replica tag>-candidate): not the replica; BuildingErr why they
	// could not be read.
	Building    []Candidate
	BuildingErr error
	// ReplicaAge is the replica's against the box's (nil: not one of each).
	ReplicaAge *ReplicaAge
	// Lag is the replica's replication (nil: not checked).
	Lag      *Lag
	Newest   *RestorePoint
	Pending  int // restore points still being made
	Points   int // completed restore points found
	PointErr error
	Fleet    *Fleet // nil: not configured
	FleetErr error
}

// Status reads the installation. Each part fails on its own: a broken
// replica lookup must not hide the Services box.
type Status struct {
	EC2    EC2
	ASG    AutoScaling
	Target Target
	Now    func() time.Time
	// Records lists the bot's backup records (who made a set, tarballs).
	Records func(context.Context) ([]*Backup, error)
	// Lag checks the replica's replication (nil: no check configured).
	Lag func(ctx context.Context, instanceID string) Lag
}

// StatusTimeout bounds the whole read: status is what people run first in
// an incident, and a hanging AWS region must not hang the answer.
const StatusTimeout = 20 * time.Second

func (s *Status) Run(ctx context.Context) *StatusReport {
	ctx, cancel := context.WithTimeout(ctx, StatusTimeout)
	defer cancel()
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	r := &StatusReport{Target: s.Target, At: now()}
	var wg sync.WaitGroup
	wg.Go(func() { r.Box = s.box(ctx, s.Target.NameTag) })
	if s.Target.ReplicaTag != "" {
		wg.Go(func() { b := s.box(ctx, s.Target.ReplicaTag); r.Replica = &b })
		wg.Go(func() { r.Building, r.BuildingErr = Candidates(ctx, s.EC2, s.Target.ReplicaTag) })
	}
	wg.Go(func() { r.Newest, r.Points, r.Pending, r.PointErr = s.restorePoints(ctx) })
	if s.Target.BuilderASG != "" && s.ASG != nil {
		wg.Go(func() { r.Fleet, r.FleetErr = s.fleet(ctx) })
	}
	wg.Wait()
	if r.Replica != nil && len(r.Box.raw) == 1 && len(r.Replica.raw) == 1 {
		a := AgeOf(r.Box.raw[0], r.Replica.raw[0], s.Target.ReplicaMaxAge, r.At)
		r.ReplicaAge = &a
	}
	if s.Lag != nil && r.Replica != nil && len(r.Replica.Instances) == 1 {
		l := Lag{State: LagUnknown, At: r.At, Why: "the replica is " + r.Replica.Instances[0].State}
		if r.Replica.Instances[0].State == "running" {
			l = s.Lag(ctx, r.Replica.Instances[0].ID)
		}
		r.Lag = &l
	}
	return r
}

func (s *Status) box(ctx context.Context, tag string) Box {
	b := Box{Tag: tag}
	insts, err := FindByName(ctx, s.EC2, tag)
	if err != nil {
		b.Err = err
		return b
	}
	b.raw = insts
	var ids []string
	var volIDs []string
	for _, in := range insts {
		ids = append(ids, aws.ToString(in.InstanceId))
		for _, bd := range in.BlockDeviceMappings {
			if bd.Ebs != nil {
				volIDs = append(volIDs, aws.ToString(bd.Ebs.VolumeId))
			}
		}
	}
	if len(ids) == 0 {
		return b
	}
	// Two independent reads, one call each for all instances found.
	var statuses map[string][2]string
	var vols map[string]ec2types.Volume
	var serr, verr error
	var wg sync.WaitGroup
	wg.Go(func() { statuses, serr = s.instanceStatus(ctx, ids) })
	if len(volIDs) > 0 {
		wg.Go(func() { vols, verr = s.volumes(ctx, volIDs) })
	}
	wg.Wait()
	if err := cmp.Or(serr, verr); err != nil {
		b.Err = err
	}
	for _, in := range insts {
		b.Instances = append(b.Instances, toInstance(in, statuses, vols))
	}
	slices.SortStableFunc(b.Instances, func(x, y Instance) int {
		return cmp.Compare(stateRank(x.State), stateRank(y.State))
	})
	return b
}

func stateRank(s string) int {
	return map[string]int{"running": 0, "pending": 1, "stopping": 2, "stopped": 3}[s]
}

func (s *Status) instanceStatus(ctx context.Context, ids []string) (map[string][2]string, error) {
	out, err := s.EC2.DescribeInstanceStatus(ctx, &ec2.DescribeInstanceStatusInput{InstanceIds: ids, IncludeAllInstances: aws.Bool(true)})
	if err != nil {
		return nil, fmt.Errorf("read status checks: %w", translate(err))
	}
	m := map[string][2]string{}
	for _, st := range out.InstanceStatuses {
		var sys, inst string
		if st.SystemStatus != nil {
			sys = string(st.SystemStatus.Status)
		}
		if st.InstanceStatus != nil {
			inst = string(st.InstanceStatus.Status)
		}
		m[aws.ToString(st.InstanceId)] = [2]string{sys, inst}
	}
	return m, nil
}

func (s *Status) volumes(ctx context.Context, ids []string) (map[string]ec2types.Volume, error) {
	out, err := s.EC2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: ids})
	if err != nil {
		return nil, fmt.Errorf("read volumes: %w", translate(err))
	}
	m := map[string]ec2types.Volume{}
	for _, v := range out.Volumes {
		m[aws.ToString(v.VolumeId)] = v
	}
	return m, nil
}

func toInstance(in ec2types.Instance, statuses map[string][2]string, vols map[string]ec2types.Volume) Instance {
	i := Instance{
		ID:         aws.ToString(in.InstanceId),
		Type:       string(in.InstanceType),
		PrivateIP:  aws.ToString(in.PrivateIpAddress),
		SubnetID:   aws.ToString(in.SubnetId),
		LaunchTime: aws.ToTime(in.LaunchTime),
	}
	if in.State != nil {
		i.State = string(in.State.Name)
	}
	if in.Placement != nil {
		i.AZ = aws.ToString(in.Placement.AvailabilityZone)
	}
	for _, eni := range in.NetworkInterfaces {
		for _, ip := range eni.PrivateIpAddresses {
			if !aws.ToBool(ip.Primary) || aws.ToString(ip.PrivateIpAddress) != i.PrivateIP {
				i.SecondaryIPs = append(i.SecondaryIPs, aws.ToString(ip.PrivateIpAddress))
			}
		}
	}
	if st, ok := statuses[i.ID]; ok {
		i.SystemStatus, i.InstanceStatus = st[0], st[1]
	}
	for _, bd := range in.BlockDeviceMappings {
		if bd.Ebs == nil {
			continue
		}
		v := Volume{ID: aws.ToString(bd.Ebs.VolumeId), Device: aws.ToString(bd.DeviceName), State: string(bd.Ebs.Status)}
		if dv, ok := vols[v.ID]; ok {
			v.SizeGiB = aws.ToInt32(dv.Size)
			v.Type = string(dv.VolumeType)
		}
		i.Volumes = append(i.Volumes, v)
	}
	return i
}

// BackupDescriptionPrefix is the seed runbook's description form; the bot's
// own backups use it too, so manual and bot-made snapshots both count.
const BackupDescriptionPrefix = "CircleCI Services box Backup"

// restorePoints is the same view as `backup list`: sets, not snapshots, so
// a half-made or broken set is never reported as the newest restore point.
func (s *Status) restorePoints(ctx context.Context) (newest *RestorePoint, completed, pending int, err error) {
	var recs []*Backup
	if s.Records != nil {
		if recs, err = s.Records(ctx); err != nil {
			return nil, 0, 0, err
		}
	}
	pts, err := RestorePoints(ctx, s.EC2, recs)
	if err != nil {
		return nil, 0, 0, err
	}
	for _, p := range pts {
		switch p.State {
		case StateCompleted:
			completed++
		case StateRunning:
			pending++
		}
	}
	if p, ok := Newest(pts); ok {
		newest = &RestorePoint{ID: p.ID, Kind: p.Method, State: p.State, Started: p.Started, SizeGiB: p.SizeGiB, Bytes: p.Bytes}
	}
	return newest, completed, pending, nil
}

func (s *Status) fleet(ctx context.Context) (*Fleet, error) {
	out, err := s.ASG.DescribeAutoScalingGroups(ctx, &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{s.Target.BuilderASG}})
	if err != nil {
		return nil, fmt.Errorf("read builder group %s: %w", s.Target.BuilderASG, translate(err))
	}
	if len(out.AutoScalingGroups) == 0 {
		return nil, fmt.Errorf("builder group %s: %w", s.Target.BuilderASG, ErrNotFound)
	}
	g := out.AutoScalingGroups[0]
	f := &Fleet{Name: s.Target.BuilderASG, Desired: aws.ToInt32(g.DesiredCapacity), Min: aws.ToInt32(g.MinSize), Max: aws.ToInt32(g.MaxSize), Instances: len(g.Instances)}
	for _, in := range g.Instances {
		switch {
		case aws.ToString(in.HealthStatus) != "Healthy":
			f.Unhealthy++
		case in.LifecycleState == "InService":
			f.InService++
		default:
			f.Pending++
		}
	}
	return f, nil
}
