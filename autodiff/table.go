package autodiff

import (
	"slices"

	"github.com/loracc/loracc/graph"
)

// rule is one entry of the table: the gradient function, and which of
// its input slots get a gradient shaped like the output (the op
// broadcasts them), which the driver sums down to the input's shape. A
// nil bcast means every gradient grad returns is already input-shaped,
// so the driver adds nothing; a zero rule (grad nil) marks an op as
// non-differentiable.
type rule struct {
	grad  gradRule
	bcast func(c *gradCtx, n *graph.Node, i int) bool
}

// everySlot: every input broadcasts against the others (Add, Mul, ...).
func everySlot(*gradCtx, *graph.Node, int) bool { return true }

// slotsFrom: inputs k, k+1, ... broadcast; those before are input-shaped
// (Gemm's C; Clip's bounds; LayerNormalization's Scale and B).
func slotsFrom(k int) func(*gradCtx, *graph.Node, int) bool {
	return func(_ *gradCtx, _ *graph.Node, i int) bool { return i >= k }
}

// matMulSlots: A's gradient is a batched product summed over the batch
// axes A was broadcast along; B's too, except for a matrix B, whose
// gradient is one GEMM already shaped like B.
func matMulSlots(c *gradCtx, n *graph.Node, i int) bool {
	return i == 0 || c.Inf.Rank(n.Input(1)) != 2
}

// none marks a non-differentiable op.
var none = rule{}

// gradRules is the table of gradient rules, one per op. The zero rule
// (none) marks an op as non-differentiable: its outputs carry no gradient
// (shapes, comparisons, index arithmetic, random numbers, integer-only
// ops).
// An op missing from the table stops Gradients with ErrMissingRules when
// it lies between the parameters and the loss.
//
// Left out on purpose: ReduceMax/ReduceMin/ReduceProd and the other
// reductions (not met between adapters and losses yet), Einsum, Resize,
// ConvTranspose and pooling, TopK, and edge/reflect Pad.
func gradRules() map[string]rule {
	return map[string]rule{
		// non-differentiable
		"Shape": none, "Size": none, "Constant": none, "ConstantOfShape": none, "Range": none,
		"Equal": none, "Less": none, "Greater": none, "LessOrEqual": none, "GreaterOrEqual": none,
		"And": none, "Or": none, "Not": none, "Xor": none, "IsNaN": none, "IsInf": none,
		"NonZero": none, "ArgMax": none, "ArgMin": none, "OneHot": none,
		"RandomNormal": none, "RandomUniform": none, "RandomNormalLike": none, "RandomUniformLike": none,
		"Bernoulli": none, "Multinomial": none,
		"Floor": none, "Ceil": none, "Round": none, "Sign": none, "EyeLike": none,
		"BitShift": none, "BitwiseAnd": none, "BitwiseOr": none, "BitwiseXor": none, "BitwiseNot": none,

		// arithmetic and products (math.go)
		"Identity": {grad: gradIdentity},
		"Dropout":  {grad: gradDropout}, // inference mode: the identity
		"Add":      {gradSum, everySlot},
		"Sum":      {gradSum, everySlot},
		"Sub":      {gradSub, everySlot},
		"Mul":      {gradMul, everySlot},
		"Div":      {gradDiv, everySlot},
		"Neg":      {grad: gradNeg},
		"MatMul":   {gradMatMul, matMulSlots},
		"Gemm":     {gradGemm, slotsFrom(2)},

		// reductions (reduce.go)
		"ReduceSum":  {grad: gradReduceSum},
		"ReduceMean": {grad: gradReduceMean},

		// elementwise (pointwise.go)
		"Pow":        {gradPow, everySlot},
		"Sqrt":       {grad: gradSqrt},
		"Reciprocal": {grad: gradReciprocal},
		"Exp":        {grad: gradExp},
		"Log":        {grad: gradLog},
		"Tanh":       {grad: gradTanh},
		"Sigmoid":    {grad: gradSigmoid},
		"Relu":       {grad: gradRelu},
		"Erf":        {grad: gradErf},
		"Gelu":       {grad: gradGelu},
		"Abs":        {grad: gradAbs},
		"Clip":       {gradClip, slotsFrom(1)},
		"Max":        {gradMaxMin, everySlot},
		"Min":        {gradMaxMin, everySlot},
		"Where":      {gradWhere, everySlot},
		"Cast":       {grad: gradCast},
		"CastLike":   {grad: gradCast},

		// normalizations (norm.go)
		"Softmax":                      {grad: gradSoftmax},
		"LogSoftmax":                   {grad: gradLogSoftmax},
		"LayerNormalization":           {gradLayerNorm, slotsFrom(1)},
		"SimplifiedLayerNormalization": {gradSimplifiedLayerNorm, slotsFrom(1)},

		// convolutional networks (conv.go)
		"Conv":               {grad: gradConv},
		"BatchNormalization": {grad: gradBatchNorm}, // inference mode

		// data movement (shape.go)
		"Reshape":   {grad: gradReshape},
		"Flatten":   {grad: gradReshape},
		"Squeeze":   {grad: gradReshape},
		"Unsqueeze": {grad: gradReshape},
		"Transpose": {grad: gradTranspose},
		"Expand":    {gradExpand, everySlot},
		"Concat":    {grad: gradConcat},
		"Split":     {grad: gradSplit},
		"Slice":     {grad: gradSliceOpset}, // padding when the bounds are static, else gradSlice from opset 11 (conv.go)
		"Pad":       {grad: gradPad},
		"Tile":      {grad: gradTile},
		"CumSum":    {grad: gradCumSum},
		"Trilu":     {grad: gradTrilu},

		// indexed reads (index.go)
		"Gather":         {grad: gradGather},
		"GatherElements": {grad: gradGatherElements},
		"GatherND":       {grad: gradGatherND},

		// quantized weights (nbits.go)
		"com.microsoft::MatMulNBits":                      {grad: gradMatMulNBits},
		"com.microsoft::SkipSimplifiedLayerNormalization": {gradSkipSimplifiedLayerNorm, slotsFrom(1)},
	}
}

// RuleOps lists the ops that have a gradient rule (keys of the table:
// the op, or "domain::op" outside the default domain), sorted. The
// finite-difference tests in internal/gradcheck check that each has a
// case.
func RuleOps() []string {
	var ops []string
	for op, r := range gradRules() {
		if r.grad != nil {
			ops = append(ops, op)
		}
	}
	slices.Sort(ops)
	return ops
}
