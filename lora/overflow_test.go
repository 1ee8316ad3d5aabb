package lora

import (
	"math"
	"strings"
	"testing"

	"github.com/loracc/loracc/graph"
)

// TestFuseOverflowRefused: a fused weight that leaves its dtype's range is
// an error naming the element, in fp32, fp16 and bf16, while values that
// round back into range, and W's own Inf, pass.
func TestFuseOverflowRefused(t *testing.T) {
	for _, tc := range []struct {
		dt   graph.DataType
		s    float64
		want string // "" passes
	}{
		{graph.Float16, 65519, "row 0, column 1 is 65520, beyond float16's range"},
		{graph.Float16, 65518, ""}, // 65519 rounds down to fp16's largest, 65504
		{graph.Float16, 1e6, "beyond float16's range"},
		{graph.BFloat16, 3.4e38, "beyond bfloat16's range"},
		{graph.Float, 1e39, "beyond float32's range"},
		{graph.Float, 3e38, ""},
	} {
		d := lowRank{rows: 1, cols: 3, r: 1, p: []float64{1}, q: []float64{0, 1, 0}, s: tc.s}
		raw, err := graph.EncodeFloats(tc.dt, []float32{1, 1, float32(math.Inf(1))})
		if err != nil {
			t.Fatal(err)
		}
		_, err = d.fuseChunkBytes(tc.dt, raw, 0)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s, s=%g: %v", tc.dt, tc.s, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s, s=%g: error %v, want %q", tc.dt, tc.s, err, tc.want)
		}
	}
}
