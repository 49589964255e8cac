package commands

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// slackUnescape undoes the only three escapes Slack applies to message
// text. One pass, so "&amp;lt;" becomes "&lt;", not "<".
var slackUnescape = strings.NewReplacer("&amp;", "&", "&lt;", "<", "&gt;", ">")

// tokens turns raw text, as Slack or a console delivers it, into words.
// Unescaping comes before unwrapping so that a "<snap-…>" a user typed
// (which Slack sends as "&lt;snap-…&gt;") is unwrapped like a Slack link.
func tokens(text string) []string {
	text = strings.Map(dropInvisible, text)
	text = slackUnescape.Replace(text)
	text = unwrapLinks(text)
	toks := strings.Fields(text)
	// Console users and people pasting from docs type the slash command
	// too; whatever it is called, it is not part of the grammar.
	if len(toks) > 0 && strings.HasPrefix(toks[0], "/") {
		toks = toks[1:]
	}
	return toks
}

// dropInvisible removes format characters (zero-width spaces, joiners,
// byte-order marks, bidi marks) that copy-paste and phone keyboards slip
// in: they are never meaningful in a command, and an ID that contains one
// looks right in an error message but can never match.
func dropInvisible(r rune) rune {
	if unicode.Is(unicode.Cf, r) {
		return -1
	}
	return r
}

// unwrapLinks replaces Slack's "<target>" and "<target|label>" with the
// text the user meant (see linkText). It works on the whole text, not on
// words, because a label may contain spaces. An unmatched bracket is left
// for validation to reject.
func unwrapLinks(s string) string {
	if !strings.Contains(s, "<") {
		return s
	}
	var b strings.Builder
	for {
		end := strings.IndexByte(s, '>')
		if end < 0 {
			break
		}
		start := strings.LastIndexByte(s[:end], '<')
		if start < 0 {
			b.WriteString(s[:end+1])
			s = s[end+1:]
			continue
		}
		b.WriteString(s[:start])
		b.WriteString(linkText(s[start+1 : end]))
		s = s[end+1:]
	}
	b.WriteString(s)
	return b.String()
}

// linkText picks what the user meant from the inside of a Slack link.
// Usually that is the target. But Slack auto-links a bare host name it
// finds inside a word, so "s3://backups.example.com/k" arrives as
// "s3://<http://backups.example.com/k|backups.example.com/k>": when the
// target is only the label with a scheme Slack added, the label is what
// was typed.
func linkText(inner string) string {
	target, label, ok := strings.Cut(inner, "|")
	if ok && label != "" {
		for _, scheme := range []string{"http://", "https://", "mailto:"} {
			if target == scheme+label {
				return label
			}
		}
	}
	return target
}

// isDash reports the characters a keyboard may turn "-" or "--" into:
// Slack and phones make "--" an en or em dash.
func isDash(r rune) bool {
	return r == '-' || (r >= '\u2010' && r <= '\u2015') || r == '\u2212'
}

func isFlag(tok string) bool {
	r, _ := utf8.DecodeRuneInString(tok)
	return isDash(r)
}

// asciiLower lowercases ASCII only. Keywords and AWS IDs are ASCII, and
// Unicode case folding would let look-alikes such as the Kelvin sign
// (U+212A) pass as "k".
func asciiLower(s string) string {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if 'A' <= b[j] && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}
