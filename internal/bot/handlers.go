package bot

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/circlebot/circlebot/internal/authz"
	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/commands"
	"github.com/circlebot/circlebot/internal/ops"
)

// Deps are what the built-in handlers need.
type Deps struct {
	SlashCommand string
	Version      string
	Policy       *authz.Policy
	Audit        Auditor
	Status       *ops.Status
	Backups      *Backups
	RPO          time.Duration
	Approvals    *Approvals
	Ops          *Operations
	Reports      *Reports
	Drills       *DrillService
	// Actions are the destructive commands that run through approvals.
	Actions map[commands.Name]Action
	// Replicas describes the bot's own replicas for status (nil: one).
	Replicas func(ctx context.Context) string
}

// Handlers is the one dispatch table. New checks it covers the grammar.
func Handlers(d Deps) map[commands.Name]Handler {
	h := map[commands.Name]Handler{
		commands.Status:  d.status,
		commands.History: d.history,
	}
	if d.Backups != nil {
		h[commands.BackupNow] = d.backupNow
		h[commands.BackupList] = d.backupList
		h[commands.BackupStatus] = d.backupStatus
	}
	if d.Reports != nil {
		h[commands.ReportNow] = d.reportNow
	}
	if d.Drills != nil {
		h[commands.DrillNow] = d.drillNow
	}
	if d.Ops != nil {
		h[commands.Resume] = d.resume
		h[commands.Cancel] = d.cancel
		h[commands.BuildersStatus] = d.buildersStatus
	}
	if d.Approvals != nil {
		h[commands.Approve] = d.approve
		h[commands.Deny] = d.deny
		for name, act := range d.Actions {
			h[name] = d.request(act)
		}
	}
	// The rest of the grammar is parsed, validated and authorised today;
	// the operations behind it land issue by issue. Until then the answer
	// says so and points at the manual runbook, and nothing runs.
	h[commands.Help] = nil // set below, once the list of what is missing is known
	var missing []commands.Name
	for _, s := range commands.Specs() {
		if _, ok := h[s.Name]; !ok {
			h[s.Name] = d.unavailable
			missing = append(missing, s.Name)
		}
	}
	h[commands.Help] = func(ctx context.Context, c Call) (Outcome, error) { return d.help(ctx, c, missing) }
	return h
}

func (d Deps) help(ctx context.Context, c Call, missing []commands.Name) (Outcome, error) {
	text := commands.HelpText(d.SlashCommand, c.Cmd.Topic, d.Policy.Allowed(c.Req.UserID))
	// Say up front what this version cannot do yet, so nobody learns at
	// 3 a.m. by trying that restore is still the manual runbook.
	var notYet []string
	for _, n := range missing {
		if s, _ := commands.SpecOf(n); d.Policy.May(c.Req.UserID, s.Class) && (c.Cmd.Topic == "" || c.Cmd.Topic == n) {
			notYet = append(notYet, "`"+string(n)+"`")
		}
	}
	if len(notYet) > 0 {
		text += "\n\n:construction: Not in this version yet (they answer with the runbook section to follow): " + strings.Join(notYet, ", ") + "."
	}
	if !d.Policy.May(c.Req.UserID, commands.ClassRead) {
		text += fmt.Sprintf("\n\nYou have no role here yet: ask whoever runs this bot to add `%s` to `roles.viewers` or `roles.operators`.", c.Req.UserID)
	}
	return OK, c.Reply.Ephemeral(ctx, chat.Text(text))
}

func (d Deps) status(ctx context.Context, c Call) (Outcome, error) {
	r := d.Status.Run(ctx)
	msg := RenderStatus(r)
	if d.Replicas != nil {
		msg.Blocks = append(msg.Blocks, chat.Context(d.Replicas(ctx)))
	}
	if _, err := c.Reply.Post(ctx, msg.Fit()); err != nil {
		return Outcome{}, fmt.Errorf("post status: %w", err)
	}
	out := OK
	if r.Box.Err != nil {
		out.Detail = ops.Explain(r.Box.Err)
	}
	return out, nil
}

func (d Deps) history(ctx context.Context, c Call) (Outcome, error) {
	recs, err := d.Audit.History(ctx, c.Cmd.Limit)
	if err != nil {
		return Outcome{}, err
	}
	if len(recs) == 0 {
		return OK, c.Reply.Ephemeral(ctx, chat.Text("No commands recorded yet."))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "*Last %d command(s), newest first*\n", len(recs))
	for _, r := range recs {
		detail := ""
		if r.Detail != "" && r.Outcome != "ok" {
			detail = " — " + oneLine(r.Detail, 120)
		}
		fmt.Fprintf(&b, "`%s` <@%s> in <#%s> (%s): `%s` → *%s*%s\n",
			r.At.UTC().Format("2006-01-02 15:04:05Z"), r.UserID, r.Channel, r.Source, oneLine(r.Command, 80), r.Outcome, detail)
	}
	return OK, c.Reply.Ephemeral(ctx, chat.Text(b.String()))
}

// runbookFor points at the manual runbook section to use until a command
// is automated, so "not yet" still leaves the on-call engineer a way on.
var runbookFor = map[commands.Name]string{
	commands.BackupNow:      "“Backup with EBS” / “Backup with tarballs”",
	commands.BackupList:     "“Restore from EBS” (aws ec2 describe-snapshots --filters Name=description,Values=CircleCI*)",
	commands.BackupStatus:   "“Restore from EBS” (aws ec2 describe-snapshots)",
	commands.BackupPrune:    "your snapshot retention policy",
	commands.Restore:        "“Restore from EBS” / “Restore from a tarball”",
	commands.Failover:       "“Cold Fail-over”, step 2 (ensure the old box is dead, move the IP, start the app)",
	commands.BuildersStatus: "“Discovery and Re-association of Builders”",
	commands.BuildersRotate: "“Recovery from outage” (rotate the fleet)",
	commands.Secret:         "“Discovery and Re-association of Builders” (sudo replicated admin get-secret-token)",
	commands.ReportNow:      "“Restore from EBS” (list snapshots by age)",
	commands.DrillNow:       "“Restore from EBS” (restore into an isolated subnet)",
}

func (d Deps) unavailable(ctx context.Context, c Call) (Outcome, error) {
	msg := fmt.Sprintf("`%s %s` is not available in this version of the bot (%s) yet. Nothing was run.", d.SlashCommand, c.Cmd.Text(), d.Version)
	if rb, ok := runbookFor[c.Cmd.Name]; ok {
		msg += "\nUntil it is, follow the runbook: " + rb + "."
	}
	return Outcome{Result: "unavailable"}, c.Reply.Ephemeral(ctx, chat.Text(msg))
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	s = strings.ReplaceAll(s, "`", "'")
	if len([]rune(s)) > n {
		s = string([]rune(s)[:n]) + "…"
	}
	return s
}

// Age renders a duration the way people say it: "3h12m", "2d4h", "45s".
func Age(d time.Duration) string {
	switch {
	case d < 0:
		return "in the future (clock skew?)"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	default:
		return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
	}
}
