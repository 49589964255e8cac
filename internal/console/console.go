// Package console is a local chat shell, in the spirit of Hubot's shell
// adapter: type slash commands as a chosen Slack user in a chosen channel,
// switch users to play the second person (in the sandbox, or on a bbolt
// file of its own: see Identity), and read the bot's replies. It drives
// the same bot.Handle as Slack does, with "console" as the source.
package console

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/circlebot/circlebot/internal/bot"
	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/progress"
	"github.com/circlebot/circlebot/internal/store"
)

type Console struct {
	Bot     *bot.Bot
	Roles   config.Roles
	In      io.Reader
	Out     io.Writer
	User    string
	Channel string
	// AllowAs lets /as switch users. Set it only where nobody else's
	// decisions are at stake (see Identity); otherwise the console is
	// User alone and /as is refused.
	AllowAs bool
	// Audit, when set, records a refused /as: an attempt to act as
	// somebody else belongs in the audit trail.
	Audit bot.Auditor

	mu  sync.Mutex // serialises output from background progress
	seq atomic.Int64
}

// Run reads lines until EOF, /quit, or ctx ends.
func (c *Console) Run(ctx context.Context) error {
	c.printf("%s", c.banner())
	sc := bufio.NewScanner(c.In)
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	for {
		c.printf("\n%s in #%s> ", c.User, c.Channel)
		lines := make(chan bool, 1)
		go func() { lines <- sc.Scan() }()
		select {
		case <-ctx.Done():
			c.printf("\n")
			return nil
		case ok := <-lines:
			if !ok {
				c.printf("\n")
				return sc.Err()
			}
		}
		if quit := c.line(ctx, strings.TrimSpace(sc.Text())); quit {
			return nil
		}
	}
}

func (c *Console) line(ctx context.Context, line string) (quit bool) {
	slash := c.Bot.SlashCommand()
	fields := strings.Fields(line)
	switch {
	case line == "":
		return false
	case fields[0] == "/quit" || fields[0] == "/exit":
		return true
	case fields[0] == "/as":
		if !c.AllowAs {
			c.refuseAs(ctx, line)
			return false
		}
		if len(fields) != 2 {
			c.printf("usage: /as <slack-user-id>   e.g. /as %s\n", c.someone())
			return false
		}
		c.User = strings.ToUpper(fields[1])
		c.printf("you are now %s (%s)\n", c.User, c.rolesOf(c.User))
		return false
	case fields[0] == "/in":
		if len(fields) != 2 {
			c.printf("usage: /in <slack-channel-id>\n")
			return false
		}
		c.Channel = strings.ToUpper(fields[1])
		c.printf("you are now in #%s\n", c.Channel)
		return false
	case fields[0] == "/whoami":
		c.printf("%s (%s) in #%s\n", c.User, c.rolesOf(c.User), c.Channel)
		return false
	case fields[0] == "/users":
		c.printf("%s", c.userList())
		return false
	case fields[0] == "/help":
		c.printf("%s", c.banner())
		return false
	case strings.HasPrefix(fields[0], "/") && fields[0] != slash:
		c.printf("unknown console command %s; bot commands start with %s (try %s help), console commands are /as /in /whoami /users /help /quit\n", fields[0], slash, slash)
		return false
	}
	text := strings.TrimSpace(strings.TrimPrefix(line, slash))
	n := c.seq.Add(1)
	req := chat.Request{
		ID:         "console-" + strconv.FormatInt(n, 10),
		Source:     Source,
		UserID:     c.User,
		ChannelID:  c.Channel,
		Command:    slash,
		Text:       text,
		ReceivedAt: time.Now(),
	}
	c.Bot.Handle(ctx, req, &replier{c: c, user: c.User, channel: c.Channel})
	return false
}

// refuseAs answers /as where the console is one person, changes
// nothing, and records the attempt.
func (c *Console) refuseAs(ctx context.Context, line string) {
	c.printf("/as is off: this console works on the state the bot's replicas share (store.backend dynamodb) and acts as %s (console.user) only, so nobody can approve as somebody else here. The second person approves in Slack, as themselves.\n", c.User)
	if c.Audit == nil {
		return
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	err := c.Audit.Audit(actx, store.AuditRecord{At: time.Now(), UserID: c.User, Channel: c.Channel, Source: Source,
		Command: line, Outcome: "refused", Detail: "the console acts as console.user only on a shared store"})
	if err != nil {
		c.printf("(the refusal could not be recorded in the audit trail: %v)\n", err)
	}
}

// Source is what the console's requests carry as their source, and so
// what the audit trail and history show for them.
const Source = "console"

func (c *Console) banner() string {
	slash := c.Bot.SlashCommand()
	as := "/as <user-id>     act as another Slack user (e.g. the second person who approves)"
	if !c.AllowAs {
		as = "/as              off: you are " + c.User + " (console.user) on the shared state; a second person approves in Slack"
	}
	return fmt.Sprintf(`circlebot console — the bot as Slack would run it, without Slack.
Type bot commands as in Slack, e.g. "%[1]s help" or "%[1]s status".
Console commands:
  %[6]s
  /in <channel-id>  move to another channel
  /whoami, /users   who you are; which users have which roles
  /quit             leave (Ctrl-D works too)
You are %[2]s (%[3]s) in #%[4]s.
%[5]s`, slash, c.User, c.rolesOf(c.User), c.Channel, c.userList(), as)
}

func (c *Console) rolesOf(user string) string {
	var r []string
	if slices.Contains(c.Roles.Viewers, user) || len(c.Roles.Viewers) == 0 {
		r = append(r, "viewer")
	}
	if slices.Contains(c.Roles.Operators, user) {
		r = append(r, "operator")
	}
	if slices.Contains(c.Roles.Approvers, user) {
		r = append(r, "approver")
	}
	if len(r) == 0 {
		return "no role"
	}
	return strings.Join(r, ", ")
}

func (c *Console) userList() string {
	seen := map[string]bool{}
	var b strings.Builder
	b.WriteString("Users in the config:\n")
	for _, u := range slices.Concat(c.Roles.Operators, c.Roles.Approvers, c.Roles.Viewers) {
		if !seen[u] {
			seen[u] = true
			fmt.Fprintf(&b, "  %-12s %s\n", u, c.rolesOf(u))
		}
	}
	if len(seen) == 0 {
		b.WriteString("  (none: add Slack user IDs under roles: in the config)\n")
	}
	return b.String()
}

func (c *Console) someone() string {
	for _, u := range slices.Concat(c.Roles.Approvers, c.Roles.Operators) {
		if u != c.User {
			return u
		}
	}
	return "U0123456"
}

func (c *Console) printf(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fmt.Fprintf(c.Out, format, args...)
}

// Poster posts into channel as the bot, for work that was not started by
// a console line (backups resumed at start-up).
func (c *Console) Poster(channel string) progress.Poster {
	return &replier{c: c, user: "scheduler", channel: channel}
}

// replier prints what Slack would show, marked by who would see it.
type replier struct {
	c             *Console
	user, channel string
}

// In speaks in another channel for the same user.
func (r *replier) In(channel string) chat.Speaker {
	return &replier{c: r.c, user: r.user, channel: channel}
}

func (r *replier) Ephemeral(_ context.Context, m chat.Message) error {
	r.c.printf("\n[only visible to %s]\n%s\n", r.user, indent(chat.PlainText(m)))
	return nil
}

func (r *replier) EphemeralTo(_ context.Context, user string, m chat.Message) error {
	r.c.printf("\n[only visible to %s]\n%s\n", user, indent(chat.PlainText(m)))
	return nil
}

func (r *replier) UploadFile(_ context.Context, parent chat.Ref, filename, title string, data []byte) error {
	path := filepath.Join(os.TempDir(), filename)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return err
	}
	r.c.printf("\n[#%s, thread of %s: file %s, %d bytes — %s; saved to %s]\n", parent.Channel, parent.TS, filename, len(data), title, path)
	return nil
}

func (r *replier) Post(_ context.Context, m chat.Message) (chat.Ref, error) {
	ts := fmt.Sprintf("%d.%06d", time.Now().Unix(), r.c.seq.Add(1))
	r.c.printf("\n[#%s, message %s]\n%s\n", r.channel, ts, indent(chat.PlainText(m)))
	return chat.Ref{Channel: r.channel, TS: ts}, nil
}

func (r *replier) Update(_ context.Context, ref chat.Ref, m chat.Message) error {
	r.c.printf("\n[#%s, message %s updated]\n%s\n", ref.Channel, ref.TS, indent(chat.PlainText(m)))
	return nil
}

func (r *replier) PostThread(_ context.Context, parent chat.Ref, m chat.Message) (chat.Ref, error) {
	ts := fmt.Sprintf("%d.%06d", time.Now().Unix(), r.c.seq.Add(1))
	r.c.printf("\n[#%s, thread of %s]\n%s\n", parent.Channel, parent.TS, indent(chat.PlainText(m)))
	return chat.Ref{Channel: parent.Channel, TS: ts}, nil
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(s, "\n", "\n  ")
}
