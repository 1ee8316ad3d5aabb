// Package infer derives what is known before running about the values of
// a graph: element types, ranks and dims, with symbols for the sizes
// exporters leave dynamic. Each op's knowledge is one entry of the table
// in table.go, its functions grouped by op family (elementwise.go,
// reduce.go, shape.go, layout.go, index.go, matmul.go, conv.go); this
// file is the driver: it memoizes, reads declared types and constants,
// asks the producer's entry, and names the dims that stay unknown
// (dims.go holds the helpers the entries share).
package infer

import (
	"github.com/loracc/loracc/graph"
)

// Info is what is known before running about a value: its element
// type, its rank (-1 unknown) and its dims (nil unknown).
type Info struct {
	DType graph.DataType
	Rank  int
	Dims  []graph.Dim
}

// Inferer derives element types and ranks of values the model does not
// annotate, from the ops that produce them. It knows the ops gradient rules
// meet; anything else is unknown, and rules that need a rank say so.
type Inferer struct {
	memo  map[*graph.Value]Info
	rules map[string]opInfer
}

// New returns an Inferer that knows nothing yet about any value.
func New() *Inferer { return &Inferer{memo: map[*graph.Value]Info{}, rules: inferRules()} }

// DType is v's element type, graph.Undefined when unknown.
func (s *Inferer) DType(v *graph.Value) graph.DataType { return s.Info(v).DType }

// Rank is v's rank, -1 when unknown.
func (s *Inferer) Rank(v *graph.Value) int { return s.Info(v).Rank }

// Set records what a pass knows about a value it created.
func (s *Inferer) Set(v *graph.Value, info Info) { s.memo[v] = info }

// Info is everything known about v: from a Set, its constant data, its
// declared type (unnamed dims filled in from its producer) or its
// producer's table entry.
func (s *Inferer) Info(v *graph.Value) Info {
	if v == nil {
		return Info{Rank: -1}
	}
	if in, ok := s.memo[v]; ok {
		return in
	}
	s.memo[v] = Info{Rank: -1} // cycles (invalid graphs) end here
	in := s.compute(v)
	s.memo[v] = in
	return in
}

// rule is n's table entry: "domain::op" where the table has one, else
// the op's name alone, so contrib ops that share an ai.onnx name (Gelu,
// QuantizeLinear, ... of com.microsoft) share its entry. A zero entry
// knows nothing.
func (s *Inferer) rule(n *graph.Node) opInfer {
	if n.Domain != "" && n.Domain != "ai.onnx" {
		if r, ok := s.rules[n.Domain+"::"+n.Op]; ok {
			return r
		}
	}
	return s.rules[n.Op]
}

func (s *Inferer) compute(v *graph.Value) Info {
	if t := graph.ConstTensor(v); t != nil { // initializers and Constant nodes
		return Info{DType: t.DType, Rank: len(t.Dims), Dims: constDims(t.Dims)}
	}
	if v.Type != nil && v.Type.Shape != nil {
		dims := v.Type.Shape
		if hasUnknown(dims) {
			// Exporters leave some dims of value_info unnamed; what the
			// producer implies (e.g. the batch symbol of its input) lets
			// un-broadcasting stay static.
			if derived := s.fromProducer(v); derived.Rank == len(dims) && derived.Dims != nil {
				merged := append([]graph.Dim(nil), dims...)
				for i, d := range merged {
					if !d.Known() && d.Param == "" {
						merged[i] = derived.Dims[i]
					}
				}
				dims = merged
			}
		}
		return Info{DType: v.Type.DType, Rank: len(dims), Dims: nameUnknown(v, len(dims), dims)}
	}
	return s.fromProducer(v)
}

// fromProducer infers v's type and shape from the node computing it.
func (s *Inferer) fromProducer(v *graph.Value) Info {
	in := Info{Rank: -1}
	if v.Type != nil {
		in.DType = v.Type.DType
	}
	n, idx := v.Producer()
	if n == nil {
		return in
	}
	r := s.rule(n)
	if in.DType == graph.Undefined {
		if r.dtype != nil {
			in.DType = r.dtype(s, n, idx)
		} else {
			in.DType = firstTyped(s, n, idx)
		}
	}
	if r.rank != nil {
		in.Rank = r.rank(s, n, idx)
	}
	switch {
	case in.Rank >= 0 && r.dimsAt != nil:
		in.Dims = r.dimsAt(s, n, idx, in.Rank)
	case in.Rank >= 0 && r.dims != nil:
		in.Dims = r.dims(s, n, in.Rank)
	}
	in.Dims = nameUnknown(v, in.Rank, in.Dims)
	return in
}

// Axes returns a node's axes, from its attribute or its constant second
// input (opset 13+ / 18+ forms); ok is false when they are computed.
func (s *Inferer) Axes(n *graph.Node) ([]int64, bool) {
	if a := n.Attr("axes"); a != nil {
		return a.Ints, true
	}
	if n.NumInputs() < 2 || n.Input(1) == nil {
		return nil, true
	}
	t := graph.ConstTensor(n.Input(1))
	if t == nil {
		return nil, false
	}
	xs, err := t.Int64s()
	return xs, err == nil
}

// Length1D is the static length of a 1-D int64 tensor such as a shape
// input, -1 when unknown.
func (s *Inferer) Length1D(v *graph.Value) int {
	if v == nil {
		return -1
	}
	if t := graph.ConstTensor(v); t != nil {
		if len(t.Dims) == 1 {
			return int(t.Dims[0])
		}
		return -1
	}
	if in := s.Info(v); in.Dims != nil && len(in.Dims) == 1 && in.Dims[0].Known() {
		return int(in.Dims[0].Value)
	}
	n, _ := v.Producer()
	if n == nil {
		return -1
	}
	if r := s.rule(n); r.length != nil {
		return r.length(s, n)
	}
	return -1
}

// shapeValue evaluates a 1-D int64 tensor built by shape arithmetic
// (constants, then the ops with a value entry: Shape, Cast, Concat,
// Slice, Gather, Unsqueeze, Squeeze, ...) entry by entry: a number
// (Dim.Value, which may be 0 or −1 here, as Reshape reads them), a symbol
// (Dim.Param), or nil when not derivable.
func (s *Inferer) shapeValue(v *graph.Value) []graph.Dim {
	if v == nil {
		return nil
	}
	if t := graph.ConstTensor(v); t != nil {
		xs, err := t.Int64s()
		if err != nil || len(t.Dims) > 1 {
			return nil
		}
		out := make([]graph.Dim, len(xs))
		for i, x := range xs {
			out[i] = graph.Dim{Value: x}
		}
		return out
	}
	n, _ := v.Producer()
	if n == nil {
		return nil
	}
	if r := s.rule(n); r.value != nil {
		return r.value(s, n)
	}
	return nil
}
