package generate

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
)

// Sampling configures how the next token is chosen from the last logits.
// The zero value is greedy decoding, Hugging Face's default
// (do_sample=False).
type Sampling struct {
	// Temperature divides the logits before sampling; 0 is greedy (the
	// first highest logit, as torch.argmax picks on ties).
	Temperature float64
	// TopK keeps the K highest logits (ties with the K-th kept, as HF's
	// TopKLogitsWarper does); 0 keeps all.
	TopK int
	// TopP keeps the smallest set of most probable tokens whose
	// probability reaches P (nucleus sampling); 1 keeps all.
	TopP float64
	// Seed seeds the sampler's generator: the same seed, model and prompt
	// give the same tokens.
	Seed uint64
}

// Check reports a setting that cannot sample, naming it as the CLI flag.
func (s Sampling) Check() error {
	switch {
	case math.IsNaN(s.Temperature) || s.Temperature < 0 || s.Temperature > math.MaxFloat32:
		return fmt.Errorf("temperature %v: must be ≥ 0 and finite (0: greedy)", s.Temperature)
	case s.TopK < 0:
		return fmt.Errorf("top-k %d: must be ≥ 0 (0: no top-k filter)", s.TopK)
	case math.IsNaN(s.TopP) || s.TopP <= 0 || s.TopP > 1:
		return fmt.Errorf("top-p %v: must be in (0, 1] (1: no nucleus filter)", s.TopP)
	}
	return nil
}

// Sampler picks tokens. It holds the random stream, so one Sampler serves
// one generation; it is not safe for concurrent use.
type Sampler struct {
	cfg Sampling
	rng *rand.Rand
	// scratch, reused between calls
	probs []float64
	order []int
	heap  []float32
}

// NewSampler checks cfg and seeds the stream.
func NewSampler(cfg Sampling) (*Sampler, error) {
	if cfg.TopP == 0 {
		cfg.TopP = 1
	}
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	// The second PCG word is fixed: the seed alone picks the stream.
	return &Sampler{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, 0x6c6f7261636367))}, nil
}

// Next returns the next token for one position's logits. The filters run
// in Hugging Face's order: temperature, then top-k, then top-p, then a
// draw from what is left. Logits holding a NaN are an error: a model that
// makes them has no next token worth printing.
func (s *Sampler) Next(logits []float32) (int, error) {
	if len(logits) == 0 {
		return 0, fmt.Errorf("empty logits")
	}
	best := 0
	for i, x := range logits {
		if math.IsNaN(float64(x)) {
			return 0, fmt.Errorf("logit %d is NaN", i)
		}
		if x > logits[best] {
			best = i
		}
	}
	if math.IsInf(float64(logits[best]), -1) {
		return 0, fmt.Errorf("every logit is -Inf")
	}
	// Greedy, or a +Inf logit, which takes all the probability.
	if s.cfg.Temperature == 0 || math.IsInf(float64(logits[best]), 1) {
		return best, nil
	}
	// order: the candidate ids. Top-k keeps the ids at or above the K-th
	// largest logit (found with a K-element heap, so a 150k vocabulary is
	// not sorted for K = 50); top-p needs them most probable first, sorted
	// stably by id on ties so the draw does not depend on sort internals.
	s.order = s.order[:0]
	if k := s.cfg.TopK; k > 0 && k < len(logits) {
		kth := kthLargest(logits, k, &s.heap)
		for i, x := range logits {
			if x >= kth {
				s.order = append(s.order, i)
			}
		}
	} else {
		for i := range logits {
			s.order = append(s.order, i)
		}
	}
	if s.cfg.TopP < 1 {
		sort.SliceStable(s.order, func(a, b int) bool { return logits[s.order[a]] > logits[s.order[b]] })
	}
	// Softmax of logits/T over the kept ids, in float64.
	s.probs = s.probs[:0]
	top := float64(logits[best]) / s.cfg.Temperature
	sum := 0.0
	for _, id := range s.order {
		p := math.Exp(float64(logits[id])/s.cfg.Temperature - top)
		s.probs = append(s.probs, p)
		sum += p
	}
	// Top-p: keep a token while the probability ahead of it is below P
	// (the token that crosses P stays), which is HF's rule read from the
	// other end.
	if s.cfg.TopP < 1 {
		ahead := 0.0
		n := 0
		for n < len(s.probs) && ahead < s.cfg.TopP*sum {
			ahead += s.probs[n]
			n++
		}
		s.probs, s.order = s.probs[:n], s.order[:n]
		sum = ahead
	}
	u := s.rng.Float64() * sum
	for i, p := range s.probs {
		if u < p {
			return s.order[i], nil
		}
		u -= p
	}
	return s.order[len(s.order)-1], nil // rounding left u just past the end
}

// kthLargest returns the k-th largest of xs (1 ≤ k < len(xs)) with a
// min-heap of the k largest seen so far.
func kthLargest(xs []float32, k int, h *[]float32) float32 {
	heap := append((*h)[:0], xs[:k]...)
	down := func(i int) {
		for {
			l, small := 2*i+1, i
			if l < k && heap[l] < heap[small] {
				small = l
			}
			if r := l + 1; r < k && heap[r] < heap[small] {
				small = r
			}
			if small == i {
				return
			}
			heap[i], heap[small] = heap[small], heap[i]
			i = small
		}
	}
	for i := k/2 - 1; i >= 0; i-- {
		down(i)
	}
	for _, x := range xs[k:] {
		if x > heap[0] {
			heap[0] = x
			down(0)
		}
	}
	*h = heap
	return heap[0]
}
