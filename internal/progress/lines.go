package progress

import (
	"fmt"
	"strings"

	"github.com/circlebot/circlebot/internal/chat"
)

// Bounds on thread output. An operation can produce output faster than
// Slack accepts it (one post a second), and Slack being down must not make
// the bot hold an unbounded backlog: past keepHead+keepTail pending lines
// the middle ones are dropped and counted. The first lines usually say what
// started and the last ones how it ended, which is what a reader needs.
const (
	keepHead     = 100
	keepTail     = 100
	maxLineBytes = 1000
	// maxThreadBytes keeps one thread message to a few sections, far below
	// the 50-block limit even after chat.Section splits at line boundaries.
	maxThreadBytes = 4 * chat.MaxSectionText
)

// lineBuf holds the thread lines not yet taken for posting.
type lineBuf struct {
	head    []string
	tail    []string // a ring once full; start is its oldest entry
	start   int
	skipped int
}

func (b *lineBuf) add(line string) {
	switch {
	case len(b.head) < keepHead:
		b.head = append(b.head, line)
	case len(b.tail) < keepTail:
		b.tail = append(b.tail, line)
	default:
		b.tail[b.start] = line
		b.start = (b.start + 1) % keepTail
		b.skipped++
	}
}

func (b *lineBuf) empty() bool { return len(b.head) == 0 }

// count is how many lines were added since the last take, skipped included.
func (b *lineBuf) count() int { return len(b.head) + len(b.tail) + b.skipped }

// take returns the pending lines in order, with a note where lines were
// dropped, and empties the buffer.
func (b *lineBuf) take() []string {
	out := make([]string, 0, len(b.head)+len(b.tail)+1)
	out = append(out, b.head...)
	if b.skipped > 0 {
		out = append(out, fmt.Sprintf("_… %d lines skipped to stay within Slack's limits …_", b.skipped))
	}
	out = append(out, b.tail[b.start:]...)
	out = append(out, b.tail[:b.start]...)
	*b = lineBuf{}
	return out
}

// threadMessages packs lines into as few thread messages as fit
// maxThreadBytes each, never splitting a line.
func threadMessages(opID string, lines []string) []chat.Message {
	var out []chat.Message
	var cur strings.Builder
	flush := func() {
		if cur.Len() == 0 {
			return
		}
		text := cur.String()
		first, _, _ := strings.Cut(text, "\n")
		fb := clip(first, 150)
		if opID != "" {
			fb = opID + ": " + fb
		}
		out = append(out, chat.Message{Text: fb, Blocks: chat.Section(text)}.Fit())
		cur.Reset()
	}
	for _, l := range lines {
		if cur.Len() > 0 && cur.Len()+1+len(l) > maxThreadBytes {
			flush()
		}
		if cur.Len() > 0 {
			cur.WriteByte('\n')
		}
		cur.WriteString(l)
	}
	flush()
	return out
}
