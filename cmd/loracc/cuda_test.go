package main

import (
	"math"
	"strconv"
	"strings"
	"testing"

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
