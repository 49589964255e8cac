// Package chat owns the transport-neutral shape of a request from a person
// and of a message back: what Slack (HTTP or Socket Mode) and the console
// both turn into and out of.
package chat

import (
	"context"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/slack-go/slack"
)

// Request is one slash command or button click, after the transport has
// verified where it came from.
type Request struct {
	ID          string // transport's unique ID for dedupe and logs (trigger_id, or a console counter)
	Source      string // "slash", "button", "console", "scheduler"
	TeamID      string
	UserID      string
	UserName    string
	ChannelID   string
	Command     string // the slash command, e.g. "/circleci"
	Text        string // what followed the command, or a button's command text
	ResponseURL string
	MessageTS   string // for a button: the message it sits on
	ReceivedAt  time.Time
}

// Message is what the bot says. Text is the notification / fallback text;
// Blocks carry the layout.
type Message struct {
	Text   string
	Blocks []slack.Block
}

// Ref names a posted message so it can be updated in place.
type Ref struct {
	Channel string
	TS      string
}

// Slack's hard limits (design.md): a section's text holds 3,000 characters,
// a message 50 blocks.
const (
	MaxSectionText = 3000
	MaxBlocks      = 50
	// MaxMessageText is what the text of one message's blocks may add up
	// to. Slack documents no such total, but rejects a message whose
	// blocks carry much more (msg_blocks_too_long, reported from about
	// 13,000 characters), whatever the block count allows.
	MaxMessageText = 12000
)

// Speaker is how the bot speaks in one channel: what each transport's
// replier does (bot.Replier is the same set of methods).
type Speaker interface {
	// Ephemeral is seen by the person the replier answers only.
	Ephemeral(ctx context.Context, m Message) error
	// EphemeralTo is seen by user only, in the replier's channel.
	EphemeralTo(ctx context.Context, user string, m Message) error
	Post(ctx context.Context, m Message) (Ref, error)
	Update(ctx context.Context, ref Ref, m Message) error
	PostThread(ctx context.Context, parent Ref, m Message) (Ref, error)
}

// Relay is a replier that can also speak in another channel, as the bot,
// for the same person: an approval given in approvals.channel runs and
// reports in the channel the request was made in.
type Relay interface {
	In(channel string) Speaker
}

// Section is a mrkdwn section; text beyond Slack's limit is split over
// several sections at line boundaries, never cut mid-line unless one line
// alone is too long.
func Section(md string) []slack.Block {
	var out []slack.Block
	for _, part := range splitText(md, MaxSectionText) {
		out = append(out, slack.NewSectionBlock(slack.NewTextBlockObject(slack.MarkdownType, part, false, false), nil, nil))
	}
	return out
}

// Fields is a section of up to 10 two-column mrkdwn fields (Slack's limit).
func Fields(fields ...string) slack.Block {
	objs := make([]*slack.TextBlockObject, 0, len(fields))
	for _, f := range fields[:min(len(fields), 10)] {
		objs = append(objs, slack.NewTextBlockObject(slack.MarkdownType, truncate(f, 2000), false, false))
	}
	return slack.NewSectionBlock(nil, objs, nil)
}

func Header(text string) slack.Block {
	return slack.NewHeaderBlock(slack.NewTextBlockObject(slack.PlainTextType, truncate(text, 150), false, false))
}

func Context(md string) slack.Block {
	return slack.NewContextBlock("", slack.NewTextBlockObject(slack.MarkdownType, truncate(md, 2000), false, false))
}

func Divider() slack.Block { return slack.NewDividerBlock() }

// Text builds a plain message of one or more sections.
func Text(md string) Message {
	return Message{Text: truncate(md, 3000), Blocks: Section(md)}
}

// Fit keeps a message within Slack's block limit, saying what was left out
// rather than letting Slack reject the whole message.
func (m Message) Fit() Message {
	if len(m.Blocks) <= MaxBlocks {
		return m
	}
	kept := append([]slack.Block{}, m.Blocks[:MaxBlocks-1]...)
	kept = append(kept, Context("… output cut to fit one Slack message."))
	m.Blocks = kept
	return m
}

// Pages splits md at line boundaries into pieces of at most limit bytes
// (a line longer than that is cut), for text that takes several messages.
func Pages(md string, limit int) []string { return splitText(md, limit) }

func splitText(s string, limit int) []string {
	if len(s) <= limit {
		return []string{s}
	}
	var parts []string
	var cur strings.Builder
	for _, line := range strings.SplitAfter(s, "\n") {
		for len(line) > limit {
			cut := limit
			for cut > 0 && !utf8.RuneStart(line[cut]) {
				cut--
			}
			if cur.Len() > 0 {
				parts = append(parts, cur.String())
				cur.Reset()
			}
			parts = append(parts, line[:cut])
			line = line[cut:]
		}
		if cur.Len()+len(line) > limit {
			parts = append(parts, cur.String())
			cur.Reset()
		}
		cur.WriteString(line)
	}
	if cur.Len() > 0 {
		parts = append(parts, cur.String())
	}
	return parts
}

// Truncate cuts s to at most limit bytes at a rune boundary, marking the cut.
func Truncate(s string, limit int) string { return truncate(s, limit) }

func truncate(s string, limit int) string {
	if len(s) <= limit {
		return s
	}
	cut := limit - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
