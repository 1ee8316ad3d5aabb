package trainstep

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/ortest"
	"github.com/loracc/loracc/internal/testmodels"
	"github.com/loracc/loracc/runtime"
)

// gqaCase is one GroupQueryAttention configuration.
type gqaCase struct {
	name                 string
	batch, seq, past     int64
	heads, kvHeads, head int64
	rotaryHalf           int64 // cos/sin cache width (r/2); 0: no rotary
	interleaved, packed  bool
	softcap              float32
	window               int64 // local_window_size; -1 none
	lens                 []int64
	fp16                 bool // inputs, caches and outputs in float16
}

// dtype is the case's float type.
func (c gqaCase) dtype() graph.DataType {
	if c.fp16 {
		return graph.Float16
	}
	return graph.Float
}

// TestGQADecompositionMatchesORT: the decomposition of GroupQueryAttention
// gives ORT's own CPU kernel's output and present key/value (‖Δ‖/‖ref‖ ≤
// 1e-5) for grouped and ungrouped heads, rotary by halves and
// interleaved, partial rotary, softcap, a local window, packed QKV, a
// past, and right-padded rows (compared up to each row's length: see
// contrib.go for why rows past it do not matter); and in float16 (the
// builder's CUDA models), where the decomposition computes in float16 and
// ORT's kernel in float32 inside: ≤ 1e-3, two units of fp16 rounding
// (2⁻¹¹ ≈ 4.9e-4) — measured 2.8e-4 to 3.3e-4, the presents exact.
func TestGQADecompositionMatchesORT(t *testing.T) {
	e := ortest.Env(t)
	for _, c := range []gqaCase{
		{name: "grouped, rotary halves", batch: 2, seq: 5, heads: 4, kvHeads: 2, head: 16, rotaryHalf: 8, window: -1},
		{name: "ungrouped, no rotary", batch: 1, seq: 6, heads: 2, kvHeads: 2, head: 8, window: -1},
		{name: "multi-query, interleaved rotary", batch: 2, seq: 4, heads: 4, kvHeads: 1, head: 16, rotaryHalf: 8, interleaved: true, window: -1},
		{name: "partial rotary", batch: 1, seq: 5, heads: 2, kvHeads: 1, head: 32, rotaryHalf: 8, window: -1},
		{name: "softcap", batch: 1, seq: 5, heads: 2, kvHeads: 1, head: 8, softcap: 0.5, window: -1},
		{name: "local window", batch: 1, seq: 7, heads: 2, kvHeads: 1, head: 16, rotaryHalf: 8, window: 2},
		{name: "local window 4, with past", batch: 1, seq: 6, past: 3, heads: 4, kvHeads: 2, head: 8, window: 4},
		{name: "packed qkv", batch: 2, seq: 3, heads: 4, kvHeads: 2, head: 16, rotaryHalf: 8, packed: true, window: -1},
		{name: "right padding", batch: 2, seq: 6, heads: 2, kvHeads: 1, head: 16, rotaryHalf: 8, window: -1, lens: []int64{6, 3}},
		{name: "with past", batch: 1, seq: 3, past: 4, heads: 2, kvHeads: 1, head: 16, rotaryHalf: 8, window: -1},
		{name: "fp16, grouped, rotary, right padding", batch: 2, seq: 6, heads: 4, kvHeads: 2, head: 16, rotaryHalf: 8, window: -1, lens: []int64{6, 4}, fp16: true},
		{name: "fp16, packed, past, local window", batch: 1, seq: 5, past: 3, heads: 4, kvHeads: 2, head: 16, rotaryHalf: 8, packed: true, window: 3, fp16: true},
		{name: "fp16, softcap", batch: 1, seq: 5, heads: 2, kvHeads: 1, head: 8, softcap: 0.5, window: -1, fp16: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, feeds := gqaModel(t, c)
			want, got := decomposeAndRun(t, e, m, m, feeds)
			valid := func(b, s int64) bool { return c.lens == nil || s < c.lens[b] }
			tol := 1e-5
			if c.fp16 {
				tol = 1e-3
			}
			for _, name := range []string{"output", "present_key", "present_value"} {
				w, err1 := graph.DecodeFloats(want[name].DType, want[name].Data)
				g, err2 := graph.DecodeFloats(got[name].DType, got[name].Data)
				if err1 != nil || err2 != nil || len(w) != len(g) || got[name].DType != c.dtype() {
					t.Fatalf("%s: %d values of %s, ORT %d (%v, %v)", name, len(g), got[name].DType, len(w), err1, err2)
				}
				shape := want[name].Shape
				var num, den float64
				for i := range w {
					var b, s int64
					if name == "output" { // [B, S, H·D]
						b, s = int64(i)/(shape[1]*shape[2]), int64(i)/shape[2]%shape[1]
					} else { // [B, Hkv, P+S, D]
						b, s = int64(i)/(shape[1]*shape[2]*shape[3]), int64(i)/shape[3]%shape[2]-c.past
					}
					if s >= 0 && !valid(b, s) {
						continue
					}
					d := float64(g[i] - w[i])
					num, den = num+d*d, den+float64(w[i])*float64(w[i])
				}
				rel := math.Sqrt(num / den)
				if c.fp16 {
					t.Logf("%s: ‖Δ‖/‖ref‖ = %.3g", name, rel)
				}
				if !(rel <= tol) {
					t.Errorf("%s: ‖Δ‖/‖ref‖ = %.3g", name, rel)
				}
			}
		})
	}
}

// gqaModel builds one GroupQueryAttention node over random inputs (graph
// inputs, with feeds) and its rotary caches (initializers).
func gqaModel(t *testing.T, c gqaCase) (*graph.Model, map[string]runtime.Tensor) {
	t.Helper()
	m := graph.NewModel(17)
	m.Opsets = append(m.Opsets, graph.Opset{Domain: "com.microsoft", Version: 1})
	g := m.Graph
	in := newTestInputs(g, rand.New(rand.NewPCG(uint64(c.seq*131+c.heads*7+c.head), 3)))
	randIn := func(name string, dims ...int64) *graph.Value { return in.floatOf(t, name, c.dtype(), dims...) }
	int32In := in.int32s
	var ins []*graph.Value
	if c.packed {
		ins = []*graph.Value{randIn("query", c.batch, c.seq, (c.heads+2*c.kvHeads)*c.head), nil, nil}
	} else {
		ins = []*graph.Value{randIn("query", c.batch, c.seq, c.heads*c.head), randIn("key", c.batch, c.seq, c.kvHeads*c.head), randIn("value", c.batch, c.seq, c.kvHeads*c.head)}
	}
	if c.past > 0 {
		ins = append(ins, randIn("past_key", c.batch, c.kvHeads, c.past, c.head), randIn("past_value", c.batch, c.kvHeads, c.past, c.head))
	} else {
		ins = append(ins, nil, nil)
	}
	lens := make([]int32, c.batch)
	for i := range lens {
		lens[i] = int32(c.past + c.seq - 1)
		if c.lens != nil {
			lens[i] = int32(c.past + c.lens[i] - 1)
		}
	}
	ins = append(ins, int32In("seqlens_k", []int64{c.batch}, lens), int32In("total_sequence_length", nil, []int32{int32(c.past + c.seq)}))
	b := &graph.Builder{G: g, Prefix: "t"}
	attrs := []*graph.Attr{graph.AttrI("num_heads", c.heads), graph.AttrI("kv_num_heads", c.kvHeads), graph.AttrI("local_window_size", c.window)}
	if c.rotaryHalf > 0 {
		const maxLen = 16
		cos, sin := testmodels.RotaryCaches(maxLen, c.rotaryHalf)
		ct, err := graph.NewFloatTensor("cos_cache", c.dtype(), []int64{maxLen, c.rotaryHalf}, cos)
		if err != nil {
			t.Fatal(err)
		}
		st, err := graph.NewFloatTensor("sin_cache", c.dtype(), []int64{maxLen, c.rotaryHalf}, sin)
		if err != nil {
			t.Fatal(err)
		}
		ins = append(ins, b.Const(ct), b.Const(st))
		attrs = append(attrs, graph.AttrI("do_rotary", 1), graph.AttrI("rotary_interleaved", boolInt(c.interleaved)))
	}
	if c.softcap > 0 {
		attrs = append(attrs, graph.AttrF("softcap", c.softcap))
	}
	nb := &graph.Builder{G: g, Prefix: "t", Domain: "com.microsoft"}
	outs := nb.OpN("GroupQueryAttention", []string{"output", "present_key", "present_value"}, ins, attrs...)
	// Declared shapes: the runtime returns a float16 output only when it
	// knows its shape before the run.
	for i, o := range outs {
		o.Type = &graph.TensorType{DType: c.dtype(), Shape: []graph.Dim{{Value: c.batch}, {Value: c.kvHeads}, {Value: c.past + c.seq}, {Value: c.head}}}
		if i == 0 {
			o.Type.Shape = []graph.Dim{{Value: c.batch}, {Value: c.seq}, {Value: c.heads * c.head}}
		}
		g.AddOutput(o)
	}
	return m, in.feeds
}

// testInputs adds graph inputs (with their feeds) and initializers of
// random values to a test model.
type testInputs struct {
	g     *graph.Graph
	rng   *rand.Rand
	feeds map[string]runtime.Tensor
}

func newTestInputs(g *graph.Graph, rng *rand.Rand) *testInputs {
	return &testInputs{g: g, rng: rng, feeds: map[string]runtime.Tensor{}}
}

func (in *testInputs) random(n int64, scale float64) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(scale * (2*in.rng.Float64() - 1))
	}
	return x
}

// float is a float32 graph input of values in [-1, 1].
func (in *testInputs) float(name string, dims ...int64) *graph.Value {
	in.feeds[name] = runtime.FloatTensor(dims, in.random(numel(dims), 1))
	return in.g.AddInput(name, &graph.TensorType{DType: graph.Float, Shape: static(dims)})
}

// floatOf is a graph input of type dt (fp32, fp16 or bf16) of values in
// [-1, 1].
func (in *testInputs) floatOf(t *testing.T, name string, dt graph.DataType, dims ...int64) *graph.Value {
	t.Helper()
	raw, err := graph.EncodeFloats(dt, in.random(numel(dims), 1))
	if err != nil {
		t.Fatal(err)
	}
	in.feeds[name] = runtime.Tensor{DType: dt, Shape: dims, Data: raw}
	return in.g.AddInput(name, &graph.TensorType{DType: dt, Shape: static(dims)})
}

// weight is a float32 initializer of values in [-scale, scale].
func (in *testInputs) weight(t *testing.T, name string, scale float64, dims ...int64) *graph.Value {
	t.Helper()
	w, err := graph.NewFloatTensor(name, graph.Float, dims, in.random(numel(dims), scale))
	if err != nil {
		t.Fatal(err)
	}
	return in.g.AddInitializer(w)
}

// int32s is an int32 graph input with the given values.
func (in *testInputs) int32s(name string, dims []int64, vals []int32) *graph.Value {
	raw := make([]byte, 4*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint32(raw[4*i:], uint32(v))
	}
	in.feeds[name] = runtime.Tensor{DType: graph.Int32, Shape: dims, Data: raw}
	return in.g.AddInput(name, &graph.TensorType{DType: graph.Int32, Shape: static(dims)})
}

func numel(dims []int64) int64 {
	n := int64(1)
	for _, d := range dims {
		n *= d
	}
	return n
}

func static(dims []int64) []graph.Dim {
	shape := make([]graph.Dim, len(dims))
	for i, d := range dims {
		shape[i] = graph.Dim{Value: d}
	}
	return shape
}

// decomposedMatchesORT checks that ORT's CPU kernel on ref and the
// decomposition of m give the same outputs (‖Δ‖/‖ref‖ ≤ 1e-5).
func decomposedMatchesORT(t *testing.T, e *runtime.Env, ref, m *graph.Model, feeds map[string]runtime.Tensor, outputs ...string) {
	t.Helper()
	want, got := decomposeAndRun(t, e, ref, m, feeds)
	for _, name := range outputs {
		w, _ := want[name].Floats()
		g, _ := got[name].Floats()
		if len(w) != len(g) || len(w) == 0 {
			t.Fatalf("%s: %d values, ORT %d", name, len(g), len(w))
		}
		var num, den float64
		for i := range w {
			d := float64(g[i] - w[i])
			num, den = num+d*d, den+float64(w[i])*float64(w[i])
		}
		rel := math.Sqrt(num / den)
		t.Logf("%s: ‖Δ‖/‖ref‖ = %.3g", name, rel)
		if !(rel <= 1e-5) {
			t.Errorf("%s: ‖Δ‖/‖ref‖ = %.3g", name, rel)
		}
	}
}

// decomposeAndRun saves ref, decomposes m's one contrib node (checking
// that no contrib op is left), and runs both under ORT on the CPU: want
// is ref's outputs, got m's. ref may be m itself (it is saved before m
// is decomposed).
func decomposeAndRun(t *testing.T, e *runtime.Env, ref, m *graph.Model, feeds map[string]runtime.Tensor) (want, got map[string]runtime.Tensor) {
	t.Helper()
	dir := t.TempDir()
	refPath, decPath := filepath.Join(dir, "ref.onnx"), filepath.Join(dir, "dec.onnx")
	if err := graph.Save(ref, refPath, graph.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	if k, err := Decompose(m); err != nil || k != 1 {
		t.Fatalf("Decompose: %d, %v", k, err)
	}
	m.Graph.Walk(func(n *graph.Node) {
		if n.Domain != "" {
			t.Errorf("node %q keeps domain %s", n.Name, n.Domain)
		}
	})
	if err := graph.Save(m, decPath, graph.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	return runAll(t, e, refPath, feeds), runAll(t, e, decPath, feeds)
}

// runAll runs the model at path on the CPU and returns every output.
func runAll(t *testing.T, e *runtime.Env, path string, feeds map[string]runtime.Tensor) map[string]runtime.Tensor {
	t.Helper()
	s, err := e.NewSession(path, runtime.SessionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var names []string
	for _, o := range s.Outputs() {
		names = append(names, o.Name)
	}
	in := map[string]runtime.Tensor{}
	for _, i := range s.Inputs() {
		v, ok := feeds[i.Name]
		if !ok {
			t.Fatalf("no feed for %q", i.Name)
		}
		in[i.Name] = v
	}
	out, err := s.Run(in, names)
	if err != nil {
		t.Fatal(fmt.Errorf("%s: %w", path, err))
	}
	return out
}

// TestRotaryDecompositionMatchesORT: the decomposition of com.microsoft
// RotaryEmbedding gives ORT's CPU kernel's output (‖Δ‖/‖ref‖ ≤ 1e-5) for
// BSNH and BNSH inputs, halves and interleaved pairs, a partial rotary and
// both forms of position_ids.
func TestRotaryDecompositionMatchesORT(t *testing.T) {
	e := ortest.Env(t)
	for _, c := range []struct {
		name                   string
		dims                   []int64
		half, rotDim, numHeads int64
		interleaved, offset    bool
	}{
		{name: "BSNH, whole head", dims: []int64{2, 5, 32}, half: 8},
		{name: "BSNH, partial, num_heads", dims: []int64{2, 5, 64}, half: 4, rotDim: 8, numHeads: 4},
		{name: "BNSH, interleaved", dims: []int64{2, 3, 5, 16}, half: 8, interleaved: true},
		{name: "BNSH, offset positions", dims: []int64{1, 2, 4, 16}, half: 8, offset: true},
		{name: "BSNH, interleaved, offset", dims: []int64{1, 6, 32}, half: 8, interleaved: true, offset: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := graph.NewModel(17)
			m.Opsets = append(m.Opsets, graph.Opset{Domain: "com.microsoft", Version: 1})
			g := m.Graph
			in := newTestInputs(g, rand.New(rand.NewPCG(uint64(len(c.name)), 9)))
			x, feeds := in.float("x", c.dims...), in.feeds
			seq := c.dims[1]
			if len(c.dims) == 4 {
				seq = c.dims[2]
			}
			var pos *graph.Value
			if c.offset {
				feeds["pos"] = runtime.Int64Tensor([]int64{1}, []int64{3})
				pos = g.AddInput("pos", &graph.TensorType{DType: graph.Int64, Shape: []graph.Dim{{Value: 1}}})
			} else {
				ids := make([]int64, c.dims[0]*seq)
				for i := range ids {
					ids[i] = int64(i%int(seq)) + int64(i/int(seq))*2
				}
				feeds["pos"] = runtime.Int64Tensor([]int64{c.dims[0], seq}, ids)
				pos = g.AddInput("pos", &graph.TensorType{DType: graph.Int64, Shape: []graph.Dim{{Value: c.dims[0]}, {Value: seq}}})
			}
			const maxLen = 16
			cos, sin := testmodels.RotaryCaches(maxLen, c.half)
			b := &graph.Builder{G: g, Prefix: "t"}
			ct, _ := graph.NewFloatTensor("cos_cache", graph.Float, []int64{maxLen, c.half}, cos)
			st, _ := graph.NewFloatTensor("sin_cache", graph.Float, []int64{maxLen, c.half}, sin)
			attrs := []*graph.Attr{graph.AttrI("interleaved", boolInt(c.interleaved))}
			if c.rotDim > 0 {
				attrs = append(attrs, graph.AttrI("rotary_embedding_dim", c.rotDim), graph.AttrI("num_heads", c.numHeads))
			}
			nb := &graph.Builder{G: g, Prefix: "t", Domain: "com.microsoft"}
			y := nb.Op("RotaryEmbedding", "output", []*graph.Value{x, pos, b.Const(ct), b.Const(st)}, attrs...)
			y.Type = &graph.TensorType{DType: graph.Float}
			g.AddOutput(y)
			decomposedMatchesORT(t, e, m, m, feeds, "output")
		})
	}
}

// TestMHADecompositionMatchesORT: the decomposition of com.microsoft
// MultiHeadAttention gives ORT's CPU kernel's output and presents
// (‖Δ‖/‖ref‖ ≤ 1e-5) for self- and cross-attention, with bias, a key
// padding mask, unidirectional masking, a past, an attention bias, a
// value head wider than the query's, and key and value given as heads
// [B, N, L, H] (the cross-attention cache form: with a padding mask, with
// a bias, of which the kernel adds the query's part alone, and
// unidirectional with one query, which sees every key).
func TestMHADecompositionMatchesORT(t *testing.T) {
	e := ortest.Env(t)
	for _, c := range []struct {
		name                    string
		b, s, l, past, heads, h int64
		vh                      int64 // value head size; 0: h
		bias, padding, uni, ab  bool
		asHeads                 bool // key and value [B, N, L, H]
	}{
		{name: "self", b: 2, s: 5, l: 5, heads: 2, h: 8},
		{name: "self, bias, padding", b: 2, s: 5, l: 5, heads: 2, h: 8, bias: true, padding: true},
		{name: "unidirectional with past", b: 1, s: 3, l: 3, past: 4, heads: 2, h: 8, uni: true},
		{name: "cross, attention bias", b: 2, s: 4, l: 6, heads: 4, h: 4, ab: true},
		{name: "cross, wider value heads, bias", b: 2, s: 3, l: 5, heads: 2, h: 4, vh: 6, bias: true},
		{name: "key and value as heads, padding", b: 2, s: 4, l: 6, heads: 2, h: 8, asHeads: true, padding: true},
		{name: "key and value as heads, bias", b: 2, s: 3, l: 5, heads: 2, h: 8, asHeads: true, bias: true},
		{name: "key and value as heads, unidirectional, one query", b: 2, s: 1, l: 5, heads: 2, h: 8, asHeads: true, uni: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := graph.NewModel(17)
			m.Opsets = append(m.Opsets, graph.Opset{Domain: "com.microsoft", Version: 1})
			g := m.Graph
			in := newTestInputs(g, rand.New(rand.NewPCG(uint64(len(c.name)), 11)))
			vh := c.vh
			if vh == 0 {
				vh = c.h
			}
			d := c.heads * c.h
			ins := make([]*graph.Value, 8)
			ins[0] = in.float("q", c.b, c.s, d)
			if c.asHeads {
				ins[1], ins[2] = in.float("k", c.b, c.heads, c.l, c.h), in.float("v", c.b, c.heads, c.l, vh)
			} else {
				ins[1], ins[2] = in.float("k", c.b, c.l, d), in.float("v", c.b, c.l, c.heads*vh)
			}
			if c.bias {
				ins[3] = in.float("bias", 2*d+c.heads*vh)
			}
			total := c.past + c.l
			if c.padding {
				vals := make([]int32, c.b*total)
				for i := range vals {
					if int64(i)%total < total-int64(i)/total { // row b masks its last b keys
						vals[i] = 1
					}
				}
				ins[4] = in.int32s("mask", []int64{c.b, total}, vals)
			}
			if c.ab {
				ins[5] = in.float("ab", 1, c.heads, c.s, total)
			}
			if c.past > 0 {
				ins[6], ins[7] = in.float("pk", c.b, c.heads, c.past, c.h), in.float("pv", c.b, c.heads, c.past, vh)
			}
			for len(ins) > 0 && ins[len(ins)-1] == nil {
				ins = ins[:len(ins)-1]
			}
			nb := &graph.Builder{G: g, Prefix: "t", Domain: "com.microsoft"}
			outs := nb.OpN("MultiHeadAttention", []string{"output", "present_key", "present_value"}, ins,
				graph.AttrI("num_heads", c.heads), graph.AttrI("unidirectional", boolInt(c.uni)))
			for _, o := range outs {
				o.Type = &graph.TensorType{DType: graph.Float}
				g.AddOutput(o)
			}
			decomposedMatchesORT(t, e, m, m, in.feeds, "output", "present_key", "present_value")
		})
	}
}
