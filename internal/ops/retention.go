package ops

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
)

// Policy is backup.retention. Zero everywhere means keep everything.
type Policy struct {
	KeepLast, KeepDaily, KeepWeekly int
}

func (p Policy) Enabled() bool { return p.KeepLast > 0 || p.KeepDaily > 0 || p.KeepWeekly > 0 }

// Verdict is retention's decision on one restore point, with the reason.
type Verdict struct {
	Point  Point
	Keep   bool
	Why    string
	Newest bool // the newest completed restore point: never pruned
}

// Retain decides which points to keep. It is pure: the rules are
//   - only completed EBS sets the bot made are candidates; hand-made
//     snapshots, tarballs, running and failed backups are left alone;
//   - the newest completed restore point of any kind is never pruned;
//   - a set whose snapshot backs an AMI (inUse) is kept;
//   - otherwise a set survives if it is among the KeepLast newest, the
//     newest of one of the KeepDaily newest UTC days, or the newest of one
//     of the KeepWeekly newest ISO weeks.
//
// points must be newest first (as RestorePoints returns them).
func Retain(points []Point, p Policy, inUse map[string]bool) []Verdict {
	out := make([]Verdict, 0, len(points))
	if !p.Enabled() {
		for _, pt := range points {
			out = append(out, Verdict{Point: pt, Keep: true, Why: "no retention policy"})
		}
		return out
	}
	newest, hasNewest := Newest(points)
	var days, weeks []string
	last := 0
	for _, pt := range points {
		v := Verdict{Point: pt}
		switch {
		case !pt.MadeByBot:
			v.Keep, v.Why = true, "not made by the bot"
		case pt.Method != MethodEBS:
			v.Keep, v.Why = true, "tarballs are not pruned"
		case pt.State != StateCompleted:
			v.Keep, v.Why = true, "not completed ("+pt.State+")"
		}
		if v.Why != "" {
			out = append(out, v)
			continue
		}
		last++
		day := pt.Started.UTC().Format("2006-01-02")
		y, w := pt.Started.UTC().ISOWeek()
		week := fmt.Sprintf("%d-W%02d", y, w)
		switch {
		case hasNewest && pt.ID == newest.ID:
			v.Keep, v.Why, v.Newest = true, "the newest completed restore point", true
		case anyInUse(pt, inUse):
			v.Keep, v.Why = true, "an AMI uses its snapshot"
		case last <= p.KeepLast:
			v.Keep, v.Why = true, fmt.Sprintf("one of the last %d", p.KeepLast)
		case !slices.Contains(days, day) && len(days) < p.KeepDaily:
			v.Keep, v.Why = true, "newest of "+day
		case !slices.Contains(weeks, week) && len(weeks) < p.KeepWeekly:
			v.Keep, v.Why = true, "newest of week "+week
		default:
			v.Why = "past the retention policy"
		}
		// A day or week is "used" by its newest completed set, whether that
		// one was kept for this or another reason.
		if !slices.Contains(days, day) {
			days = append(days, day)
		}
		if !slices.Contains(weeks, week) {
			weeks = append(weeks, week)
		}
		out = append(out, v)
	}
	return out
}

func anyInUse(p Point, inUse map[string]bool) bool {
	for _, s := range p.Snapshots {
		if inUse[s] {
			return true
		}
	}
	return false
}

// PruneEC2 is what pruning needs from EC2.
type PruneEC2 interface {
	DescribeImages(context.Context, *ec2.DescribeImagesInput, ...func(*ec2.Options)) (*ec2.DescribeImagesOutput, error)
	DeleteSnapshot(context.Context, *ec2.DeleteSnapshotInput, ...func(*ec2.Options)) (*ec2.DeleteSnapshotOutput, error)
}

// SnapshotsInUse returns the snapshots that back the account's own AMIs:
// deleting one of those fails in AWS, and would break the image anyway.
func SnapshotsInUse(ctx context.Context, api PruneEC2) (map[string]bool, error) {
	out, err := api.DescribeImages(ctx, &ec2.DescribeImagesInput{Owners: []string{"self"}})
	if err != nil {
		return nil, fmt.Errorf("list AMIs using backup snapshots: %w", translate(err))
	}
	used := map[string]bool{}
	for _, img := range out.Images {
		for _, bd := range img.BlockDeviceMappings {
			if bd.Ebs != nil && bd.Ebs.SnapshotId != nil {
				used[aws.ToString(bd.Ebs.SnapshotId)] = true
			}
		}
	}
	return used, nil
}

// Prune deletes the snapshots of the sets retention did not keep and
// returns what it deleted. It stops at the first error: what is left is
// reported, and the next run picks it up again.
func Prune(ctx context.Context, api PruneEC2, verdicts []Verdict, p Progress) (deleted []string, err error) {
	for _, v := range verdicts {
		if v.Keep {
			continue
		}
		for _, s := range v.Point.Snapshots {
			_, err := api.DeleteSnapshot(ctx, &ec2.DeleteSnapshotInput{SnapshotId: aws.String(s)})
			if err = translate(err); errors.Is(err, ErrNotFound) {
				continue // gone already
			}
			if err != nil {
				return deleted, fmt.Errorf("delete snapshot %s of %s: %w", s, v.Point.ID, err)
			}
			deleted = append(deleted, s)
		}
		p.Log(fmt.Sprintf("pruned %s (%s, started %s)", v.Point.ID, v.Why, v.Point.Started.UTC().Format(time.RFC3339)))
	}
	return deleted, nil
}
