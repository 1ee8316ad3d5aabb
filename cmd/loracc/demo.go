package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/testmodels"
	"github.com/loracc/loracc/lora"
	"github.com/urfave/cli/v2"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:      "demo",
		Usage:     "run the embedded seed example end to end (what `loracc` alone does)",
		UsageText: "demo [--dir DIR]",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "dir", Value: "loracc-demo", Usage: "folder for the example's files"},
		},
		Action: runDemo,
	}
}

// SeedA and SeedB are the README's adapter for the seed model: A is in×r,
// B is r×out, scale 1.
var (
	seedA = [][]float32{{.1, .2}, {.3, .4}, {.5, .6}, {.7, .8}, {.9, 1}}
	seedB = [][]float32{{1.1, 1.2, 1.3, 1.4}, {1.5, 1.6, 1.7, 1.8}}
	// seedWant is the README's fused table.
	seedWant = [][]float64{
		{1.41, 2.44, 3.47, 4.50},
		{5.93, 7.00, 8.07, 9.14},
		{10.45, 11.56, 12.67, 13.78},
		{14.97, 16.12, 17.27, 18.42},
		{19.49, 20.68, 21.87, 23.06},
	}
)

// seedAdapter puts the README's A and B in PEFT's layout (lora_A = Aᵀ
// [r, in], lora_B = Bᵀ [out, r]) with alpha = r, so scale 1.
func seedAdapter() *adapter.Adapter {
	l := adapter.Layer{Name: "seed", Rank: 2, In: 5, Out: 4}
	for k := 0; k < 2; k++ {
		for i := 0; i < 5; i++ {
			l.A = append(l.A, seedA[i][k])
		}
	}
	for j := 0; j < 4; j++ {
		for k := 0; k < 2; k++ {
			l.B = append(l.B, seedB[k][j])
		}
	}
	return &adapter.Adapter{Config: adapter.NewConfig(2, 2, "seed"), Layers: []adapter.Layer{l}}
}

func runDemo(c *cli.Context) error {
	dir := c.String("dir")
	if dir == "" {
		dir = "loracc-demo"
	}
	w := c.App.Writer
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	step := func(format string, args ...any) { fmt.Fprintf(w, "\n== "+format+"\n", args...) }
	// sub runs a loracc command in-process, showing it as typed.
	sub := func(args ...string) error {
		fmt.Fprintf(w, "$ loracc %s\n", strings.Join(args, " "))
		if lib := c.String("ort-lib"); lib != "" {
			args = append(args, "--ort-lib", lib)
		}
		return run(append([]string{"loracc"}, args...), w, c.App.ErrWriter)
	}

	step("1. the seed model: y = x·W, W [in=5, out=4] = 1..20")
	m, err := testmodels.Seed()
	if err != nil {
		return err
	}
	base := filepath.Join(dir, "seed.onnx")
	if err := graph.Save(m, base, graph.SaveOptions{}); err != nil {
		return err
	}
	fmt.Fprint(w, graph.Format(m))

	step("2. what LoRA would train at rank 2")
	if err := sub("inspect", base, "--rank", "2"); err != nil {
		return err
	}

	step("3. the seed's target: W' = W + A·B with the README's A (5×2) and B (2×4), fused and checked in ONNX Runtime")
	adir := filepath.Join(dir, "readme.adapter")
	if err := seedAdapter().Save(adir); err != nil {
		return err
	}
	target := filepath.Join(dir, "seed.target.onnx")
	if err := sub("fuse", base, "--adapter", adir, "-o", target, "--check"); err != nil {
		return err
	}
	wTarget, err := loadWeight(target)
	if err != nil {
		return err
	}
	if worst := printTable(w, "W' (fused)", wTarget, "README", seedWant); worst > 1e-5 {
		return fmt.Errorf("fused weights differ from the README's table by %.3g", worst)
	}

	step("4. training data: 512 pairs (x, y = x·W') from the target, 128 more for evaluation")
	trainData, evalData := filepath.Join(dir, "train.jsonl"), filepath.Join(dir, "eval.jsonl")
	if err := writePairs(trainData, wTarget, 512, 1); err != nil {
		return err
	}
	if err := writePairs(evalData, wTarget, 128, 2); err != nil {
		return err
	}
	fmt.Fprintf(w, "wrote %s and %s\n", trainData, evalData)

	step("5. inject a rank-2 adapter (18 trainable numbers beside W's 20; B starts at 0, so the model starts as the base)")
	injected := filepath.Join(dir, "seed.lora.onnx")
	if err := sub("inject", base, "--rank", "2", "--seed", "1", "-o", injected); err != nil {
		return err
	}

	step("6. train the adapter: mean squared error against y, AdamW, then fuse")
	runDir := filepath.Join(dir, "run")
	os.RemoveAll(runDir)
	if err := sub("train", injected, "--data", trainData, "--eval", evalData, "--loss", "mse", "--logits", "y", "--labels", "labels",
		"--max-steps", "1500", "--batch-size", "32", "--lr", "0.02", "--schedule", "cosine", "--clip-norm", "0",
		"--eval-every", "500", "--device", "cpu", "--fuse", "--out", runDir); err != nil {
		return err
	}

	step("7. what the adapter learned")
	learned, err := adapter.Load(filepath.Join(runDir, "adapter"))
	if err != nil {
		return err
	}
	l := learned.Layer("seed")
	if l == nil {
		return fmt.Errorf("%s: no layer \"seed\"", filepath.Join(runDir, "adapter"))
	}
	scale := learned.Config.Scale("seed")
	delta := make([]float64, 20)
	want := make([][]float64, 5)
	for i := 0; i < 5; i++ {
		want[i] = make([]float64, 4)
		for j := 0; j < 4; j++ {
			for k := 0; k < 2; k++ {
				delta[i*4+j] += scale * float64(l.A[k*5+i]) * float64(l.B[j*2+k])
				want[i][j] += float64(seedA[i][k]) * float64(seedB[k][j])
			}
		}
	}
	dWorst := printTable(w, "learned ΔW = scale·A·B", toFloat32(delta), "seed ΔW = A·B", want)
	fused, err := loadWeight(filepath.Join(runDir, "model.fused.onnx"))
	if err != nil {
		return err
	}
	fmt.Fprintln(w)
	fWorst := printTable(w, "trained W' (fused model)", fused, "README", seedWant)
	if dWorst > 1e-2 || fWorst > 1e-2 {
		return fmt.Errorf("training did not recover the seed's ΔW to 1e-2 (ΔW off by %.3g, W' by %.3g)", dWorst, fWorst)
	}
	fmt.Fprintf(w, "\nthe trained adapter matches the seed's ΔW to %.1g; files are in %s/\n", max(dWorst, fWorst), dir)
	return nil
}

func toFloat32(x []float64) []float32 {
	out := make([]float32, len(x))
	for i, v := range x {
		out[i] = float32(v)
	}
	return out
}

// loadWeight reads the seed model's single weight.
func loadWeight(path string) ([]float32, error) {
	m, err := graph.Load(path)
	if err != nil {
		return nil, err
	}
	targets, _ := lora.FindTargets(m)
	if len(targets) != 1 {
		return nil, fmt.Errorf("%s: expected one target, found %d", path, len(targets))
	}
	return targets[0].Tensor.Floats()
}

// printTable prints a 5×4 matrix beside a reference and returns the
// largest difference.
func printTable(w io.Writer, name string, got []float32, refName string, ref [][]float64) float64 {
	fmt.Fprintf(w, "%-36s  %s\n", name, refName)
	worst := 0.0
	for i := range ref {
		row, want := "", ""
		for j := range ref[i] {
			g := float64(got[i*4+j])
			row += fmt.Sprintf("%9.4f", g)
			want += fmt.Sprintf("%7.2f", ref[i][j])
			worst = max(worst, abs(g-ref[i][j]))
		}
		fmt.Fprintf(w, "%s    %s\n", row, want)
	}
	fmt.Fprintf(w, "largest difference: %.2g\n", worst)
	return worst
}

// writePairs writes n examples {"x": [5], "labels": [4]} with x standard
// normal (seeded) and labels = x·W.
func writePairs(path string, wts []float32, n int, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, 99))
	return graph.WriteFileAtomic(path, func(out io.Writer) error {
		for e := 0; e < n; e++ {
			x := make([]float64, 5)
			for i := range x {
				x[i] = rng.NormFloat64()
			}
			y := make([]float64, 4)
			for j := range y {
				for i := range x {
					y[j] += x[i] * float64(wts[i*4+j])
				}
			}
			line, err := json.Marshal(map[string][]float64{"x": x, "labels": y})
			if err != nil {
				return err
			}
			if _, err := fmt.Fprintf(out, "%s\n", line); err != nil {
				return err
			}
		}
		return nil
	})
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}
