// Package progress reports a training run's steps: on a terminal one line
// redrawn in place with a bar, loss, tokens/s (or examples/s) and an ETA; in a log file or
// a pipe (CI, nohup) plain lines every few steps, so the log stays short
// and readable without carriage returns.
package progress

import (
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"sync"
	"time"
)

const (
	barWidth    = 20                     // cells in the terminal bar
	redrawEvery = 100 * time.Millisecond // at most ~10 terminal redraws a second
	emaWeight   = 0.2                    // weight of the newest step time in the ETA's average
	minLines    = 20                     // a plain log has between minLines and 2·minLines step lines
	unknownStep = 10                     // plain log interval when the total is unknown
)

// Bar reports progress to one writer. Its methods may be called from
// several goroutines (a data loader may Log while the trainer Updates).
// Write errors are ignored: a closed terminal must not stop a training run.
type Bar struct {
	mu    sync.Mutex
	w     io.Writer
	total int
	term  bool
	now   func() time.Time
	every int // plain mode: log every this many steps

	start    time.Time
	lastStep int
	lastTime time.Time
	perStep  float64 // moving average of seconds per step; 0 until the first step
	loss     float64
	tps      float64
	unit     string // what tps counts: tokens (default) or examples
	updated  bool   // Update was called since the last line was written

	lastDraw time.Time
	shown    int  // terminal: length of the bar line on screen, 0 if none
	finished bool // Finish ran
}

// New starts a report of total steps on w. isTerminal picks the redrawn
// line (see IsTerminal) over plain log lines; total ≤ 0 means unknown.
func New(w io.Writer, total int, isTerminal bool) *Bar {
	return NewWithClock(w, total, isTerminal, time.Now)
}

// NewWithClock is New with a clock, so tests get exact step times and ETAs.
func NewWithClock(w io.Writer, total int, isTerminal bool, now func() time.Time) *Bar {
	t := now()
	return &Bar{w: w, total: total, term: isTerminal, now: now, every: interval(total), start: t, lastTime: t}
}

// interval is the plain-mode logging interval: a round number (1, 2, 2.5
// or 5 × 10^k) that gives between minLines and 2·minLines lines.
func interval(total int) int {
	if total <= 0 {
		return unknownStep
	}
	raw := float64(total) / (2 * minLines)
	for p := 1; ; p *= 10 {
		for _, c := range [...]int{p, 2 * p, 5 * p / 2, 5 * p} {
			if float64(c) >= raw {
				return c
			}
		}
	}
}

// IsTerminal reports whether f is a character device, the check that picks
// redrawn lines over plain ones without a terminal library. /dev/null is
// one too, which is harmless: nothing reads it.
func IsTerminal(f *os.File) bool {
	if f == nil {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// Update records that step (1-based) finished with loss and throughput,
// and redraws or logs as the mode allows.
func (b *Bar) Update(step int, loss, tokensPerSec float64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.now()
	if step > b.lastStep {
		per := t.Sub(b.lastTime).Seconds() / float64(step-b.lastStep)
		if b.perStep == 0 {
			b.perStep = per
		} else {
			b.perStep = emaWeight*per + (1-emaWeight)*b.perStep
		}
		b.lastTime = t
	}
	b.lastStep, b.loss, b.tps, b.updated = step, loss, tokensPerSec, true
	last := b.total > 0 && step >= b.total
	if b.term {
		if last || b.shown == 0 || t.Sub(b.lastDraw) >= redrawEvery {
			b.draw(t)
		}
		return
	}
	if last || step%b.every == 0 {
		b.logStep(t)
	}
}

// Log prints a line of its own (an eval result, a checkpoint saved) above
// the bar, which is then drawn again below it.
func (b *Bar) Log(format string, args ...any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	msg := strings.TrimRight(fmt.Sprintf(format, args...), "\n")
	if b.term && b.shown > 0 {
		fmt.Fprintf(b.w, "\r%s\r%s\n", strings.Repeat(" ", b.shown), msg)
		b.shown = 0
		if !b.finished {
			b.draw(b.now())
		}
		return
	}
	fmt.Fprintln(b.w, msg)
}

// Finish draws the final state and ends the bar's line; in plain mode it
// logs the last step if that was not logged yet. Calling it twice is safe.
func (b *Bar) Finish() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.finished {
		return
	}
	b.finished = true
	t := b.now()
	if b.term {
		if b.updated || b.shown > 0 {
			b.draw(t)
			fmt.Fprintln(b.w)
			b.shown = 0
		}
		return
	}
	if b.updated {
		b.logStep(t)
	}
}

// draw writes the terminal line, padded to cover a longer previous one.
func (b *Bar) draw(t time.Time) {
	var sb strings.Builder
	if b.total > 0 {
		frac := math.Min(1, float64(b.lastStep)/float64(b.total))
		n := int(frac * barWidth)
		fmt.Fprintf(&sb, "%d/%d [%s%s] %3.0f%%", b.lastStep, b.total, strings.Repeat("#", n), strings.Repeat(".", barWidth-n), 100*frac)
	} else {
		fmt.Fprintf(&sb, "step %d", b.lastStep)
	}
	fmt.Fprintf(&sb, "  loss %s  %s %s/s  ", lossText(b.loss), rate(b.tps), b.shortUnit())
	if b.total > 0 && b.lastStep < b.total {
		fmt.Fprintf(&sb, "ETA %s", b.eta())
	} else {
		fmt.Fprintf(&sb, "elapsed %s", dur(t.Sub(b.start).Seconds()))
	}
	line := sb.String()
	pad := ""
	if b.shown > len(line) {
		pad = strings.Repeat(" ", b.shown-len(line))
	}
	fmt.Fprintf(b.w, "\r%s%s", line, pad)
	b.shown, b.lastDraw = len(line), t
}

// logStep writes one plain line for the latest step.
func (b *Bar) logStep(t time.Time) {
	var sb strings.Builder
	if b.total > 0 {
		fmt.Fprintf(&sb, "step %d/%d (%.0f%%)", b.lastStep, b.total, 100*math.Min(1, float64(b.lastStep)/float64(b.total)))
	} else {
		fmt.Fprintf(&sb, "step %d", b.lastStep)
	}
	fmt.Fprintf(&sb, ": loss %s, %s %s/s, elapsed %s", lossText(b.loss), rate(b.tps), b.unitName(), dur(t.Sub(b.start).Seconds()))
	if b.total > 0 && b.lastStep < b.total {
		fmt.Fprintf(&sb, ", ETA %s", b.eta())
	}
	fmt.Fprintln(b.w, sb.String())
	b.updated = false
}

func (b *Bar) eta() string {
	if b.perStep <= 0 {
		return "?"
	}
	return dur(b.perStep * float64(b.total-b.lastStep))
}

// lossText shows four decimals, switching to significant digits for
// losses so small that decimals would print 0.0000.
func lossText(v float64) string {
	if v != 0 && math.Abs(v) < 0.01 {
		return fmt.Sprintf("%.3e", v)
	}
	return fmt.Sprintf("%.4f", v)
}

// rate prints a throughput with a k/M suffix, as people read it.
func rate(v float64) string {
	switch a := math.Abs(v); {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return "?"
	case a >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case a >= 1e4:
		return fmt.Sprintf("%.1fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}

// dur prints seconds as 45s, 3m12s or 2h05m.
func dur(s float64) string {
	if math.IsNaN(s) || math.IsInf(s, 0) || s < 0 || s > 1e9 {
		return "?"
	}
	n := int64(math.Round(s))
	switch {
	case n < 60:
		return fmt.Sprintf("%ds", n)
	case n < 3600:
		return fmt.Sprintf("%dm%02ds", n/60, n%60)
	}
	return fmt.Sprintf("%dh%02dm", n/3600, n%3600/60)
}

// Counting sets what the throughput counts ("tokens", the default, or
// "examples") and returns b.
func (b *Bar) Counting(unit string) *Bar {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.unit = unit
	return b
}

func (b *Bar) unitName() string {
	if b.unit == "" {
		return "tokens"
	}
	return b.unit
}

// shortUnit is the unit as the redrawn bar abbreviates it.
func (b *Bar) shortUnit() string {
	switch u := b.unitName(); u {
	case "tokens":
		return "tok"
	case "examples":
		return "ex"
	default:
		return u
	}
}
