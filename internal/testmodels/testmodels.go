// Package testmodels builds the small ONNX models loracc's tests run on.
//
// Every builder is deterministic: weights come from a generator seeded by
// the tensor's name (splitmix64), never from global random state, so the
// same builder gives byte-identical files on every machine. The models that
// All lists are committed under testdata/models; TestTestdataUpToDate keeps
// those files equal to what the builders produce (UPDATE_SNAPSHOTS=1
// rewrites them).
//
// Conventions: opset 17 for the default domain, the IR version graph.NewModel
// picks (10), float32 unless the model is about another dtype, a symbolic
// "batch" (and "seq") dimension on every graph input and output, and node
// names made by graph.Builder from a per-layer prefix ("fc1/Gemm_1").
package testmodels

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math"

	"github.com/loracc/loracc/graph"
)

// opset is the default-domain opset of every model here: the first with
// LayerNormalization, and old enough for every runtime we test against.
const opset = 17

// All returns the builders of the models committed under testdata/models,
// keyed by file name without ".onnx". ExternalMLP is not among them: its
// point is size, so tests build it on the fly.
func All() map[string]func() (*graph.Model, error) {
	return map[string]func() (*graph.Model, error){
		"seed":              Seed,
		"mlp_gemm":          MLPGemm,
		"transformer_block": TransformerBlock,
		"constant_weight":   ConstantWeight,
		"if_gemm":           IfGemm,
		"fp16_mlp":          FP16MLP,
		"bf16_matmul":       BF16MatMul,
		"quantized_mlp":     QuantizedMLP,
		"nbits_mlp":         NBitsMLP,
	}
}

// rng is splitmix64: tiny, fast, and good enough for test weights.
type rng struct{ state uint64 }

// newRNG seeds a stream from a tensor name, so adding or reordering tensors
// in a builder leaves every other tensor's values unchanged.
func newRNG(name string) *rng {
	h := fnv.New64a()
	h.Write([]byte(name))
	return &rng{state: h.Sum64()}
}

func (r *rng) next() uint64 {
	r.state += 0x9e3779b97f4a7c15
	z := r.state
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// unit returns a float32 uniform in [0, 1) with 24 random bits, so the
// conversion is exact and identical on every platform.
func (r *rng) unit() float32 { return float32(r.next()>>40) / (1 << 24) }

// between returns a float32 uniform between lo and hi. The conversion of the
// product stops the compiler from fusing it with the add (Go may emit FMA on
// arm64 and others), which would change the rounding from one platform to
// the next.
func (r *rng) between(lo, hi float32) float32 { return lo + float32((hi-lo)*r.unit()) }

// uniform makes a tensor named name of values uniform between lo and hi,
// drawn from the name's stream in float32 and then converted to dt. float32
// data is written straight into the byte buffer so gigabyte tensors are not
// held twice.
func uniform(name string, dt graph.DataType, dims []int64, lo, hi float32) (*graph.Tensor, error) {
	n, err := graph.NumElements(dims)
	if err != nil || n == 0 || n > math.MaxInt64/8 {
		return nil, fmt.Errorf("testmodels: tensor %q: bad dims %v", name, dims)
	}
	r := newRNG(name)
	if dt == graph.Float {
		raw := make([]byte, 4*n)
		for i := int64(0); i < n; i++ {
			binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(r.between(lo, hi)))
		}
		return graph.NewTensor(name, dt, dims, raw), nil
	}
	vals := make([]float32, n)
	for i := range vals {
		vals[i] = r.between(lo, hi)
	}
	t, err := graph.NewFloatTensor(name, dt, dims, vals)
	if err != nil {
		return nil, fmt.Errorf("testmodels: tensor %q: %w", name, err)
	}
	return t, nil
}

// weight is a tensor uniform in ±0.5, the default for weights and biases.
func weight(name string, dt graph.DataType, dims ...int64) (*graph.Tensor, error) {
	return uniform(name, dt, dims, -0.5, 0.5)
}

// Shapes of graph inputs and outputs.

var (
	batch = graph.Dim{Param: "batch"}
	seq   = graph.Dim{Param: "seq"}
)

func fixed(n int64) graph.Dim { return graph.Dim{Value: n} }

// tensorType is a tensor type of known rank; no dims is a scalar (an empty,
// not a nil, shape: nil would mean "rank unknown").
func tensorType(dt graph.DataType, dims ...graph.Dim) *graph.TensorType {
	return &graph.TensorType{DType: dt, Shape: append([]graph.Dim{}, dims...)}
}

// newModel makes an opset-17 model whose main graph is called name.
func newModel(name string) *graph.Model {
	m := graph.NewModel(opset)
	m.Graph.Name = name
	return m
}

// consts adds each tensor as an initializer, stopping at the first error
// from the tensor constructors (passed through so builders stay linear).
type consts struct {
	b   *graph.Builder
	err error
}

func (c *consts) add(t *graph.Tensor, err error) *graph.Value {
	if err != nil {
		if c.err == nil {
			c.err = err
		}
		return nil
	}
	return c.b.Const(t)
}
