package commands

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func FuzzParse(f *testing.F) {
	for _, tc := range validCases {
		f.Add(tc.in)
	}
	for _, tc := range invalidCases {
		f.Add(tc.in)
	}
	for _, s := range Specs() {
		f.Add(s.Usage)
		f.Add("help " + string(s.Name) + " --help")
	}
	for _, s := range []string{
		"restore <s3://b/k|<s3://c/d>>", "&amp;amp;lt;", "<<<>>>", "restore s3://bkt/\u00a0k",
		"failover --to=--to", "—", "–––", "\u2212\u2212dry-run", "restore s3://bkt/k\u0085x",
		"restore s3://bkt/é&#96;", "history +5", "history ٣", "restore snap-０１２３abcd",
		"backup status s3://bkt/" + strings.Repeat("é", 600),
		"resize M5.2XLARGE", "resize m5.ılarge", "resize -m5.xlarge", "resize m5.xlarge=1", "reboot --dry-run=yes",
	} {
		f.Add(s)
	}

	f.Fuzz(func(t *testing.T, in string) {
		c, err := Parse(in)
		if err != nil {
			var ue *UsageError
			if !errors.As(err, &ue) {
				t.Fatalf("Parse(%q): error %T is not a *UsageError: %v", in, err, err)
			}
			if ue.Problem == "" || ue.Usage == "" {
				t.Fatalf("Parse(%q): empty Problem or Usage: %#v", in, ue)
			}
			if len(ue.Problem) > 500 {
				t.Fatalf("Parse(%q): Problem is %d bytes: %q", in, len(ue.Problem), ue.Problem)
			}
			if !utf8.ValidString(ue.Problem) {
				t.Fatalf("Parse(%q): Problem is not valid UTF-8: %q", in, ue.Problem)
			}
			if c != (Command{}) {
				t.Fatalf("Parse(%q) returned %+v with an error", in, c)
			}
			return
		}
		if _, ok := SpecOf(c.Name); !ok {
			t.Fatalf("Parse(%q) returned unknown command %q", in, c.Name)
		}
		if c.DryRun && c.Spec().Class != ClassDestructive {
			t.Fatalf("Parse(%q): --dry-run accepted on %s", in, c.Name)
		}
		text := c.Text()
		if strings.ContainsAny(text, "`<>&\n") {
			t.Fatalf("Parse(%q).Text() = %q: unsafe in a Slack code span", in, text)
		}
		back, err := Parse(text)
		if err != nil {
			t.Fatalf("Parse(%q).Text() = %q does not parse: %v", in, text, err)
		}
		if back != c {
			t.Fatalf("round trip of %q via %q:\n got %+v\nwant %+v", in, text, back, c)
		}
	})
}
