package trainstep

// The lm loss in chunks (--recompute loss), part of passes "loss" and
// "autodiff".
//
// Why: the next-token loss works on [tokens, vocab] tensors — the
// logits, their log-probabilities and the gradient, softmax − one-hot —
// which at the start of the backward are the largest values a step holds
// beside what the forward keeps (GPT-2 small at 8 × 512: 823 MB each in
// float32, the 1B Llama's 500 MiB), and the step's memory peaks there.
//
// What: the head's product is taken per sequence of the batch, h_c·W,
// each chunk's log-probabilities scored against its labels, and the
// chunks' sums and counts added. In the forward each chunk's
// log-probabilities die with its gather; the backward recomputes them,
// from h_c + 0·d with d the gradient reaching the chunk's gather (as
// recompute.go does for attention), so ONNX Runtime's depth-first order
// runs each chunk's recomputation, softmax − one-hot and dh_c = g_c·Wᵀ
// before the next's: one sequence's [T, vocab] tensors live at a time.
// The price is the head's product once more per step (the
// recomputation); the loss is the same sum taken in another order
// (equal to the unchunked one within float32 rounding).
//
// Where: the lm loss of a static batch of at least two sequences whose
// logits come straight from the head, MatMul(h, W) with W [H, V], or from
// the aligned Gemm canonicalize pads a wide head to (lmLogits); otherwise
// asking for it is an error naming the reason.

import (
	"fmt"
	"slices"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/opb"
)

// lossChunk is one chunk of a chunked loss: its rows of the head's input
// and the LogSoftmax the backward recomputes.
type lossChunk struct {
	rows *graph.Value
	lp   *graph.Node
}

// errUnfixedBatch: a graph whose batch is not fixed (the dynamic graph
// train --static compiles beside its buckets' static ones) takes its loss
// whole.
const errUnfixedBatch = "the batch size is not fixed (it needs --static)"

// chunkedCrossEntropy is crossEntropySums over the batch's sequences one
// at a time (see the file comment), or ok false with the reason it does
// not apply. labels are the shifted labels [B, T].
func (st *Compiler) chunkedCrossEntropy(c *opb.Builder, logits, labels *graph.Value) (total, weight, valid *graph.Value, ok bool, why string) {
	h, head := lmHead(c, logits)
	if head == nil {
		return nil, nil, nil, false, fmt.Sprintf("the logits %q are not a head's product MatMul(h, W) (a LoRA branch on the head?)", logits.Name)
	}
	dims := c.Inf.Info(h).Dims
	if len(dims) != 3 {
		return nil, nil, nil, false, fmt.Sprintf("the head's input has rank %d, not 3", len(dims))
	}
	b, ok := st.fixedDim(dims[0])
	if !ok && logits.Type != nil && len(logits.Type.Shape) == 3 {
		b, ok = st.fixedDim(logits.Type.Shape[0]) // the same batch, as the model declares it
	}
	if !ok {
		return nil, nil, nil, false, errUnfixedBatch
	}
	if b < 2 {
		return nil, nil, nil, false, fmt.Sprintf("a batch of %d sequence has nothing to chunk", b)
	}
	var totals, weights, valids []*graph.Value
	for i := range b {
		rows := c.Slice(h, i, i+1, 0)
		x := wideLogits(c, head(rows))
		t, w, v := crossEntropySums(c, x, c.Slice(labels, i, i+1, 0), 3, st.opts.IgnoreIndex)
		if err := c.Err(); err != nil {
			return nil, nil, nil, false, err.Error()
		}
		lp, _ := chunkLogSoftmax(x)
		if lp == nil {
			return nil, nil, nil, false, "internal: no LogSoftmax read the chunk's logits"
		}
		st.lossChunks = append(st.lossChunks, lossChunk{rows: rows, lp: lp})
		totals, weights, valids = append(totals, t), append(weights, w), append(valids, v)
	}
	return c.Sum(totals...), c.Sum(weights...), c.Concat(0, valids...), true, ""
}

// fixedDim is d's size: its value, or what --static gives its name.
func (st *Compiler) fixedDim(d graph.Dim) (int64, bool) {
	if d.Known() {
		return d.Value, true
	}
	v, ok := st.opts.Static[d.Param]
	return v, ok && d.Param != ""
}

// chunkLogSoftmax is the LogSoftmax that reads x.
func chunkLogSoftmax(x *graph.Value) (*graph.Node, bool) {
	for _, u := range x.Uses() {
		if u.Node.Op == "LogSoftmax" && u.Node.Domain == "" {
			return u.Node, true
		}
	}
	return nil, false
}

// lmHead recognises logits as head(h) for a function head that computes
// the same product for any rows of h: MatMul(h, W) with W of rank 2 (a
// weight, or the transposed embedding of a tied head), or the padded,
// aligned Gemm of lmLogits. head is nil otherwise.
func lmHead(c *opb.Builder, logits *graph.Value) (*graph.Value, func(*graph.Value) *graph.Value) {
	if h, build := paddedHead(c, logits); build != nil {
		return h, build
	}
	p, _ := logits.Producer()
	if p == nil || p.Op != "MatMul" || p.Domain != "" || c.Inf.Rank(p.Input(1)) != 2 {
		return nil, nil
	}
	w := p.Input(1)
	return p.Input(0), func(rows *graph.Value) *graph.Value { return c.MatMul(rows, w) }
}

// recomputeLoss rewires the backward readers of each chunk's
// log-probabilities (--recompute loss) to a copy of the chunk's head,
// cast and LogSoftmax computed from rows + 0·d (recompute.go's waitOn),
// d a value computed from the loss that the copy's first reader's
// neighbourhood reads (dependency). It returns how many it rewired.
func (st *Compiler) recomputeLoss(m *graph.Model, fwd map[*graph.Node]bool) (int, error) {
	if len(st.lossChunks) == 0 {
		return 0, nil
	}
	g := m.Graph
	pos, late, b, err := st.recomputeSetup(m)
	if err != nil {
		return 0, err
	}
	count := 0
	for _, ch := range st.lossChunks {
		lp := ch.lp.Output(0)
		back := backwardUses(lp, fwd)
		if len(back) == 0 {
			continue
		}
		// The chain from the rows to the LogSoftmax, through each node's
		// first input (the head's product, its reshapes, the cast).
		var chain []*graph.Node
		for n := ch.lp; ; {
			chain = append(chain, n)
			in := n.Input(0)
			if in == ch.rows {
				break
			}
			p, _ := in.Producer()
			if p == nil || !fwd[p] || len(chain) > 8 {
				return count, fmt.Errorf("recompute loss: the chunk's log-probabilities %q do not come from its rows %q through first inputs", lp.Name, ch.rows.Name)
			}
			n = p
		}
		slices.Reverse(chain)
		d := dependency(map[*graph.Value]bool{lp: true}, back, pos, late)
		if d == nil {
			continue
		}
		if err := copyChain(g, b, ch.rows, d, chain, back); err != nil {
			return count, err
		}
		count++
	}
	return count, g.SortTopo()
}
