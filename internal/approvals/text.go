package approvals

import (
	"fmt"
	"strings"

	"github.com/circlebot/circlebot/internal/chat"
)

// maxLine is the longest line of a list the request message shows; a
// longer one is cut there (the full plan has it whole).
const maxLine = 300

// Render is the whole plan as Slack text: what changes, what is kept,
// what cannot be undone, and the facts it is bound to (long fact lists
// abridged).
func Render(p Plan) string {
	text, _ := summary(p, -1)
	return text
}

// Summary is the plan for one Slack message, in at most budget bytes:
// each list shows its first shown items and says how many there are in
// all ("What changes (1,300; the first 20 shown)"), long lines are cut
// and long fact lists abridged to their count and ends. complete is false
// when anything was left out: the full plan (Full) must then go with the
// message, for the hash covers all of it.
func Summary(p Plan, shown, budget int) (text string, complete bool) {
	for n := shown; ; n /= 2 {
		text, complete = summary(p, n)
		if len(text) <= budget || n == 0 {
			break
		}
	}
	if len(text) > budget {
		text, complete = chat.Truncate(text, budget), false
	}
	return text, complete
}

// summary renders p with at most shown items per list (negative: all,
// uncut).
func summary(p Plan, shown int) (string, bool) {
	var b strings.Builder
	complete := true
	section := func(title string, lines []string) {
		if len(lines) == 0 {
			return
		}
		n := len(lines)
		if shown >= 0 && n > shown {
			n, complete = shown, false
			fmt.Fprintf(&b, "*%s* (%s; the first %s shown)\n", title, chat.Count(len(lines)), chat.Count(n))
		} else {
			b.WriteString("*" + title + "*\n")
		}
		for _, l := range lines[:n] {
			if shown >= 0 && len(l) > maxLine {
				l, complete = chat.Truncate(l, maxLine), false
			}
			b.WriteString("• " + l + "\n")
		}
		if n < len(lines) {
			fmt.Fprintf(&b, "• … and %s more\n", chat.Count(len(lines)-n))
		}
	}
	section("What changes", p.Changes)
	section("What is kept", p.Keeps)
	section("Cannot be undone", p.Undo)
	var facts []string
	for _, k := range p.factKeys() {
		v := abridge(p.Facts[k])
		if v != p.Facts[k] {
			complete = false
		}
		facts = append(facts, k+": `"+v+"`")
	}
	if len(facts) > 0 {
		b.WriteString("*Bound to* " + strings.Join(facts, ", ") + "\n")
	}
	return b.String(), complete
}

// abridge keeps a long fact readable in the request message: a list as
// its count and its ends, any other value cut. The hash still covers every
// item, and the full plan shows them.
func abridge(v string) string {
	items := strings.Split(v, ",")
	switch {
	case len(v) <= 120:
		return v
	case len(items) >= 3:
		return fmt.Sprintf("%s items: %s, …, %s", chat.Count(len(items)), chat.Truncate(items[0], 80), chat.Truncate(items[len(items)-1], 80))
	case len(v) > maxLine:
		return chat.Truncate(v, maxLine)
	}
	return v
}

// factLine is how long one line of a long fact's value may be in Full.
const factLine = 1000

// Full is the whole plan as Slack text, nothing left out: every line of
// every list, and every fact exactly as hashed. A long value is broken
// after its commas over several lines; put back together, the lines are
// the value.
func Full(p Plan) string {
	var b strings.Builder
	section := func(title string, lines []string) {
		if len(lines) == 0 {
			return
		}
		fmt.Fprintf(&b, "*%s* (%s)\n", title, chat.Count(len(lines)))
		for _, l := range lines {
			b.WriteString("• " + l + "\n")
		}
	}
	section("What changes", p.Changes)
	section("What is kept", p.Keeps)
	section("Cannot be undone", p.Undo)
	b.WriteString("*Bound to* (the plan hash covers these facts, exactly as written, and nothing else)\n")
	fmt.Fprintf(&b, "• action: `%s`\n", p.Action)
	for _, k := range p.factKeys() {
		v := p.Facts[k]
		if len(v) <= factLine {
			fmt.Fprintf(&b, "• %s: `%s`\n", k, v)
			continue
		}
		fmt.Fprintf(&b, "• %s (%s items, in order):\n", k, chat.Count(strings.Count(v, ",")+1))
		for _, part := range commaLines(v, factLine) {
			b.WriteString("`" + part + "`\n")
		}
	}
	return b.String()
}

// commaLines breaks v after commas into pieces of about limit bytes;
// concatenated, they are v.
func commaLines(v string, limit int) []string {
	var out []string
	for len(v) > limit {
		cut := strings.LastIndex(v[:limit], ",")
		if cut < 0 {
			cut = strings.Index(v, ",")
			if cut < 0 {
				break
			}
		}
		out = append(out, v[:cut+1])
		v = v[cut+1:]
	}
	return append(out, v)
}

// Document is the whole plan as a plain-text file: the lists, then the
// exact text the plan hash is the SHA-256 of, between two marker lines,
// so that anyone can check the hash (`sed '1,/^-----BEGIN/d;/^-----END/,$d' | sha256sum`).
func Document(p Plan) string {
	var b strings.Builder
	section := func(title string, lines []string) {
		if len(lines) == 0 {
			return
		}
		fmt.Fprintf(&b, "%s (%s)\n", title, chat.Count(len(lines)))
		for _, l := range lines {
			b.WriteString("- " + strings.ReplaceAll(l, "`", "") + "\n")
		}
		b.WriteString("\n")
	}
	section("What changes", p.Changes)
	section("What is kept", p.Keeps)
	section("Cannot be undone", p.Undo)
	fmt.Fprintf(&b, "Bound to: the plan hash %s is the SHA-256 of the lines between the markers.\n", p.Hash())
	b.WriteString("-----BEGIN PLAN-----\n")
	b.WriteString(p.Canonical())
	b.WriteString("-----END PLAN-----\n")
	return b.String()
}
