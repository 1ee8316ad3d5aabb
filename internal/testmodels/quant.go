package testmodels

import "github.com/loracc/loracc/graph"

// QuantizedMLP is a QLoRA-style base: two MatMul layers whose weights are
// DequantizeLinear of int8 constants with per-output-channel scales and
// zero points (axis 1), then of uint8 with one per-tensor scale:
//
//	h = Relu(x · DQ(q1 int8 [16,8], s1 [8], z1 int8 [8]))
//	y = h · DQ(q2 uint8 [8,4], s2 [], z2 uint8 [])
//
// x is float32 [batch, 16], y float32 [batch, 4].
func QuantizedMLP() (*graph.Model, error) {
	m := newModel("quantized_mlp")
	g := m.Graph
	r := newRNG("quantized_mlp")
	b := &graph.Builder{G: g, Prefix: "q"}
	q1 := make([]byte, 16*8)
	for i := range q1 {
		q1[i] = byte(int8(int64(r.next()%255) - 127))
	}
	s1 := make([]float32, 8)
	z1 := make([]byte, 8)
	for i := range s1 {
		s1[i] = r.between(0.002, 0.01)
		z1[i] = byte(int8(int64(r.next()%9) - 4))
	}
	q2 := make([]byte, 8*4)
	for i := range q2 {
		q2[i] = byte(r.next() % 256)
	}
	st1, err := graph.NewFloatTensor("fc1.weight_scale", graph.Float, []int64{8}, s1)
	if err != nil {
		return nil, err
	}
	st2, err := graph.NewFloatTensor("fc2.weight_scale", graph.Float, nil, []float32{0.004})
	if err != nil {
		return nil, err
	}
	x := g.AddInput("x", tensorType(graph.Float, batch, fixed(16)))
	w1 := b.Op("DequantizeLinear", "fc1.weight", []*graph.Value{
		b.Const(graph.NewTensor("fc1.weight_quantized", graph.Int8, []int64{16, 8}, q1)), b.Const(st1),
		b.Const(graph.NewTensor("fc1.weight_zero_point", graph.Int8, []int64{8}, z1))}, graph.AttrI("axis", 1))
	h := b.Op("Relu", "fc1.relu", []*graph.Value{b.Op("MatMul", "fc1.out", []*graph.Value{x, w1})})
	w2 := b.Op("DequantizeLinear", "fc2.weight", []*graph.Value{
		b.Const(graph.NewTensor("fc2.weight_quantized", graph.Uint8, []int64{8, 4}, q2)), b.Const(st2),
		b.Const(graph.NewTensor("fc2.weight_zero_point", graph.Uint8, nil, []byte{128}))})
	y := b.Op("MatMul", "y", []*graph.Value{h, w2})
	y.Type = tensorType(graph.Float, batch, fixed(4))
	g.AddOutput(y)
	return m, nil
}
