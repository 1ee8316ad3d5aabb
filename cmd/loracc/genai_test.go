package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/testmodels"
)

// writeGenaiFolder writes the tiny genai-form Llama as onnxruntime-genai's
// model builder lays out a folder: model.onnx with every weight in
// model.onnx.data, and genai_config.json.
func writeGenaiFolder(t *testing.T, dir string, o testmodels.GenaiOptions) {
	t.Helper()
	if err := testmodels.WriteGenaiFolder(dir, o); err != nil {
		t.Fatal(err)
	}
}

// genaiData writes 8 rows of 12 token ids below vocab (labels the ids)
// as dir/data.jsonl and returns its path.
func genaiData(t *testing.T, dir string, vocab int64) string {
	t.Helper()
	var lines []string
	for i := range 8 {
		ids := make([]int64, 12)
		for j := range ids {
			ids[j] = int64(i*31+j*17+3) % vocab
		}
		b, _ := json.Marshal(map[string][]int64{"input_ids": ids, "labels": ids})
		lines = append(lines, string(b))
	}
	data := filepath.Join(dir, "data.jsonl")
	if err := os.WriteFile(data, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return data
}

// TestGenaiFolderTrainsLikeTwin: a genai-builder folder (GroupQueryAttention
// with rotary, SkipSimplifiedLayerNormalization, KV-cache I/O, external
// data) is injected and trained given as a folder, and 30 AdamW steps
// give the loss curve of its standard-ops twin (same weights, same
// adapter init, same data) to 1e-4 relative — float32 and int4
// (MatMulNBits) weights, with the builder's packed qkv_proj, which
// inject splits into the q_proj, k_proj and v_proj targets the twin has,
// and int4 with the token embedding tied to the lm_head as com.microsoft
// GatherBlockQuantized (the builder's shared_embeddings), whose twin
// gathers the dequantized table: the training graph looks the rows up in
// the lm_head's weight with standard ops (trainstep/gbq.go), whose integer
// arithmetic sits upstream of the network, where autodiff does not go —
// and the loss falls.
//
// In float16 (the builder's CUDA form; trained in float16 with float32
// adapter masters and a float32 loss) the two forms round differently —
// SkipSimplifiedLayerNormalization normalizes the unrounded sum, the twin
// rounds its residual Add first — and AdamW's first steps, ≈ lr·sign(g),
// turn last-bit differences of small gradient entries into full steps.
// Measured with adapter seeds 1–6: step 1 (the base's loss) agrees to
// 1.4e-5 and the curves to 6e-4–1.9e-3 (1.8e-3 with seed 3, used here;
// 2.1e-4 with SGD), the spread of the float16 twin itself against the
// float32 twin of the same rounded weights (1.2e-4–1.7e-3); the folder
// against that float32 twin, 1.4e-4–2.1e-3. So float16 is held to 1e-4 at
// step 1 and 5e-3 over the curve, against both twins; int4 measured
// ≤ 9.4e-4.
func TestGenaiFolderTrainsLikeTwin(t *testing.T) {
	env(t)
	for _, tc := range []struct{ int4, packed, fp16, quantEmbed bool }{
		{false, false, false, false}, {true, false, false, false}, {false, true, false, false}, {true, true, false, false},
		{true, false, false, true}, {false, false, true, false}, {true, false, true, false}, {false, true, true, false},
	} {
		t.Run(fmt.Sprintf("int4=%v/packed=%v/fp16=%v/quant-embed=%v", tc.int4, tc.packed, tc.fp16, tc.quantEmbed), func(t *testing.T) {
			dir := t.TempDir()
			o := testmodels.TinyGenai()
			o.Int4, o.Packed, o.FP16, o.QuantEmbed = tc.int4, tc.packed, tc.fp16, tc.quantEmbed
			folder := filepath.Join(dir, "genai")
			writeGenaiFolder(t, folder, o)
			models := map[string]string{"genai": folder}
			for _, name := range []string{"twin", "twin32"} {
				if name == "twin32" && !o.FP16 {
					continue
				}
				twin, err := testmodels.GenaiLlamaStandard(o)
				if err != nil {
					t.Fatal(err)
				}
				if name == "twin32" {
					convertToFloat32(t, twin)
				}
				models[name] = filepath.Join(dir, name+".onnx")
				if err := graph.Save(twin, models[name], graph.SaveOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			data := genaiData(t, dir, o.Vocab)
			losses := map[string][]float64{}
			for name, model := range models {
				lora := filepath.Join(dir, name+".lora.onnx")
				mustLoracc(t, "inject", model, "--rank", "4", "--target", `attn\.[qkvo]_proj$`, "--init", "gaussian", "--seed", "3", "-o", lora)
				run := filepath.Join(dir, "run_"+name)
				mustLoracc(t, "train", lora, "--data", data, "--loss", "lm", "--logits", "logits", "--max-steps", "30", "--batch-size", "4",
					"--lr", "1e-2", "--device", "cpu", "--save-every", "0", "--out", run)
				losses[name] = lossValues(t, run)
			}
			if tc.quantEmbed { // the step looks the table up in standard ops
				m, err := graph.Load(filepath.Join(dir, "run_genai", "graphs", "train.onnx"))
				if err != nil {
					t.Fatal(err)
				}
				rows := 0
				m.Graph.Walk(func(n *graph.Node) {
					if n.Op == "GatherBlockQuantized" {
						t.Errorf("the training graph keeps %q (com.microsoft GatherBlockQuantized)", n.Name)
					}
					if n.Op == "Gather" && n.Domain == "" && n.Input(0).Name == "lm_head.MatMul.weight_Q4G32" {
						rows++
					}
				})
				if rows != 1 {
					t.Errorf("%d Gathers read the table's rows from the lm_head's MatMulNBits weight, want 1", rows)
				}
			}
			first, curve := 1e-4, 1e-4
			if o.FP16 {
				curve = 5e-3
			}
			b := losses["genai"]
			for _, ref := range []string{"twin", "twin32"} {
				a := losses[ref]
				if a == nil {
					continue
				}
				if len(a) != 30 || len(b) != 30 {
					t.Fatalf("%d and %d loss rows", len(a), len(b))
				}
				worst := 0.0
				for i := range a {
					worst = math.Max(worst, math.Abs(a[i]-b[i])/math.Abs(a[i]))
				}
				step1 := math.Abs(a[0]-b[0]) / math.Abs(a[0])
				t.Logf("genai vs %s: loss %.5f → %.5f; relative difference %.3g at step 1, at most %.3g", ref, b[0], b[29], step1, worst)
				if !(step1 <= first) || !(worst <= curve) {
					t.Errorf("genai and %s loss curves differ by %.3g relative at step 1 (tolerance %g), %.3g at most (tolerance %g):\ngenai %v\n%s %v",
						ref, step1, first, worst, curve, b, ref, a)
				}
			}
			if b[29] >= b[0] {
				t.Errorf("the loss did not fall: %v → %v", b[0], b[29])
			}
		})
	}
}

// TestOptimumExportsMatchPEFT: Optimum-style decoders with the KV cache
// as I/O (testdata/models/optimum_{gpt2,llama}: past_key_values.N inputs,
// present.N outputs, Llama's position_ids; torch.onnx exports made by
// testdata/torch/make_optimum.py), and the Llama's merged decoder (an If
// on use_cache_branch), train through loracc from PEFT's initial adapter
// and give PEFT's loss curve on the same batch, 20 AdamW steps, to 1e-4
// relative.
func TestOptimumExportsMatchPEFT(t *testing.T) {
	env(t)
	for _, tc := range []struct{ name, ref, file string }{
		{"gpt2", "gpt2", "model.onnx"}, {"llama", "llama", "model.onnx"},
		{"llama merged decoder", "llama", "decoder_model_merged.onnx"}, // the If on use_cache_branch: its no-past branch trains
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := tc.ref
			dir := t.TempDir()
			refDir := filepath.Join("../../testdata/ref", "optimum_"+name)
			var ref struct {
				InputIDs [][]int64 `json:"input_ids"`
				Losses   []float64 `json:"losses"`
				LR       float64   `json:"lr"`
			}
			raw, err := os.ReadFile(filepath.Join(refDir, "ref.json"))
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(raw, &ref); err != nil {
				t.Fatal(err)
			}
			var lines []string
			for _, ids := range ref.InputIDs {
				b, _ := json.Marshal(map[string][]int64{"input_ids": ids, "labels": ids})
				lines = append(lines, string(b))
			}
			data := filepath.Join(dir, "data.jsonl")
			if err := os.WriteFile(data, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			lora := filepath.Join(dir, "m.lora.onnx")
			mustLoracc(t, "inject", filepath.Join("../../testdata/models", "optimum_"+name, tc.file), "--from-adapter", filepath.Join(refDir, "lora_init"), "-o", lora)
			run := filepath.Join(dir, "run")
			mustLoracc(t, "train", lora, "--data", data, "--loss", "lm", "--logits", "logits", "--max-steps", fmt.Sprint(len(ref.Losses)),
				"--batch-size", fmt.Sprint(len(ref.InputIDs)), "--lr", fmt.Sprint(ref.LR), "--weight-decay", "0", "--clip-norm", "0",
				"--device", "cpu", "--save-every", "0", "--out", run)
			got := lossValues(t, run)
			if len(got) != len(ref.Losses) {
				t.Fatalf("%d loss rows, PEFT %d", len(got), len(ref.Losses))
			}
			for i, w := range ref.Losses {
				if math.Abs(got[i]-w) > 1e-4*math.Abs(w) {
					t.Fatalf("step %d: loracc %v, PEFT %v", i+1, got[i], w)
				}
			}
		})
	}
}

// TestGenerateGenaiFolder: loracc generate runs a genai-builder folder
// (GroupQueryAttention reading its KV cache) given as the folder, and the
// cached greedy tokens equal those of rerunning the whole sequence; in
// float32 and in float16 (a float16 cache).
func TestGenerateGenaiFolder(t *testing.T) {
	env(t)
	for _, fp16 := range []bool{false, true} {
		t.Run(fmt.Sprintf("fp16=%v", fp16), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "genai")
			o := testmodels.TinyGenai()
			o.Vocab = 1256 // the committed Unigram tokenizer's
			o.FP16 = fp16
			writeGenaiFolder(t, dir, o)
			tok, err := os.ReadFile(unigramTokenizer)
			if err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(dir, "tokenizer.json"), string(tok))
			args := []string{dir, "--prompt", "the cat sat", "--max-new-tokens", "8"}
			_, _, cached := genRun(t, args...)
			_, _, plain := genRun(t, append(args, "--no-cache")...)
			if cached != plain || len(idList(t, cached)) != 8 {
				t.Errorf("with the cache %s, without %s", cached, plain)
			}
		})
	}
}

// TestFuseGenaiFolder: fuse given a genai folder writes a copy of the
// folder (genai_config.json, tokenizer files, the fused model and its data
// file) that generates what the base folder generates with the adapter;
// float32 and int4 (MatMulNBits re-quantised on its grid), and both in
// float16, whose fused weights stay float16. The float16 int4 folder is
// compared fused with --quantized float (float16 MatMuls): re-quantised,
// this adapter moves weights past its blocks' grids (errors of 0.7–0.9 of
// max |W'|, float32 alike), which changed its last greedy token; the
// re-quantised folder is checked to keep float16 scales and to generate.
func TestFuseGenaiFolder(t *testing.T) {
	env(t)
	for _, tc := range []struct {
		int4, packed, fp16 bool
		quantized          string // fuse --quantized
	}{{false, false, false, ""}, {true, false, false, ""}, {false, true, false, ""}, {true, true, false, ""},
		{false, false, true, ""}, {true, false, true, "float"}} {
		t.Run(fmt.Sprintf("int4=%v/packed=%v/fp16=%v", tc.int4, tc.packed, tc.fp16), func(t *testing.T) {
			dir := t.TempDir()
			folder := filepath.Join(dir, "genai")
			o := testmodels.TinyGenai()
			o.Vocab, o.Int4, o.Packed, o.FP16 = 1256, tc.int4, tc.packed, tc.fp16
			writeGenaiFolder(t, folder, o)
			tok, err := os.ReadFile(unigramTokenizer)
			if err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(folder, "tokenizer.json"), string(tok))
			writeFile(t, filepath.Join(dir, "data.jsonl"), `{"text": "the cat sat on the mat"}`+"\n"+`{"text": "a dog ran in the park"}`+"\n")
			lora := filepath.Join(dir, "g.lora.onnx")
			mustLoracc(t, "inject", folder, "--rank", "4", "--target", `attn\.[qkvo]_proj$`, "-o", lora)
			run := filepath.Join(dir, "run")
			mustLoracc(t, "train", lora, "--data", filepath.Join(dir, "data.jsonl"), "--tokenizer", folder, "--loss", "lm", "--logits", "logits",
				"--max-steps", "10", "--batch-size", "2", "--lr", "3e-2", "--device", "cpu", "--save-every", "0", "--out", run)
			adapter := filepath.Join(run, "adapter")
			fuse := func(out string, extra ...string) {
				mustLoracc(t, append([]string{"fuse", folder, "--adapter", adapter, "-o", out}, extra...)...)
				for _, f := range []string{"genai_config.json", "tokenizer.json", "model.onnx", "model.onnx.data"} {
					if _, err := os.Stat(filepath.Join(out, f)); err != nil {
						t.Errorf("fused folder: %v", err)
					}
				}
				checkFloatType(t, filepath.Join(out, "model.onnx"), o.FP16)
			}
			out := filepath.Join(dir, "fused")
			if tc.quantized != "" {
				fuse(out, "--quantized", tc.quantized)
			} else {
				fuse(out)
			}
			if got, want := graphShape(t, filepath.Join(out, "model.onnx")), graphShape(t, filepath.Join(folder, "model.onnx")); tc.quantized == "" && got != want {
				t.Errorf("the fused graph is not the base graph:\n%s\nbase:\n%s", got, want)
			}
			args := []string{"--prompt", "the cat", "--max-new-tokens", "6"}
			_, _, fused := genRun(t, append([]string{out}, args...)...)
			_, _, adapted := genRun(t, append([]string{folder, "--adapter", adapter}, args...)...)
			_, _, base := genRun(t, append([]string{folder}, args...)...)
			if fused != adapted {
				t.Errorf("fused folder generates %s, the base with the adapter %s", fused, adapted)
			}
			if !tc.int4 && fused == base {
				t.Logf("note: the adapter did not change the greedy tokens (%s)", base)
			}
			if tc.quantized != "" {
				requant := filepath.Join(dir, "requantized")
				fuse(requant)
				if _, _, ids := genRun(t, append([]string{requant}, args...)...); len(idList(t, ids)) != 6 {
					t.Errorf("the re-quantized folder generates %s", ids)
				}
			}
		})
	}
}

// checkFloatType fails t unless every float initializer of the model at
// path is float16 (fp16) or float32, as the base's weights are.
func checkFloatType(t *testing.T, path string, fp16 bool) {
	t.Helper()
	m, err := graph.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	want := graph.Float
	if fp16 {
		want = graph.Float16
	}
	for _, v := range m.Graph.Initializers {
		if dt := v.Const.DType; dt.IsFloat() && dt != want {
			t.Errorf("%s: %q is %s, want %s like the base", path, v.Name, dt, want)
		}
	}
}

// graphShape lists a model's nodes (op and name, in order) and its
// initializers (name, type and dims, sorted): what fuse must keep.
func graphShape(t *testing.T, path string) string {
	t.Helper()
	m, err := graph.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, n := range m.Graph.Nodes {
		fmt.Fprintf(&b, "%s %s\n", n.Op, n.Name)
	}
	var inits []string
	for _, v := range m.Graph.Initializers {
		inits = append(inits, fmt.Sprintf("%s %s%v", v.Name, v.Const.DType, v.Const.Dims))
	}
	sort.Strings(inits)
	return b.String() + strings.Join(inits, "\n")
}
