package generate

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func next(t *testing.T, s *Sampler, logits []float32) int {
	t.Helper()
	id, err := s.Next(logits)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestGreedyTakesFirstMax(t *testing.T) {
	s, err := NewSampler(Sampling{})
	if err != nil {
		t.Fatal(err)
	}
	if got := next(t, s, []float32{1, 3, 3, -2}); got != 1 {
		t.Errorf("greedy picked %d, want 1 (first of the tied maxima)", got)
	}
}

// counts draws n tokens and returns how often each id came up.
func counts(t *testing.T, cfg Sampling, logits []float32, n int) []int {
	t.Helper()
	s, err := NewSampler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := make([]int, len(logits))
	for range n {
		c[next(t, s, logits)]++
	}
	return c
}

func TestSamplingFilters(t *testing.T) {
	// Probabilities at T=1: 0.5, 0.25, 0.125, 0.125.
	l := float32(math.Log(2))
	logits := []float32{3 * l, 2 * l, l, l}
	const n = 20000
	// top-k 2 keeps ids 0 and 1 only, in ratio 2:1.
	c := counts(t, Sampling{Temperature: 1, TopK: 2, Seed: 1}, logits, n)
	if c[2]+c[3] != 0 || math.Abs(float64(c[0])/n-2.0/3) > 0.02 {
		t.Errorf("top-k 2: counts %v, want about [%d %d 0 0]", c, 2*n/3, n/3)
	}
	// top-k 3 keeps the tie with the third: all four stay.
	c = counts(t, Sampling{Temperature: 1, TopK: 3, Seed: 1}, logits, n)
	if c[3] == 0 {
		t.Errorf("top-k 3: counts %v, the tie with the 3rd logit was dropped", c)
	}
	// top-p 0.6: 0.5 is below 0.6, so id 1 stays too; then 0.75 ≥ 0.6.
	c = counts(t, Sampling{Temperature: 1, TopP: 0.6, Seed: 2}, logits, n)
	if c[2]+c[3] != 0 || c[1] == 0 {
		t.Errorf("top-p 0.6: counts %v, want ids 0 and 1 only", c)
	}
	// top-p 0.5: id 0 alone reaches it.
	c = counts(t, Sampling{Temperature: 1, TopP: 0.5, Seed: 2}, logits, 100)
	if c[0] != 100 {
		t.Errorf("top-p 0.5: counts %v, want id 0 only", c)
	}
	// Plain sampling follows the softmax.
	c = counts(t, Sampling{Temperature: 1, Seed: 3}, logits, n)
	for i, want := range []float64{0.5, 0.25, 0.125, 0.125} {
		if math.Abs(float64(c[i])/n-want) > 0.02 {
			t.Errorf("T=1: id %d drawn %.3f of the time, want %.3f", i, float64(c[i])/n, want)
		}
	}
	// A low temperature sharpens towards the maximum.
	c = counts(t, Sampling{Temperature: 0.1, Seed: 3}, logits, 1000)
	if c[0] < 990 {
		t.Errorf("T=0.1: id 0 drawn %d of 1000 times", c[0])
	}
}

func TestSamplingSeeds(t *testing.T) {
	logits := make([]float32, 50)
	for i := range logits {
		logits[i] = float32(i%7) * 0.3
	}
	draw := func(seed uint64) []int {
		s, err := NewSampler(Sampling{Temperature: 1, Seed: seed})
		if err != nil {
			t.Fatal(err)
		}
		var ids []int
		for range 30 {
			ids = append(ids, next(t, s, logits))
		}
		return ids
	}
	a, b, c := draw(7), draw(7), draw(8)
	same := func(x, y []int) bool {
		for i := range x {
			if x[i] != y[i] {
				return false
			}
		}
		return true
	}
	if !same(a, b) {
		t.Errorf("seed 7 twice: %v and %v", a, b)
	}
	if same(a, c) {
		t.Errorf("seeds 7 and 8 drew the same %v", a)
	}
}

func TestSamplingBadInput(t *testing.T) {
	for _, cfg := range []Sampling{
		{Temperature: -1}, {Temperature: math.NaN()}, {Temperature: math.Inf(1)},
		{TopK: -1}, {TopP: 1.5}, {TopP: -0.1}, {TopP: math.NaN()},
	} {
		if _, err := NewSampler(cfg); err == nil {
			t.Errorf("NewSampler(%+v): no error", cfg)
		}
	}
	s, _ := NewSampler(Sampling{Temperature: 1})
	inf := float32(math.Inf(-1))
	for _, logits := range [][]float32{nil, {1, float32(math.NaN())}, {inf, inf}} {
		if _, err := s.Next(logits); err == nil {
			t.Errorf("Next(%v): no error", logits)
		}
	}
	if id := next(t, s, []float32{0, float32(math.Inf(1)), 1}); id != 1 {
		t.Errorf("a +Inf logit: drew %d, want 1", id)
	}
}

func TestKthLargest(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h []float32
	for trial := range 200 {
		n := 2 + rng.IntN(300)
		xs := make([]float32, n)
		for i := range xs {
			xs[i] = float32(rng.IntN(40)) // repeats, to exercise ties
		}
		k := 1 + rng.IntN(n-1)
		sorted := slices.Clone(xs)
		slices.Sort(sorted)
		if got, want := kthLargest(xs, k, &h), sorted[n-k]; got != want {
			t.Fatalf("trial %d: kthLargest(k=%d) = %v, want %v", trial, k, got, want)
		}
	}
}
