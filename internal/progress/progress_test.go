package progress

import (
	"os"
	"strings"
	"testing"
	"time"
)

// clock is a fake time source the test moves by hand.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newFake(total int, term bool) (*Bar, *strings.Builder, *clock) {
	var sb strings.Builder
	c := &clock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	return NewWithClock(&sb, total, term, c.now), &sb, c
}

func TestTerminal(t *testing.T) {
	b, out, c := newFake(10, true)
	c.advance(2 * time.Second)
	b.Update(1, 2.5, 1234)
	c.advance(50 * time.Millisecond) // too soon: no redraw
	b.Update(2, 2.25, 1300)
	c.advance(2 * time.Second)
	b.Update(3, 2.0, 25600)
	b.Log("eval loss %.3f", 1.9)
	c.advance(time.Second)
	b.Update(10, 1.5, 2.5e6)
	b.Finish()
	b.Finish()
	// Step times: 2s; 0.05s; 2s → EMA 2, 1.61, 1.688; ETA for 7 steps ≈ 11.8s.
	want := "\r1/10 [##..................]  10%  loss 2.5000  1234 tok/s  ETA 18s" +
		"\r3/10 [######..............]  30%  loss 2.0000  25.6k tok/s  ETA 12s" +
		"\r" + strings.Repeat(" ", 67) + "\reval loss 1.900\n" +
		"\r3/10 [######..............]  30%  loss 2.0000  25.6k tok/s  ETA 12s" +
		"\r10/10 [####################] 100%  loss 1.5000  2.50M tok/s  elapsed 5s" +
		"\r10/10 [####################] 100%  loss 1.5000  2.50M tok/s  elapsed 5s\n"
	if got := out.String(); got != want {
		t.Errorf("got\n%q\nwant\n%q", got, want)
	}
}

func TestTerminalShorterLineIsPadded(t *testing.T) {
	b, out, c := newFake(0, true)
	b.Update(1, 12345.678, 123456)
	c.advance(time.Second)
	b.Update(2, 1, 1)
	got := out.String()
	first := "\rstep 1  loss 12345.6780  123.5k tok/s  elapsed 0s"
	second := "\rstep 2  loss 1.0000  1 tok/s  elapsed 1s"
	if want := first + second + strings.Repeat(" ", len(first)-len(second)); got != want {
		t.Errorf("got\n%q\nwant\n%q", got, want)
	}
}

func TestPlain(t *testing.T) {
	b, out, c := newFake(100, false)
	for s := 1; s <= 100; s++ {
		c.advance(500 * time.Millisecond)
		b.Update(s, 3-float64(s)/50, 2000)
		if s == 50 {
			b.Log("saved checkpoint %d", s)
		}
	}
	b.Finish()
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 21 { // every 5 steps, plus the Log line
		t.Fatalf("%d lines, want 21:\n%s", len(lines), out.String())
	}
	if want := "step 5/100 (5%): loss 2.9000, 2000 tokens/s, elapsed 3s, ETA 48s"; lines[0] != want {
		t.Errorf("first line %q, want %q", lines[0], want)
	}
	if want := "saved checkpoint 50"; lines[10] != want {
		t.Errorf("line 11 %q, want %q", lines[10], want)
	}
	if want := "step 100/100 (100%): loss 1.0000, 2000 tokens/s, elapsed 50s"; lines[20] != want {
		t.Errorf("last line %q, want %q", lines[20], want)
	}
	if strings.Contains(out.String(), "\r") {
		t.Error("plain output has a carriage return")
	}
}

func TestPlainFinishLogsLastStep(t *testing.T) {
	b, out, c := newFake(1000, false)
	c.advance(time.Minute)
	b.Update(7, 1, 1) // stopped early: 7 is not a multiple of 50
	b.Finish()
	b.Finish()
	if want := "step 7/1000 (1%): loss 1.0000, 1 tokens/s, elapsed 1m00s, ETA 2h21m\n"; out.String() != want {
		t.Errorf("got %q, want %q", out.String(), want)
	}
}

func TestInterval(t *testing.T) {
	for total, want := range map[int]int{0: 10, 1: 1, 7: 1, 40: 1, 41: 2, 100: 5, 1000: 25, 1001: 50, 3000: 100, 123456: 5000} {
		if got := interval(total); got != want {
			t.Errorf("interval(%d) = %d, want %d", total, got, want)
		}
		if total >= 40 {
			if n := total / interval(total); n < 20 || n > 40 {
				t.Errorf("total %d: %d lines", total, n)
			}
		}
	}
}

func TestIsTerminal(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "log")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if IsTerminal(f) || IsTerminal(nil) {
		t.Error("a regular file or nil is a terminal")
	}
	// /dev/null is a character device, so it counts (harmlessly: the
	// redrawn line goes nowhere).
	if d, err := os.Open("/dev/null"); err == nil {
		defer d.Close()
		if !IsTerminal(d) {
			t.Error("/dev/null is not a character device")
		}
	}
}

// TestCountingExamples: a task without tokens reports examples per
// second, in both forms.
func TestCountingExamples(t *testing.T) {
	b, out, c := newFake(1000, false)
	b.Counting("examples")
	c.advance(time.Minute)
	b.Update(7, 1, 30)
	b.Finish()
	if want := "step 7/1000 (1%): loss 1.0000, 30 examples/s, elapsed 1m00s, ETA 2h21m\n"; out.String() != want {
		t.Errorf("got %q, want %q", out.String(), want)
	}
	tb, tout, tc := newFake(10, true)
	tb.Counting("examples")
	tc.advance(time.Second)
	tb.Update(1, 2.5, 30)
	if !strings.Contains(tout.String(), "30 ex/s") {
		t.Errorf("bar %q does not say ex/s", tout.String())
	}
}
