package main

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/loracc/loracc/internal/testmodels"
	"github.com/loracc/loracc/runtime"
)

// cudaOrSkip skips when ONNX Runtime's CUDA provider cannot be used here
// (no provider libraries beside the core, or no GPU), saying why.
func cudaOrSkip(t testing.TB, e *runtime.Env) {
	t.Helper()
	model, err := probeModel()
	if err != nil {
		t.Fatal(err)
	}
	if status := providerStatus(e, model, "cuda", ""); status != "ok" {
		t.Skipf("CUDA provider not usable: %s", status)
	}
}

// TestCUDAMatchesCPU trains the tiny GPT-2 for 20 AdamW steps on the CPU
// and on the GPU from the same adapter and batch: the losses agree to 1e-3
// relative. ORT's CUDA provider uses TF32 for fp32 matrix products by
// default on Ampere and later GPUs; the tolerance covers it.
func TestCUDAMatchesCPU(t *testing.T) {
	e := env(t)
	cudaOrSkip(t, e)
	_, dir, io, params := gptTrainSetup(t)
	ids := randomTokens(4, 32, 2)
	batch := map[string]runtime.Tensor{"input_ids": ids, "labels": ids}
	cpu := newTrainerOn(t, e, dir, io.Train, batch, params, runtime.SessionOptions{Device: "cpu"})
	gpu := newTrainerOn(t, e, dir, io.Train, batch, params, runtime.SessionOptions{Device: "cuda"})
	var worst float64
	var rows []string
	for step := 1; step <= 20; step++ {
		a := scalarOf(t, cpu.step(t, step, 1e-3)["loss"])
		b := scalarOf(t, gpu.step(t, step, 1e-3)["loss"])
		rel := math.Abs(a-b) / math.Abs(a)
		worst = math.Max(worst, rel)
		rows = append(rows, strings.TrimSpace(strings.Join([]string{itoa(step), ftoa(a), ftoa(b)}, " ")))
	}
	t.Logf("step cpu cuda:\n%s\nworst relative difference %.3g", strings.Join(rows, "\n"), worst)
	if worst > 1e-3 {
		t.Errorf("CPU and CUDA losses differ by %.3g relative (> 1e-3)", worst)
	}
}

func itoa(i int) string     { return strconv.Itoa(i) }
func ftoa(f float64) string { return strconv.FormatFloat(f, 'g', 8, 64) }

// TestCUDATrainModes trains the tiny GPT-2 with `loracc train` on the GPU
// in every state mode — fed from the host, kept on the device, and static
// with captured (CUDA-graph) steps over several length buckets, and
// static with bound steps whose buckets share one device arena — and on
// the CPU: every loss column agrees with the CPU's to 1e-3 relative (TF32),
// and the device-resident runs end with the adapter the host-fed one has
// to the same tolerance.
func TestCUDATrainModes(t *testing.T) {
	e := env(t)
	cudaOrSkip(t, e)
	dir := t.TempDir()
	run := tinyLMRun(t, dir, "--max-steps", "30", "--save-every", "10")
	args := func(name string, extra ...string) []string { return run(filepath.Join(dir, name), extra...) }
	cases := map[string][]string{
		"cpu":           {"--device", "cpu"},
		"cpu-static":    {"--device", "cpu", "--static", "--pad-to-multiple-of", "16"},
		"host":          {"--device", "cuda", "--device-state", "off"},
		"device":        {"--device", "cuda", "--device-state", "on"},
		"static-graphs": {"--device", "cuda", "--static", "--pad-to-multiple-of", "16", "--cuda-graph", "on"},
		"static-bound":  {"--device", "cuda", "--static", "--pad-to-multiple-of", "16", "--cuda-graph", "off"}, // buckets share one arena
	}
	cols := map[string][]float64{}
	for name, extra := range cases {
		mustLoracc(t, args(name, extra...)...)
		cols[name] = lossValues(t, filepath.Join(dir, name))
	}
	for name, ref := range map[string]string{"host": "cpu", "device": "cpu", "static-graphs": "cpu-static", "static-bound": "cpu-static"} {
		a, b := cols[ref], cols[name]
		if len(a) != 30 || len(b) != 30 {
			t.Fatalf("%s: %d and %d rows", name, len(a), len(b))
		}
		for i := range a {
			if math.Abs(a[i]-b[i]) > 1e-3*math.Abs(a[i]) {
				t.Errorf("%s step %d: loss %v, %s %v", name, i+1, b[i], ref, a[i])
				break
			}
		}
	}
}

// TestGenerateCUDAMatchesCPU: loracc generate on the GPU (the tiny Llama
// through its KV cache, and a genai-builder folder through
// GroupQueryAttention's) gives the CPU's greedy tokens.
func TestGenerateCUDAMatchesCPU(t *testing.T) {
	e := env(t)
	cudaOrSkip(t, e)
	genai := filepath.Join(t.TempDir(), "genai")
	o := testmodels.TinyGenai()
	o.Vocab = 1256
	writeGenaiFolder(t, genai, o)
	tok, err := os.ReadFile(unigramTokenizer)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(genai, "tokenizer.json"), string(tok))
	for _, model := range []string{llamaDir(t, true), genai} {
		ids := map[string]string{}
		for _, device := range []string{"cpu", "cuda"} {
			var out, errb bytes.Buffer
			args := []string{"loracc", "generate", model, "--device", device, "--verbose", "--prompt", "the cat sat", "--max-new-tokens", "8"}
			if err := run(args, &out, &errb); err != nil {
				t.Fatalf("%v: %v\n%s", args, err, errb.String())
			}
			m := regexp.MustCompile(`generated ids: \[([0-9 ]*)\]`).FindStringSubmatch(errb.String())
			if m == nil {
				t.Fatalf("no generated ids:\n%s", errb.String())
			}
			ids[device] = m[1]
		}
		if ids["cpu"] != ids["cuda"] {
			t.Errorf("%s: cpu %s, cuda %s", model, ids["cpu"], ids["cuda"])
		}
	}
}

// TestDoctorCUDAGraph: loracc doctor TRAIN.onnx says whether the step can
// be recorded as a CUDA graph: on a machine with the CUDA provider, a
// static step can and a dynamic one cannot (its symbolic dims named);
// without the provider, that it cannot be checked.
func TestDoctorCUDAGraph(t *testing.T) {
	e := env(t)
	dir := t.TempDir()
	lora := filepath.Join(dir, "g.lora.onnx")
	mustLoracc(t, "inject", "../../testdata/models/gpt2_tiny.onnx", "--rank", "4", "-o", lora)
	static, dynamic := filepath.Join(dir, "s"), filepath.Join(dir, "d")
	mustLoracc(t, "export-train", lora, "--loss", "lm", "--logits", "logits", "--static", "batch=2,seq=16", "-o", static)
	mustLoracc(t, "export-train", lora, "--loss", "lm", "--logits", "logits", "-o", dynamic)
	if _, err := loracc(t, "doctor", "a", "b"); err == nil {
		t.Error("doctor took two models")
	}
	model, err := probeModel()
	if err != nil {
		t.Fatal(err)
	}
	s := mustLoracc(t, "doctor", filepath.Join(static, "train.onnx"))
	d := mustLoracc(t, "doctor", filepath.Join(dynamic, "train.onnx"))
	if providerStatus(e, model, "cuda", "") != "ok" {
		if !strings.Contains(s, "cannot be checked without the CUDA provider") {
			t.Errorf("without CUDA:\n%s", s)
		}
		return
	}
	if !strings.Contains(s, "can be recorded") || strings.Contains(s, "cannot") {
		t.Errorf("static step:\n%s", s)
	}
	if !strings.Contains(d, "cannot be recorded") || !strings.Contains(d, "no static shape") {
		t.Errorf("dynamic step:\n%s", d)
	}
}
