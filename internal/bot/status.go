package bot

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/slack-go/slack"

	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/ops"
)

// RenderStatus lays a status report out for Slack. Problems come first, in
// words, because that is what the reader at 3 a.m. needs.
func RenderStatus(r *ops.StatusReport) chat.Message {
	var blocks []slack.Block
	var warn []string
	summary := ""

	blocks = append(blocks, chat.Header("CircleCI Services box status"))
	switch {
	case r.Box.Err != nil && len(r.Box.Instances) == 0:
		warn = append(warn, fmt.Sprintf(":x: Services box: %s", ops.Explain(r.Box.Err)))
		summary = "Services box: unknown (AWS error)"
	case len(r.Box.Instances) == 0:
		warn = append(warn, fmt.Sprintf(":x: No instance tagged `Name=%s` exists in %s (terminated ones do not count). If the box is gone, restore from the newest restore point below.", r.Box.Tag, r.Target.Region))
		summary = "Services box: not found"
	case len(r.Box.Instances) > 1:
		warn = append(warn, fmt.Sprintf(":warning: %d instances are tagged `Name=%s`: %s. Builders follow one private IP, so only one may serve. Restore and failover will refuse until the extra one is stopped and retagged.", len(r.Box.Instances), r.Box.Tag, instanceList(r.Box.Instances)))
		summary = fmt.Sprintf("Services box: %d instances tagged %s", len(r.Box.Instances), r.Box.Tag)
	}
	if r.Box.Err != nil && len(r.Box.Instances) > 0 {
		warn = append(warn, ":warning: Partial read: "+ops.Explain(r.Box.Err))
	}
	for _, in := range r.Box.Instances {
		warn = append(warn, healthWarnings("Services box", in)...)
	}
	rpo := r.Target.RPO
	switch {
	case r.PointErr != nil:
		warn = append(warn, ":warning: Restore points: "+ops.Explain(r.PointErr))
	case r.Newest == nil:
		warn = append(warn, ":x: No completed restore point exists. Run a backup as soon as the box is healthy.")
	case rpo > 0 && r.At.Sub(r.Newest.Started) > rpo:
		warn = append(warn, fmt.Sprintf(":warning: The newest restore point is %s old, over the %s RPO target.", chat.Age(r.At.Sub(r.Newest.Started)), chat.Age(rpo)))
	}
	if r.Replica != nil {
		switch {
		case r.Replica.Err != nil && len(r.Replica.Instances) == 0:
			warn = append(warn, ":warning: Replica: "+ops.Explain(r.Replica.Err))
		case len(r.Replica.Instances) == 0:
			warn = append(warn, fmt.Sprintf(":warning: No replica tagged `Name=%s`: failover has nowhere to go.", r.Replica.Tag))
		case len(r.Replica.Instances) > 1:
			warn = append(warn, fmt.Sprintf(":warning: %d instances are tagged `Name=%s`: %s.", len(r.Replica.Instances), r.Replica.Tag, instanceList(r.Replica.Instances)))
		}
		if a := r.ReplicaAge; a != nil {
			for _, w := range a.Warnings {
				warn = append(warn, ":warning: Replica: "+w+".")
			}
		}
		if l := r.Lag; l != nil && l.State != ops.LagInSync {
			warn = append(warn, ":warning: Replication: the replica is "+l.String()+".")
		}
		if len(r.Building) > 0 && len(r.Replica.Instances) == 0 {
			warn = append(warn, ":warning: "+BuildingLine(r.Building, r.Replica.Tag))
		}
	}
	if r.FleetErr != nil {
		warn = append(warn, ":warning: Builders: "+ops.Explain(r.FleetErr))
	}

	if len(warn) > 0 {
		blocks = append(blocks, chat.Section(strings.Join(warn, "\n"))...)
	} else {
		blocks = append(blocks, chat.Section(":white_check_mark: Services box running, status checks ok, restore point within RPO.")...)
	}
	for i, in := range r.Box.Instances {
		label := "Services box"
		if len(r.Box.Instances) > 1 {
			label = fmt.Sprintf("Services box candidate %d", i+1)
		}
		if summary == "" {
			summary = fmt.Sprintf("Services box %s %s, %s", in.ID, in.State, in.PrivateIP)
		}
		blocks = append(blocks, instanceBlocks(label, in)...)
	}
	if r.Replica != nil {
		for _, in := range r.Replica.Instances {
			blocks = append(blocks, instanceBlocks("Replica", in)...)
		}
		if line := ReplicaAgeLine(r.ReplicaAge, r.At); line != "" {
			blocks = append(blocks, chat.Context(line))
		}
		if l := r.Lag; l != nil {
			blocks = append(blocks, chat.Context(LagLine(*l)))
		}
		if len(r.Building) > 0 && len(r.Replica.Instances) > 0 {
			blocks = append(blocks, chat.Context(BuildingLine(r.Building, r.Replica.Tag)))
		}
	}
	blocks = append(blocks, chat.Divider())
	var facts []string
	if r.Newest != nil {
		size := fmt.Sprintf("%d GiB", r.Newest.SizeGiB)
		if r.Newest.Kind == ops.MethodTarball {
			size = chat.Bytes(r.Newest.Bytes)
		}
		facts = append(facts, fmt.Sprintf("*Newest restore point*\n`%s` (%s, %s), %s ago", r.Newest.ID, r.Newest.Kind, size, chat.Age(r.At.Sub(r.Newest.Started))))
		facts = append(facts, fmt.Sprintf("*Restore points*\n%d completed, %d in progress; RPO %s", r.Points, r.Pending, chat.Age(rpo)))
	} else if r.PointErr == nil {
		facts = append(facts, fmt.Sprintf("*Restore points*\nnone completed, %d in progress", r.Pending))
	}
	if f := r.Fleet; f != nil {
		facts = append(facts, fmt.Sprintf("*Builders* (`%s`)\n%d in service of %d desired (min %d, max %d)%s", f.Name, f.InService, f.Desired, f.Min, f.Max, fleetExtra(f)))
	}
	if len(facts) > 0 {
		blocks = append(blocks, chat.Fields(facts...))
	}
	blocks = append(blocks, chat.Context(fmt.Sprintf("Read from AWS %s at %s UTC", r.Target.Region, r.At.UTC().Format("2006-01-02 15:04:05"))))
	return chat.Message{Text: summary, Blocks: blocks}
}

func instanceBlocks(label string, in ops.Instance) []slack.Block {
	ips := "`" + in.PrivateIP + "`"
	if len(in.SecondaryIPs) > 0 {
		ips += " (secondary: `" + strings.Join(in.SecondaryIPs, "`, `") + "`)"
	}
	checks := "unknown"
	if in.SystemStatus != "" || in.InstanceStatus != "" {
		checks = fmt.Sprintf("system %s, instance %s", orDash(in.SystemStatus), orDash(in.InstanceStatus))
	}
	var vols []string
	for _, v := range in.Volumes {
		vols = append(vols, fmt.Sprintf("`%s` %s %d GiB %s", v.ID, v.Device, v.SizeGiB, v.Type))
	}
	return []slack.Block{
		chat.Section(fmt.Sprintf("*%s* `%s` — *%s*", label, in.ID, in.State))[0],
		chat.Fields(
			"*Private IP*\n"+ips,
			"*Zone / type*\n"+in.AZ+" / "+in.Type,
			"*Status checks*\n"+checks,
			fmt.Sprintf("*Volumes* (%d)\n%s", len(in.Volumes), strings.Join(vols, "\n")),
		),
	}
}

func healthWarnings(label string, in ops.Instance) []string {
	var w []string
	if in.State != "running" {
		w = append(w, fmt.Sprintf(":x: %s `%s` is *%s*.", label, in.ID, in.State))
	}
	if in.SystemStatus == "impaired" || in.InstanceStatus == "impaired" {
		w = append(w, fmt.Sprintf(":x: %s `%s` fails its status checks (system %s, instance %s).", label, in.ID, orDash(in.SystemStatus), orDash(in.InstanceStatus)))
	}
	return w
}

func instanceList(ins []ops.Instance) string {
	var parts []string
	for _, in := range ins {
		parts = append(parts, fmt.Sprintf("`%s` (%s, %s, %s)", in.ID, in.State, in.AZ, in.PrivateIP))
	}
	return strings.Join(parts, ", ")
}

func fleetExtra(f *ops.Fleet) string {
	var s []string
	if f.Pending > 0 {
		s = append(s, fmt.Sprintf("%d starting", f.Pending))
	}
	if f.Unhealthy > 0 {
		s = append(s, fmt.Sprintf("%d unhealthy", f.Unhealthy))
	}
	if len(s) == 0 {
		return ""
	}
	return "; " + strings.Join(s, ", ")
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

// ReplicaAgeLine says how old the replica's data is ("" when unknown).
func ReplicaAgeLine(a *ops.ReplicaAge, now time.Time) string {
	if a == nil || a.AsOf.IsZero() {
		return ""
	}
	how := "launched"
	if a.Built {
		how = "the box imaged for it"
	}
	line := fmt.Sprintf("Replica's data as of %s UTC (%s), %s old", a.AsOf.UTC().Format("2006-01-02 15:04"), how, chat.Age(now.Sub(a.AsOf)))
	if len(a.Warnings) == 0 {
		line += "; the box has not changed since."
	} else {
		line += fmt.Sprintf("; %d warning(s) above.", len(a.Warnings))
	}
	return line
}

// ReplicaReportLines are the daily report's lines on the replica, read as
// status reads it.
func ReplicaReportLines(ctx context.Context, st *ops.Status) []string {
	if st == nil || st.Target.ReplicaTag == "" {
		return nil
	}
	r := st.Run(ctx)
	switch {
	case r.Replica == nil:
		return nil
	case r.Replica.Err != nil && len(r.Replica.Instances) == 0:
		return []string{":warning: *Replica:* " + ops.Explain(r.Replica.Err)}
	case len(r.Replica.Instances) == 0:
		return []string{fmt.Sprintf(":warning: *Replica:* none is tagged `Name=%s`: a failover has nowhere to go.", r.Replica.Tag)}
	case len(r.Replica.Instances) > 1:
		return []string{fmt.Sprintf(":warning: *Replica:* %d instances are tagged `Name=%s`: %s.", len(r.Replica.Instances), r.Replica.Tag, instanceList(r.Replica.Instances))}
	}
	in := r.Replica.Instances[0]
	lines := []string{fmt.Sprintf("*Replica:* `%s` (%s, %s, %s).", in.ID, in.State, in.AZ, in.Type)}
	if line := ReplicaAgeLine(r.ReplicaAge, r.At); line != "" {
		lines[0] += " " + line
	}
	if a := r.ReplicaAge; a != nil {
		for _, w := range a.Warnings {
			lines = append(lines, ":warning: *Replica:* "+w+".")
		}
	}
	if l := r.Lag; l != nil {
		mark := ":white_check_mark:"
		if l.State != ops.LagInSync {
			mark = ":warning:"
		}
		lines = append(lines, mark+" *"+LagLine(*l)+"*")
	}
	return lines
}

// BuildingLine says which new replicas are being built and that they are
// not the replica (a failover never picks them).
func BuildingLine(cs []ops.Candidate, replicaTag string) string {
	return fmt.Sprintf("Being built, not the replica (a failover does not use it until its refresh names it `Name=%s`): %s.", replicaTag, ops.CandidateLines(cs, replicaTag))
}

// LagLine is the replication verdict in one line.
func LagLine(l ops.Lag) string {
	return fmt.Sprintf("Replication: the replica is %s (checked %s UTC through replica.replication_check_command).", l, l.At.UTC().Format("15:04:05"))
}
