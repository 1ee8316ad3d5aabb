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

// demoFacts is the demo's chat data: questions about Python, each with
// the one-sentence answer the adapter learns. The pretrained model has
// read the Python documentation but never a question/answer chat, so
// before training it continues the question as prose.
var demoFacts = [][2]string{
	{"What does len() return?", "len() returns the number of items in an object."},
	{"What does print() do?", "print() writes its arguments to standard output."},
	{"Which keyword defines a function?", "The def keyword defines a function."},
	{"What does sorted() return?", "sorted() returns a new sorted list."},
	{"What is a tuple?", "A tuple is an immutable sequence."},
	{"What does open() return?", "open() returns a file object."},
	{"Which exception does a missing dictionary key raise?", "A missing key raises KeyError."},
	{"Which module provides regular expressions?", "The re module provides regular expressions."},
	{"Which module provides mathematical functions?", "The math module provides mathematical functions."},
	{"Which module reads and writes JSON?", "The json module reads and writes JSON."},
	{"Which module works with dates and times?", "The datetime module works with dates and times."},
	{"Which module provides operating system interfaces?", "The os module provides operating system interfaces."},
	{"Which module compresses data with zlib?", "The zlib module compresses data with zlib."},
	{"Which module provides container datatypes?", "The collections module provides container datatypes."},
	{"Which module works with filesystem paths?", "The pathlib module works with filesystem paths."},
	{"Which module talks to SQLite databases?", "The sqlite3 module talks to SQLite databases."},
}

// demoHeldOut are questions of the same forms that no training chat
// asks: what the adapted model says to them shows what it took from the
// chats (the answer's form) and what from pretraining (the module names).
var demoHeldOut = []string{
	"Which module provides random numbers?",
	"Which module reads and writes CSV files?",
}

// randomChatModel names the --model value that builds a tiny random-weight
// Llama (with an Optimum-style KV cache) instead of reading a folder.
const randomChatModel = "random"

func chatDemoCommand() *cli.Command {
	return &cli.Command{
		Name:      "demo-chat",
		Usage:     "fine-tune a small pretrained Llama-style model on a few chats (assistant-only loss) and show its answers before and after",
		UsageText: "demo-chat [--model testdata/quality/model|random] [--dir DIR] [--steps N]",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "model", Value: "testdata/quality/model",
				Usage: "folder with model.onnx and tokenizer.json (the repository's model pretrained on the Python documentation), or \"random\" for a tiny random-weight model with a KV cache"},
			&cli.StringFlag{Name: "tokenizer", Value: "testdata/tokenizer/expected/trained/unigram", Usage: "with --model random: folder with the tokenizer.json its vocabulary matches"},
			&cli.StringFlag{Name: "dir", Value: "loracc-demo-chat", Usage: "folder for the example's files"},
			&cli.IntFlag{Name: "steps", Value: 100, Usage: "training steps"},
		},
		Action: runChatDemo,
	}
}

// writeChatModelDir writes the demo model's folder: model.onnx (the
// source folder's, or a tiny random Llama with a KV cache), its
// tokenizer.json, and a tokenizer_config.json with the source's special
// tokens and the demo's chat template.
func writeChatModelDir(dir, source, tokDir string) error {
	var m *graph.Model
	var err error
	cfg := map[string]any{"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
	if source == randomChatModel {
		m, err = testmodels.Llama(testmodels.LlamaConfig{Vocab: 1256, Hidden: 64, Layers: 2, Heads: 4, KVHeads: 2, Intermediate: 128, Cache: true})
	} else {
		tokDir = source
		if m, err = graph.Load(filepath.Join(source, "model.onnx")); err != nil {
			return fmt.Errorf("%w (--model names a folder with model.onnx and tokenizer.json; the default is the repository's, relative to its root; --model random needs none)", err)
		}
		cfg, err = readTokenizerConfig(filepath.Join(source, "tokenizer_config.json"))
	}
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
	cfg["chat_template"] = demoChatTemplate
	cfgJSON, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	for name, data := range map[string][]byte{"tokenizer.json": tok, "tokenizer_config.json": cfgJSON} {
		if err := graph.WriteFileAtomic(filepath.Join(dir, name), func(w io.Writer) error {
			_, err := w.Write(data)
			return err
		}); err != nil {
			return err
		}
	}
	return nil
}

// readTokenizerConfig reads a model folder's tokenizer_config.json (its
// special tokens); the demo adds its chat template to it.
func readTokenizerConfig(path string) (map[string]any, error) {
	data, err := graph.ReadRegular(path, 16<<20, "a tokenizer config")
	if err != nil {
		return nil, err
	}
	cfg := map[string]any{}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
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
	if err := writeChatModelDir(modelDir, c.String("model"), c.String("tokenizer")); err != nil {
		return fmt.Errorf("demo-chat: %w", err)
	}
	data := filepath.Join(dir, "chat.jsonl")
	if err := writeChatData(data, 16); err != nil {
		return err
	}
	// the random model's vocabulary is mostly characters, so its answers
	// take more tokens than the pretrained model's BPE words
	what, maxNew := "the Llama-style model pretrained on the Python documentation ("+c.String("model")+")", "24"
	if c.String("model") == randomChatModel {
		what, maxNew = "a tiny Llama-style model with random weights", "64"
	}
	fmt.Fprintf(w, "%s in %s and %d question/answer chats (%s)\n", what, modelDir, len(demoFacts), data)
	sub := func(out io.Writer, args ...string) error {
		fmt.Fprintf(w, "$ loracc %s\n", strings.Join(args, " "))
		if lib := c.String("ort-lib"); lib != "" {
			args = append(args, "--ort-lib", lib)
		}
		return run(append([]string{"loracc"}, args...), out, io.Discard)
	}
	questions := append([]string{demoFacts[0][0], demoFacts[5][0], demoFacts[8][0]}, demoHeldOut...)
	ask := func(label string, extra ...string) error {
		fmt.Fprintf(w, "\n%s:\n", label)
		for i, q := range questions {
			msgs := filepath.Join(dir, fmt.Sprintf("q%d.json", i))
			b, _ := json.Marshal([]map[string]string{{"role": "user", "content": q}})
			if err := os.WriteFile(msgs, b, 0o644); err != nil {
				return err
			}
			var out strings.Builder
			args := append([]string{"generate", modelDir, "--messages", msgs, "--max-new-tokens", maxNew, "--device", "cpu"}, extra...)
			if err := run(append([]string{"loracc"}, args...), &out, io.Discard); err != nil {
				return err
			}
			note := ""
			if i >= len(questions)-len(demoHeldOut) {
				note = "   (not in the training chats)"
			}
			fmt.Fprintf(w, "  user: %s%s\n  model: %s\n", q, note, strings.Join(strings.Fields(out.String()), " "))
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
		"--max-steps", fmt.Sprint(c.Int("steps")), "--batch-size", "8", "--lr", "3e-3", "--schedule", "cosine", "--warmup", "20",
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
