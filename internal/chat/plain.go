package chat

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/slack-go/slack"
)

// PlainText renders a message for a terminal (the console transport) and
// for logs: the layout of the blocks as lines, Slack's <@U…>/<#C…>/<url|label>
// markup turned into readable text.
func PlainText(m Message) string {
	if len(m.Blocks) == 0 {
		return unmark(m.Text)
	}
	var b strings.Builder
	for _, blk := range m.Blocks {
		switch v := blk.(type) {
		case *slack.HeaderBlock:
			fmt.Fprintf(&b, "== %s ==\n", v.Text.Text)
		case *slack.SectionBlock:
			if v.Text != nil {
				b.WriteString(unmark(v.Text.Text))
				b.WriteByte('\n')
			}
			for i, f := range v.Fields {
				sep := "    "
				if i%2 == 1 || i == len(v.Fields)-1 {
					sep = "\n"
				}
				b.WriteString(strings.ReplaceAll(unmark(f.Text), "\n", " "))
				b.WriteString(sep)
			}
		case *slack.ContextBlock:
			for _, e := range v.ContextElements.Elements {
				if t, ok := e.(*slack.TextBlockObject); ok {
					fmt.Fprintf(&b, "  %s\n", unmark(t.Text))
				}
			}
		case *slack.DividerBlock:
			b.WriteString("----\n")
		case *slack.ActionBlock:
			for _, e := range v.Elements.ElementSet {
				if btn, ok := e.(*slack.ButtonBlockElement); ok {
					fmt.Fprintf(&b, "[ %s ] ", btn.Text.Text)
				}
			}
			b.WriteByte('\n')
		}
	}
	return strings.TrimRight(b.String(), "\n")
}

var slackMarkup = regexp.MustCompile(`<([@#!]?)([^>|]+)(?:\|([^>]*))?>`)

func unmark(s string) string {
	s = slackMarkup.ReplaceAllStringFunc(s, func(m string) string {
		p := slackMarkup.FindStringSubmatch(m)
		switch {
		case p[3] != "" && p[1] == "":
			return p[3] + " (" + p[2] + ")"
		case p[3] != "":
			return p[1] + p[3]
		default:
			return p[1] + p[2]
		}
	})
	return strings.NewReplacer("&lt;", "<", "&gt;", ">", "&amp;", "&").Replace(s)
}
