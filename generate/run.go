package generate

import (
	"fmt"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/runtime"
)

// Options control one generation.
type Options struct {
	// MaxNewTokens bounds the tokens generated, the stop token included.
	MaxNewTokens int
	Sampling     Sampling
	// Stop lists the ids that end generation (the tokenizer's EOS, a
	// generation_config's eos_token_id list).
	Stop []int
	// NoCache recomputes the whole sequence at every step even when the
	// model has a KV cache: slower, and the reference the cache is checked
	// against.
	NoCache bool
}

// Result is what a generation made.
type Result struct {
	// Tokens are the generated ids, without the stop token.
	Tokens []int
	// Stop is the stop id that ended generation, -1 when MaxNewTokens did.
	Stop int
	// Steps counts model runs.
	Steps int
}

// Generate continues prompt (batch 1) until a stop id or MaxNewTokens.
// emit is called with each new token as soon as it is chosen (not with the
// stop token); an error from it ends generation and is returned.
//
// With a cache the first run feeds the prompt after an empty past, and
// each later run one token, the presents of the run before fed back as
// past and attention_mask and position_ids grown by one; without one,
// every run feeds the whole sequence so far.
func (m *Model) Generate(prompt []int, opts Options, emit func(id int) error) (Result, error) {
	res := Result{Stop: -1}
	if len(prompt) == 0 {
		return res, fmt.Errorf("empty prompt: a causal LM needs at least one token to continue")
	}
	if opts.MaxNewTokens < 1 {
		return res, fmt.Errorf("max new tokens %d: must be at least 1", opts.MaxNewTokens)
	}
	for i, id := range prompt {
		if id < 0 || m.vocab >= 0 && int64(id) >= m.vocab {
			return res, fmt.Errorf("prompt token %d is id %d, outside the model's vocabulary of %d (the tokenizer does not fit the model)", i, id, m.vocab)
		}
	}
	sampler, err := NewSampler(opts.Sampling)
	if err != nil {
		return res, err
	}
	stop := map[int]bool{}
	for _, id := range opts.Stop {
		stop[id] = true
	}
	useCache := m.cache != nil && !opts.NoCache
	seq := append([]int(nil), prompt...)
	var past map[string]runtime.Tensor // nil: empty past
	fed := 0                           // tokens the cache holds
	for len(res.Tokens) < opts.MaxNewTokens {
		step := seq
		if useCache {
			step = seq[fed:]
		} else {
			fed = 0
		}
		logits, presents, err := m.run(step, fed, past, useCache)
		if err != nil {
			return res, fmt.Errorf("step %d (%d tokens): %w", res.Steps+1, len(seq), err)
		}
		res.Steps++
		if useCache {
			past, fed = presents, len(seq)
		}
		id, err := sampler.Next(logits)
		if err != nil {
			return res, fmt.Errorf("step %d: %w", res.Steps, err)
		}
		if stop[id] {
			res.Stop = id
			return res, nil
		}
		res.Tokens = append(res.Tokens, id)
		seq = append(seq, id)
		if err := emit(id); err != nil {
			return res, err
		}
	}
	return res, nil
}

// run feeds ids at positions pastLen.. after past (nil: an empty one, when
// the model has a cache) and returns the last position's logits and, with
// keep, the presents keyed by the past input each one feeds.
func (m *Model) run(ids []int, pastLen int, past map[string]runtime.Tensor, keep bool) ([]float32, map[string]runtime.Tensor, error) {
	n := int64(len(ids))
	total := int64(pastLen) + n
	feeds := map[string]runtime.Tensor{inputIDs: runtime.Int64Tensor([]int64{1, n}, ints64(ids))}
	if m.mask {
		ones := make([]int64, total)
		for i := range ones {
			ones[i] = 1
		}
		feeds[attentionMask] = runtime.Int64Tensor([]int64{1, total}, ones)
	}
	if m.pos {
		pos := make([]int64, n)
		for i := range pos {
			pos[i] = int64(pastLen + i)
		}
		feeds[positionIDs] = runtime.Int64Tensor([]int64{1, n}, pos)
	}
	outputs := []string{m.logits}
	for _, l := range m.cache {
		for _, name := range []string{l.pastKey, l.pastValue} {
			if t, ok := past[name]; ok {
				feeds[name] = t
			} else {
				feeds[name] = runtime.Tensor{DType: l.dtype, Shape: []int64{1, l.heads, 0, l.headDim}}
			}
		}
		if keep {
			outputs = append(outputs, l.presentKey, l.presentValue)
		}
	}
	out, err := m.sess.Run(feeds, outputs)
	if err != nil {
		return nil, nil, err
	}
	logits, err := lastRow(out[m.logits], n)
	if err != nil {
		return nil, nil, fmt.Errorf("output %s: %w", m.logits, err)
	}
	if !keep {
		return logits, nil, nil
	}
	next := make(map[string]runtime.Tensor, 2*len(m.cache))
	for _, l := range m.cache {
		for _, p := range [][2]string{{l.presentKey, l.pastKey}, {l.presentValue, l.pastValue}} {
			t := out[p[0]]
			if len(t.Shape) != 4 || t.Shape[0] != 1 || t.Shape[1] != l.heads || t.Shape[2] != total || t.Shape[3] != l.headDim || t.DType != l.dtype {
				return nil, nil, fmt.Errorf("output %s is %s%v, want %s[1 %d %d %d] to feed back as %s", p[0], t.DType, t.Shape, l.dtype, l.heads, total, l.headDim, p[1])
			}
			next[p[1]] = t
		}
	}
	return logits, next, nil
}

// lastRow returns the logits of the last of n positions of a [1, n, vocab]
// output as float32.
func lastRow(t runtime.Tensor, n int64) ([]float32, error) {
	if len(t.Shape) != 3 || t.Shape[0] != 1 || t.Shape[1] != n || t.Shape[2] < 1 {
		return nil, fmt.Errorf("shape %v, want [1 %d vocab]", t.Shape, n)
	}
	v := t.Shape[2]
	size := t.DType.ByteSize(v)
	if size <= 0 || int64(len(t.Data)) != n*size {
		return nil, fmt.Errorf("%d bytes for %s%v", len(t.Data), t.DType, t.Shape)
	}
	return graph.DecodeFloats(t.DType, t.Data[int64(len(t.Data))-size:])
}

func ints64(ids []int) []int64 {
	out := make([]int64, len(ids))
	for i, id := range ids {
		out[i] = int64(id)
	}
	return out
}
