package trainstep

// Part of pass "fuse-cuda": softmax-cast.
//
// Autocast runs the attention's Softmax in float32 (rewrite softmax-f32)
// between two casts: Cast(Softmax(Cast(x, float32)), bfloat16) for a
// bfloat16 x. When nothing but that last Cast reads the float32
// probabilities — the forward's, with --recompute attention, where the
// backward reads its own recomputed copy — the three nodes are one
// Softmax in the compute dtype: ONNX Runtime's CUDA kernel reads the
// bfloat16 scores, computes in float32 and rounds the result once, as
// the Cast after the float32 kernel did. The [B, H, T, T] scores are then
// read once as bfloat16 and the probabilities written once as bfloat16,
// where the three nodes wrote a float32 copy of the scores, read it,
// wrote float32 probabilities and read them again: 20 of 4 bytes an
// element, on the 7B-shaped Llama at 4 × 512 a [4, 32, 512, 512] tensor
// per layer (about 1.9 GB a step less traffic). Where the backward reads
// the float32 probabilities (no recompute) the Softmax stays float32, so
// the gradient's precision does not change.

import (
	"fmt"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
)

// lowerCastSoftmax rewrites Cast(Softmax(Cast(x, float32)), low) whose
// float32 softmax has no other reader as Softmax(x) in low, and returns
// how many it rewrote.
func lowerCastSoftmax(m *graph.Model, inf *infer.Inferer) (int, error) {
	g := m.Graph
	count := 0
	for _, down := range append([]*graph.Node(nil), g.Nodes...) {
		if down.Op != "Cast" || down.Domain != "" || down.Graph() != g {
			continue
		}
		low := graph.DataType(down.AttrInt("to", 0))
		if low != graph.BFloat16 && low != graph.Float16 {
			continue
		}
		sm := producerOp(down.Input(0), "Softmax")
		if sm == nil || len(sm.Outputs()) != 1 || sm.Output(0).NumUses() != 1 || sm.Output(0).IsGraphOutput() || inf.DType(sm.Output(0)) != graph.Float {
			continue
		}
		up := producerOp(sm.Input(0), "Cast")
		if up == nil || graph.DataType(up.AttrInt("to", 0)) != graph.Float || inf.DType(up.Input(0)) != low {
			continue
		}
		b := &graph.Builder{G: g, Prefix: "fuse_cuda", Metadata: sm.Metadata}
		y := b.Op("Softmax", down.Output(0).Name+".low", []*graph.Value{up.Input(0)}, sm.Attrs...)
		if err := replaceNode(g, down, y); err != nil {
			return count, fmt.Errorf("softmax-cast: node %q (Cast): %w", down.Name, err)
		}
		count++
	}
	return count, nil
}
