package engine

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/circlebot/circlebot/internal/approvals"
	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/ops"
)

// The in-place variant of `restore` (ops/restore_inplace.go): the plan
// picks it when the Services box's instance is there to keep, and the
// approval, summary and what a given-up one leaves say so.

func inPlaceApproval(p ops.RestorePlan) approvals.Plan {
	ap := approvals.Plan{Action: "restore", Facts: p.Facts()}
	var vols, old []string
	for _, v := range p.InPlace.Volumes {
		attrs := fmt.Sprintf("%d GiB %s", v.SizeGiB, v.Type)
		if v.IOPS > 0 {
			attrs += fmt.Sprintf(", %d IOPS", v.IOPS)
		}
		if v.Throughput > 0 {
			attrs += fmt.Sprintf(", %d MiB/s", v.Throughput)
		}
		if v.Encrypted {
			attrs += ", encrypted"
		}
		vols = append(vols, fmt.Sprintf("%s from `%s` (%s)", v.Device, v.SnapshotID, attrs))
		if v.Replaces != "" {
			old = append(old, fmt.Sprintf("`%s` (%s)", v.Replaces, v.Device))
		}
	}
	id := p.Old.InstanceID
	ap.Changes = []string{"in place: " + p.Why}
	if l := p.CompletingLine(); l != "" {
		ap.Changes = append(ap.Changes, l)
	}
	ap.Changes = append(ap.Changes,
		fmt.Sprintf("create volumes in %s from restore point `%s` (%s UTC): %s", p.InPlace.AZ, p.Source, p.SourceTime.UTC().Format("2006-01-02 15:04"), strings.Join(vols, ", ")),
		fmt.Sprintf("turn off DeleteOnTermination on every volume of `%s` and tag them, then stop it (forced after `restore.stop_timeout`)", id),
		fmt.Sprintf("detach its volumes %s and attach the new ones at the same devices, root included", strings.Join(old, ", ")),
		fmt.Sprintf("start `%s` (now %s) on them", id, p.Old.State),
	)
	if p.AppStart != "" {
		ap.Changes = append(ap.Changes, "start the app through SSM as soon as its agent answers: `"+p.AppStart+"`")
	}
	ap.Keeps = []string{
		fmt.Sprintf("the instance `%s`: its interfaces, private IP %s%s, security groups, profile and key", id, p.Shape.PrivateIP, secondaries(p.Shape.SecondaryIPs)),
		"the old volumes, detached and tagged " + ops.TagReplacedBy + "=<this operation>: " + strings.Join(old, ", "),
		"the restore point's snapshots",
	}
	if p.RTO.Predicted > 0 {
		ap.Undo = append(ap.Undo, p.RTO.Line(pathInPlace.what))
	}
	ap.Undo = append(ap.Undo, fmt.Sprintf("the box has the data of %s UTC (%s old): builds and settings since then are not in it (the old volumes still have them)", p.SourceTime.UTC().Format("2006-01-02 15:04"), chat.Age(time.Since(p.SourceTime))))
	if p.Newer != "" {
		ap.Undo = append(ap.Undo, p.Newer)
	}
	return ap
}

func inPlaceSummary(s Setup, p ops.RestorePlan, r ops.RestoreResult, op Record) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Restored `%s` in place onto `%s` (%s) in %s (approved by <@%s>): %s.", p.Source, p.Old.InstanceID, p.Shape.PrivateIP, op.Took, op.Approver, newVolumes(r))
	if a := p.RTO.Actual(toApp(op.Op, appStepRestore)); a != "" {
		b.WriteString(" " + a)
	}
	if len(r.KeptVolumes) > 0 {
		fmt.Fprintf(&b, " Its old volumes %s are detached and kept (tag %s=%s): delete them once you are sure.", strings.Join(r.KeptVolumes, ", "), ops.TagReplacedBy, op.ID)
	}
	fmt.Fprintf(&b, " The builders reach it at the same IP. Webhooks sent while the box was down were lost; take a fresh backup with `%s backup now`.", s.SlashCommand)
	return b.String()
}

func newVolumes(r ops.RestoreResult) string {
	var parts []string
	for dev, v := range r.NewVolumes {
		parts = append(parts, dev+"=`"+v+"`")
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

func inPlaceLeftBehind(_ ops.RestorePlan, r ops.RestoreResult, op Record) []string {
	var h []string
	if len(r.NewVolumes) > 0 {
		h = append(h, "restored volumes "+newVolumes(r)+" (tag "+ops.TagRestoreOp+"="+op.ID+")")
	}
	if len(r.KeptVolumes) > 0 {
		h = append(h, "old volumes "+strings.Join(r.KeptVolumes, ",")+" (tag "+ops.TagKeptBy+"="+op.ID+"), detached where "+ops.TagReplacedBy+" is set")
	}
	return h
}
