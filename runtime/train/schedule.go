package train

import (
	"fmt"
	"math"
)

// Schedule gives the learning rate of each step, as Hugging Face's
// get_{constant,linear,cosine}_schedule_with_warmup do: over the first
// warmup steps the rate rises linearly from 0; then it stays (constant),
// falls linearly to 0 at the last step (linear) or follows half a cosine
// to 0 (cosine). Steps count from 1 here; HF's lambda sees step-1.
type Schedule struct {
	Kind   string // "constant", "linear" or "cosine"
	LR     float64
	Warmup int
	Total  int
}

// Validate checks the kind and numbers.
func (s Schedule) Validate() error {
	switch s.Kind {
	case "constant", "linear", "cosine":
	default:
		return fmt.Errorf("unknown schedule %q (want constant, linear or cosine)", s.Kind)
	}
	if s.LR <= 0 || math.IsNaN(s.LR) || math.IsInf(s.LR, 0) {
		return fmt.Errorf("learning rate %g must be positive", s.LR)
	}
	if s.Warmup < 0 {
		return fmt.Errorf("warmup %d must be ≥ 0", s.Warmup)
	}
	return nil
}

// At returns the learning rate for step (1-based).
func (s Schedule) At(step int) float64 {
	cur := float64(step - 1)
	w := float64(s.Warmup)
	if cur < w {
		return s.LR * cur / math.Max(1, w)
	}
	switch s.Kind {
	case "linear":
		return s.LR * math.Max(0, float64(s.Total)-cur) / math.Max(1, float64(s.Total)-w)
	case "cosine":
		progress := (cur - w) / math.Max(1, float64(s.Total)-w)
		return s.LR * math.Max(0, 0.5*(1+math.Cos(math.Pi*progress)))
	}
	return s.LR
}
