package autodiff

// gradRules is the table of gradient rules, one per op. A nil rule marks
// an op as non-differentiable: its outputs carry no gradient (shapes,
// comparisons, index arithmetic, random numbers, integer-only ops).
// An op missing from the table stops Gradients with ErrMissingRules when
// it lies between the parameters and the loss.
//
// Left out on purpose: ReduceMax/ReduceMin/ReduceProd and the other
// reductions (not met between adapters and losses yet), Einsum, Resize,
// ConvTranspose and pooling, TopK, and edge/reflect Pad.
func gradRules() map[string]gradRule {
	return map[string]gradRule{
		"com.microsoft::MatMulNBits": gradMatMulNBits,
		// non-differentiable
		"Shape": nil, "Size": nil, "Constant": nil, "ConstantOfShape": nil, "Range": nil,
		"Equal": nil, "Less": nil, "Greater": nil, "LessOrEqual": nil, "GreaterOrEqual": nil,
		"And": nil, "Or": nil, "Not": nil, "Xor": nil, "IsNaN": nil, "IsInf": nil,
		"NonZero": nil, "ArgMax": nil, "ArgMin": nil, "OneHot": nil,
		"RandomNormal": nil, "RandomUniform": nil, "RandomNormalLike": nil, "RandomUniformLike": nil,
		"Bernoulli": nil, "Multinomial": nil,
		"Floor": nil, "Ceil": nil, "Round": nil, "Sign": nil, "EyeLike": nil,
		"BitShift": nil, "BitwiseAnd": nil, "BitwiseOr": nil, "BitwiseXor": nil, "BitwiseNot": nil,

		"Identity": gradIdentity,
		"Dropout":  gradDropout, // inference mode: the identity
		"Add":      gradAdd,
		"Sub":      gradSub,
		"Mul":      gradMul,
		"Div":      gradDiv,
		"Neg":      gradNeg,
		"MatMul":   gradMatMul,
		"Gemm":     gradGemm,
		"Sum":      gradSumOp,

		"ReduceSum":  gradReduceSum,
		"ReduceMean": gradReduceMean,

		// elementwise (grad_pointwise.go)
		"Pow":        gradPow,
		"Sqrt":       gradSqrt,
		"Reciprocal": gradReciprocal,
		"Exp":        gradExp,
		"Log":        gradLog,
		"Tanh":       gradTanh,
		"Sigmoid":    gradSigmoid,
		"Relu":       gradRelu,
		"Erf":        gradErf,
		"Gelu":       gradGelu,
		"Abs":        gradAbs,
		"Clip":       gradClip,
		"Max":        gradMaxMin,
		"Min":        gradMaxMin,
		"Where":      gradWhere,
		"Cast":       gradCast,
		"CastLike":   gradCastLike,

		// normalizations (grad_norm.go)
		"Softmax":            gradSoftmax,
		"LogSoftmax":         gradLogSoftmax,
		"LayerNormalization": gradLayerNorm,

		// convolutional networks (grad_conv.go)
		"Conv":               gradConv,
		"BatchNormalization": gradBatchNorm, // inference mode

		// data movement (grad_shape.go)
		"Reshape":   gradReshape,
		"Flatten":   gradReshape,
		"Squeeze":   gradReshape,
		"Unsqueeze": gradReshape,
		"Transpose": gradTranspose,
		"Expand":    gradExpand,
		"Concat":    gradConcat,
		"Split":     gradSplit,
		"Slice":     gradSliceOpset, // gradSlice from opset 11, gradSliceStatic before
		"Pad":       gradPad,
		"Tile":      gradTile,
		"CumSum":    gradCumSum,
		"Trilu":     gradTrilu,

		// indexed reads (grad_index.go)
		"Gather":         gradGather,
		"GatherElements": gradGatherElements,
		"GatherND":       gradGatherND,
	}
}
