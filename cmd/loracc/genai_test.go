package main

import (
	"bytes"
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
// (MatMulNBits) weights, and int4 with the token embedding tied to the
// lm_head as com.microsoft GatherBlockQuantized (the builder's
// shared_embeddings), whose twin gathers the dequantized table: the
// training graph looks the rows up in the lm_head's weight with standard
// ops (trainstep/gbq.go), whose integer arithmetic sits upstream of the
// network, where autodiff does not go.
func TestGenaiFolderTrainsLikeTwin(t *testing.T) {
	env(t)
	for _, c := range []struct{ int4, quantEmbed bool }{{false, false}, {true, false}, {true, true}} {
		name := fmt.Sprintf("int4=%v", c.int4)
		if c.quantEmbed {
			name += ",quant-embed"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			o := testmodels.TinyGenai()
			o.Int4, o.QuantEmbed = c.int4, c.quantEmbed
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
			if c.quantEmbed { // the step looks the table up in standard ops
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

// TestGenaiAdapterInputs: inject --adapter-inputs on a genai folder names
// the adapter inputs as onnxruntime-genai's builder and Olive do
// (model.layers.N.attn.q_proj.lora_A.MatMul.weight, [in, r] and [r, out],
// the scale folded into B, the graph's scale 1), also for an adapter named
// after the Hugging Face modules (self_attn); export-adapter --model
// writes exactly the tensors the model defaults to; the served model
// generates what the base with the adapter generates; and training it is
// refused with the way to do it.
func TestGenaiAdapterInputs(t *testing.T) {
	env(t)
	dir := t.TempDir()
	folder := filepath.Join(dir, "genai")
	o := testmodels.TinyGenai()
	o.Vocab = 1256
	writeGenaiFolder(t, folder, o)
	tok, err := os.ReadFile(unigramTokenizer)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(folder, "tokenizer.json"), string(tok))
	mustLoracc(t, "inject", folder, "--rank", "4", "--alpha", "8", "--target", `attn\.[qkvo]_proj$`, "--init", "gaussian", "--seed", "3", "-o", filepath.Join(dir, "a.lora.onnx"))
	a, err := adapter.Load(filepath.Join(dir, "a.lora.adapter"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range a.Layers {
		a.Layers[i].Name = strings.ReplaceAll(a.Layers[i].Name, ".attn.", ".self_attn.")
		for j := range a.Layers[i].B {
			a.Layers[i].B[j] = float32(j%5-2) * 0.05
		}
	}
	a.SortLayers()
	hf := filepath.Join(dir, "hf_adapter")
	if err := a.Save(hf); err != nil {
		t.Fatal(err)
	}
	served := filepath.Join(folder, "served.onnx")
	if out := mustLoracc(t, "inject", folder, "--from-adapter", hf, "--adapter-inputs", "-o", served); !strings.Contains(out, "lora_A.MatMul.weight") {
		t.Errorf("inject --adapter-inputs on a genai folder does not say the names:\n%s", out)
	}
	m, err := graph.Load(served)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range a.Layers {
		target := strings.ReplaceAll(l.Name, ".self_attn.", ".attn.")
		av, bv := m.Graph.Lookup(target+".lora_A.MatMul.weight"), m.Graph.Lookup(target+".lora_B.MatMul.weight")
		if av == nil || bv == nil || !av.IsGraphInput() || !bv.IsGraphInput() || av.Const == nil || bv.Const == nil {
			t.Fatalf("%s: no genai-named adapter inputs with defaults", target)
		}
		if d := av.Const.Dims; len(d) != 2 || d[0] != int64(l.In) || d[1] != int64(l.Rank) {
			t.Errorf("%s: lora_A input is %v, want [%d, %d]", target, d, l.In, l.Rank)
		}
		bs, err := bv.Const.Floats()
		if err != nil {
			t.Fatal(err)
		}
		want := adapter.Transpose(l.B, l.Out, l.Rank)
		for i := range want {
			if math.Abs(float64(bs[i]-2*want[i])) > 1e-6 { // alpha 8 / r 4
				t.Fatalf("%s: lora_B input holds %v at %d, want scale·B = %v", target, bs[i], i, 2*want[i])
			}
		}
		if s := m.Graph.Lookup(target + ".lora_scale"); s == nil || s.Const == nil {
			t.Errorf("%s: no scale", target)
		} else if v, _ := s.Const.Floats(); len(v) != 1 || v[0] != 1 {
			t.Errorf("%s: the graph's scale is %v, want 1 (folded into B)", target, v)
		}
	}
	// export-adapter writes the model's defaults, by name, with or without the model.
	withModel, byName := filepath.Join(dir, "m.onnx_adapter"), filepath.Join(dir, "n.onnx_adapter")
	mustLoracc(t, "export-adapter", hf, "--model", served, "-o", withModel)
	mustLoracc(t, "export-adapter", hf, "--names", "genai", "-o", byName)
	b1, err := os.ReadFile(withModel)
	if err != nil {
		t.Fatal(err)
	}
	_, params, err := adapter.DecodeORTAdapter(b1)
	if err != nil {
		t.Fatal(err)
	}
	if len(params) != 2*len(a.Layers) {
		t.Errorf("%d tensors in the .onnx_adapter, want %d", len(params), 2*len(a.Layers))
	}
	for _, p := range params {
		v := m.Graph.Lookup(p.Name)
		if v == nil || v.Const == nil {
			t.Fatalf("the .onnx_adapter holds %q, which the model does not take", p.Name)
		}
		if raw, err := v.Const.Bytes(); err != nil || !bytes.Equal(raw, p.Data) {
			t.Errorf("%q: the .onnx_adapter's values differ from the model's default", p.Name)
		}
	}
	if b2, err := os.ReadFile(byName); err != nil || !bytes.Equal(b1, b2) {
		t.Errorf("export-adapter --names genai differs from export-adapter --model (%v)", err)
	}
	args := []string{"--prompt", "the cat", "--max-new-tokens", "8"}
	_, _, gotIDs := genRun(t, append([]string{served}, args...)...)
	_, _, wantIDs := genRun(t, append([]string{folder, "--adapter", hf}, args...)...)
	if gotIDs != wantIDs {
		t.Errorf("the served model generates %s, the base with the adapter %s", gotIDs, wantIDs)
	}
	writeFile(t, filepath.Join(dir, "data.jsonl"), `{"text": "the cat sat"}`+"\n")
	_, err = loracc(t, "train", served, "--adapter", hf, "--data", filepath.Join(dir, "data.jsonl"), "--tokenizer", folder, "--loss", "lm", "--logits", "logits", "--max-steps", "1", "--device", "cpu", "--out", filepath.Join(dir, "run"))
	if err == nil || !strings.Contains(err.Error(), "export-adapter --model") {
		t.Errorf("training the deployment model: %v, want a refusal naming export-adapter --model", err)
	}
}
