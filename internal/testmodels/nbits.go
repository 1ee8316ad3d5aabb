package testmodels

import "github.com/loracc/loracc/graph"

// NBitsMLP is a 4-bit base as ONNX Runtime's quantizer writes it: two
// com.microsoft MatMulNBits layers (block size 16, packed zero points):
//
//	h = Relu(MatMulNBits(x, fc1 [K=32, N=16]))
//	y = MatMulNBits(h, fc2 [K=16, N=8])
//
// x is float32 [batch, 32], y float32 [batch, 8].
func NBitsMLP() (*graph.Model, error) {
	m := newModel("nbits_mlp")
	m.Opsets = append(m.Opsets, graph.Opset{Domain: "com.microsoft", Version: 1})
	g := m.Graph
	r := newRNG("nbits_mlp")
	b := &graph.Builder{G: g, Prefix: "q4", Domain: "com.microsoft"}
	layer := func(name string, in *graph.Value, k, n int64, out string) (*graph.Value, error) {
		const block = 16
		blocks := (k + block - 1) / block
		packed := make([]byte, n*blocks*block/2)
		for i := range packed {
			packed[i] = byte(r.next())
		}
		scales := make([]float32, n*blocks)
		for i := range scales {
			scales[i] = r.between(0.01, 0.05)
		}
		zp := make([]byte, n*((blocks+1)/2))
		for i := range zp {
			zp[i] = byte(6+r.next()%5) | byte(6+r.next()%5)<<4
		}
		st, err := graph.NewFloatTensor(name+".scales", graph.Float, []int64{n * blocks}, scales)
		if err != nil {
			return nil, err
		}
		return b.Op("MatMulNBits", out, []*graph.Value{in,
			b.Const(graph.NewTensor(name+".weight_Q4", graph.Uint8, []int64{n, blocks, block / 2}, packed)),
			b.Const(st),
			b.Const(graph.NewTensor(name+".zero_points", graph.Uint8, []int64{int64(len(zp))}, zp)),
		}, graph.AttrI("K", k), graph.AttrI("N", n), graph.AttrI("bits", 4), graph.AttrI("block_size", block)), nil
	}
	x := g.AddInput("x", tensorType(graph.Float, batch, fixed(32)))
	h, err := layer("fc1", x, 32, 16, "fc1.out")
	if err != nil {
		return nil, err
	}
	h = (&graph.Builder{G: g, Prefix: "act"}).Op("Relu", "fc1.relu", []*graph.Value{h})
	y, err := layer("fc2", h, 16, 8, "y")
	if err != nil {
		return nil, err
	}
	y.Type = tensorType(graph.Float, batch, fixed(8))
	g.AddOutput(y)
	return m, nil
}
