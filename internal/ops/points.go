package ops

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
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
	// PrunedBy is the prune (op-…) that marked the set before deleting
	// any of its snapshots (TagPruning on every snapshot left, or the
	// bot's record). With a snapshot gone the set is StatePartlyPruned.
	PrunedBy string
	// SetSize is how many snapshots the set had when it was made: the
	// bot's record, else what the prune wrote (TagSetSize); 0 if unknown.
	SetSize int
}

// StatePartlyPruned is a bot's set that a prune began deleting and did
// not finish: it is no restore point (not a failed backup either), and
// the next prune deletes what is left of it.
const StatePartlyPruned = "partly pruned"

// Usable reports whether a restore can start from p.
func (p Point) Usable() bool { return p.State == StateCompleted }

// PartlyPruned reports whether a prune stopped part-way through p.
func (p Point) PartlyPruned() bool { return p.State == StatePartlyPruned }

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
	marked := map[string]int{} // snapshots of a set that carry TagPruning
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
			if op := tag(s.Tags, TagPruning); bot && op != "" {
				marked[key]++
				p.PrunedBy = op
				if n, err := strconv.Atoi(tag(s.Tags, TagSetSize)); err == nil && n > p.SetSize {
					p.SetSize = n
				}
			}
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
	for key, p := range sets {
		slices.Sort(p.Snapshots)
		p.Pct /= float64(len(p.Snapshots))
		if !p.MadeByBot {
			p.ID = p.Snapshots[0]
		}
		if marked[key] < len(p.Snapshots) {
			// A prune deletes only once every snapshot of the set
			// carries its mark (or the record does, below); a partial
			// tag is a write that failed part-way, and no mark.
			p.PrunedBy, p.SetSize = "", 0
		}
		out = append(out, *p)
	}
	byID := map[string]int{}
	for i := range out {
		byID[out[i].ID] = i
	}
	inAWS := len(out)
	for _, r := range recs {
		i, ok := byID[r.ID]
		switch {
		case ok:
			out[i].Record = r
			// AWS keeps start times to the second; two backups in one
			// second must still sort in the order they were taken.
			out[i].Started = r.Started
			out[i].SetSize = len(r.Snapshots)
			if out[i].PrunedBy == "" {
				out[i].PrunedBy = r.Pruning
			}
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
	for i := range out[:inAWS] {
		// A set a prune marked and then deleted part of is that prune's
		// unfinished work, not a failed backup; marked and whole (the
		// prune stopped before its first deletion), it is what it was.
		if p := &out[i]; p.MadeByBot && p.PrunedBy != "" && len(p.Snapshots) < p.SetSize {
			p.State, p.Error = StatePartlyPruned, ""
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
