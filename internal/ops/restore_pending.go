package ops

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/circlebot/circlebot/internal/journal"
)

// A restore from a restore point still completing: the on-call runs
// `backup now` on a box that is degrading and restores from that backup,
// with the least data lost, without waiting for it by hand.
//
// An EBS snapshot is point-in-time: its data is fixed the moment it is
// requested, and "pending" only means AWS is still copying it to S3. So
// the box may keep serving while the snapshots complete and nothing it
// writes meanwhile is in the restore either way. The restore follows
// their progress and stops the box when the time they still need is no
// more than a stop takes: the stop then overlaps their tail and adds no
// downtime. Stopping earlier adds no data but risks stopping the box for
// a snapshot that then fails (state error); stopping at completion adds a
// whole stop to the downtime. CreateVolume and RegisterImage need
// completed snapshots, so those steps wait for completion after the stop.

// DefaultStopLead is how long a stop of the Services box is expected to
// take until the bot has measured its own: the timing model's stop
// (internal/testenv/motoserver/timing.go, "stop"), about a minute. The
// restore stops the box once the snapshots need no more than this.
const DefaultStopLead = 60 * time.Second

// Completing is a restore point whose snapshots are still pending, as
// the plan saw it.
type Completing struct {
	// Progress is the least progress of its snapshots, in percent.
	Progress int `json:"progress"`
	// Pending are its snapshots not yet completed.
	Pending []string `json:"pending"`
}

// sourceProgress reads how far the snapshots are: the least progress,
// the time still needed (estimated from each pending snapshot's rate
// since its StartTime; ok false while a snapshot shows 0% or no time has
// passed: unknown), the pending ones, and the first in state error.
func sourceProgress(snaps []ec2types.Snapshot, now time.Time) (least int, remaining time.Duration, ok bool, pending []string, failed *ec2types.Snapshot) {
	least, ok = 100, true
	for i, s := range snaps {
		switch s.State {
		case ec2types.SnapshotStateCompleted:
			continue
		case ec2types.SnapshotStateError, ec2types.SnapshotStateRecoverable:
			if failed == nil {
				failed = &snaps[i]
			}
			continue
		}
		pending = append(pending, aws.ToString(s.SnapshotId))
		pct := parsePct(aws.ToString(s.Progress))
		least = min(least, int(pct))
		elapsed := now.Sub(aws.ToTime(s.StartTime))
		if pct <= 0 || pct >= 100 || elapsed <= 0 {
			// 0%: no rate yet; 100% but pending: AWS is sealing it,
			// with no rate to tell for how long.
			ok = ok && pct >= 100 && elapsed > 0
			continue
		}
		left := time.Duration(float64(elapsed) * (100 - pct) / pct)
		remaining = max(remaining, left)
	}
	if len(pending) == 0 {
		least = 100
	}
	return least, roundETA(remaining), ok, pending, failed
}

// roundETA rounds an estimate to what it is worth: minutes once it is a
// few of them (the rate wobbles more than that), else seconds.
func roundETA(d time.Duration) time.Duration {
	if d >= 2*time.Minute {
		return d.Round(time.Minute)
	}
	return d.Round(time.Second)
}

// etaText says the time still needed in words.
func etaText(remaining time.Duration, ok bool) string {
	if !ok {
		return "unknown (no progress to estimate from yet)"
	}
	return "about " + Span(max(remaining, time.Second)) + " more"
}

// CompletingLine is the plan's sentence on a source still completing.
func (p RestorePlan) CompletingLine() string {
	c := p.Completing
	if c == nil {
		return ""
	}
	eta := "unknown (no progress to estimate from yet)"
	if p.SourceETA > 0 {
		eta = "about " + Span(p.SourceETA) + " more, from its progress since it started (included in the predicted time to the app starting)"
	}
	return fmt.Sprintf("restore point `%s` is still completing: %d%% (%s pending), expected to complete in %s. The box keeps serving while it completes and is stopped when the snapshots need no more than a stop takes (%s), so the stop overlaps their tail; the volumes are made once they complete. A snapshot that fails before the stop leaves the box untouched",
		p.Source, c.Progress, strings.Join(c.Pending, ", "), eta, Span(p.stopLead()))
}

func (p RestorePlan) stopLead() time.Duration {
	if p.StopLead > 0 {
		return p.StopLead
	}
	return DefaultStopLead
}

// StopStep is the index of the step that stops the box: the restore is
// as approved until it is done.
func (p RestorePlan) StopStep() int {
	if p.Completing != nil {
		return 2 // follow, protect, stop
	}
	return 3 // check, image or volumes, protect, stop
}

// describeSource reads the plan's snapshots.
func (r *SnapshotRestore) describeSource(ctx context.Context, plan RestorePlan) ([]ec2types.Snapshot, error) {
	var ids []string
	for _, s := range plan.Snapshots {
		ids = append(ids, s.ID)
	}
	out, err := r.EC2.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: ids})
	if err != nil {
		return nil, fmt.Errorf("check the snapshots: %w", translate(err))
	}
	if len(out.Snapshots) != len(ids) {
		return nil, fmt.Errorf("%d of the %d snapshots of %s are gone", len(ids)-len(out.Snapshots), len(ids), plan.Source)
	}
	return out.Snapshots, nil
}

// follow is the first step of a restore whose source is still
// completing: it reports the snapshots' progress at each poll and ends
// once they need no more than a stop takes (or completed). A snapshot
// that fails ends it with nothing touched.
func (r *SnapshotRestore) follow(ctx context.Context, plan RestorePlan, p journal.Progress) (string, error) {
	start := time.Now()
	lead := plan.stopLead()
	last := -1
	for {
		snaps, err := r.describeSource(ctx, plan)
		if err != nil {
			return "", err
		}
		least, remaining, ok, pending, failed := sourceProgress(snaps, time.Now())
		if failed != nil {
			return "", fmt.Errorf("snapshot `%s` of restore point `%s` failed (AWS set it to %s), so it cannot be restored. Nothing was changed: the Services box `%s` was not touched and keeps serving. Cancel this restore and pick another restore point (`backup list`)",
				aws.ToString(failed.SnapshotId), plan.Source, failed.State, boxID(plan))
		}
		if len(pending) == 0 {
			return fmt.Sprintf("`%s` completed after %s of following", plan.Source, since(start)), nil
		}
		if ok && remaining <= lead {
			return fmt.Sprintf("`%s` at %d%%, about %s to go (no more than a stop takes, %s): stopping the box now overlaps the rest", plan.Source, least, Span(max(remaining, time.Second)), Span(lead)), nil
		}
		if least != last {
			line := fmt.Sprintf("Restore point `%s`: %d%%, complete in %s; the box keeps serving until the snapshots need no more than %s.", plan.Source, least, etaText(remaining, ok), Span(lead))
			report(p, 0, least, last, line)
			last = least
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(r.poll()):
		}
	}
}

// waitSource waits, after the stop, until every snapshot of the source
// is completed. One that fails now leaves the box stopped but intact.
func (r *SnapshotRestore) waitSource(ctx context.Context, plan RestorePlan, p journal.Progress) error {
	if plan.Completing == nil {
		return nil
	}
	start := time.Now()
	last := -1
	for {
		snaps, err := r.describeSource(ctx, plan)
		if err != nil {
			return err
		}
		least, remaining, ok, pending, failed := sourceProgress(snaps, time.Now())
		if failed != nil {
			return fmt.Errorf("snapshot `%s` of restore point `%s` failed (AWS set it to %s) after the Services box was stopped. The box `%s` is stopped but intact: its own volumes are still attached (kept on termination) and nothing was swapped. Start it again (`aws ec2 start-instances --instance-ids %s`) and cancel this restore, or cancel it and restore another restore point",
				aws.ToString(failed.SnapshotId), plan.Source, failed.State, boxID(plan), boxID(plan))
		}
		if len(pending) == 0 {
			p.Log(fmt.Sprintf("Restore point `%s` completed (waited %s after the stop).", plan.Source, since(start)))
			return nil
		}
		if least != last {
			report(p, 3, least, last, fmt.Sprintf("Restore point `%s`: %d%%, complete in %s.", plan.Source, least, etaText(remaining, ok)))
			last = least
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(r.poll()):
		}
	}
}

// oldBoxNow says what the image step's failure left of the old box: a
// completed source's image comes before anything touches it, a
// completing source's after the stop.
func oldBoxNow(plan RestorePlan) string {
	if plan.Completing == nil || plan.Old == nil {
		return "the old box was not touched"
	}
	return "the old box `" + plan.Old.InstanceID + "` is stopped but intact (its volumes kept on termination, nothing terminated)"
}

// report shows the snapshots' progress on step i's status line at each
// change, and as a line of its own in the thread at the first report and
// at each quarter passed (a line per percent would flood the thread).
func report(p journal.Progress, i, pct, last int, line string) {
	if pp, ok := p.(interface{ Progress(int, float64, string) }); ok {
		pp.Progress(i, float64(pct), line)
	}
	if last < 0 || pct/25 != last/25 {
		p.Log(line)
	}
}

func boxID(plan RestorePlan) string {
	if plan.Old == nil {
		return "(none)"
	}
	return plan.Old.InstanceID
}

// pendingSteps are the steps of a restore whose source is still
// completing: follow → protect → stop → volumes or image (after the
// snapshots complete) → the rest as for a completed source.
func (r *SnapshotRestore) pendingSteps(plan RestorePlan, steps []journal.Def) []journal.Def {
	follow := journal.Def{Name: "Follow the restore point's snapshots", Run: retrying(typed(func(ctx context.Context, _ *Work[RestoreResult], p journal.Progress) (string, error) {
		return r.follow(ctx, plan, p)
	}), r.poll())}
	// steps are a completed source's: check, image or volumes, protect,
	// stop, the rest. The check is the follow here, and the image or the
	// volumes come after the stop (they wait for completion first).
	out := []journal.Def{follow, steps[2], steps[3], steps[1]}
	return append(out, steps[4:]...)
}
