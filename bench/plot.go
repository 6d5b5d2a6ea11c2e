package bench

import (
	"fmt"
	"io"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// WriteLatencyPlot draws the open-loop latency percentiles of every
// overhead target (direct and each proxy) as SVG.
func (o *OverheadResult) WriteLatencyPlot(w io.Writer) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("open-loop latency at %s rps", fmtCount(o.Settings.Rate))
	p.Y.Label.Text = "latency (ms)"
	p.X.Label.Text = "percentile"
	names := []string{"p50", "p90", "p99", "p99.9"}
	p.NominalX(names...)
	p.Legend.Top = true
	p.Legend.Left = true
	for i, t := range o.Targets {
		l := t.Open.All.Latency
		pts := plotter.XYs{{X: 0, Y: l.P50}, {X: 1, Y: l.P90}, {X: 2, Y: l.P99}, {X: 3, Y: l.P999}}
		line, points, err := plotter.NewLinePoints(pts)
		if err != nil {
			return fmt.Errorf("bench: plot: %w", err)
		}
		line.Color = plotutil.Color(i)
		line.Dashes = plotutil.Dashes(i)
		points.Color = plotutil.Color(i)
		points.Shape = plotutil.Shape(i)
		p.Add(line, points)
		p.Legend.Add(t.Name, line, points)
	}
	wt, err := p.WriterTo(7*vg.Inch, 4*vg.Inch, "svg")
	if err != nil {
		return fmt.Errorf("bench: plot: %w", err)
	}
	if _, err := wt.WriteTo(w); err != nil {
		return fmt.Errorf("bench: plot: %w", err)
	}
	return nil
}
