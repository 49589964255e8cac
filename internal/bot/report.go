package bot

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/circlebot/circlebot/internal/chart"
	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/progress"
)

// FileUploader is a poster that can attach a file to a message (Slack's
// external upload flow). Posters without it get the report without the
// chart, and are told so.
type FileUploader interface {
	UploadFile(ctx context.Context, parent chat.Ref, filename, title string, data []byte) error
}

// Reports builds the daily backup report from AWS and the bot's records,
// never from memory.
type Reports struct {
	EC2          ops.EC2
	Prune        ops.PruneEC2
	Records      ops.Records
	Drills       ops.Drills
	Policy       ops.Policy
	Schedule     string // backup.schedule
	RPO          time.Duration
	SlashCommand string
	Log          *slog.Logger
	Now          func() time.Time
	// Replica, when set, gives the report's lines on the replica: its age
	// and what changed on the box since, its replication lag.
	Replica func(ctx context.Context) []string
	// RTO, when set, gives the report's lines on recovery times: the
	// measured ones per path, their trend and the current predictions.
	RTO func(ctx context.Context) []string
	// Doctor adds its verdict line to the report (nil: none); Readiness
	// keeps the last verdict and Alert tells the monitor channel, once,
	// when it turns to not ready.
	Doctor    *Doctor
	Readiness ReadinessState
	Alert     func(ctx context.Context, text string) error
}

func (s *Reports) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// Build gathers and computes the report.
func (s *Reports) Build(ctx context.Context) (ops.Report, error) {
	in, err := s.Gather(ctx)
	if err != nil {
		return ops.Report{}, err
	}
	return ops.BuildReport(in), nil
}

// Gather reads what the report is computed from: AWS and bbolt.
func (s *Reports) Gather(ctx context.Context) (ops.ReportInput, error) {
	recs, err := s.Records.Backups(ctx)
	if err != nil {
		return ops.ReportInput{}, err
	}
	pts, err := ops.RestorePoints(ctx, s.EC2, recs)
	if err != nil {
		return ops.ReportInput{}, err
	}
	in := ops.ReportInput{Now: s.now(), Points: pts, Records: recs, RPO: s.RPO}
	if s.Schedule != "" {
		if sched, err := config.CronParser.Parse(s.Schedule); err == nil {
			in.Schedule = sched
		}
	}
	if s.Policy.Enabled() {
		inUse, err := ops.SnapshotsInUse(ctx, s.Prune)
		if err != nil {
			return ops.ReportInput{}, err
		}
		in.Prune = ops.Retain(pts, s.Policy, inUse)
	}
	if in.Drills, err = s.Drills.All(ctx); err != nil {
		return ops.ReportInput{}, err
	}
	return in, nil
}

// Send posts the report and attaches its chart in the message's thread.
func (s *Reports) Send(ctx context.Context, p progress.Poster) error {
	r, err := s.Build(ctx)
	if err != nil {
		return err
	}
	text := ReportText(r, s.SlashCommand)
	if s.Replica != nil {
		for _, l := range s.Replica(ctx) {
			text += l + "\n"
		}
	}
	if s.RTO != nil {
		for _, l := range s.RTO(ctx) {
			text += l + "\n"
		}
	}
	text += s.readinessLine(ctx)
	ref, err := p.Post(ctx, chat.Message{Text: "Daily backup report", Blocks: chat.Section(text)})
	if err != nil {
		return fmt.Errorf("post the report: %w", err)
	}
	up, ok := p.(FileUploader)
	if !ok {
		return nil
	}
	png, err := chart.PNG(r)
	if err != nil {
		s.Log.Error("draw the report chart", "err", err)
		_, _ = p.PostThread(ctx, ref, chat.Text("The chart could not be drawn: "+err.Error())) // a Slack note on a failure logged above
		return nil
	}
	name := "restore-points-" + r.Now.Format("2006-01-02") + ".png"
	if err := up.UploadFile(ctx, ref, name, "Restore point age vs RPO, and sizes (30 days)", png); err != nil {
		s.Log.Error("upload the report chart", "err", err)
		_, _ = p.PostThread(ctx, ref, chat.Text("The chart could not be uploaded: "+ops.Explain(err)+" (the bot needs the `files:write` scope).")) // as above
	}
	return nil
}

// ReportText renders the report for Slack.
func ReportText(r ops.Report, slash string) string {
	var b strings.Builder
	fmt.Fprintf(&b, ":bar_chart: *Daily backup report* — %s UTC\n", r.Now.Format("2006-01-02 15:04"))
	switch {
	case r.Newest == nil:
		fmt.Fprintf(&b, ":rotating_light: *There is no completed restore point.* Take one: `%s backup now`.\n", slash)
	case r.OverRPO:
		fmt.Fprintf(&b, ":rotating_light: *Newest restore point `%s` is %s old — over the RPO of %s.*\n", r.Newest.ID, chat.Age(r.NewestAge), ops.Span(r.RPO))
	default:
		fmt.Fprintf(&b, ":white_check_mark: Newest restore point `%s` is %s old (RPO %s).\n", r.Newest.ID, chat.Age(r.NewestAge), ops.Span(r.RPO))
	}
	fmt.Fprintf(&b, "*Last 24 h:* %d restore point(s)", len(r.Recent))
	if len(r.Recent) > 0 {
		var items []string
		for _, p := range r.Recent {
			size := fmt.Sprintf("%d GiB", p.SizeGiB)
			if p.Method == ops.MethodTarball {
				size = chat.Bytes(p.Bytes)
			}
			who := p.Trigger
			if who == "" {
				who = "by hand"
			}
			items = append(items, fmt.Sprintf("`%s` %s, %s, %s (%s)", p.ID, p.State, p.Method, size, who))
		}
		b.WriteString(": " + strings.Join(items, "; "))
	}
	b.WriteString("\n")
	if len(r.Failed) > 0 {
		var items []string
		for _, f := range r.Failed {
			items = append(items, fmt.Sprintf("`%s` (%s, %s UTC): %s", f.ID, f.Trigger, f.At.UTC().Format("15:04"), f.Why))
		}
		b.WriteString(":x: *Failed:* " + strings.Join(items, "; ") + "\n")
	}
	if len(r.Missed) > 0 {
		var items []string
		for _, t := range r.Missed {
			items = append(items, t.UTC().Format("Jan 2 15:04"))
		}
		b.WriteString(":warning: *Scheduled backups that did not run:* " + strings.Join(items, ", ") + " UTC\n")
	}
	fmt.Fprintf(&b, "*Totals:* %d completed restore points, %d GiB (provisioned volume sizes and tarballs).\n", r.Count, r.GiB)
	if len(r.PruneNext) > 0 {
		var ids []string
		for _, p := range r.PruneNext {
			if p.PartlyPruned() {
				ids = append(ids, fmt.Sprintf("`%s` (the %d snapshots a stopped prune left)", p.ID, len(p.Snapshots)))
				continue
			}
			ids = append(ids, "`"+p.ID+"`")
		}
		fmt.Fprintf(&b, "*Retention would prune next:* %s (`%s backup prune --dry-run`).\n", strings.Join(ids, ", "), slash)
	} else {
		b.WriteString("*Retention would prune next:* nothing.\n")
	}
	if f := r.FailedDrill; f != nil {
		fmt.Fprintf(&b, ":rotating_light: *The newest drill failed:* `%s` of `%s`, %s UTC: %s\n", f.ID, f.Source, f.Started.UTC().Format("2006-01-02 15:04"), f.Error)
	}
	if r.LastDrill != nil {
		fmt.Fprintf(&b, "*Last successful restore drill:* `%s` of `%s`, %s UTC — restore time *%s* (%d drills in %d days).\n",
			r.LastDrill.ID, r.LastDrill.Source, r.LastDrill.Started.UTC().Format("2006-01-02 15:04"), r.LastDrill.RestoreTime.Round(time.Second), r.Drills, ops.ChartDays)
	} else {
		fmt.Fprintf(&b, ":warning: *No successful restore drill on record:* a backup is proven only by restoring it (`%s drill now`).\n", slash)
	}
	return b.String()
}

func (d Deps) reportNow(ctx context.Context, c Call) (Outcome, error) {
	if err := d.Reports.Send(ctx, c.Reply); err != nil {
		return Outcome{}, &UserError{Msg: "the report could not be made: " + ops.Explain(err)}
	}
	return OK, nil
}
