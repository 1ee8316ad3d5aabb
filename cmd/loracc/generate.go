package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/chat"
	"github.com/loracc/loracc/generate"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/lora"
	"github.com/loracc/loracc/rewrite"
	"github.com/loracc/loracc/runtime"
	"github.com/loracc/loracc/tokenizer"
	"github.com/urfave/cli/v2"
)

func generateCommand() *cli.Command {
	return &cli.Command{
		Name:  "generate",
		Usage: "continue a prompt or a chat with a causal LM (its KV cache when it has one), streaming the text",
		UsageText: "generate MODEL.onnx (--prompt TEXT | --messages FILE.json) [--adapter DIR] [--tokenizer DIR] [--max-new-tokens N] " +
			"[--temperature T] [--top-k K] [--top-p P] [--seed S] [--device cpu|cuda|auto] [--no-cache] [--verbose]",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "prompt", Usage: "text to continue, encoded with the tokenizer's special-token rules (BOS where it adds one, never a trailing EOS)"},
			&cli.StringFlag{Name: "messages", Usage: "JSON file of chat messages ([{\"role\": ..., \"content\": ...}, ...] or {\"messages\": [...]}), rendered with the tokenizer_config.json chat template and its generation prompt"},
			&cli.StringFlag{Name: "adapter", Usage: "PEFT adapter directory to apply for this run (injected in memory; the model file is not changed)"},
			&cli.StringFlag{Name: "tokenizer", Usage: "folder with tokenizer.json (or tokenizer.model) and tokenizer_config.json (default: the model's folder)"},
			&cli.IntFlag{Name: "max-new-tokens", Value: 128, Usage: "stop after this many new tokens"},
			&cli.Float64Flag{Name: "temperature", Usage: "0 (default) decodes greedily, as Hugging Face's do_sample=False; above 0 samples from softmax(logits/T)"},
			&cli.IntFlag{Name: "top-k", Value: 50, Usage: "when sampling: keep the K most likely tokens (0: all); 50 is Hugging Face's default"},
			&cli.Float64Flag{Name: "top-p", Value: 1, Usage: "when sampling: keep the most likely tokens whose probability reaches P (1: all)"},
			&cli.Uint64Flag{Name: "seed", Usage: "when sampling: random seed; the same seed gives the same text"},
			&cli.StringFlag{Name: "device", Value: "auto", Usage: "cpu, cuda or auto (cuda when it works, else cpu)"},
			&cli.BoolFlag{Name: "no-cache", Usage: "rerun the whole sequence at every step even when the model has a KV cache"},
			&cli.BoolFlag{Name: "verbose", Usage: "print the prompt's and the generated token ids to stderr"},
		},
		Action: generateAction,
	}
}

// samplingFlags reads and checks the sampling flags. Sampling filters given
// with greedy decoding are an error rather than silently ignored.
func samplingFlags(c *cli.Context) (generate.Sampling, error) {
	s := generate.Sampling{
		Temperature: c.Float64("temperature"), TopK: c.Int("top-k"), TopP: c.Float64("top-p"), Seed: c.Uint64("seed"),
	}
	if err := checkFloats(c,
		floatRule{"temperature", func(v float64) bool { return v >= 0 && float32OK(v) }, "must be ≥ 0 (0: greedy)"},
		floatRule{"top-p", func(v float64) bool { return v > 0 && v <= 1 }, "must be in (0, 1]"},
	); err != nil {
		return s, err
	}
	if err := checkInts(c, intRule{"top-k", 0, "must be ≥ 0 (0: no top-k filter)"}, intRule{"max-new-tokens", 1, "must be at least 1"}); err != nil {
		return s, err
	}
	if s.Temperature == 0 {
		for _, f := range []string{"top-k", "top-p", "seed"} {
			if c.IsSet(f) {
				return s, fmt.Errorf("--%s applies to sampling, but --temperature is 0 (greedy): give --temperature T > 0 to sample", f)
			}
		}
	}
	return s, s.Check()
}

func generateAction(c *cli.Context) error {
	in, err := modelArg(c, "MODEL.onnx")
	if err != nil {
		return err
	}
	if c.IsSet("prompt") == c.IsSet("messages") {
		return fmt.Errorf("generate: give exactly one of --prompt TEXT and --messages FILE.json")
	}
	sampling, err := samplingFlags(c)
	if err != nil {
		return err
	}
	switch c.String("device") {
	case "cpu", "cuda", "auto":
	default:
		return fmt.Errorf("--device %q: want cpu, cuda or auto", c.String("device"))
	}
	tokDir := c.String("tokenizer")
	if tokDir == "" {
		tokDir = filepath.Dir(in)
	}
	tok, err := tokenizer.Load(tokDir)
	if err != nil {
		return err
	}
	prompt, err := promptIDs(c, tok, tokDir)
	if err != nil {
		return err
	}
	stop, err := stopIDs(tok, filepath.Dir(in))
	if err != nil {
		return err
	}
	env, err := openRuntime(c)
	if err != nil {
		return err
	}
	defer env.Close()
	sess, device, err := generationSession(c, env, in)
	if err != nil {
		return err
	}
	defer sess.Close()
	model, err := generate.NewModel(sess)
	if err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	logf := logger(c)
	if c.Bool("verbose") {
		logf("prompt ids: %v", prompt)
	}
	st := generate.NewStreamer(func(ids []int) string { return tok.Decode(ids, true) })
	w := c.App.Writer
	start := time.Now()
	res, err := model.Generate(prompt, generate.Options{
		MaxNewTokens: c.Int("max-new-tokens"), Sampling: sampling, Stop: stop, NoCache: c.Bool("no-cache"),
	}, func(id int) error {
		_, err := fmt.Fprint(w, st.Add(id))
		return err
	})
	if err != nil {
		return fmt.Errorf("%s: generate: %w", in, err)
	}
	tail := st.Flush()
	if !strings.HasSuffix(st.Text(), "\n") {
		tail += "\n"
	}
	if _, err := fmt.Fprint(w, tail); err != nil {
		return err
	}
	if c.Bool("verbose") {
		logf("generated ids: %v", res.Tokens)
	}
	why := "--max-new-tokens"
	if res.Stop >= 0 {
		why = fmt.Sprintf("stop token %d", res.Stop)
	}
	cache := "no KV cache: each step reran the sequence"
	if ok, layers := model.Cached(); ok && !c.Bool("no-cache") {
		cache = fmt.Sprintf("KV cache of %d layers", layers)
	}
	secs := time.Since(start).Seconds()
	logf("%d prompt + %d new tokens (%s) in %.2fs on %s, %s", len(prompt), len(res.Tokens), why, secs, device, cache)
	return nil
}

// promptIDs encodes --prompt or renders --messages. A chat render carries
// its own special tokens, so it is encoded without adding any, as
// transformers' apply_chat_template(tokenize=True) does. A plain prompt
// gets the BOS the tokenizer's post-processor adds, but not an EOS: a
// prompt that ends in EOS tells the model the text is over.
func promptIDs(c *cli.Context, tok *tokenizer.Tokenizer, tokDir string) ([]int, error) {
	if !c.IsSet("messages") {
		return encodePrompt(tok, c.String("prompt"))
	}
	path := c.String("messages")
	msgs, err := readMessages(path)
	if err != nil {
		return nil, err
	}
	cfg := filepath.Join(tokDir, "tokenizer_config.json")
	if _, err := os.Stat(cfg); err != nil {
		return nil, fmt.Errorf("--messages needs a chat template: %s: %w", cfg, err)
	}
	tmpl, err := chat.FromConfig(cfg)
	if err != nil {
		return nil, err
	}
	r, err := tmpl.Render(msgs, chat.Options{AddGenerationPrompt: true, TextOnly: true})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	ids, err := tok.Encode(r.Text, false)
	if err != nil {
		return nil, fmt.Errorf("%s: encoding the rendered chat: %w", path, err)
	}
	return ids, nil
}

// encodePrompt is Encode with special tokens, less whatever the
// post-processor appends after the text (trained SentencePiece-style
// tokenizers add both <s> and </s>): the tokens it puts before the text
// (BOS) stay.
func encodePrompt(tok *tokenizer.Tokenizer, text string) ([]int, error) {
	ids, err := tok.Encode(text, true)
	if err != nil {
		return nil, fmt.Errorf("--prompt: %w", err)
	}
	plain, err := tok.Encode(text, false)
	if err != nil {
		return nil, fmt.Errorf("--prompt: %w", err)
	}
	switch {
	case len(plain) == 0:
		// Only special tokens: keep a leading BOS.
		bos, ok := tok.BOS()
		if len(ids) > 0 && ok && ids[0] == bos {
			ids = ids[:1]
		} else {
			ids = nil
		}
	default:
		for k := 0; k+len(plain) <= len(ids); k++ {
			if slices.Equal(ids[k:k+len(plain)], plain) {
				ids = ids[:k+len(plain)]
				break
			}
		}
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("--prompt %q: no tokens (the tokenizer adds no BOS; give some text)", text)
	}
	return ids, nil
}

// readMessages reads a chat as a JSON list of messages, or an object whose
// "messages" key holds one. Role must be a string; content a string, or
// anything the template accepts (null, a list of parts), passed as JSON.
func readMessages(path string) ([]chat.Message, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--messages: %w", err)
	}
	var list []map[string]json.RawMessage
	if err := json.Unmarshal(data, &list); err != nil {
		var obj struct {
			Messages []map[string]json.RawMessage `json:"messages"`
		}
		if err2 := json.Unmarshal(data, &obj); err2 != nil || obj.Messages == nil {
			return nil, fmt.Errorf("%s: want a JSON list of messages or an object with a \"messages\" list: %w", path, err)
		}
		list = obj.Messages
	}
	if len(list) == 0 {
		return nil, fmt.Errorf("%s: no messages", path)
	}
	msgs := make([]chat.Message, len(list))
	for i, raw := range list {
		if raw == nil {
			return nil, fmt.Errorf("%s: message %d: not an object", path, i)
		}
		m := chat.Message{Fields: map[string]any{}}
		if err := json.Unmarshal(raw["role"], &m.Role); err != nil || m.Role == "" {
			return nil, fmt.Errorf("%s: message %d: \"role\" must be a non-empty string", path, i)
		}
		for k, v := range raw {
			switch k {
			case "role":
			case "content":
				if json.Unmarshal(v, &m.Content) != nil {
					m.Fields[k] = v // null or a list of parts: the template decides
				}
			default:
				m.Fields[k] = v
			}
		}
		msgs[i] = m
	}
	return msgs, nil
}

// stopIDs are the tokenizer's EOS and the eos_token_id of a
// generation_config.json beside the model (one id or a list, as
// transformers writes it; Llama-3 instruct models list their end-of-turn
// tokens there).
func stopIDs(tok *tokenizer.Tokenizer, modelDir string) ([]int, error) {
	var ids []int
	if eos, ok := tok.EOS(); ok {
		ids = append(ids, eos)
	}
	path := filepath.Join(modelDir, "generation_config.json")
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return ids, nil
	}
	if err != nil {
		return nil, err
	}
	var cfg struct {
		EOS json.RawMessage `json:"eos_token_id"`
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(cfg.EOS) == 0 || string(cfg.EOS) == "null" {
		return ids, nil
	}
	var one int
	var list []int
	if json.Unmarshal(cfg.EOS, &one) == nil {
		list = []int{one}
	} else if err := json.Unmarshal(cfg.EOS, &list); err != nil {
		return nil, fmt.Errorf("%s: eos_token_id must be an id or a list of ids", path)
	}
	for _, id := range list {
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// generationSession opens the model, with --adapter injected in memory:
// strip (an injected model's own branches go) then inject, the path
// `inject --from-adapter` and `fuse --check` take, serialized and loaded
// from bytes so no file is written. Injecting rather than fusing keeps the
// base weights exact (a quantized base is not requantized) and is what
// training evaluated.
func generationSession(c *cli.Context, env *runtime.Env, in string) (*runtime.Session, string, error) {
	var model []byte
	if dir := c.String("adapter"); dir != "" {
		a, err := adapter.Load(dir)
		if err != nil {
			return nil, "", err
		}
		m, err := graph.Load(in)
		if err != nil {
			return nil, "", err
		}
		ctx := &rewrite.Context{Lora: lora.Options{Adapter: a}}
		if err := rewrite.Run(m, ctx, "unpack", "strip", "inject"); err != nil {
			return nil, "", adapterErr(in, dir, err)
		}
		if err := inlineExternal(m); err != nil {
			return nil, "", fmt.Errorf("%s: --adapter: %w", in, err)
		}
		if model, err = graph.Encode(m); err != nil {
			return nil, "", fmt.Errorf("%s: --adapter: %w", in, err)
		}
	}
	open := func(device string) (*runtime.Session, error) {
		opts := runtime.SessionOptions{Device: device}
		if model != nil {
			return env.NewSessionFromBytes(model, opts)
		}
		return env.NewSession(in, opts)
	}
	device := c.String("device")
	if device == "auto" {
		s, err := open("cuda")
		if err == nil {
			return s, "cuda", nil
		}
		fmt.Fprintf(c.App.ErrWriter, "note: CUDA is not available (%v); generating on the CPU\n", firstLine(err.Error()))
		device = "cpu"
	}
	s, err := open(device)
	return s, device, err
}

// maxInline keeps an in-memory model under protobuf's 2 GiB message limit.
const maxInline = 2<<30 - 64<<20

// inlineExternal reads every external tensor into memory, so that the
// model bytes ONNX Runtime gets are whole: from bytes it would look for
// data files relative to the working directory, not the model's folder.
func inlineExternal(m *graph.Model) error {
	var total int64
	var walk func(g *graph.Graph) error
	visit := func(t *graph.Tensor) error {
		if t == nil || !t.IsExternal() {
			return nil
		}
		n, err := t.ByteSize()
		if err != nil {
			return err
		}
		if total += n; total > maxInline {
			return fmt.Errorf("external data over %d MiB cannot be held in one in-memory model: apply the adapter with loracc fuse (or inject --from-adapter) and generate with the output", maxInline>>20)
		}
		raw, err := t.Bytes()
		if err != nil {
			return err
		}
		t.SetBytes(raw)
		return nil
	}
	walk = func(g *graph.Graph) error {
		for _, v := range g.Initializers {
			if err := visit(v.Const); err != nil {
				return err
			}
		}
		for _, n := range g.Nodes {
			for _, a := range n.Attrs {
				for _, t := range append([]*graph.Tensor{a.T}, a.Tensors...) {
					if err := visit(t); err != nil {
						return err
					}
				}
				for _, sg := range append([]*graph.Graph{a.G}, a.Graphs...) {
					if sg != nil {
						if err := walk(sg); err != nil {
							return err
						}
					}
				}
			}
		}
		return nil
	}
	return walk(m.Graph)
}
