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

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/testmodels"
)

// writeGenaiFolder writes the tiny genai-form Llama as onnxruntime-genai's
// model builder lays out a folder: model.onnx with every weight in
// model.onnx.data, and genai_config.json.
func writeGenaiFolder(t *testing.T, dir string, o testmodels.GenaiOptions) {
	t.Helper()
	m, err := testmodels.GenaiLlama(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := graph.Save(m, filepath.Join(dir, "model.onnx"), graph.SaveOptions{Externalize: true}); err != nil {
		t.Fatal(err)
	}
	cfg, err := testmodels.GenaiConfig(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "genai_config.json"), cfg, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestGenaiFolderTrainsLikeTwin: a genai-builder folder (GroupQueryAttention
// with rotary, SkipSimplifiedLayerNormalization, KV-cache I/O, external
// data) is injected and trained given as a folder, and 30 AdamW steps
// give the loss curve of its standard-ops twin (same weights, same
// adapter init, same data) to 1e-4 relative — float32 and int4
// (MatMulNBits) weights.
func TestGenaiFolderTrainsLikeTwin(t *testing.T) {
	env(t)
	for _, int4 := range []bool{false, true} {
		t.Run(fmt.Sprintf("int4=%v", int4), func(t *testing.T) {
			dir := t.TempDir()
			o := testmodels.TinyGenai()
			o.Int4 = int4
			folder := filepath.Join(dir, "genai")
			writeGenaiFolder(t, folder, o)
			twin, err := testmodels.GenaiLlamaStandard(o)
			if err != nil {
				t.Fatal(err)
			}
			twinPath := filepath.Join(dir, "twin.onnx")
			if err := graph.Save(twin, twinPath, graph.SaveOptions{}); err != nil {
				t.Fatal(err)
			}
			var lines []string
			for i := range 8 {
				ids := make([]int64, 12)
				for j := range ids {
					ids[j] = int64(i*31+j*17+3) % o.Vocab
				}
				b, _ := json.Marshal(map[string][]int64{"input_ids": ids, "labels": ids})
				lines = append(lines, string(b))
			}
			data := filepath.Join(dir, "data.jsonl")
			if err := os.WriteFile(data, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			losses := map[string][]float64{}
			for name, model := range map[string]string{"genai": folder, "twin": twinPath} {
				lora := filepath.Join(dir, name+".lora.onnx")
				mustLoracc(t, "inject", model, "--rank", "4", "--target", `attn\.[qkvo]_proj$`, "--init", "gaussian", "--seed", "3", "-o", lora)
				run := filepath.Join(dir, "run_"+name)
				mustLoracc(t, "train", lora, "--data", data, "--loss", "lm", "--logits", "logits", "--max-steps", "30", "--batch-size", "4",
					"--lr", "1e-2", "--device", "cpu", "--save-every", "0", "--out", run)
				losses[name] = lossValues(t, run)
			}
			a, b := losses["twin"], losses["genai"]
			if len(a) != 30 || len(b) != 30 {
				t.Fatalf("%d and %d loss rows", len(a), len(b))
			}
			for i := range a {
				if math.Abs(a[i]-b[i]) > 1e-4*math.Abs(a[i]) {
					t.Fatalf("step %d: genai loss %v, twin %v", i+1, b[i], a[i])
				}
			}
			if a[29] >= a[0] {
				t.Errorf("the loss did not fall: %v → %v", a[0], a[29])
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
// cached greedy tokens equal those of rerunning the whole sequence.
func TestGenerateGenaiFolder(t *testing.T) {
	env(t)
	dir := filepath.Join(t.TempDir(), "genai")
	o := testmodels.TinyGenai()
	o.Vocab = 1256 // the committed Unigram tokenizer's
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
}

// TestFuseGenaiFolder: fuse given a genai folder writes a copy of the
// folder (genai_config.json, tokenizer files, the fused model and its data
// file) that generates what the base folder generates with the adapter;
// float32 and int4 (MatMulNBits re-quantised on its grid).
func TestFuseGenaiFolder(t *testing.T) {
	env(t)
	for _, int4 := range []bool{false, true} {
		t.Run(fmt.Sprintf("int4=%v", int4), func(t *testing.T) {
			dir := t.TempDir()
			folder := filepath.Join(dir, "genai")
			o := testmodels.TinyGenai()
			o.Vocab, o.Int4 = 1256, int4
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
			out := filepath.Join(dir, "fused")
			mustLoracc(t, "fuse", folder, "--adapter", filepath.Join(run, "adapter"), "-o", out)
			for _, f := range []string{"genai_config.json", "tokenizer.json", "model.onnx", "model.onnx.data"} {
				if _, err := os.Stat(filepath.Join(out, f)); err != nil {
					t.Errorf("fused folder: %v", err)
				}
			}
			args := []string{"--prompt", "the cat", "--max-new-tokens", "6"}
			_, _, fused := genRun(t, append([]string{out}, args...)...)
			_, _, adapted := genRun(t, append([]string{folder, "--adapter", filepath.Join(run, "adapter")}, args...)...)
			_, _, base := genRun(t, append([]string{folder}, args...)...)
			if fused != adapted {
				t.Errorf("fused folder generates %s, the base with the adapter %s", fused, adapted)
			}
			if !int4 && fused == base {
				t.Logf("note: the adapter did not change the greedy tokens (%s)", base)
			}
		})
	}
}

// TestPEFTNamesOnGenai: an adapter named as PEFT names a Hugging Face
// Llama's modules (model.layers.N.self_attn.q_proj) applies to a genai
// folder, whose builder names them model.layers.N.attn.q_proj, and gives
// the same model as the adapter named after the genai targets.
func TestPEFTNamesOnGenai(t *testing.T) {
	env(t)
	dir := t.TempDir()
	folder := filepath.Join(dir, "genai")
	writeGenaiFolder(t, folder, testmodels.TinyGenai())
	lora := filepath.Join(dir, "g.lora.onnx")
	mustLoracc(t, "inject", folder, "--rank", "4", "--target", `attn\.[qkvo]_proj$`, "--init", "gaussian", "--seed", "2", "-o", lora)
	a, err := adapter.Load(filepath.Join(dir, "g.lora.adapter"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range a.Layers {
		a.Layers[i].Name = strings.ReplaceAll(a.Layers[i].Name, ".attn.", ".self_attn.")
		for j := range a.Layers[i].B { // nonzero B, so the fused weights show the adapter
			a.Layers[i].B[j] = float32(j%7) * 0.01
		}
	}
	sort.Slice(a.Layers, func(i, j int) bool { return a.Layers[i].Name < a.Layers[j].Name })
	hf := filepath.Join(dir, "hf_adapter")
	if err := a.Save(hf); err != nil {
		t.Fatal(err)
	}
	out := mustLoracc(t, "inject", folder, "--from-adapter", hf, "-o", filepath.Join(dir, "hf.lora.onnx"))
	if !strings.Contains(out, "injected 8 LoRA branches") {
		t.Errorf("inject --from-adapter with Hugging Face names:\n%s", out)
	}
}
