// Package chart draws the daily report's picture: the age of the newest
// restore point over 30 days against the RPO (the sawtooth a healthy
// schedule draws, and the climb a broken one does), and the size of each
// restore point.
package chart

import (
	"bytes"
	"fmt"
	"image/color"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/circlebot/circlebot/internal/ops"
)

var (
	red  = color.RGBA{R: 200, G: 40, B: 40, A: 255}
	blue = color.RGBA{R: 30, G: 90, B: 180, A: 255}
)

// PNG renders r's charts as one PNG, age above size.
func PNG(r ops.Report) ([]byte, error) {
	age, err := agePlot(r)
	if err != nil {
		return nil, err
	}
	size, err := sizePlot(r)
	if err != nil {
		return nil, err
	}
	const w, h = 10 * vg.Inch, 7 * vg.Inch
	img := vgimg.New(w, h)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 2, Cols: 1, PadY: vg.Millimeter * 4, PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 4}
	canvases := plot.Align([][]*plot.Plot{{age}, {size}}, tiles, dc)
	age.Draw(canvases[0][0])
	size.Draw(canvases[1][0])
	var buf bytes.Buffer
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(&buf); err != nil {
		return nil, fmt.Errorf("encode chart: %w", err)
	}
	return buf.Bytes(), nil
}

func agePlot(r ops.Report) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Age of the newest restore point, last %d days (RPO %s)", ops.ChartDays, ops.Span(r.RPO))
	p.Y.Label.Text = "hours"
	p.X.Tick.Marker = plot.TimeTicks{Format: "Jan 2"}
	var pts plotter.XYs
	for _, s := range r.Age {
		if s.Age < 0 {
			continue
		}
		pts = append(pts, plotter.XY{X: float64(s.At.Unix()), Y: s.Age.Hours()})
	}
	if len(pts) > 0 {
		l, err := plotter.NewLine(pts)
		if err != nil {
			return nil, err
		}
		l.Color = blue
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add("age", l)
	}
	from, to := r.Now.Add(-ops.ChartDays*24*time.Hour), r.Now
	if r.RPO > 0 {
		rpo, err := plotter.NewLine(plotter.XYs{{X: float64(from.Unix()), Y: r.RPO.Hours()}, {X: float64(to.Unix()), Y: r.RPO.Hours()}})
		if err != nil {
			return nil, err
		}
		rpo.Color = red
		rpo.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		p.Add(rpo)
		p.Legend.Add("RPO", rpo)
	}
	p.X.Min, p.X.Max = float64(from.Unix()), float64(to.Unix())
	p.Y.Min = 0
	p.Legend.Top = true
	p.Add(plotter.NewGrid())
	return p, nil
}

func sizePlot(r ops.Report) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "Size of each completed restore point"
	p.Y.Label.Text = "GiB"
	p.X.Tick.Marker = plot.TimeTicks{Format: "Jan 2"}
	var pts plotter.XYs
	for _, s := range r.Sizes {
		pts = append(pts, plotter.XY{X: float64(s.At.Unix()), Y: s.GiB})
	}
	if len(pts) > 0 {
		sc, err := plotter.NewScatter(pts)
		if err != nil {
			return nil, err
		}
		sc.Color = blue
		p.Add(sc)
	}
	p.X.Min, p.X.Max = float64(r.Now.Add(-ops.ChartDays*24*time.Hour).Unix()), float64(r.Now.Unix())
	p.Y.Min = 0
	p.Add(plotter.NewGrid())
	return p, nil
}
