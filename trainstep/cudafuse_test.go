package trainstep

import "testing"

// TestBiasBroadcast: the bias shapes BiasSoftmax's two broadcast modes
// take, and those it does not (a [B, 1, T, T] mask needs shrinkConst).
func TestBiasBroadcast(t *testing.T) {
	x := []int64{8, 32, 512, 512}
	for _, tc := range []struct {
		b         []int64
		inner, ok bool
	}{
		{[]int64{8, 32, 512, 512}, false, true}, // no broadcast
		{[]int64{1, 1, 512, 512}, false, true},  // causal mask: outer
		{[]int64{512, 512}, false, true},        // lower rank: outer
		{[]int64{8, 1, 1, 512}, true, true},     // padding mask: inner
		{[]int64{8, 1, 512, 512}, false, false}, // per-row mask over heads
		{[]int64{1, 32, 512, 1}, false, false},  // broadcasts the softmax axis
		{[]int64{1, 1, 1, 1, 512}, false, false},
	} {
		inner, ok := biasBroadcast(x, tc.b)
		if inner != tc.inner || ok != tc.ok {
			t.Errorf("bias %v: inner %v ok %v, want %v %v", tc.b, inner, ok, tc.inner, tc.ok)
		}
	}
}
