package progress

import (
	"math"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/slack-go/slack"

	"github.com/circlebot/circlebot/internal/chat"
)

var t0 = time.Date(2026, 11, 28, 3, 0, 0, 0, time.UTC)

func TestBar(t *testing.T) {
	for _, tc := range []struct {
		pct  float64
		want string
	}{
		{0, "░░░░░░░░░░ 0%"},
		{5, "░░░░░░░░░░ 5%"},
		{9.99, "░░░░░░░░░░ 9%"},
		{10, "▓░░░░░░░░░ 10%"},
		{30, "▓▓▓░░░░░░░ 30%"},
		{52, "▓▓▓▓▓░░░░░ 52%"},
		// Not done until it is: 99.6 must not read as 100.
		{99.6, "▓▓▓▓▓▓▓▓▓░ 99%"},
		{100, "▓▓▓▓▓▓▓▓▓▓ 100%"},
		{150, "▓▓▓▓▓▓▓▓▓▓ 100%"},
		{-3, "░░░░░░░░░░ 0%"},
		{math.NaN(), "░░░░░░░░░░ 0%"},
		{math.Inf(1), "▓▓▓▓▓▓▓▓▓▓ 100%"},
	} {
		if got := bar(tc.pct); got != tc.want {
			t.Errorf("bar(%v) = %q, want %q", tc.pct, got, tc.want)
		}
	}
}

func TestFmtDuration(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{0, "<1s"},
		{999 * time.Millisecond, "<1s"},
		{time.Second, "1s"},
		{12*time.Second + 900*time.Millisecond, "12s"},
		{65 * time.Second, "1m05s"},
		{59*time.Minute + 59*time.Second, "59m59s"},
		{time.Hour + 2*time.Minute + 3*time.Second, "1h02m"},
		{26 * time.Hour, "26h00m"},
	} {
		if got := fmtDuration(tc.d); got != tc.want {
			t.Errorf("fmtDuration(%s) = %q, want %q", tc.d, got, tc.want)
		}
	}
}

func TestStepLine(t *testing.T) {
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	now := at(100)
	for _, tc := range []struct {
		name  string
		step  Step
		final bool
		want  string
	}{
		{"pending", Step{Name: "Record restore point"}, false,
			":white_large_square: Record restore point"},
		{"pending when over", Step{Name: "Record restore point"}, true,
			":white_large_square: Record restore point — not run"},
		{"running with bar and detail", Step{Name: "Wait for completion", State: StepRunning, Pct: 30, HasPct: true, Detail: "1 of 3", Started: now},
			false, ":hourglass_flowing_sand: Wait for completion — ▓▓▓░░░░░░░ 30% (1 of 3)"},
		{"running with bar only", Step{Name: "Wait", State: StepRunning, Pct: 0, HasPct: true, Started: now},
			false, ":hourglass_flowing_sand: Wait — ░░░░░░░░░░ 0%"},
		{"running with detail", Step{Name: "Stop instance", State: StepRunning, Detail: "stopping i-0abc", Started: now},
			false, ":hourglass_flowing_sand: Stop instance — stopping i-0abc"},
		{"running for a while", Step{Name: "Wait", State: StepRunning, Pct: 52, HasPct: true, Detail: "2 of 3 snapshots completed", Started: at(-150)},
			false, ":hourglass_flowing_sand: Wait — ▓▓▓▓▓░░░░░ 52% (2 of 3 snapshots completed) · 4m10s"},
		{"running bare", Step{Name: "Wait", State: StepRunning}, false,
			":hourglass_flowing_sand: Wait"},
		{"done", Step{Name: "Snapshot volumes", State: StepDone, Started: at(0), Finished: at(12)}, false,
			":white_check_mark: Snapshot volumes — 12s"},
		{"done with detail", Step{Name: "Snapshot volumes", State: StepDone, Detail: "3 snapshots", Started: at(0), Finished: at(75)}, true,
			":white_check_mark: Snapshot volumes — 1m15s · 3 snapshots"},
		{"failed", Step{Name: "Upload", State: StepFailed, Detail: "AccessDenied", Started: at(0), Finished: at(3)}, true,
			":x: Upload — AccessDenied · 3s"},
		{"failed without text", Step{Name: "Upload", State: StepFailed}, true,
			":x: Upload — failed"},
		{"skipped", Step{Name: "Stop old primary", State: StepSkipped, Detail: "already stopped"}, false,
			":heavy_minus_sign: Stop old primary — skipped: already stopped"},
		{"skipped without reason", Step{Name: "Stop old primary", State: StepSkipped}, false,
			":heavy_minus_sign: Stop old primary — skipped"},
		{"multi-line detail stays on its line", Step{Name: "Stop", State: StepRunning, Detail: "a\nb\r\n c"}, false,
			":hourglass_flowing_sand: Stop — a b c"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := stepLine(tc.step, tc.final, now); got != tc.want {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestStepLineClipsLongDetail(t *testing.T) {
	got := stepLine(Step{Name: "Upload", State: StepDone, Detail: strings.Repeat("é", 1000)}, false, t0)
	if len(got) > 100+maxDetail || !utf8.ValidString(got) || !strings.HasSuffix(got, "…") {
		t.Fatalf("detail not clipped cleanly: %d bytes, valid=%v", len(got), utf8.ValidString(got))
	}
}

func liveSnapshot() Snapshot {
	return Snapshot{
		OpID: "op-20261128-031500-7f3a", Title: "EBS backup of i-0abc (circleci_services)", Requester: "U012AB3CD",
		Started: t0, Now: t0.Add(3*time.Minute + 12*time.Second),
		Steps: []Step{
			{Name: "Snapshot volumes", State: StepDone, Started: t0, Finished: t0.Add(12 * time.Second)},
			{Name: "Wait for completion", State: StepRunning, Pct: 30, HasPct: true, Detail: "1 of 3", Started: t0.Add(12 * time.Second)},
			{Name: "Record restore point"},
		},
	}
}

func TestRenderLive(t *testing.T) {
	m := Render(liveSnapshot())
	got := chat.PlainText(m)
	want := strings.Join([]string{
		":hourglass_flowing_sand: *EBS backup of i-0abc (circleci_services)*",
		"  `op-20261128-031500-7f3a` · requested by @U012AB3CD · elapsed 3m12s",
		":white_check_mark: Snapshot volumes — 12s",
		":hourglass_flowing_sand: Wait for completion — ▓▓▓░░░░░░░ 30% (1 of 3) · 3m00s",
		":white_large_square: Record restore point",
	}, "\n")
	if got != want {
		t.Errorf("live message:\n%s\nwant:\n%s", got, want)
	}
	if want := "EBS backup of i-0abc (circleci_services): running — step 2/3 Wait for completion 30%"; m.Text != want {
		t.Errorf("Text = %q, want %q", m.Text, want)
	}
	if !strings.Contains(sectionTexts(m), "<@U012AB3CD>") {
		t.Errorf("requester is not mentioned: %s", sectionTexts(m))
	}
}

func TestRenderFinal(t *testing.T) {
	for _, tc := range []struct {
		outcome Outcome
		emoji   string
	}{
		{Succeeded, ":white_check_mark:"},
		{Failed, ":x:"},
		{Cancelled, ":no_entry_sign:"},
	} {
		t.Run(tc.outcome.String(), func(t *testing.T) {
			st := liveSnapshot()
			st.Requester = "scheduler"
			st.Steps[1] = Step{Name: "Wait for completion", State: StepDone, Started: t0.Add(12 * time.Second), Finished: t0.Add(4 * time.Minute)}
			st.Outcome, st.Summary = tc.outcome, "3 snapshots: snap-1, snap-2, snap-3"
			st.Finished = t0.Add(4*time.Minute + 12*time.Second)
			st.Now = st.Finished.Add(time.Hour) // a late re-render must show the same times
			m := Render(st)
			got := chat.PlainText(m)
			for _, want := range []string{
				tc.emoji + " *EBS backup of i-0abc (circleci_services)* — " + tc.outcome.String() + " in 4m12s",
				"`op-20261128-031500-7f3a` · requested by scheduler · took 4m12s",
				":white_check_mark: Snapshot volumes — 12s",
				":white_check_mark: Wait for completion — 3m48s",
				":white_large_square: Record restore point — not run",
				"3 snapshots: snap-1, snap-2, snap-3",
				"*Total:* 4m12s · *Outcome:* " + tc.outcome.String() + " · `op-20261128-031500-7f3a`",
			} {
				if !strings.Contains(got, want) {
					t.Errorf("final message lacks %q:\n%s", want, got)
				}
			}
			if want := "EBS backup of i-0abc (circleci_services): " + tc.outcome.String() + " in 4m12s (op-20261128-031500-7f3a)"; m.Text != want {
				t.Errorf("Text = %q, want %q", m.Text, want)
			}
		})
	}
}

// However large the input, the message must be one Slack accepts.
func TestRenderStaysWithinLimits(t *testing.T) {
	st := Snapshot{OpID: "op-1", Title: strings.Repeat("T", 5000), Requester: "U1", Started: t0, Now: t0, Outcome: Failed, Finished: t0,
		Summary: strings.Repeat("summary line\n", 2000)}
	for i := range 200 {
		st.Steps = append(st.Steps, Step{Name: strings.Repeat("n", 400), State: StepState(i % 5), Detail: strings.Repeat("d", 2000), Pct: 50, HasPct: true})
	}
	m := Render(st)
	if len(m.Blocks) > chat.MaxBlocks {
		t.Fatalf("%d blocks", len(m.Blocks))
	}
	for i, b := range m.Blocks {
		if s, ok := b.(*slack.SectionBlock); ok && s.Text != nil && utf8.RuneCountInString(s.Text.Text) > chat.MaxSectionText {
			t.Fatalf("block %d: section of %d characters", i, utf8.RuneCountInString(s.Text.Text))
		}
	}
	if len(m.Text) > maxTextOutput || strings.Contains(m.Text, "\n") {
		t.Fatalf("Text is not one short line: %q", m.Text)
	}
}

func TestRequester(t *testing.T) {
	for in, want := range map[string]string{
		"U012AB3CD": "<@U012AB3CD>",
		"W0ENTERPR": "<@W0ENTERPR>",
		"scheduler": "scheduler",
		"Unknown":   "Unknown",
		"":          "",
	} {
		if got := requester(in); got != want {
			t.Errorf("requester(%q) = %q, want %q", in, got, want)
		}
	}
}

func sectionTexts(m chat.Message) string {
	var b strings.Builder
	for _, blk := range m.Blocks {
		switch v := blk.(type) {
		case *slack.SectionBlock:
			if v.Text != nil {
				b.WriteString(v.Text.Text + "\n")
			}
		case *slack.ContextBlock:
			for _, e := range v.ContextElements.Elements {
				if t, ok := e.(*slack.TextBlockObject); ok {
					b.WriteString(t.Text + "\n")
				}
			}
		}
	}
	return b.String()
}

// A snapshot built by hand without times must not claim a duration.
func TestRenderWithoutTimes(t *testing.T) {
	m := Render(Snapshot{Title: "Restore drill", Outcome: Succeeded, Steps: []Step{{Name: "Restore", State: StepSkipped, Detail: "dry run"}}})
	got := chat.PlainText(m)
	for _, unwanted := range []string{"<1s", "Total", "took", "elapsed", "``"} {
		if strings.Contains(got, unwanted) || strings.Contains(m.Text, unwanted) {
			t.Errorf("message shows %q:\n%s\n%s", unwanted, got, m.Text)
		}
	}
	if m.Text != "Restore drill: succeeded" {
		t.Errorf("Text = %q", m.Text)
	}
}
