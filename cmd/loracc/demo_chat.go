package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/testmodels"
	"github.com/urfave/cli/v2"
)

// demoChatTemplate is a ChatML-like template written for the demo: role
// headers, the turn closed by the EOS token, the assistant's content and
// its EOS inside a generation block (its loss mask).
const demoChatTemplate = `{% for m in messages %}{{ '<|' + m['role'] + '|>\n' }}` +
	`{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + eos_token }}{% endgeneration %}` +
	`{% else %}{{ m['content'] + eos_token }}{% endif %}{{ '\n' }}{% endfor %}` +
	`{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}`

// demoFacts is the demo's chat data: questions and the answers the adapter
// learns (the base model is random, so it knows none of them).
var demoFacts = [][2]string{
	{"What color is the sky?", "The sky is blue."},
	{"What color is grass?", "Grass is green."},
	{"What do cats say?", "Cats say meow."},
	{"What do dogs say?", "Dogs say woof."},
	{"How many legs does a spider have?", "A spider has eight legs."},
	{"What is the opposite of hot?", "The opposite of hot is cold."},
	{"Where do fish live?", "Fish live in water."},
	{"What comes after Monday?", "Tuesday comes after Monday."},
	{"What do bees make?", "Bees make honey."},
	{"What is frozen water called?", "Frozen water is called ice."},
	{"Which animal is the largest?", "The blue whale is the largest animal."},
	{"What do we breathe?", "We breathe air."},
}

func chatDemoCommand() *cli.Command {
	return &cli.Command{
		Name:      "demo-chat",
		Usage:     "fine-tune a tiny Llama-style model on a small chat dataset (assistant-only loss) and show its answers before and after",
		UsageText: "demo-chat [--tokenizer testdata/tokenizer/expected/trained/unigram] [--dir DIR] [--steps N]",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "tokenizer", Value: "testdata/tokenizer/expected/trained/unigram", Usage: "folder with the tokenizer.json the model's vocabulary matches"},
			&cli.StringFlag{Name: "dir", Value: "loracc-demo-chat", Usage: "folder for the example's files"},
			&cli.IntFlag{Name: "steps", Value: 300, Usage: "training steps"},
		},
		Action: runChatDemo,
	}
}

// writeChatModelDir writes the demo model's folder: a tiny Llama with a
// KV cache (model.onnx), the tokenizer and a tokenizer_config.json with
// the demo's chat template.
func writeChatModelDir(dir, tokDir string) error {
	m, err := testmodels.Llama(testmodels.LlamaConfig{Vocab: 1256, Hidden: 64, Layers: 2, Heads: 4, KVHeads: 2, Intermediate: 128, Cache: true})
	if err != nil {
		return err
	}
	if err := graph.Save(m, filepath.Join(dir, "model.onnx"), graph.SaveOptions{}); err != nil {
		return err
	}
	tok, err := graph.ReadRegular(filepath.Join(tokDir, "tokenizer.json"), 64<<20, "a tokenizer")
	if err != nil {
		return err
	}
	cfg, err := json.MarshalIndent(map[string]any{
		"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "chat_template": demoChatTemplate,
	}, "", "  ")
	if err != nil {
		return err
	}
	for name, data := range map[string][]byte{"tokenizer.json": tok, "tokenizer_config.json": cfg} {
		if err := graph.WriteFileAtomic(filepath.Join(dir, name), func(w io.Writer) error {
			_, err := w.Write(data)
			return err
		}); err != nil {
			return err
		}
	}
	return nil
}

// writeChatData writes each fact as a messages record, repeated so an
// epoch holds many batches.
func writeChatData(path string, repeat int) error {
	return graph.WriteFileAtomic(path, func(w io.Writer) error {
		for range repeat {
			for _, f := range demoFacts {
				line, err := json.Marshal(map[string]any{"messages": []map[string]string{
					{"role": "user", "content": f[0]}, {"role": "assistant", "content": f[1]},
				}})
				if err != nil {
					return err
				}
				if _, err := fmt.Fprintf(w, "%s\n", line); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

func runChatDemo(c *cli.Context) error {
	dir, w := c.String("dir"), c.App.Writer
	modelDir := filepath.Join(dir, "model")
	if err := os.MkdirAll(modelDir, 0o755); err != nil {
		return err
	}
	if err := writeChatModelDir(modelDir, c.String("tokenizer")); err != nil {
		return fmt.Errorf("demo-chat: %w", err)
	}
	data := filepath.Join(dir, "chat.jsonl")
	if err := writeChatData(data, 16); err != nil {
		return err
	}
	fmt.Fprintf(w, "a tiny Llama-style model (random weights, %s) and %d question/answer chats (%s)\n", modelDir, len(demoFacts), data)
	sub := func(out io.Writer, args ...string) error {
		fmt.Fprintf(w, "$ loracc %s\n", strings.Join(args, " "))
		if lib := c.String("ort-lib"); lib != "" {
			args = append(args, "--ort-lib", lib)
		}
		return run(append([]string{"loracc"}, args...), out, io.Discard)
	}
	questions := []string{demoFacts[0][0], demoFacts[2][0], demoFacts[8][0]}
	ask := func(label string, extra ...string) error {
		fmt.Fprintf(w, "\n%s:\n", label)
		for i, q := range questions {
			msgs := filepath.Join(dir, fmt.Sprintf("q%d.json", i))
			b, _ := json.Marshal([]map[string]string{{"role": "user", "content": q}})
			if err := os.WriteFile(msgs, b, 0o644); err != nil {
				return err
			}
			var out strings.Builder
			args := append([]string{"generate", modelDir, "--messages", msgs, "--max-new-tokens", "16", "--device", "cpu"}, extra...)
			if err := run(append([]string{"loracc"}, args...), &out, io.Discard); err != nil {
				return err
			}
			fmt.Fprintf(w, "  user: %s\n  model: %s\n", q, strings.TrimSpace(out.String()))
		}
		return nil
	}
	if err := ask("before training"); err != nil {
		return err
	}
	injected := filepath.Join(dir, "model.lora.onnx")
	if err := sub(w, "inject", modelDir, "--rank", "16", "--alpha", "32", "--seed", "1", "-o", injected); err != nil {
		return err
	}
	runDir := filepath.Join(dir, "run")
	os.RemoveAll(runDir)
	if err := sub(w, "train", injected, "--data", data, "--tokenizer", modelDir, "--loss", "lm", "--logits", "logits",
		"--max-steps", fmt.Sprint(c.Int("steps")), "--batch-size", "8", "--lr", "1e-2", "--schedule", "cosine", "--warmup", "20",
		"--device", "cpu", "--save-every", "0", "--out", runDir); err != nil {
		return err
	}
	losses, err := readLosses(filepath.Join(runDir, "metrics.csv"))
	if err != nil {
		return err
	}
	if err := ask("after training (with the adapter)", "--adapter", filepath.Join(runDir, "adapter")); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nloss on the assistant's tokens: %.3f at step 1, %.3f at step %d (curve: %s)\n",
		losses[0], losses[len(losses)-1], len(losses), filepath.Join(runDir, "loss.png"))
	if losses[len(losses)-1] >= losses[0] {
		return fmt.Errorf("demo-chat: training did not lower the loss (%.4f → %.4f)", losses[0], losses[len(losses)-1])
	}
	return nil
}

// readLosses is metrics.csv's loss column.
func readLosses(path string) ([]float64, error) {
	data, err := graph.ReadRegular(path, 64<<20, "metrics")
	if err != nil {
		return nil, err
	}
	var out []float64
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n")[1:] {
		f := strings.Split(line, ",")
		if len(f) < 3 {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(f[2], &v); err == nil {
			out = append(out, v)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no loss rows", path)
	}
	return out, nil
}
