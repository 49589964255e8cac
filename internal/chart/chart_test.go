package chart

import (
	"bytes"
	"image/png"
	"testing"
	"time"

	"github.com/circlebot/circlebot/internal/ops"
)

// The chart is a PNG that decodes, for a month of daily backups with a gap.
func TestPNGDecodes(t *testing.T) {
	now := time.Date(2026, 11, 28, 6, 0, 0, 0, time.UTC)
	var pts []ops.Point
	for d := 1; d <= 30; d++ {
		if d >= 10 && d < 14 {
			continue // four days without a backup: the sawtooth climbs past the RPO
		}
		pts = append(pts, ops.Point{ID: "bk", Method: "ebs", State: ops.StateCompleted, Started: now.Add(-time.Duration(d) * 24 * time.Hour), SizeGiB: int32(100 + d)})
	}
	r := ops.BuildReport(ops.ReportInput{Now: now, Points: pts, RPO: 24 * time.Hour})
	b, err := PNG(r)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("not a PNG: %v", err)
	}
	if w := img.Bounds().Dx(); w < 500 {
		t.Errorf("chart is %d px wide", w)
	}
}

// No restore points at all still draws (an empty chart), not an error.
func TestPNGWithNothing(t *testing.T) {
	if _, err := PNG(ops.BuildReport(ops.ReportInput{Now: time.Now(), RPO: time.Hour})); err != nil {
		t.Fatal(err)
	}
}
