package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/testmodels"
	"github.com/loracc/loracc/rewrite"
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

	step("2. loracc inspect %s --rank 2", base)
	if err := run([]string{"loracc", "inspect", base, "--rank", "2"}, w, c.App.ErrWriter); err != nil {
		return err
	}

	step("3. loracc inject %s --rank 2 (B starts at zero: same outputs as the base)", base)
	injected := filepath.Join(dir, "seed.lora.onnx")
	if err := run([]string{"loracc", "inject", base, "--rank", "2", "-o", injected}, w, c.App.ErrWriter); err != nil {
		return err
	}
	im, err := graph.Load(injected)
	if err != nil {
		return err
	}
	fmt.Fprint(w, graph.Format(im))

	step("4. loracc fuse with the README's adapter A (5×2) and B (2×4), scale 1, checked in ONNX Runtime")
	adir := filepath.Join(dir, "readme.adapter")
	if err := seedAdapter().Save(adir); err != nil {
		return err
	}
	fused := filepath.Join(dir, "seed.fused.onnx")
	args := []string{"loracc", "fuse", injected, "--adapter", adir, "-o", fused, "--check"}
	if lib := c.String("ort-lib"); lib != "" {
		args = append(args, "--ort-lib", lib)
	}
	if err := run(args, w, c.App.ErrWriter); err != nil {
		return err
	}
	fm, err := graph.Load(fused)
	if err != nil {
		return err
	}
	targets, _ := rewrite.FindTargets(fm)
	if len(targets) != 1 {
		return fmt.Errorf("%s: expected one target, found %d", fused, len(targets))
	}
	got, err := targets[0].Tensor.Floats()
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "\nW' = W + A·B                                  README")
	worst := 0.0
	for i := range seedWant {
		row := ""
		for j := range seedWant[i] {
			g := float64(got[i*4+j])
			row += fmt.Sprintf("%8.4f", g)
			worst = max(worst, abs(g-seedWant[i][j]))
		}
		want := ""
		for _, x := range seedWant[i] {
			want += fmt.Sprintf("%7.2f", x)
		}
		fmt.Fprintf(w, "%s    %s\n", row, want)
	}
	fmt.Fprintf(w, "largest difference from the README's table: %.2g\n", worst)
	if worst > 1e-5 {
		return fmt.Errorf("fused weights differ from the README's table by %.3g", worst)
	}
	fmt.Fprintf(w, "\nfiles are in %s/\n", dir)
	return nil
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}
