package ops

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// Point is one restore point: an EBS snapshot set or a tarball, merged from
// what AWS holds now and what the bot recorded.
type Point struct {
	ID        string // bk-… for the bot's, else the first snapshot ID of a hand-made set
	Method    string // ebs | tarball
	State     string // completed, running, failed
	Started   time.Time
	SizeGiB   int32
	Bytes     int64
	Snapshots []string
	Location  string // s3://bucket/key
	Requester string
	Trigger   string
	MadeByBot bool
	Pct       float64
	Error     string
	Record    *Backup // nil for hand-made sets
}

// Usable reports whether a restore can start from p.
func (p Point) Usable() bool { return p.State == StateCompleted }

// RestorePoints lists restore points newest first. EBS sets come from AWS
// (so a snapshot deleted by hand disappears, and the runbook's manual
// backups count too); the bot's records add who, why and failures.
func RestorePoints(ctx context.Context, api EC2, recs []*Backup) ([]Point, error) {
	in := &ec2.DescribeSnapshotsInput{
		// Pages of 1,000 (the most AWS gives): an account with years of
		// snapshots is listed in a few calls without one huge answer.
		MaxResults: aws.Int32(1000),
		OwnerIds:   []string{"self"},
		Filters:    []ec2types.Filter{{Name: aws.String("description"), Values: []string{BackupDescriptionPrefix + "*"}}},
	}
	sets := map[string]*Point{}
	pg := ec2.NewDescribeSnapshotsPaginator(api, in)
	for pg.HasMorePages() {
		page, err := pg.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("list backup snapshots: %w", translate(err))
		}
		for _, s := range page.Snapshots {
			key, bot := tag(s.Tags, TagBackupID), true
			if key == "" {
				// A hand-made set: snapshots taken together share the
				// description, which carries the time.
				key, bot = "desc:"+aws.ToString(s.Description), false
			}
			p := sets[key]
			if p == nil {
				p = &Point{ID: key, Method: MethodEBS, State: StateCompleted, Started: aws.ToTime(s.StartTime), MadeByBot: bot,
					Requester: tag(s.Tags, TagRequester), Trigger: tag(s.Tags, TagTrigger)}
				sets[key] = p
			}
			id := aws.ToString(s.SnapshotId)
			p.Snapshots = append(p.Snapshots, id)
			p.SizeGiB += aws.ToInt32(s.VolumeSize)
			if st := aws.ToTime(s.StartTime); st.Before(p.Started) {
				p.Started = st
			}
			switch s.State {
			case ec2types.SnapshotStateError, ec2types.SnapshotStateRecoverable:
				p.State, p.Error = StateFailed, fmt.Sprintf("snapshot %s is in state %s", id, s.State)
			case ec2types.SnapshotStatePending, ec2types.SnapshotStateRecovering:
				if p.State != StateFailed {
					p.State = StateRunning
				}
				p.Pct += parsePct(aws.ToString(s.Progress))
			default:
				p.Pct += 100
			}
		}
	}
	var out []Point
	for _, p := range sets {
		slices.Sort(p.Snapshots)
		p.Pct /= float64(len(p.Snapshots))
		if !p.MadeByBot {
			p.ID = p.Snapshots[0]
		}
		out = append(out, *p)
	}
	byID := map[string]int{}
	for i := range out {
		byID[out[i].ID] = i
	}
	for _, r := range recs {
		i, ok := byID[r.ID]
		switch {
		case ok:
			out[i].Record = r
			// AWS keeps start times to the second; two backups in one
			// second must still sort in the order they were taken.
			out[i].Started = r.Started
			switch {
			case r.State == StateFailed:
				out[i].State, out[i].Error = StateFailed, r.Error
			case len(out[i].Snapshots) < len(r.Snapshots):
				// Someone deleted part of the set: it no longer restores the box.
				out[i].State, out[i].Error = StateFailed, fmt.Sprintf("incomplete: %d of its %d snapshots remain", len(out[i].Snapshots), len(r.Snapshots))
			}
		case r.Method == MethodTarball || r.State != StateCompleted:
			// Tarballs live in S3; a failed or running EBS backup may have
			// no snapshots left to find. A completed EBS record whose
			// snapshots are gone from AWS is no restore point any more.
			p := Point{ID: r.ID, Method: r.Method, State: r.State, Started: r.Started, Bytes: r.Size, Requester: r.Requester,
				Trigger: r.Trigger, MadeByBot: true, Error: r.Error, Record: r}
			if r.Key != "" {
				p.Location = "s3://" + r.Bucket + "/" + r.Key
			}
			for _, s := range r.Snapshots {
				p.Snapshots = append(p.Snapshots, s.ID)
			}
			p.SizeGiB = r.SizeGiB()
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b Point) int { return cmp.Or(b.Started.Compare(a.Started), cmp.Compare(a.ID, b.ID)) })
	return out, nil
}

// Newest returns the newest usable restore point, if any.
func Newest(points []Point) (Point, bool) {
	for _, p := range points {
		if p.Usable() {
			return p, true
		}
	}
	return Point{}, false
}

func tag(tags []ec2types.Tag, key string) string {
	for _, t := range tags {
		if aws.ToString(t.Key) == key {
			return aws.ToString(t.Value)
		}
	}
	return ""
}
