package rewrite

// gradRules is the table of gradient rules, one per op. A nil rule marks
// an op as non-differentiable: its outputs carry no gradient (shapes,
// comparisons, index arithmetic, random numbers).
func gradRules() map[string]gradRule {
	return map[string]gradRule{
		// non-differentiable
		"Shape": nil, "Size": nil, "Constant": nil, "ConstantOfShape": nil, "Range": nil,
		"Equal": nil, "Less": nil, "Greater": nil, "LessOrEqual": nil, "GreaterOrEqual": nil,
		"And": nil, "Or": nil, "Not": nil, "Xor": nil, "IsNaN": nil, "IsInf": nil,
		"NonZero": nil, "ArgMax": nil, "ArgMin": nil, "OneHot": nil,
		"RandomNormal": nil, "RandomUniform": nil, "RandomNormalLike": nil, "RandomUniformLike": nil,
		"Floor": nil, "Ceil": nil, "Round": nil, "Sign": nil, "EyeLike": nil,

		"Identity": gradIdentity,
		"Dropout":  gradIdentity, // inference mode: the identity
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
	}
}
