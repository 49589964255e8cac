package bot

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/circlebot/circlebot/internal/authz"
	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/commands"
	"github.com/circlebot/circlebot/internal/engine"
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
	// Engine runs every destructive command, once approved, and resume
	// and cancel.
	Engine   *engine.Engine
	Builders *ops.Builders // nil: builders.asg_name unset
	Reports  *Reports
	Drills   *DrillService
	// Doctor checks whether a recovery would work now (doctor).
	Doctor *Doctor
	// Replicas describes the bot's own replicas for status (nil: one).
	Replicas func(ctx context.Context) string
	Log      *slog.Logger
}

// Handlers is the one dispatch table. New checks that it covers the
// grammar: a dependency left out fails start-up.
func Handlers(d Deps) map[commands.Name]Handler {
	if d.Log == nil {
		d.Log = slog.Default()
	}
	h := map[commands.Name]Handler{
		commands.Help:           d.help,
		commands.Status:         d.status,
		commands.History:        d.history,
		commands.BuildersStatus: d.buildersStatus,
		commands.Doctor:         d.doctor,
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
	if d.Engine != nil && d.Approvals != nil {
		h[commands.Resume] = d.resume
		h[commands.Cancel] = d.cancel
		h[commands.Approve] = d.approve
		h[commands.Deny] = d.deny
		for _, name := range d.Engine.Kinds.Commands() {
			h[name] = d.request()
		}
	}
	return h
}

func (d Deps) help(ctx context.Context, c Call) (Outcome, error) {
	text := commands.HelpText(d.SlashCommand, c.Cmd.Topic, d.Policy.Allowed(c.Req.UserID))
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

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	s = strings.ReplaceAll(s, "`", "'")
	if len([]rune(s)) > n {
		s = string([]rune(s)[:n]) + "…"
	}
	return s
}
