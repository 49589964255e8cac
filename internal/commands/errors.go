package commands

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// UsageError is a user-facing refusal of malformed input, not a system
// fault: the caller shows it to the user and logs nothing alarming. Callers
// find it with errors.As.
type UsageError struct {
	Problem string // what was wrong, one sentence, user input quoted safely
	Usage   string // the right form(s) without the slash command, one per line
}

// Error renders the error with DefaultSlashCommand.
// Error is the plain form for logs; Render is the Slack form.
func (e *UsageError) Error() string { return e.render(DefaultSlashCommand) }

// Render is the text for the user: the problem, then the usage with the
// configured slash command, each form in a code span.
func (e *UsageError) Render(slashCommand string) string {
	return EscapeMrkdwn(e.render(slashCommand))
}

func (e *UsageError) render(slashCommand string) string {
	slash := slashPrefix(slashCommand)
	forms := strings.Split(e.Usage, "\n")
	var b strings.Builder
	b.WriteString(e.Problem)
	if len(forms) == 1 {
		b.WriteString("\nUsage: `" + slash + " " + forms[0] + "`")
		return b.String()
	}
	b.WriteString("\nUsage:")
	for _, f := range forms {
		b.WriteString("\n`" + slash + " " + f + "`")
	}
	return b.String()
}

// slashPrefix tolerates an unset or slash-less configured command name.
func slashPrefix(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return DefaultSlashCommand
	}
	if !strings.HasPrefix(s, "/") {
		return "/" + s
	}
	return s
}

// problemf builds a UsageError for command n. Every piece of user input in
// args must already have gone through quote.
func problemf(n Name, format string, args ...any) *UsageError {
	return &UsageError{Problem: fmt.Sprintf(format, args...), Usage: specByName[n].Usage}
}

const maxQuotedRunes = 40

// quote makes user input safe to show inside a Slack message: bounded in
// length so an error stays short, and without the characters that would
// end a code span, open a Slack link or mention, or reorder the text.
// Angle brackets become look-alikes rather than vanish, so that an
// unmatched "<" the user typed is still visible as the problem.
func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	n := 0
	for _, r := range strings.ToValidUTF8(s, string(utf8.RuneError)) {
		switch {
		case r == '`' || unicode.IsControl(r) || unicode.Is(unicode.Cf, r):
			continue
		case r == '<':
			r = '‹'
		case r == '>':
			r = '›'
		}
		if n == maxQuotedRunes {
			b.WriteString("…")
			break
		}
		b.WriteRune(r)
		n++
	}
	b.WriteByte('"')
	return b.String()
}
