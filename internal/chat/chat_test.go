package chat

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/slack-go/slack"
)

func TestSectionSplitsWithinSlackLimits(t *testing.T) {
	long := strings.Repeat("line of text é\n", 1000) + strings.Repeat("x", 7000)
	blocks := Section(long)
	var joined strings.Builder
	for _, b := range blocks {
		txt := b.(*slack.SectionBlock).Text.Text
		if len(txt) > MaxSectionText || !utf8.ValidString(txt) {
			t.Fatalf("section of %d bytes (valid utf8: %v)", len(txt), utf8.ValidString(txt))
		}
		joined.WriteString(txt)
	}
	if joined.String() != long {
		t.Fatal("splitting lost or changed text")
	}
}

func TestFitKeepsFiftyBlocksAndSaysSo(t *testing.T) {
	var m Message
	for range 80 {
		m.Blocks = append(m.Blocks, Divider())
	}
	f := m.Fit()
	if len(f.Blocks) != MaxBlocks || !strings.Contains(PlainText(f), "cut to fit") {
		t.Fatalf("%d blocks: %s", len(f.Blocks), PlainText(f))
	}
}

func TestPlainTextReadsSlackMarkup(t *testing.T) {
	got := PlainText(Text("<@U1> in <#C1>: see <https://x.example|the docs> &lt;id&gt;"))
	if got != "@U1 in #C1: see the docs (https://x.example) <id>" {
		t.Fatalf("%q", got)
	}
}

func TestCount(t *testing.T) {
	for n, want := range map[int]string{0: "0", 7: "7", 999: "999", 1000: "1,000", 1300: "1,300", 4100: "4,100", 1234567: "1,234,567", -2500: "-2,500"} {
		if got := Count(n); got != want {
			t.Errorf("Count(%d) = %q, want %q", n, got, want)
		}
	}
}
