package main

// Adapters for genai folders as their runtime takes them: Hugging Face
// names on builder modules, onnxruntime-genai's adapter inputs and
// ONNX Runtime's own adapter files.

import (
	"bytes"
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
	"github.com/loracc/loracc/runtime"
)

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

// TestGenaiAdaptersSwitchInORT: .onnx_adapter files export-adapter wrote
// for a genai folder injected with --adapter-inputs load with ONNX
// Runtime's own loader and, activated per run on one session (the
// Adapters API onnxruntime-genai serves multi-LoRA with), give each
// adapter's fused model's logits, switching back and forth; with none
// active the model runs its default adapter.
func TestGenaiAdaptersSwitchInORT(t *testing.T) {
	e := env(t)
	dir := t.TempDir()
	folder := filepath.Join(dir, "genai")
	o := testmodels.TinyGenai()
	writeGenaiFolder(t, folder, o)
	mustLoracc(t, "inject", folder, "--rank", "4", "--alpha", "8", "--target", `attn\.[qkvo]_proj$`, "--init", "gaussian", "--seed", "3", "-o", filepath.Join(dir, "a.lora.onnx"))
	base, err := adapter.Load(filepath.Join(dir, "a.lora.adapter"))
	if err != nil {
		t.Fatal(err)
	}
	adapters := []string{filepath.Join(dir, "ad1"), filepath.Join(dir, "ad2")}
	for k, ad := range adapters {
		a := *base
		a.Layers = append([]adapter.Layer(nil), base.Layers...)
		for i := range a.Layers {
			b := append([]float32(nil), a.Layers[i].B...)
			for j := range b {
				b[j] = float32((j+3*k)%7-3) * 0.04
			}
			a.Layers[i].B = b
		}
		if err := a.Save(ad); err != nil {
			t.Fatal(err)
		}
	}
	served := filepath.Join(folder, "multi.onnx")
	mustLoracc(t, "inject", folder, "--from-adapter", adapters[0], "--adapter-inputs", "-o", served)
	feeds := map[string]runtime.Tensor{
		"input_ids":      runtime.Int64Tensor([]int64{1, 6}, []int64{5, 17, 3, 44, 9, 60}),
		"attention_mask": runtime.Int64Tensor([]int64{1, 6}, []int64{1, 1, 1, 1, 1, 1}),
	}
	head := o.Hidden / o.Heads
	for l := range o.Layers {
		for _, kv := range []string{"key", "value"} {
			feeds[fmt.Sprintf("past_key_values.%d.%s", l, kv)] = runtime.FloatTensor([]int64{1, o.KVHeads, 0, head}, nil)
		}
	}
	logits := func(s *runtime.BoundSession, outs []string, active ...*runtime.LoraAdapter) []float32 {
		t.Helper()
		got, err := s.RunActive(feeds, outs, active...)
		if err != nil {
			t.Fatal(err)
		}
		v, err := got["logits"].Floats()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	open := func(path string) (*runtime.BoundSession, []string) {
		t.Helper()
		s, err := e.NewBoundSession(path, runtime.SessionOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		m, err := graph.Load(path)
		if err != nil {
			t.Fatal(err)
		}
		var outs []string
		for _, v := range m.Graph.Outputs {
			outs = append(outs, v.Name)
		}
		return s, outs
	}
	s, outs := open(served)
	var loaded []*runtime.LoraAdapter
	var want [][]float32
	for k, ad := range adapters {
		file := filepath.Join(dir, fmt.Sprintf("ad%d.onnx_adapter", k+1))
		mustLoracc(t, "export-adapter", ad, "--model", served, "-o", file)
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		l, err := s.LoadAdapter(data)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(l.Close)
		loaded = append(loaded, l)
		fused := filepath.Join(dir, fmt.Sprintf("fused%d", k+1))
		mustLoracc(t, "fuse", folder, "--adapter", ad, "-o", fused)
		fs, fouts := open(filepath.Join(fused, "model.onnx"))
		want = append(want, logits(fs, fouts))
	}
	maxDiff := func(a, b []float32) float64 {
		d := 0.0
		for i := range a {
			d = math.Max(d, math.Abs(float64(a[i]-b[i])))
		}
		return d
	}
	if d := maxDiff(want[0], want[1]); d < 1e-2 {
		t.Fatalf("the two adapters' fused models differ by only %g", d)
	}
	for _, k := range []int{0, 1, 0, 1} {
		if d := maxDiff(logits(s, outs, loaded[k]), want[k]); d > 1e-4 {
			t.Errorf("adapter %d active: logits differ from its fused model's by %g (from adapter 1's by %g)", k+1, d, maxDiff(logits(s, outs, loaded[k]), want[0]))
		}
	}
	if d := maxDiff(logits(s, outs), want[0]); d > 1e-4 {
		t.Errorf("no adapter active: logits differ from the default adapter's fused model's by %g", d)
	}
}
