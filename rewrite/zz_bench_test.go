package rewrite_test

import (
	"testing"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/lora"
	"github.com/loracc/loracc/rewrite"
	"github.com/loracc/loracc/trainstep"
)

func BenchmarkCompileOCR(b *testing.B) {
	for i := 0; i < b.N; i++ {
		m, err := graph.Load("/root/.cache/loracc/models/ocr_rec.onnx")
		if err != nil {
			b.Fatal(err)
		}
		if err := rewrite.Run(m, &rewrite.Context{Lora: lora.Options{Config: adapter.NewConfig(4, 8)}}, "inject"); err != nil {
			b.Fatal(err)
		}
		o := trainstep.DefaultOptions()
		o.Loss, o.Logits, o.Labels = "mse", "softmax_11.tmp_0", "labels"
		if err := rewrite.Run(m, &rewrite.Context{Train: o}, "params", "loss", "autodiff", "optimizer", "prune"); err != nil {
			b.Fatal(err)
		}
		if _, err := graph.Encode(m); err != nil {
			b.Fatal(err)
		}
	}
}
