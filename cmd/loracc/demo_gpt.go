package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/runtime"
	"github.com/urfave/cli/v2"
)

// The reversal task: three symbols, a separator, the symbols reversed.
// The tiny GPT-2 is random, so it cannot do this before training.
const (
	revSep     = 2
	revFirst   = 10 // symbols are revFirst .. revFirst+revSymbols-1
	revSymbols = 20
	revLen     = 3
)

func reverseCommand() *cli.Command {
	return &cli.Command{
		Name:      "demo-gpt",
		Usage:     "fine-tune the tiny GPT-2 testdata model to reverse sequences and compare base and fused models",
		UsageText: "demo-gpt [--model testdata/models/gpt2_tiny.onnx] [--dir DIR] [--steps N]",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "model", Value: "testdata/models/gpt2_tiny.onnx", Usage: "the tiny GPT-2 export"},
			&cli.StringFlag{Name: "dir", Value: "loracc-demo-gpt", Usage: "folder for the example's files"},
			&cli.IntFlag{Name: "steps", Value: 600, Usage: "training steps"},
		},
		Action: runGPTDemo,
	}
}

// reversalExample is one sequence: a b c SEP c b a; the loss reads only
// the answer (labels -100 elsewhere).
func reversalExample(rng *rand.Rand) (ids, labels []int64) {
	syms := make([]int64, revLen)
	for i := range syms {
		syms[i] = int64(revFirst + rng.IntN(revSymbols))
	}
	ids = append(append([]int64(nil), syms...), revSep)
	for i := revLen - 1; i >= 0; i-- {
		ids = append(ids, syms[i])
	}
	labels = make([]int64, len(ids))
	for i := range labels {
		labels[i] = -100
		if i > revLen {
			labels[i] = ids[i]
		}
	}
	return ids, labels
}

func writeReversal(path string, n int, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, 5))
	return graph.WriteFileAtomic(path, func(w io.Writer) error {
		for range n {
			ids, labels := reversalExample(rng)
			line, err := json.Marshal(map[string][]int64{"input_ids": ids, "labels": labels})
			if err != nil {
				return err
			}
			if _, err := fmt.Fprintf(w, "%s\n", line); err != nil {
				return err
			}
		}
		return nil
	})
}

// reversalScore runs a model on n eval sequences and returns the mean
// cross-entropy and the accuracy of its answer tokens.
func reversalScore(env *runtime.Env, model string, n int, seed uint64) (loss, acc float64, err error) {
	s, err := env.NewSession(model, runtime.SessionOptions{})
	if err != nil {
		return 0, 0, err
	}
	defer s.Close()
	rng := rand.New(rand.NewPCG(seed, 5))
	T := 2*revLen + 1
	ids := make([]int64, 0, n*T)
	for range n {
		x, _ := reversalExample(rng)
		ids = append(ids, x...)
	}
	out, err := s.Run(map[string]runtime.Tensor{"input_ids": runtime.Int64Tensor([]int64{int64(n), int64(T)}, ids)}, []string{"logits"})
	if err != nil {
		return 0, 0, err
	}
	logits, err := out["logits"].Floats()
	if err != nil {
		return 0, 0, err
	}
	V := len(logits) / (n * T)
	count := 0
	for e := range n {
		for t := revLen; t < T-1; t++ { // position t predicts token t+1
			row := logits[(e*T+t)*V : (e*T+t+1)*V]
			target := ids[e*T+t+1]
			best, mx := 0, math.Inf(-1)
			for v, x := range row {
				if float64(x) > mx {
					best, mx = v, float64(x)
				}
			}
			sum := 0.0
			for _, x := range row {
				sum += math.Exp(float64(x) - mx)
			}
			loss += -(float64(row[target]) - mx - math.Log(sum))
			if int64(best) == target {
				acc++
			}
			count++
		}
	}
	return loss / float64(count), acc / float64(count), nil
}

func runGPTDemo(c *cli.Context) error {
	dir, w := c.String("dir"), c.App.Writer
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	sub := func(args ...string) error {
		fmt.Fprintf(w, "$ loracc %v\n", args)
		if lib := c.String("ort-lib"); lib != "" {
			args = append(args, "--ort-lib", lib)
		}
		return run(append([]string{"loracc"}, args...), w, c.App.ErrWriter)
	}
	m, err := graph.Load(c.String("model"))
	if err != nil {
		return err
	}
	base := filepath.Join(dir, "gpt2_tiny.onnx")
	if err := graph.Save(m, base, graph.SaveOptions{}); err != nil {
		return err
	}
	trainData, evalData := filepath.Join(dir, "train.jsonl"), filepath.Join(dir, "eval.jsonl")
	if err := writeReversal(trainData, 4000, 1); err != nil {
		return err
	}
	if err := writeReversal(evalData, 256, 2); err != nil {
		return err
	}
	fmt.Fprintf(w, "task: reverse %d symbols after a separator, e.g. 12 27 15 SEP 15 27 12 (%s, %s)\n", revLen, trainData, evalData)
	injected := filepath.Join(dir, "gpt2_tiny.lora.onnx")
	if err := sub("inject", base, "--rank", "8", "--alpha", "16", "--seed", "1", "-o", injected); err != nil {
		return err
	}
	runDir := filepath.Join(dir, "run")
	os.RemoveAll(runDir)
	if err := sub("train", injected, "--data", trainData, "--eval", evalData, "--loss", "lm", "--logits", "logits", "--labels", "labels",
		"--max-steps", fmt.Sprint(c.Int("steps")), "--batch-size", "32", "--lr", "3e-3", "--schedule", "cosine", "--warmup", "30",
		"--eval-every", "200", "--device", "cpu", "--fuse", "--out", runDir); err != nil {
		return err
	}
	env, err := openRuntime(c)
	if err != nil {
		return err
	}
	defer env.Close()
	bl, ba, err := reversalScore(env, base, 512, 3)
	if err != nil {
		return err
	}
	fl, fa, err := reversalScore(env, filepath.Join(runDir, "model.fused.onnx"), 512, 3)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "\n%-22s %10s %10s\n", "on 512 new sequences", "loss", "accuracy")
	fmt.Fprintf(w, "%-22s %10.4f %9.1f%%\n", "base model", bl, 100*ba)
	fmt.Fprintf(w, "%-22s %10.4f %9.1f%%\n", "fused (trained) model", fl, 100*fa)
	if fl >= bl {
		return fmt.Errorf("training did not lower the eval loss (%.4f → %.4f)", bl, fl)
	}
	return nil
}
