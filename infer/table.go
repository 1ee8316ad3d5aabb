package infer

import "github.com/loracc/loracc/graph"

// opInfer is what one op's entry knows. Every field may be nil: dtype
// then defaults to the first typed input's, the others to unknown.
type opInfer struct {
	// dtype is the element type of output idx.
	dtype func(s *Inferer, n *graph.Node, idx int) graph.DataType
	// rank is the rank of output idx, -1 when unknown.
	rank func(s *Inferer, n *graph.Node, idx int) int
	// dims are the output's dims once its rank is known (≥ 0): known
	// sizes, symbols, Value −1 for unknown; nil when not derivable.
	dims func(s *Inferer, n *graph.Node, rank int) []graph.Dim
	// dimsAt is dims for ops whose outputs differ in shape (Split),
	// used instead of dims when set.
	dimsAt func(s *Inferer, n *graph.Node, idx, rank int) []graph.Dim
	// value evaluates a 1-D int64 output built by shape arithmetic entry
	// by entry (see shapeValue), nil when not derivable.
	value func(s *Inferer, n *graph.Node) []graph.Dim
	// length is the static length of a 1-D output (see Length1D), -1
	// when unknown.
	length func(s *Inferer, n *graph.Node) int
}

// with returns r with its element-type rule replaced.
func (r opInfer) with(dtype func(s *Inferer, n *graph.Node, idx int) graph.DataType) opInfer {
	r.dtype = dtype
	return r
}

// inferRules is the table of inference rules, one entry per op. Keys are
// op names, or "domain::op" for an op that means something else in its
// domain (none yet: the contrib ops met share ai.onnx semantics).
// An op missing from the table infers nothing but its element type (the
// first typed input's).
func inferRules() map[string]opInfer {
	bcast, same := broadcast(), sameShape()
	norm := opInfer{rank: normRank, dimsAt: normDims}
	toBool, toInt64 := fixedType(graph.Bool), fixedType(graph.Int64)
	data := typeOf(0) // the other inputs are shapes, indices, axes or exponents
	reduce := opInfer{rank: reduceRank, dims: reduceDims}
	window := opInfer{rank: rankOf(0), dims: windowDims}
	return map[string]opInfer{
		// broadcasting elementwise ops (elementwise.go)
		"Add": bcast, "Sub": bcast, "Mul": bcast, "Div": bcast, "Max": bcast, "Min": bcast,
		"Sum": bcast, "Mod": bcast, "PRelu": bcast, "BitShift": bcast,
		"Pow":   bcast.with(data),
		"Where": bcast.with(typeOf(1)),
		"Equal": bcast.with(toBool), "Less": bcast.with(toBool), "Greater": bcast.with(toBool),
		"LessOrEqual": bcast.with(toBool), "GreaterOrEqual": bcast.with(toBool),
		"And": bcast.with(toBool), "Or": bcast.with(toBool), "Xor": bcast.with(toBool),

		// output 0 shaped like input 0 (elementwise.go)
		"Relu": same, "Tanh": same, "Sigmoid": same, "Exp": same, "Log": same, "Sqrt": same,
		"Neg": same, "Reciprocal": same, "Erf": same, "Gelu": same, "Abs": same, "Sin": same,
		"Cos": same, "Softplus": same, "LeakyRelu": same, "Elu": same, "HardSigmoid": same,
		"HardSwish": same, "Sign": same, "Floor": same, "Ceil": same, "Round": same,
		"Softmax": same, "LogSoftmax": same,
		"BatchNormalization": same, "InstanceNormalization": same, "LRN": same,
		"QuantizeLinear":                   same,
		"LayerNormalization":               norm.with(layerNormType),
		"SimplifiedLayerNormalization":     norm.with(layerNormType),
		"SkipSimplifiedLayerNormalization": norm.with(skipNormType), // com.microsoft
		"Dropout":                          same.with(data), "CumSum": same.with(data), "Clip": same.with(data), "Trilu": same.with(data),
		"IsNaN": same.with(toBool), "IsInf": same.with(toBool), "Not": same.with(toBool),
		"DequantizeLinear": same.with(typeOf(1)),
		"CastLike":         same.with(typeOf(1)),
		"Cast":             {dtype: castType, rank: sameRank, dims: sameDims, value: castValue, length: passLength},
		"Identity":         {rank: sameRank, dims: sameDims, value: passValue, length: passLength},
		"NonZero":          {dtype: toInt64}, "ArgMax": {dtype: toInt64}, "ArgMin": {dtype: toInt64},

		// reductions (reduce.go)
		"ReduceSum": reduce, "ReduceMean": reduce, "ReduceMax": reduce, "ReduceMin": reduce,
		"ReduceProd": reduce, "ReduceL2": reduce, "ReduceSumSquare": reduce, "ReduceLogSumExp": reduce,

		// contractions (matmul.go)
		"MatMul": {rank: matMulRank, dims: matMulDims},
		// com.microsoft MatMulNBits: A [..., K] times the packed [K, N] weight.
		"com.microsoft::MatMulNBits": {dtype: typeOf(0), rank: rankOf(0), dims: nbitsDims},
		"Gemm":                       {rank: rank2, dims: gemmDims},

		// convolution and pooling (conv.go)
		"Conv": window, "AveragePool": window, "LpPool": window,
		"GlobalAveragePool": window, "GlobalMaxPool": window,
		"MaxPool":       window.with(maxPoolType),
		"ConvTranspose": {rank: rankOf(0)}, "Upsample": {rank: rankOf(0)},
		"Resize": {dtype: data, rank: rankOf(0)},

		// shapes and tensors made from them (shape.go)
		"Shape":           {dtype: toInt64, rank: rankOne, dims: shapeDims, value: shapeEntries, length: shapeLength},
		"Size":            {dtype: toInt64, rank: rankZero},
		"Reshape":         {dtype: data, rank: shapeInputRank(1), dims: reshapeDims},
		"Expand":          {dtype: data, rank: expandRank, dims: expandDims},
		"ConstantOfShape": {dtype: constantOfShapeType, rank: shapeInputRank(0)},
		"Range":           {rank: rankOne},
		"Constant":        {dtype: constantType, rank: constantRank},
		"Flatten":         {dtype: data, rank: rank2},

		// data movement (layout.go)
		"Unsqueeze": {dtype: data, rank: unsqueezeRank, dims: unsqueezeDims, value: oneEntryValue, length: unsqueezeLength},
		"Squeeze":   {dtype: data, rank: squeezeRank, dims: squeezeDims, value: oneEntryValue},
		"Concat":    {rank: rankOf(0), dims: concatDims, value: concatValue, length: concatLength},
		"Transpose": {dtype: data, rank: rankOf(0), dims: transposeDims},
		"Split":     {dtype: data, rank: rankOf(0), dimsAt: splitDims}, "Pad": {dtype: data, rank: rankOf(0)},
		"Tile": {dtype: data, rank: rankOf(0)},

		// indexing (index.go)
		"Slice":    {dtype: data, rank: rankOf(0), dims: sliceDims, value: sliceValue, length: sliceLength},
		"Gather":   {dtype: data, rank: gatherRank, dims: gatherDims, value: gatherValue, length: gatherLength},
		"GatherND": {dtype: data, rank: gatherNDRank},
		// com.microsoft GatherBlockQuantized: a Gather of a quantized
		// table, dequantized to the scales' type.
		"com.microsoft::GatherBlockQuantized": {dtype: typeOf(2), rank: gatherRank, dims: gbqDims},
		"GatherElements":                      {dtype: data, rank: rankOf(1), dims: gatherElementsDims},
		"ScatterND":                           {dtype: data, rank: rankOf(0), dims: sameDims},
		"ScatterElements":                     {dtype: data, rank: rankOf(0), dims: sameDims},
	}
}

// firstTyped is the default element type: the first input's that is
// known.
func firstTyped(s *Inferer, n *graph.Node, _ int) graph.DataType {
	for _, in := range n.Inputs() {
		if dt := s.DType(in); dt != graph.Undefined {
			return dt
		}
	}
	return graph.Undefined
}

// typeOf is input i's element type, for ops whose other inputs are of
// other types.
func typeOf(i int) func(s *Inferer, n *graph.Node, idx int) graph.DataType {
	return func(s *Inferer, n *graph.Node, _ int) graph.DataType { return s.DType(n.Input(i)) }
}

// fixedType is one element type whatever the inputs (Shape's int64,
// comparisons' bool).
func fixedType(dt graph.DataType) func(s *Inferer, n *graph.Node, idx int) graph.DataType {
	return func(*Inferer, *graph.Node, int) graph.DataType { return dt }
}

// rankOf is input i's rank, for every output (Split's, MaxPool's
// indices, ...).
func rankOf(i int) func(s *Inferer, n *graph.Node, idx int) int {
	return func(s *Inferer, n *graph.Node, _ int) int { return s.Rank(n.Input(i)) }
}

// nbitsDims are A's dims with the last one N (MatMulNBits' attribute).
func nbitsDims(s *Inferer, n *graph.Node, rank int) []graph.Dim {
	in := s.Info(n.Input(0)).Dims
	nOut := n.AttrInt("N", 0)
	if len(in) != rank || rank == 0 || nOut <= 0 {
		return nil
	}
	out := append([]graph.Dim(nil), in...)
	out[rank-1] = graph.Dim{Value: nOut}
	return out
}
