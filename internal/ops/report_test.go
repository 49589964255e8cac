package ops

import (
	"testing"
	"time"

	"github.com/robfig/cron/v3"
)

// The report's numbers for a known week: daily scheduled backups at
// 02:00 with one failure and one that never ran, a hand-made set, a
// tarball, retention verdicts and drills.
func TestBuildReportMatchesAFixture(t *testing.T) {
	now := time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC)
	at := func(d, h int) time.Time { return time.Date(2026, 11, d, h, 0, 0, 0, time.UTC) }
	sched, err := cron.ParseStandard("0 2 * * *")
	if err != nil {
		t.Fatal(err)
	}
	points := []Point{
		{ID: "bk-28", Method: "ebs", State: StateCompleted, Started: at(28, 2).Add(2 * time.Minute), SizeGiB: 180, Trigger: "scheduled", MadeByBot: true},
		{ID: "snap-hand", Method: "ebs", State: StateCompleted, Started: at(27, 20), SizeGiB: 30},
		{ID: "bk-tar", Method: "tarball", State: StateCompleted, Started: at(27, 12), Bytes: 3 << 30, Trigger: "manual", MadeByBot: true},
		{ID: "bk-26", Method: "ebs", State: StateCompleted, Started: at(26, 2), SizeGiB: 180, Trigger: "scheduled", MadeByBot: true},
		{ID: "bk-25-run", Method: "ebs", State: StateRunning, Started: at(25, 2), SizeGiB: 180, Trigger: "scheduled", MadeByBot: true},
	}
	records := []*Backup{
		{ID: "bk-28", State: StateCompleted, Trigger: "scheduled", Started: at(28, 2).Add(2 * time.Minute)},
		{ID: "bk-27-fail", State: StateFailed, Trigger: "manual", Started: at(27, 13), Error: "snapshot snap-1 is in state error"},
		{ID: "bk-tar", State: StateCompleted, Trigger: "manual", Started: at(27, 12)},
		{ID: "bk-26", State: StateCompleted, Trigger: "scheduled", Started: at(26, 2)},
		// Nothing at all on the 24th: the bot was down.
		{ID: "bk-old-fail", State: StateFailed, Trigger: "scheduled", Started: at(20, 2)},
	}
	prune := []Verdict{{Point: points[3], Keep: false, Why: "past keep_last"}, {Point: points[0], Keep: true, Newest: true}}
	drills := []Drill{
		{ID: "dr-2", State: DrillFailed, Started: at(27, 3)},
		{ID: "dr-1", State: DrillPassed, Started: at(21, 3), RestoreTime: 14 * time.Minute, Source: "bk-21"},
		{ID: "dr-0", State: DrillPassed, Started: at(10, 3), RestoreTime: 20 * time.Minute},
	}
	r := BuildReport(ReportInput{Now: now, Points: points, Records: records, Schedule: sched, RPO: 24 * time.Hour, Prune: prune, Drills: drills})

	if r.Newest == nil || r.Newest.ID != "bk-28" || r.NewestAge != 6*time.Hour+58*time.Minute || r.OverRPO {
		t.Errorf("newest %+v age %s over %v", r.Newest, r.NewestAge, r.OverRPO)
	}
	var recent []string
	for _, p := range r.Recent {
		recent = append(recent, p.ID)
	}
	if got := len(recent); got != 3 || recent[0] != "bk-28" || recent[1] != "snap-hand" || recent[2] != "bk-tar" {
		t.Errorf("recent %v", recent)
	}
	if len(r.Failed) != 1 || r.Failed[0].ID != "bk-27-fail" {
		t.Errorf("failed %+v", r.Failed)
	}
	// 02:00 on the 28th ran (bk-28, 2 minutes late); the window starts
	// 09:00 on the 27th, after that day's 02:00.
	if len(r.Missed) != 0 {
		t.Errorf("missed %v", r.Missed)
	}
	if r.Count != 4 || r.GiB != 180+30+3+180 {
		t.Errorf("count %d GiB %d", r.Count, r.GiB)
	}
	if len(r.PruneNext) != 1 || r.PruneNext[0].ID != "bk-26" {
		t.Errorf("prune next %+v", r.PruneNext)
	}
	if r.LastDrill == nil || r.LastDrill.ID != "dr-1" || r.Drills != 3 {
		t.Errorf("last drill %+v, %d drills", r.LastDrill, r.Drills)
	}
	if r.FailedDrill == nil || r.FailedDrill.ID != "dr-2" {
		t.Errorf("the newer failed drill is not flagged: %+v", r.FailedDrill)
	}
	// The sawtooth, one sample an hour for 30 days: at 02:00 on the 28th
	// the newest was snap-hand (20:00 the day before), then bk-28.
	for _, s := range r.Age {
		if s.At.Equal(at(28, 2)) && s.Age != 6*time.Hour {
			t.Errorf("age at 02:00 = %s, want 6h (snap-hand)", s.Age)
		}
		if s.At.Equal(at(28, 3)) && s.Age != 58*time.Minute {
			t.Errorf("age at 03:00 = %s, want 58m (bk-28)", s.Age)
		}
	}
	if len(r.Age) != 30*24+1 {
		t.Errorf("%d age samples", len(r.Age))
	}

	// A scheduled backup AWS holds (tagged) ran, even without a record;
	// a day on which nothing started is reported once.
	r = BuildReport(ReportInput{Now: at(25, 9), Points: points, Records: records, Schedule: sched, RPO: 24 * time.Hour})
	if len(r.Missed) != 0 {
		t.Errorf("the 25th's tagged scheduled backup counted as missed: %v", r.Missed)
	}
	r = BuildReport(ReportInput{Now: at(24, 9), Points: points, Records: records, Schedule: sched, RPO: 24 * time.Hour})
	if len(r.Missed) != 1 || !r.Missed[0].Equal(at(24, 2)) {
		t.Errorf("missed on the 24th: %v", r.Missed)
	}
	// Tarballs under a GiB add up instead of rounding to nothing.
	small := []Point{{ID: "a", Method: "tarball", State: StateCompleted, Started: now, Bytes: 600 << 20}, {ID: "b", Method: "tarball", State: StateCompleted, Started: now, Bytes: 600 << 20}}
	if r := BuildReport(ReportInput{Now: now, Points: small}); r.GiB != 1 {
		t.Errorf("two 600 MiB tarballs total %d GiB, want 1", r.GiB)
	}
	// No restore point at all is over any RPO.
	if r := BuildReport(ReportInput{Now: now, RPO: time.Hour}); !r.OverRPO || r.Newest != nil {
		t.Errorf("empty report: %+v", r)
	}
}

func TestSpan(t *testing.T) {
	for d, want := range map[time.Duration]string{24 * time.Hour: "24h", 90 * time.Minute: "1h30m", 45 * time.Second: "45s", 0: "0s", time.Hour + 30*time.Second: "1h0m30s"} {
		if got := Span(d); got != want {
			t.Errorf("Span(%s) = %q, want %q", d, got, want)
		}
	}
}
