// Package plot draws the loss curves `loracc train` leaves next to its
// checkpoints (and the benchmarks' line charts): a PNG anyone can open,
// with no plotting library and no fonts to install. The same input gives
// the same bytes.
package plot

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"math"
	"strconv"

	"github.com/loracc/loracc/graph"

	// x/image gives the one bitmap font we draw labels with (basicfont's
	// 7×13 ASCII face) and the Drawer that renders it; the standard
	// library has no text rendering, and a hand-made font would be more
	// code to keep than the dependency.
	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Series is one curve: points (X[i], Y[i]). Points where either is NaN or
// infinite are left out, and the line breaks there.
type Series struct {
	Name string
	X, Y []float64
}

// Chart geometry, in pixels.
const (
	width, height = 800, 480
	left, right   = 80, 24     // room for y tick labels
	top, bottom   = 44, 52     // room for the title; x tick labels and axis name
	charW, lineH  = 7, 13      // basicfont.Face7x13
	maxMarkers    = 40         // series with at most this many points get a marker on each
	legendSwatch  = 22         // length of the colour sample in the legend
	maxTextRunes  = 60         // longer names and titles are cut
	maxTicks      = 8          // upper bound on ticks per axis
	targetTicks   = 6          // the tick step aims at about this many
	xPad, yPad    = 0.02, 0.05 // fraction of the span left free at each end, so end markers show
	markerHalf    = 2          // a marker is (2·markerHalf+1) pixels square
	lineHalf      = 1          // lines are drawn 2 pixels wide
	gridGrey      = 0xe6       // grid grey
	textGrey      = 0x40       // tick label grey
	frameGrey     = 0x99       // legend border grey
	noteGrey      = 0x80       // "no data" note grey
	legendPadding = 6          // inside the legend box
	tickLen       = 5          // tick marks outside the frame
	titleBaseline = 26         // y of the title's baseline
	xLabelGap     = 18         // tick label baseline below the frame
	xNameGap      = 40         // axis name baseline below the frame
	yLabelGap     = 8          // tick labels' right edge left of the frame
	legendInset   = 10         // legend distance from the frame's top-right corner
	legendRowH    = lineH + 4
)

// palette: distinct, colour-blind-friendly hues (Matplotlib's tab10), in
// the order series get them: train loss blue, eval loss orange.
var palette = [...]color.RGBA{
	{0x1f, 0x77, 0xb4, 0xff}, {0xff, 0x7f, 0x0e, 0xff}, {0x2c, 0xa0, 0x2c, 0xff},
	{0xd6, 0x27, 0x28, 0xff}, {0x94, 0x67, 0xbd, 0xff}, {0x8c, 0x56, 0x4b, 0xff},
	{0xe3, 0x77, 0xc2, 0xff}, {0x7f, 0x7f, 0x7f, 0xff}, {0xbc, 0xbd, 0x22, 0xff},
	{0x17, 0xbe, 0xcf, 0xff},
}

// colorOf is the colour series i is drawn in.
func colorOf(i int) color.RGBA { return palette[i%len(palette)] }

// LossPNG draws loss curves (x: step, y: loss, on a log axis when the
// losses span more than two decades) as LinePNG does.
func LossPNG(path string, series []Series, title string) error {
	return LinePNG(path, series, Axes{Title: title, X: "step", Y: "loss", LogWhenWide: true})
}

// Axes name a chart and its axes. LogWhenWide draws y on a log axis,
// saying so in its name, when every y is positive and the largest is more
// than 100 times the smallest.
type Axes struct {
	Title, X, Y string
	LogWhenWide bool
}

// LinePNG draws the series as a line chart and writes it to path
// atomically (a temporary file in the same folder, renamed over path), so
// a crash mid-write never leaves a truncated chart behind.
func LinePNG(path string, series []Series, ax Axes) error {
	for _, s := range series {
		if len(s.X) != len(s.Y) {
			return fmt.Errorf("plot %s: series %q has %d x values and %d y values", path, s.Name, len(s.X), len(s.Y))
		}
	}
	img := draw(series, ax)
	if err := graph.WriteFileAtomic(path, func(w io.Writer) error { return png.Encode(w, img) }); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	return nil
}

// draw renders the chart.
func draw(series []Series, ax Axes) *image.RGBA {
	c := &canvas{img: image.NewRGBA(image.Rect(0, 0, width, height))}
	c.fill(image.Rect(0, 0, width, height), color.RGBA{0xff, 0xff, 0xff, 0xff})
	plot := image.Rect(left, top, width-right, height-bottom)
	black := color.RGBA{0, 0, 0, 0xff}

	title := cut(ax.Title)
	c.text(title, (width-len(title)*charW)/2, titleBaseline, black)

	logY := ax.LogWhenWide && spansDecades(series)
	if logY {
		series = log10Series(series)
	}
	xr, yr, ok := bounds(series)
	if !ok {
		c.frame(plot, black)
		note := "no data yet"
		c.text(note, plot.Min.X+(plot.Dx()-len(note)*charW)/2, plot.Min.Y+plot.Dy()/2, color.RGBA{noteGrey, noteGrey, noteGrey, 0xff})
		c.legend(series, plot)
		return c.img
	}
	sx := scale{xr[0], xr[1], float64(plot.Min.X), float64(plot.Max.X - 1)}
	sy := scale{yr[0], yr[1], float64(plot.Max.Y - 1), float64(plot.Min.Y)}

	grid := color.RGBA{gridGrey, gridGrey, gridGrey, 0xff}
	grey := color.RGBA{textGrey, textGrey, textGrey, 0xff}
	xt, xs := ticks(xr[0], xr[1])
	for _, v := range xt {
		px := int(math.Round(sx.at(v)))
		c.vline(px, plot.Min.Y, plot.Max.Y-1, grid)
		c.vline(px, plot.Max.Y, plot.Max.Y+tickLen, black)
		l := label(v, xs)
		c.text(l, px-len(l)*charW/2, plot.Max.Y+xLabelGap, grey)
	}
	yt, ys := ticks(yr[0], yr[1])
	for _, v := range yt {
		py := int(math.Round(sy.at(v)))
		c.hline(plot.Min.X, plot.Max.X-1, py, grid)
		c.hline(plot.Min.X-tickLen, plot.Min.X-1, py, black)
		l := label(v, ys)
		if logY {
			l = strconv.FormatFloat(math.Pow(10, v), 'g', 3, 64)
		}
		c.text(l, plot.Min.X-yLabelGap-len(l)*charW, py+lineH/2-2, grey)
	}
	c.frame(plot, black)
	xName := cut(ax.X)
	c.text(xName, plot.Min.X+(plot.Dx()-len(xName)*charW)/2, plot.Max.Y+xNameGap, black)
	yName := ax.Y
	if logY {
		yName += " (log scale)"
	}
	c.text(cut(yName), max(0, plot.Min.X-yLabelGap-4*charW), plot.Min.Y-8, black)

	for i, s := range series {
		col := colorOf(i)
		n := 0
		for j := range s.X {
			if finite(s.X[j], s.Y[j]) {
				n++
			}
		}
		prevOK := false
		var px, py int
		for j := range s.X {
			ok := finite(s.X[j], s.Y[j])
			if !ok {
				prevOK = false
				continue
			}
			x, y := int(math.Round(sx.at(s.X[j]))), int(math.Round(sy.at(s.Y[j])))
			isolated := !prevOK && (j+1 >= len(s.X) || !finite(s.X[j+1], s.Y[j+1]))
			if prevOK {
				c.line(px, py, x, y, col, plot)
			}
			if n <= maxMarkers || isolated {
				c.marker(x, y, col, plot)
			}
			px, py, prevOK = x, y, true
		}
	}
	c.legend(series, plot)
	return c.img
}

// spansDecades reports whether every finite y is positive and the
// largest is more than 100 times the smallest: then a linear axis shows a
// spike and a flat line (27 falling to 1e-6), and draw uses a log axis,
// saying so in the axis name.
func spansDecades(series []Series) bool {
	lo, hi := math.Inf(1), 0.0
	for _, s := range series {
		for j := range s.X {
			if !finite(s.X[j], s.Y[j]) {
				continue
			}
			if s.Y[j] <= 0 {
				return false
			}
			lo, hi = math.Min(lo, s.Y[j]), math.Max(hi, s.Y[j])
		}
	}
	return hi > 100*lo
}

// log10Series is series with every y replaced by its base-10 logarithm.
func log10Series(series []Series) []Series {
	out := make([]Series, len(series))
	for i, s := range series {
		out[i] = s
		out[i].Y = make([]float64, len(s.Y))
		for j, y := range s.Y {
			out[i].Y[j] = math.Log10(y)
		}
	}
	return out
}

func finite(x, y float64) bool {
	return !math.IsNaN(x) && !math.IsInf(x, 0) && !math.IsNaN(y) && !math.IsInf(y, 0)
}

// bounds is the data range of the finite points, widened where it is a
// single value and padded so curves and markers do not run along the frame.
func bounds(series []Series) (xr, yr [2]float64, ok bool) {
	xr = [2]float64{math.Inf(1), math.Inf(-1)}
	yr = xr
	for _, s := range series {
		for j := range s.X {
			if !finite(s.X[j], s.Y[j]) {
				continue
			}
			ok = true
			xr = [2]float64{math.Min(xr[0], s.X[j]), math.Max(xr[1], s.X[j])}
			yr = [2]float64{math.Min(yr[0], s.Y[j]), math.Max(yr[1], s.Y[j])}
		}
	}
	if !ok {
		return xr, yr, false
	}
	widen := func(r [2]float64) [2]float64 {
		if r[0] < r[1] {
			return r
		}
		d := math.Max(math.Abs(r[0])*0.1, 1)
		return [2]float64{r[0] - d, r[1] + d}
	}
	pad := func(r [2]float64, f float64) [2]float64 {
		d := (r[1]/2 - r[0]/2) * 2 * f
		return [2]float64{clamp(r[0] - d), clamp(r[1] + d)}
	}
	xr, yr = pad(widen(xr), xPad), pad(widen(yr), yPad)
	return xr, yr, true
}

// clamp keeps a padded bound finite when the data reaches ±MaxFloat64.
func clamp(v float64) float64 {
	return math.Max(-math.MaxFloat64, math.Min(math.MaxFloat64, v))
}

// scale maps data values in [lo, hi] to pixels in [p0, p1]. It halves
// before subtracting so ranges near ±MaxFloat64 do not overflow.
type scale struct{ lo, hi, p0, p1 float64 }

func (s scale) at(v float64) float64 {
	t := (v/2 - s.lo/2) / (s.hi/2 - s.lo/2)
	return s.p0 + t*(s.p1-s.p0)
}

// ticks picks round values (1, 2 or 5 × 10^k apart) inside [lo, hi] and
// returns them with their step.
func ticks(lo, hi float64) ([]float64, float64) {
	raw := (hi/2 - lo/2) / targetTicks * 2
	if !(raw > 0) || math.IsInf(raw, 0) {
		return nil, 0
	}
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, m := range []float64{1, 2, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	first := math.Ceil(lo/step) * step
	var out []float64
	for k := 0; k < maxTicks; k++ {
		v := first + float64(k)*step
		if v > hi {
			break
		}
		out = append(out, v)
	}
	return out, step
}

// label prints a tick value with as many decimals as the step needs.
func label(v, step float64) string {
	if v == 0 {
		return "0"
	}
	if a := math.Abs(v); a >= 1e6 || a < 1e-4 {
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
	dec := 0
	if step > 0 && step < 1 {
		dec = int(math.Ceil(-math.Log10(step) - 1e-9))
	}
	return strconv.FormatFloat(v, 'f', dec, 64)
}

// cut shortens text to maxTextRunes and replaces what the ASCII face
// cannot draw.
func cut(s string) string {
	r := []rune(s)
	if len(r) > maxTextRunes {
		r = append(r[:maxTextRunes-1], '~')
	}
	for i, c := range r {
		if c < 0x20 || c > 0x7e {
			r[i] = '?'
		}
	}
	return string(r)
}

// canvas wraps the image with the few primitives the chart needs.
type canvas struct{ img *image.RGBA }

func (c *canvas) fill(r image.Rectangle, col color.RGBA) {
	r = r.Intersect(c.img.Bounds())
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			c.img.SetRGBA(x, y, col)
		}
	}
}

func (c *canvas) hline(x0, x1, y int, col color.RGBA) {
	c.fill(image.Rect(x0, y, x1+1, y+1), col)
}

func (c *canvas) vline(x, y0, y1 int, col color.RGBA) {
	c.fill(image.Rect(x, y0, x+1, y1+1), col)
}

func (c *canvas) frame(r image.Rectangle, col color.RGBA) {
	c.hline(r.Min.X, r.Max.X-1, r.Min.Y, col)
	c.hline(r.Min.X, r.Max.X-1, r.Max.Y-1, col)
	c.vline(r.Min.X, r.Min.Y, r.Max.Y-1, col)
	c.vline(r.Max.X-1, r.Min.Y, r.Max.Y-1, col)
}

// line draws a 2-pixel-wide segment (Bresenham), clipped to clip.
func (c *canvas) line(x0, y0, x1, y1 int, col color.RGBA, clip image.Rectangle) {
	dx, dy := abs(x1-x0), -abs(y1-y0)
	sx, sy := sign(x1-x0), sign(y1-y0)
	e := dx + dy
	for {
		c.fill(image.Rect(x0-lineHalf+1, y0-lineHalf+1, x0+lineHalf+1, y0+lineHalf+1).Intersect(clip), col)
		if x0 == x1 && y0 == y1 {
			return
		}
		e2 := 2 * e
		if e2 >= dy {
			e += dy
			x0 += sx
		}
		if e2 <= dx {
			e += dx
			y0 += sy
		}
	}
}

func (c *canvas) marker(x, y int, col color.RGBA, clip image.Rectangle) {
	c.fill(image.Rect(x-markerHalf, y-markerHalf, x+markerHalf+1, y+markerHalf+1).Intersect(clip), col)
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

func sign(v int) int {
	switch {
	case v > 0:
		return 1
	case v < 0:
		return -1
	}
	return 0
}

// text draws s with its baseline's left end at (x, y).
func (c *canvas) text(s string, x, y int, col color.RGBA) {
	d := font.Drawer{Dst: c.img, Src: image.NewUniform(col), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

// legend names each series in its colour, in a box at the plot's top right.
func (c *canvas) legend(series []Series, plot image.Rectangle) {
	if len(series) == 0 {
		return
	}
	names := make([]string, len(series))
	w := 0
	for i, s := range series {
		names[i] = cut(s.Name)
		if names[i] == "" {
			names[i] = fmt.Sprintf("series %d", i+1)
		}
		w = max(w, len(names[i])*charW)
	}
	boxW := legendPadding*3 + legendSwatch + w
	boxH := legendPadding*2 + len(series)*legendRowH - 4
	box := image.Rect(plot.Max.X-legendInset-boxW, plot.Min.Y+legendInset, plot.Max.X-legendInset, plot.Min.Y+legendInset+boxH)
	c.fill(box, color.RGBA{0xff, 0xff, 0xff, 0xff})
	c.frame(box, color.RGBA{frameGrey, frameGrey, frameGrey, 0xff})
	for i, name := range names {
		cy := box.Min.Y + legendPadding + i*legendRowH + lineH/2
		x0 := box.Min.X + legendPadding
		c.fill(image.Rect(x0, cy-1, x0+legendSwatch, cy+1), colorOf(i))
		c.text(name, x0+legendSwatch+legendPadding, cy+lineH/2-2, color.RGBA{0, 0, 0, 0xff})
	}
}
