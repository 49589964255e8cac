// Package bot owns the conversation: one request in, parsed, authorised,
// dispatched to its handler, audited, answered. Every transport (Slack HTTP,
// Socket Mode, console, scheduler) enters through Handle.
package bot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/circlebot/circlebot/internal/authz"
	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/commands"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/progress"
	"github.com/circlebot/circlebot/internal/store"
)

// Replier is how a handler answers; each transport provides one per request.
type Replier interface {
	// Ephemeral is seen by the requester only.
	Ephemeral(ctx context.Context, m chat.Message) error
	// EphemeralTo is seen by user only, in the request's channel (an
	// approved request's result for its requester, e.g. a secret).
	EphemeralTo(ctx context.Context, user string, m chat.Message) error
	// Post, Update and PostThread: seen by the whole channel, updated in
	// place, detail in the thread (what progress streams need).
	progress.Poster
}

// Auditor keeps the trail of who ran what.
type Auditor interface {
	Audit(ctx context.Context, r store.AuditRecord) error
	History(ctx context.Context, n int) ([]store.AuditRecord, error)
}

// Counter is told the outcome of every command (metrics).
type Counter func(command, outcome string)

// Call is one authorised command on its way to a handler.
type Call struct {
	Req   chat.Request
	Cmd   commands.Command
	Reply Replier
}

// Handler runs one command. A *UserError is shown as is; any other error is
// logged and the user gets a generic sentence naming the command.
type Handler func(ctx context.Context, c Call) (Outcome, error)

// Outcome is what the audit trail records for a command that ran.
type Outcome struct {
	Result string // "ok" or "unavailable"; failures come from the error
	Detail string
}

var OK = Outcome{Result: "ok"}

// UserError is a failure the user can act on; its text is safe to show.
// It is the one refusal type of every layer below, so that a refusal made
// deep in ops reaches the user as written.
type UserError = ops.RefusalError

type Bot struct {
	slash    string
	policy   *authz.Policy
	audit    Auditor
	count    Counter
	log      *slog.Logger
	handlers map[commands.Name]Handler
}

type Options struct {
	SlashCommand string
	Policy       *authz.Policy
	Audit        Auditor
	Count        Counter
	Log          *slog.Logger
	Handlers     map[commands.Name]Handler
}

// New checks the dispatch table against the grammar: a command without a
// handler, or a handler without a command, fails start-up rather than a
// user's command at 3 a.m.
func New(o Options) (*Bot, error) {
	for _, s := range commands.Specs() {
		if o.Handlers[s.Name] == nil {
			return nil, fmt.Errorf("bot: no handler for command %q", s.Name)
		}
	}
	for n := range o.Handlers {
		if _, ok := commands.SpecOf(n); !ok {
			return nil, fmt.Errorf("bot: handler for unknown command %q", n)
		}
	}
	if o.Policy == nil || o.Audit == nil {
		return nil, errors.New("bot: policy and audit are required")
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Count == nil {
		o.Count = func(string, string) {}
	}
	return &Bot{slash: o.SlashCommand, policy: o.Policy, audit: o.Audit, count: o.Count, log: o.Log, handlers: o.Handlers}, nil
}

// SlashCommand is the configured command, e.g. "/circleci".
func (b *Bot) SlashCommand() string { return b.slash }

// Handle runs one request to completion. It never panics out: a panicking
// handler is reported as a failure.
func (b *Bot) Handle(ctx context.Context, req chat.Request, r Replier) {
	rec := store.AuditRecord{At: time.Now(), UserID: req.UserID, Channel: req.ChannelID, Source: req.Source, Command: req.Text}
	log := b.log.With("request", req.ID, "user", req.UserID, "channel", req.ChannelID, "source", req.Source)
	name := "unknown"
	finish := func(outcome, detail string) {
		rec.Outcome, rec.Detail = outcome, detail
		b.count(name, outcome)
		log.Info("command", "command", rec.Command, "outcome", outcome, "detail", detail)
		// Recorded even when the request's context ended (the bot is
		// stopping): the command was run or refused all the same.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := b.audit.Audit(actx, rec); err != nil {
			log.Error("audit write failed", "err", err)
		}
	}
	// Channel first: in a channel the bot does not serve, even a typo gets
	// only the polite refusal.
	if !b.policy.ChannelAllowed(req.ChannelID) {
		ref := b.policy.Check(req.UserID, req.ChannelID, commands.Spec{Name: commands.Help})
		b.ephemeral(ctx, log, r, chat.Text(ref.Reason))
		finish("refused", ref.Code)
		return
	}
	cmd, err := commands.Parse(req.Text)
	if err != nil {
		var ue *commands.UsageError
		if !errors.As(err, &ue) {
			ue = &commands.UsageError{Problem: "I could not read that command.", Usage: "help"}
		}
		b.ephemeral(ctx, log, r, chat.Text(ue.Render(b.slash)))
		finish("usage", ue.Problem)
		return
	}
	name = string(cmd.Name)
	rec.Command = cmd.Text()
	if ref := b.policy.Check(req.UserID, req.ChannelID, cmd.Spec()); ref != nil {
		b.ephemeral(ctx, log, r, chat.Text(ref.Reason))
		log.Info("command refused", "command", name, "reason", ref.Code)
		finish("refused", ref.Code)
		return
	}
	out, err := b.run(ctx, Call{Req: req, Cmd: cmd, Reply: r}, log)
	if err != nil {
		var ue *UserError
		if errors.As(err, &ue) {
			// A refusal the user can act on, not a fault of the bot.
			b.ephemeral(ctx, log, r, chat.Text(fmt.Sprintf("Not done: %s", ue.Msg)))
			finish("refused", ue.Msg)
			return
		}
		log.Error("command failed", "command", name, "err", err)
		b.ephemeral(ctx, log, r, chat.Text(fmt.Sprintf("`%s` failed: %s The details are in the bot's log (request %s).", cmd.Text(), ops.Explain(err), req.ID)))
		// The audit trail is shown by `history`: keep SDK internals (and any
		// URL inside them) out of it.
		finish("failed", ops.Explain(err))
		return
	}
	finish(out.Result, out.Detail)
}

func (b *Bot) run(ctx context.Context, c Call, log *slog.Logger) (out Outcome, err error) {
	defer func() {
		if p := recover(); p != nil {
			log.Error("handler panicked", "command", c.Cmd.Name, "panic", p)
			err = fmt.Errorf("handler %s panicked: %v", c.Cmd.Name, p)
		}
	}()
	return b.handlers[c.Cmd.Name](ctx, c)
}

func (b *Bot) ephemeral(ctx context.Context, log *slog.Logger, r Replier, m chat.Message) {
	if err := r.Ephemeral(ctx, m); err != nil {
		log.Error("reply failed", "err", err)
	}
}
