package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/testmodels"
	"github.com/loracc/loracc/runtime"
)

// TestNoSecondCopyOfWeights: the model ONNX Runtime runs after its own
// optimizations (constant folding included) holds no more initializer
// bytes than the training graph loracc wrote. A Transpose of a frozen
// weight in the backward (dX = dY·Wᵀ written with an explicit Transpose)
// is folded by ORT into a transposed second copy of the weight, which
// doubled the weights' memory on the device; the MatMul rule now writes a
// GEMM with transB instead. Checked on a tiny GPT-2 (Gemm projections,
// tied lm_head) and a tiny Llama (MatMul projections), static and not,
// and on the int4 genai-form Llama and the int4 Llama of the 7B benchmark's
// generator (MatMulNBits), whose training graph
// must also hold no more weight bytes than its base: the backward
// dequantizes the packed weights while the step runs (a compile-time
// float copy made the graph hold 4 bytes a weight beside the half byte).
func TestNoSecondCopyOfWeights(t *testing.T) {
	e := env(t)
	dir := t.TempDir()
	o := testmodels.TinyGenai()
	o.Int4 = true
	writeGenaiFolder(t, filepath.Join(dir, "int4"), o)
	int4 := filepath.Join(dir, "int4", "model.onnx")
	lc := testmodels.DefaultLlama()
	lc.Int4 = true
	llama4, err := testmodels.Llama(lc)
	if err != nil {
		t.Fatal(err)
	}
	llamaInt4 := filepath.Join(dir, "llama_int4.onnx")
	if err := graph.Save(llama4, llamaInt4, graph.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	lc.Opset = 21
	llama21, err := testmodels.Llama(lc)
	if err != nil {
		t.Fatal(err)
	}
	llamaInt4Op21 := filepath.Join(dir, "llama_int4_op21.onnx")
	if err := graph.Save(llama21, llamaInt4Op21, graph.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, model, target string
		static              []string
	}{
		{"gpt2", "../../testdata/models/gpt2_tiny.onnx", "", nil},
		{"gpt2_static", "../../testdata/models/gpt2_tiny.onnx", "", []string{"--static", "batch=2,seq=16"}},
		{"llama_static", llamaDir(t, false), `self_attn\.[qkvo]_proj$`, []string{"--static", "batch_size=2,sequence_length=16"}},
		{"int4", int4, `attn\.[qkvo]_proj$`, nil},
		{"int4_static", int4, `attn\.[qkvo]_proj$`, []string{"--static", "batch_size=2,sequence_length=16"}},
		{"int4_llama", llamaInt4, `self_attn\.[qkvo]_proj$`, []string{"--static", "batch_size=2,sequence_length=16"}},
		// At opset 21 the backward reads the packed bytes again as uint4
		// (one DequantizeLinear), a second initializer: ORT must still
		// fold no float copy.
		{"op21_int4_llama", llamaInt4Op21, `self_attn\.[qkvo]_proj$`, []string{"--static", "batch_size=2,sequence_length=16"}},
		// Compiled for CUDA the forward's products dequantize their
		// weights in the step too (nbits-dequant): still no float copy,
		// and the uint4 view of the packed bytes not held twice.
		{"int4_llama_cuda", llamaInt4, `self_attn\.[qkvo]_proj$`, []string{"--static", "batch_size=2,sequence_length=16", "--provider", "cuda"}},
		{"int4_op21_llama_cuda", llamaInt4Op21, `self_attn\.[qkvo]_proj$`, []string{"--static", "batch_size=2,sequence_length=16", "--provider", "cuda"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			model := tc.model
			if tc.target == "" {
				model = copyModel(t, model)
			}
			lora := filepath.Join(dir, tc.name+".lora.onnx")
			args := []string{"inject", model, "--rank", "4", "-o", lora}
			if tc.target != "" {
				args = append(args, "--target", tc.target)
			}
			mustLoracc(t, args...)
			out := filepath.Join(dir, tc.name+"_train")
			mustLoracc(t, append([]string{"export-train", lora, "--loss", "lm", "--logits", "logits", "-o", out}, tc.static...)...)
			train := filepath.Join(out, "train.onnx")
			optimized := filepath.Join(out, "ort.onnx")
			s, err := e.NewBoundSession(train, runtime.SessionOptions{IntraOpThreads: 1, OptimizedModelPath: optimized})
			if err != nil {
				t.Fatal(err)
			}
			s.Close()
			// The base's own Transpose of a constant (the tied head of
			// torch.onnx's GPT-2) is ORT's to fold, as in inference.
			tied, baseTr := transposedConsts(t, model)
			_, trainTr := transposedConsts(t, train)
			if trainTr > baseTr {
				t.Errorf("the training graph transposes %d constants, the base %d", trainTr, baseTr)
			}
			// Slack: ORT folds small static lookups too (the int4 Llama's
			// rotary caches at the 16 static positions, 2 KB); a copy of
			// the smallest weight here is 16 KB in float32.
			want, got := initializerBytes(t, train)+tied, initializerBytes(t, optimized)
			if got > want+max(want/100, 4096) {
				t.Errorf("ORT's optimized step holds %d initializer bytes, the training graph %d (with the base's own transposed constants): a folded copy of a weight", got, want)
			}
			if strings.HasPrefix(tc.name, "int4") {
				base := initializerBytes(t, model)
				if tr := initializerBytes(t, train); tr > base+base/10 {
					t.Errorf("the int4 training graph holds %d initializer bytes, its base %d: a dequantized copy of the weights", tr, base)
				}
			}
		})
	}
}

func initializerBytes(t *testing.T, path string) int64 {
	t.Helper()
	m, err := graph.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, v := range m.Graph.Initializers {
		b, err := v.Const.ByteSize()
		if err != nil {
			t.Fatal(err)
		}
		n += b
	}
	return n
}

// transposedConsts counts the Transpose nodes of path that read a constant
// and the bytes of those constants.
func transposedConsts(t *testing.T, path string) (bytes int64, count int) {
	t.Helper()
	m, err := graph.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range m.Graph.Nodes {
		if n.Op != "Transpose" || n.NumInputs() == 0 {
			continue
		}
		if c := graph.ConstTensor(n.Input(0)); c != nil {
			b, err := c.ByteSize()
			if err != nil {
				t.Fatal(err)
			}
			bytes += b
			count++
		}
	}
	return bytes, count
}
