package trainstep

// Part of pass "canonicalize": a decoder's KV cache, left out of the
// training graph.
//
// onnxruntime-genai and Optimum export decoders with the cache as I/O:
// inputs past_key_values.N.key/value [batch, kv_heads, past, head] and
// outputs present.N.key/value [batch, kv_heads, past + seq, head].
// Training runs whole sequences, so the past is empty: each past input
// becomes a zero-length constant of its shape (built from the batch size
// of the input that shares its batch dim, folded to an initializer by
// specialize), and pass prune then drops the present outputs with the
// rest of what the loss does not read. The dim the presents call the
// total length (past + seq) is then the sequence length itself: inputs
// declared with it (attention_mask) are renamed to the sequence dim, so
// the data's one length fills both and --static fixes both. An Optimum
// decoder's position_ids input is computed in the graph (0..S−1).

import (
	"fmt"
	"regexp"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/opb"
)

var pastName = regexp.MustCompile(`^past_key_values\.\d+\.(key|value)$`)

// dropKVCache replaces the past inputs by empty tensors and returns how
// many it replaced.
func (st *Compiler) dropKVCache(m *graph.Model) (int, error) {
	g := m.Graph
	if err := st.inlineNoPastBranch(m); err != nil {
		return 0, err
	}
	var pasts []*graph.Value
	for _, v := range g.Inputs {
		if pastName.MatchString(v.Name) {
			pasts = append(pasts, v)
		}
	}
	if len(pasts) == 0 {
		// A decoder exported without the cache may still take
		// position_ids (the 7B benchmark's Optimum-form Llama does).
		if ids := g.Lookup("input_ids"); ids != nil && ids.IsGraphInput() && ids.Type != nil && len(ids.Type.Shape) == 2 {
			b := opb.New(m, "canonical/kvcache", "canonical/kvcache", st.inf)
			positionIDs(b, g, ids)
			return 0, b.Err()
		}
		return 0, nil
	}
	// seqDim is the sequence dim of the token input (rank 2, same batch
	// dim as the past), the batch source is its Shape[0].
	var tokens *graph.Value
	for _, v := range g.Inputs {
		if v.Type != nil && len(v.Type.Shape) == 2 && v.DType() == graph.Int64 && !pastName.MatchString(v.Name) &&
			len(pasts[0].Type.Shape) == 4 && v.Type.Shape[0] == pasts[0].Type.Shape[0] && (tokens == nil || v.Name == "input_ids") {
			tokens = v
		}
	}
	if tokens == nil {
		return 0, fmt.Errorf("input %q: no int64 [batch, seq] input shares its batch dim, so the empty past cannot be sized", pasts[0].Name)
	}
	b := opb.New(m, "canonical/kvcache", "canonical/kvcache", st.inf)
	batch := b.Slice(b.Shape(tokens), 0, 1, 0)
	for _, p := range pasts {
		d := p.Type.Shape
		if len(d) != 4 || !d[1].Known() || !d[3].Known() {
			return 0, fmt.Errorf("input %q: want [batch, kv_heads, past, head] with kv_heads and head known, got %v", p.Name, d)
		}
		zero, err := graph.NewFloatTensor("zero", p.DType(), []int64{1}, []float32{0})
		if err != nil {
			return 0, fmt.Errorf("input %q: %w", p.Name, err)
		}
		empty := b.Op("ConstantOfShape", []*graph.Value{b.Concat(0, batch, b.Ints(d[1].Value, 0, d[3].Value))}, graph.AttrT("value", zero))
		p.ReplaceAllUsesWith(empty)
	}
	positionIDs(b, g, tokens)
	if err := b.Err(); err != nil {
		return 0, err
	}
	// The presents' length dim is the sequence dim now.
	seqDim := tokens.Type.Shape[1]
	total := map[string]bool{}
	for _, o := range g.Outputs {
		if o.Type != nil && len(o.Type.Shape) == 4 && o.Type.Shape[2].Param != "" && o.Type.Shape[2] != seqDim {
			total[o.Type.Shape[2].Param] = true
		}
	}
	for _, v := range g.Inputs {
		if v.Type == nil {
			continue
		}
		for i, d := range v.Type.Shape {
			if total[d.Param] {
				v.Type.Shape[i] = seqDim
			}
		}
	}
	st.logf("canonicalize: %d KV-cache inputs left out (an empty past; the present outputs are not trained)", len(pasts))
	return len(pasts), nil
}

// inlineNoPastBranch takes the no-past branch of a merged decoder (the
// legacy Optimum decoder_model_merged.onnx: an If on the bool input
// use_cache_branch whose else branch runs without the cache): training
// runs whole sequences, so the If is replaced by that branch's nodes, and
// the cache inputs, then unread, are pruned with use_cache_branch.
func (st *Compiler) inlineNoPastBranch(m *graph.Model) error {
	g := m.Graph
	cond := g.Lookup("use_cache_branch")
	if cond == nil || !cond.IsGraphInput() {
		return nil
	}
	for _, u := range cond.Uses() {
		n := u.Node
		if n.Op != "If" || n.Domain != "" || u.Index != 0 {
			continue
		}
		els := n.Attr("else_branch")
		if els == nil || els.G == nil {
			return fmt.Errorf("node %q (If on use_cache_branch): no else_branch", n.Name)
		}
		if err := inlineBranch(g, n, els.G); err != nil {
			return fmt.Errorf("node %q (If on use_cache_branch): %w", n.Name, err)
		}
		st.logf("canonicalize: the merged decoder's no-past branch inlined (If on use_cache_branch)")
	}
	return nil
}

// inlineBranch replaces If node n by the nodes of its branch b: the
// branch's initializers become main-graph ones, its values are cloned, and
// its outputs take over n's.
func inlineBranch(g *graph.Graph, n *graph.Node, b *graph.Graph) error {
	mapped := map[*graph.Value]*graph.Value{}
	for _, init := range b.Initializers {
		t := graph.ConstTensor(init)
		if t == nil {
			return fmt.Errorf("branch initializer %q has no data", init.Name)
		}
		mapped[init] = g.AddInitializer(t.Clone())
	}
	for _, bn := range b.Nodes {
		if len(bn.Subgraphs()) > 0 {
			return fmt.Errorf("branch node %q (%s) holds a subgraph; only flat branches are inlined", bn.Name, bn.Op)
		}
		ins := make([]*graph.Value, bn.NumInputs())
		for i, in := range bn.Inputs() {
			if w, ok := mapped[in]; ok {
				ins[i] = w
			} else {
				ins[i] = in // an outer-scope value (or an omitted input)
			}
		}
		c, err := g.CloneNode(bn, ins, ".no_past")
		if err != nil {
			return err
		}
		for i, o := range bn.Outputs() {
			if o != nil {
				mapped[o] = c.Output(i)
			}
		}
	}
	outs := make([]*graph.Value, len(b.Outputs))
	for i, o := range b.Outputs {
		w, ok := mapped[o]
		if !ok {
			w = o // the branch passes an outer value through
		}
		outs[i] = w
	}
	if err := replaceOutputs(g, n, outs...); err != nil {
		return err
	}
	return g.SortTopo()
}

// positionIDs replaces a position_ids input [batch, seq] by 0..S−1 on
// every row of tokens, what Hugging Face models compute when they are not
// given (the training batches are right-padded, so positions count from
// each row's start); the data need not carry them.
func positionIDs(b *opb.Builder, g *graph.Graph, tokens *graph.Value) {
	for _, v := range g.Inputs {
		if v.Name != "position_ids" || v.Type == nil || len(v.Type.Shape) != 2 || v.NumUses() == 0 {
			continue
		}
		shape := b.Shape(tokens)
		seq := b.Squeeze(b.Slice(shape, 1, 2, 0), 0)
		pos := b.Range(b.Int0(0), seq, b.Int0(1))
		ids := b.Expand(b.Unsqueeze(pos, 0), shape)
		if v.DType() != graph.Int64 {
			ids = b.Cast(ids, v.DType())
		}
		v.ReplaceAllUsesWith(ids)
	}
}
