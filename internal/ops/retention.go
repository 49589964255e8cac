package ops

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
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
	// Finish: the set is partly pruned, and what is left of it is
	// deleted whatever the policy says (it is no restore point).
	Finish bool `json:",omitempty"`
}

// Tags a prune writes on every snapshot of a set before it deletes any:
// from the first deletion on, the set is recognisably partly pruned (not
// a failed backup), by whichever replica or bot version lists it next,
// and the next prune finishes it.
const (
	TagPruning = "circlebot:pruning" // the prune's operation ID
	TagSetSize = "circlebot:set-size"
)

// maxTagResources is how many resources one CreateTags may name (AWS
// allows 1,000).
const maxTagResources = 1000

// Retain decides which points to keep. It is pure: the rules are
//   - only completed EBS sets the bot made are candidates; hand-made
//     snapshots, tarballs, running and failed backups are left alone;
//   - a set a prune began deleting (partly pruned) is finished, whatever
//     the policy would say of it, unless an AMI uses one of its snapshots;
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
		case pt.PartlyPruned() && anyInUse(pt, inUse):
			v.Keep, v.Why = true, fmt.Sprintf("partly pruned by %s, but an AMI uses a snapshot of it: finished once the image is gone", pt.PrunedBy)
		case pt.PartlyPruned():
			v.Finish, v.Why = true, fmt.Sprintf("partly pruned: %s stopped after deleting %d of its %d snapshots", pt.PrunedBy, pt.SetSize-len(pt.Snapshots), pt.SetSize)
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

// PruneEC2 is what planning a prune needs from EC2 (and deleting).
type PruneEC2 interface {
	DescribeImages(context.Context, *ec2.DescribeImagesInput, ...func(*ec2.Options)) (*ec2.DescribeImagesOutput, error)
	DeleteSnapshot(context.Context, *ec2.DeleteSnapshotInput, ...func(*ec2.Options)) (*ec2.DeleteSnapshotOutput, error)
}

// PrunerEC2 is what a prune needs from EC2: it also marks the sets it
// deletes.
type PrunerEC2 interface {
	PruneEC2
	CreateTags(context.Context, *ec2.CreateTagsInput, ...func(*ec2.Options)) (*ec2.CreateTagsOutput, error)
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

// Pruner deletes what retention did not keep, as operation Op.
type Pruner struct {
	EC2 PrunerEC2
	Op  string
	// Mark records in the bot's backup record that Op began deleting the
	// set (Records.MarkPruning); nil: only the tags mark it.
	Mark func(ctx context.Context, backupID, op string) error
}

// Prune deletes the snapshots of the sets retention did not keep and
// returns what it deleted. Before it deletes any snapshot of a set, it
// marks the set: every snapshot is tagged TagPruning=Op (one CreateTags
// for the set) and the bot's record notes Op. A set only one of the two
// could mark is deleted all the same; one neither could mark is not
// touched. So a prune that stops part-way (an error, a crash between two
// deletions) leaves a set that RestorePoints calls partly pruned, and
// the next prune finishes it. A partly pruned set is not marked again.
// Prune stops at the first error: what is left is reported, and the next
// run picks it up again.
func (pr Pruner) Prune(ctx context.Context, verdicts []Verdict, p Progress) (deleted []string, err error) {
	for _, v := range verdicts {
		if v.Keep {
			continue
		}
		if !v.Finish {
			if err := pr.mark(ctx, v.Point, p); err != nil {
				return deleted, err
			}
		}
		for _, s := range v.Point.Snapshots {
			_, err := pr.EC2.DeleteSnapshot(ctx, &ec2.DeleteSnapshotInput{SnapshotId: aws.String(s)})
			if err = translate(err); errors.Is(err, ErrNotFound) {
				continue // gone already
			}
			if err != nil {
				return deleted, fmt.Errorf("delete snapshot %s of %s: %w", s, v.Point.ID, err)
			}
			deleted = append(deleted, s)
		}
		if v.Finish {
			p.Log(fmt.Sprintf("finished pruning %s (%d of its %d snapshots were left by %s)", v.Point.ID, len(v.Point.Snapshots), v.Point.SetSize, v.Point.PrunedBy))
			continue
		}
		p.Log(fmt.Sprintf("pruned %s (%s, started %s)", v.Point.ID, v.Why, v.Point.Started.UTC().Format(time.RFC3339)))
	}
	return deleted, nil
}

// mark writes the prune's mark on pt: the record first, then the tags.
func (pr Pruner) mark(ctx context.Context, pt Point, p Progress) error {
	recErr := errors.New("no record is marked by this prune")
	if pr.Mark != nil {
		recErr = pr.Mark(ctx, pt.ID, pr.Op)
	}
	tagErr := pr.tag(ctx, pt)
	switch {
	case tagErr != nil && recErr != nil:
		return fmt.Errorf("mark %s as being pruned, before deleting any of its snapshots (nothing of it was deleted): %w", pt.ID, errors.Join(tagErr, recErr))
	case tagErr != nil:
		p.Log(fmt.Sprintf("could not tag the snapshots of %s %s=%s (%s); the bot's record marks it", pt.ID, TagPruning, pr.Op, failure(tagErr)))
	}
	return nil
}

// tag writes TagPruning and TagSetSize on every snapshot of pt: one
// call for a set (more only past AWS's 1,000 resources a call). A write
// may fail after a part of the set was tagged; the set then counts as
// marked only if its record is, and one nothing was deleted of stays the
// restore point it was (RestorePoints reads a partial tag as no mark).
func (pr Pruner) tag(ctx context.Context, pt Point) error {
	tags := []ec2types.Tag{
		{Key: aws.String(TagPruning), Value: aws.String(pr.Op)},
		{Key: aws.String(TagSetSize), Value: aws.String(strconv.Itoa(len(pt.Snapshots)))},
	}
	for part := range slices.Chunk(pt.Snapshots, maxTagResources) {
		if _, err := pr.EC2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: part, Tags: tags}); err != nil {
			return fmt.Errorf("tag the snapshots of %s: %w", pt.ID, translate(err))
		}
	}
	return nil
}

// Preflight tries a prune's calls without effect before it is approved:
// the mark (CreateTags) on every set it begins, and DeleteSnapshot on
// every snapshot it deletes. A policy that allows the tagging but not the
// deletion (or only on some snapshots, by their tags) would otherwise
// stop a prune part-way, leaving marked, partly pruned sets.
func PrunePreflight(ctx context.Context, api PrunerEC2, verdicts []Verdict) Preflight {
	var pf Preflight
	dry := aws.Bool(true)
	pr := Pruner{EC2: api}
	for _, v := range verdicts {
		if v.Keep {
			continue
		}
		if !v.Finish {
			tags := []ec2types.Tag{{Key: aws.String(TagPruning), Value: aws.String(preflightOpID)}, {Key: aws.String(TagSetSize), Value: aws.String(strconv.Itoa(len(v.Point.Snapshots)))}}
			for part := range slices.Chunk(v.Point.Snapshots, maxTagResources) {
				_, err := pr.EC2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: part, Tags: tags, DryRun: dry})
				pf.dryRun("ec2:CreateTags", v.Point.ID+" (mark it as being pruned)", err)
			}
		}
		// One snapshot per set: a set's snapshots carry the same tags,
		// which is what the policy's conditions read, and a first prune
		// may delete hundreds (each dry run a mutating call, twice).
		for _, s := range v.Point.Snapshots {
			on := s + " of " + v.Point.ID
			if n := len(v.Point.Snapshots) - 1; n > 0 {
				on += fmt.Sprintf(" (and its %d others, tagged alike)", n)
			}
			_, err := pr.EC2.DeleteSnapshot(ctx, &ec2.DeleteSnapshotInput{SnapshotId: aws.String(s), DryRun: dry})
			switch terr := translate(err); {
			case errors.Is(terr, ErrNotFound):
				continue // gone already: try the next of the set
			case transient(terr):
				pf.skipped("ec2:DeleteSnapshot", on, "AWS did not answer ("+reasonOf(terr)+"); the prune tries it")
			default:
				pf.dryRun("ec2:DeleteSnapshot", on, err)
			}
			break
		}
	}
	return pf
}
