package plot

import (
	"bytes"
	"image"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func curves() []Series {
	var train, eval Series
	train.Name, eval.Name = "train loss", "eval loss"
	for i := 1; i <= 200; i++ {
		x := float64(i)
		train.X = append(train.X, x)
		train.Y = append(train.Y, 2.5*math.Exp(-x/60)+0.3+0.05*math.Sin(x))
		if i%40 == 0 {
			eval.X = append(eval.X, x)
			eval.Y = append(eval.Y, 2.5*math.Exp(-x/60)+0.4)
		}
	}
	train.Y[50] = math.NaN()
	train.Y[51] = math.Inf(1)
	return []Series{train, eval}
}

// render writes the chart and decodes it back.
func render(t *testing.T, series []Series, title string) (image.Image, []byte) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "loss.png")
	if err := LossPNG(path, series, title); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() != width || b.Dy() != height {
		t.Fatalf("size %v, want %dx%d", b, width, height)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("%d files in the folder, want only loss.png (a temp file left?)", len(ents))
	}
	if os.Getenv("PLOT_KEEP") != "" {
		os.WriteFile(filepath.Join(os.Getenv("PLOT_KEEP"), strings.ReplaceAll(t.Name(), "/", "_")+".png"), raw, 0o644)
	}
	return img, raw
}

// pixels counts the pixels of exactly colour i's RGBA.
func pixels(img image.Image, i int) int {
	want := colorOf(i)
	n := 0
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, a := img.At(x, y).RGBA()
			if uint8(r>>8) == want.R && uint8(g>>8) == want.G && uint8(bl>>8) == want.B && uint8(a>>8) == want.A {
				n++
			}
		}
	}
	return n
}

func TestLossPNG(t *testing.T) {
	img, raw := render(t, curves(), "loracc train: tiny-llama r=8")
	train, eval := pixels(img, 0), pixels(img, 1)
	// The curves cover far more than the legend swatches (22×2 pixels).
	if train < 500 || eval < 100 {
		t.Errorf("series pixels: train %d, eval %d", train, eval)
	}
	if r, g, b, _ := img.At(2, 2).RGBA(); r != 0xffff || g != 0xffff || b != 0xffff {
		t.Errorf("background at (2,2) is not white")
	}
	_, again := render(t, curves(), "loracc train: tiny-llama r=8")
	if !bytes.Equal(raw, again) {
		t.Error("the same input gave different bytes")
	}
}

func TestLossPNGEdgeCases(t *testing.T) {
	for _, c := range []struct {
		name     string
		series   []Series
		minTrain int // pixels of series 0's colour
	}{
		{"one point", []Series{{Name: "train loss", X: []float64{3}, Y: []float64{1.5}}}, 25 + 44},
		{"all NaN", []Series{{Name: "train loss", X: []float64{1, 2}, Y: []float64{math.NaN(), math.Inf(-1)}}}, 44},
		{"no points", []Series{{Name: "train loss"}, {Name: "eval loss"}}, 44},
		{"no series", nil, 0},
		{"flat", []Series{{Name: "train loss", X: []float64{1, 2, 3}, Y: []float64{2, 2, 2}}}, 100},
		{"huge range", []Series{{Name: "train loss", X: []float64{-math.MaxFloat64, math.MaxFloat64}, Y: []float64{math.MaxFloat64, -math.MaxFloat64}}}, 500},
		{"isolated points", []Series{{Name: "train loss", X: []float64{1, 2, 3, 4, 5}, Y: []float64{1, math.NaN(), 2, math.NaN(), 3}}}, 3 * 25},
	} {
		t.Run(c.name, func(t *testing.T) {
			img, _ := render(t, c.series, "edge: "+c.name)
			if got := pixels(img, 0); got < c.minTrain {
				t.Errorf("%d pixels of the series colour, want at least %d", got, c.minTrain)
			}
		})
	}
}

func TestLossPNGErrors(t *testing.T) {
	err := LossPNG(filepath.Join(t.TempDir(), "loss.png"), []Series{{Name: "a", X: []float64{1}}}, "")
	if err == nil {
		t.Error("mismatched X and Y: no error")
	}
	err = LossPNG(filepath.Join(t.TempDir(), "missing", "loss.png"), nil, "")
	if err == nil {
		t.Error("missing folder: no error")
	}
}

// TestLossPNGLogAxis: a loss falling from 27 to 1e-6 (seven decades) is
// drawn on a log axis, where the exponential decay is a straight line, so
// at the middle step the curve sits near the middle of the plot instead of
// on its floor; a loss within two decades keeps the linear axis.
func TestLossPNGLogAxis(t *testing.T) {
	s := Series{Name: "train loss"}
	for i := range 201 {
		s.X = append(s.X, float64(i))
		s.Y = append(s.Y, 27*math.Pow(1e-6/27, float64(i)/200))
	}
	if !spansDecades([]Series{s}) || spansDecades(curves()) {
		t.Fatal("spansDecades: want true for 27 → 1e-6 and false for the test curves")
	}
	img, _ := render(t, []Series{s}, "log axis")
	x := left + (width-left-right)/2
	first, last := -1, -1
	for y := 0; y < height; y++ {
		r, g, b, _ := img.At(x, y).RGBA()
		if c := colorOf(0); uint8(r>>8) == c.R && uint8(g>>8) == c.G && uint8(b>>8) == c.B {
			if first < 0 {
				first = y
			}
			last = y
		}
	}
	mid := (top + height - bottom) / 2
	if first < 0 || abs(first-mid) > (height-bottom-top)/5 {
		t.Errorf("curve at the middle step is at y %d..%d, want near the middle %d of %d..%d", first, last, mid, top, height-bottom)
	}
}

// TestLinePNGAxes: LinePNG names its axes as asked and keeps a linear y
// axis unless LogWhenWide, so values spanning decades draw differently
// from LossPNG's log axis; the same input gives the same bytes.
func TestLinePNGAxes(t *testing.T) {
	dir := t.TempDir()
	s := []Series{{Name: "memory", X: []float64{1, 2, 4, 8}, Y: []float64{0.01, 0.1, 1, 10}}}
	write := func(name string, f func(string) error) []byte {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := f(p); err != nil {
			t.Fatal(err)
		}
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := png.Decode(bytes.NewReader(raw)); err != nil {
			t.Fatal(err)
		}
		return raw
	}
	line := func(p string) error { return LinePNG(p, s, Axes{Title: "t", X: "batch", Y: "GiB"}) }
	a, b := write("a.png", line), write("b.png", line)
	loss := write("loss.png", func(p string) error { return LossPNG(p, s, "t") })
	if !bytes.Equal(a, b) {
		t.Error("the same chart drew different bytes")
	}
	if bytes.Equal(a, loss) {
		t.Error("a linear-axis chart named batch/GiB drew the log-axis loss chart's bytes")
	}
}
