package main

// Numeric flags are checked when they are parsed, before anything is
// written: a NaN, an infinity or an out-of-range count would otherwise be
// trained or written silently (an all-NaN adapter with exit 0), or fail
// only deep inside a run.

import (
	"fmt"
	"math"

	"github.com/urfave/cli/v2"
)

// floatRule is one numeric flag's valid range, said in words for the error.
type floatRule struct {
	name string
	ok   func(float64) bool
	want string
}

// checkFloats checks the flags of rules that c has, set or default.
func checkFloats(c *cli.Context, rules ...floatRule) error {
	for _, r := range rules {
		v := c.Float64(r.name)
		if math.IsNaN(v) || math.IsInf(v, 0) || !r.ok(v) {
			return fmt.Errorf("--%s %v: %s", r.name, v, r.want)
		}
	}
	return nil
}

// float32OK: a value stored as a float32 (a scale, an alpha) must stay
// finite there too (1e39 is finite in float64, +Inf in float32).
func float32OK(v float64) bool { return math.Abs(v) <= math.MaxFloat32 }

// optimizerRules are the optimizer flags' ranges, as PyTorch's AdamW and
// SGD check them.
func optimizerRules() []floatRule {
	unit := func(v float64) bool { return v >= 0 && v < 1 }
	return []floatRule{
		{"beta1", unit, "must be in [0, 1)"},
		{"beta2", unit, "must be in [0, 1)"},
		{"eps", func(v float64) bool { return v > 0 }, "must be positive"},
		{"weight-decay", func(v float64) bool { return v >= 0 }, "must be ≥ 0"},
		{"momentum", unit, "must be in [0, 1)"},
		{"clip-norm", func(v float64) bool { return v >= 0 }, "must be ≥ 0 (0: no clipping)"},
	}
}

// intRule is one count flag's valid range.
type intRule struct {
	name string
	min  int
	want string
}

// checkInts checks count flags against their minimums.
func checkInts(c *cli.Context, rules ...intRule) error {
	for _, r := range rules {
		if v := c.Int(r.name); v < r.min {
			return fmt.Errorf("--%s %d: %s", r.name, v, r.want)
		}
	}
	return nil
}
