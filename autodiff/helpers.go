package autodiff

// gradCtx helpers shared by the rules in grad_pointwise.go, grad_norm.go,
// grad_shape.go and grad_index.go: typed zeros, casts, opset-aware
// ReduceMean, int64 scalars and reading constant inputs.

// iota64 is [from, from+1, ..., to-1].
func iota64(from, to int64) []int64 {
	var out []int64
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}
