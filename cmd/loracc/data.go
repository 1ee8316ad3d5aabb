package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/loracc/loracc/dataset"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/trainio"
	"github.com/urfave/cli/v2"
)

// textFlags are the flags train and data share for text records.
func textFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "tokenizer", Usage: "folder of the tokenizer for text, prompt/completion and messages data (tokenizer.json, tokenizer.model or encoder.json, with tokenizer_config.json; default: the model's folder)"},
		&cli.BoolFlag{Name: "packing", Usage: "text data: concatenate the records (EOS between them) and cut the stream into --max-length examples; attention is not reset between records"},
		&cli.BoolFlag{Name: "loss-on-prompt", Usage: "prompt/completion data: count the prompt's tokens in the loss too (default: the completion only)"},
	}
}

// tokenizerLoader returns what loads the tokenizer text data needs, once:
// --tokenizer, else the model's folder, where genai and Optimum exports
// keep tokenizer.json beside model.onnx. Nothing is read for token data.
func tokenizerLoader(c *cli.Context, model string) func() (*dataset.Tokenizer, error) {
	dir, where := c.String("tokenizer"), "--tokenizer"
	if dir == "" && model != "" {
		dir, where = filepath.Dir(model), "the model's folder; pass --tokenizer DIR for another"
	}
	var tk *dataset.Tokenizer
	var err error
	return func() (*dataset.Tokenizer, error) {
		if tk != nil || err != nil {
			return tk, err
		}
		if dir == "" {
			err = fmt.Errorf("no tokenizer: pass --tokenizer DIR or --model MODEL")
			return nil, err
		}
		found := false
		for _, f := range []string{"tokenizer.json", "tokenizer.model", "encoder.json"} {
			if _, e := os.Stat(filepath.Join(dir, f)); e == nil {
				found = true
			}
		}
		if !found {
			err = fmt.Errorf("no tokenizer.json, tokenizer.model or encoder.json in %s (%s)", dir, where)
			return nil, err
		}
		tk, err = dataset.LoadTokenizer(dir)
		return tk, err
	}
}

// textOptions reads the text flags; cacheDir "" tokenises without a cache.
func textOptions(c *cli.Context, model, cacheDir string) dataset.TextOptions {
	return dataset.TextOptions{Tokenizer: tokenizerLoader(c, model), Packing: c.Bool("packing"), PromptLoss: c.Bool("loss-on-prompt"), CacheDir: cacheDir}
}

// describeStats is the one line train and data print about a data file.
func describeStats(path string, st dataset.Stats) string {
	if st.Format == dataset.FormatIDs {
		return fmt.Sprintf("%s: token ids, %d examples", path, st.Examples)
	}
	s := fmt.Sprintf("%s: %s, %d records → %d examples; %d truncated, %d skipped", path, st.Format, st.Records, st.Examples, st.Truncated, st.Skipped)
	if st.MaxLength > 0 {
		s += fmt.Sprintf(" (max length %d)", st.MaxLength)
	} else {
		s += " (no max length)"
	}
	switch {
	case st.Reused:
		s += "; tokens reused from " + st.Cache
	case st.Cache != "":
		s += "; tokens cached in " + st.Cache
	}
	return s
}

func dataCommand() *cli.Command {
	return &cli.Command{
		Name:  "data",
		Usage: "show how a data file becomes training examples: tokens, the loss mask, truncation",
		UsageText: "data FILE.jsonl [--tokenizer DIR | --model MODEL] [--max-length N] [--packing] [--loss-on-prompt] [--json]\n" +
			"   data --tokenizer DIR --text TEXT | --decode 1,2,3",
		Flags: append(textFlags(),
			&cli.StringFlag{Name: "model", Usage: "the model: its folder holds the tokenizer, and ids are checked against its embedding"},
			&cli.IntFlag{Name: "max-length", Usage: "maximum sequence length (default for text data: the tokenizer's model_max_length, at most 4096)"},
			&cli.Int64Flag{Name: "ignore-index", Value: -100, Usage: "label value of tokens the loss does not count"},
			&cli.BoolFlag{Name: "json", Usage: "print one object per example: input_ids, labels and attention_mask as training feeds them"},
			&cli.StringFlag{Name: "text", Usage: "encode this text (with the special tokens the tokenizer adds) and print ids and tokens"},
			&cli.StringFlag{Name: "decode", Usage: "decode comma-separated ids"},
		),
		Action: dataAction,
	}
}

func dataAction(c *cli.Context) error {
	if err := checkInts(c, intRule{"max-length", 0, "must be ≥ 0 (0: the tokenizer's)"}); err != nil {
		return err
	}
	model := c.String("model")
	load := tokenizerLoader(c, model)
	if c.IsSet("text") || c.IsSet("decode") {
		if c.Args().Len() > 0 {
			return fmt.Errorf("data: --text and --decode take no FILE (got %q)", c.Args().First())
		}
		tk, err := load()
		if err != nil {
			return fmt.Errorf("data: %w", err)
		}
		return codec(c, tk)
	}
	path, err := onePositional(c, "FILE.jsonl")
	if err != nil {
		return err
	}
	spec, err := dataSpec(c, model)
	if err != nil {
		return err
	}
	set, err := dataset.Load(path, spec)
	if err != nil {
		return err
	}
	fmt.Fprintln(c.App.ErrWriter, describeStats(path, set.Stats()))
	w := c.App.Writer
	var tk *dataset.Tokenizer
	if !c.Bool("json") {
		// Token data is printed as ids alone when no tokenizer is at hand.
		tk, _ = load()
	}
	for i := range set.Len() {
		b, err := set.Batch([]int{i})
		if err != nil {
			return err
		}
		if c.Bool("json") {
			if err := writeExampleJSON(w, b); err != nil {
				return err
			}
			continue
		}
		printExample(w, i, set.Tokens(i), b, spec.IgnoreIndex, tk, isTerminal(w))
	}
	return nil
}

// dataSpec is the Spec of an lm graph taking input_ids, labels and an
// attention_mask, what train's spec is for a decoder exported by torch
// or Optimum. With --model the model decides: the mask is built only if
// it takes one (train's --mask-input default), and its embedding bounds
// the ids.
func dataSpec(c *cli.Context, model string) (dataset.Spec, error) {
	seq := []trainio.Dim{{Name: "batch"}, {Name: "sequence"}}
	spec := dataset.Spec{
		Inputs: []trainio.Entry{
			{Name: "input_ids", DType: "int64", Shape: seq, Role: trainio.RoleBatch},
			{Name: "attention_mask", DType: "int64", Shape: seq, Role: trainio.RoleBatch},
			{Name: "labels", DType: "int64", Shape: seq, Role: trainio.RoleLabel},
		},
		Loss: "lm", Labels: "labels", IgnoreIndex: c.Int64("ignore-index"), MaskInput: "attention_mask",
		MaxLength: c.Int("max-length"), Text: textOptions(c, model, ""),
	}
	if model != "" {
		m, err := graph.Load(model)
		if err != nil {
			return spec, err
		}
		ranges, _ := dataset.ModelRanges(m.Graph, "")
		if r, ok := ranges["input_ids"]; ok {
			spec.Ranges = map[string]dataset.Range{"input_ids": r}
		}
		if m.Graph.Lookup("attention_mask") == nil || !m.Graph.Lookup("attention_mask").IsGraphInput() {
			spec.Inputs = slices.DeleteFunc(spec.Inputs, func(e trainio.Entry) bool { return e.Name == "attention_mask" })
			spec.MaskInput = ""
		}
	}
	return spec, nil
}

// ints reads an int64 tensor of a batch of one.
func ints(t dataset.Tensor) []int64 {
	out := make([]int64, len(t.Data)/8)
	for i := range out {
		out[i] = int64(binary.LittleEndian.Uint64(t.Data[8*i:]))
	}
	return out
}

func writeExampleJSON(w io.Writer, b map[string]dataset.Tensor) error {
	out := map[string][]int64{}
	for name, t := range b {
		out[name] = ints(t)
	}
	js, err := json.Marshal(out)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", js)
	return err
}

// printExample prints one example's ids and, with a tokenizer, its text,
// the tokens the loss counts marked in both: in brackets, or bold green
// on a terminal. A token counts when its label is not the ignore index,
// from position 1 on (the lm loss predicts labels[1:]).
func printExample(w io.Writer, i, counted int, b map[string]dataset.Tensor, ignore int64, tk *dataset.Tokenizer, terminal bool) {
	ids, labels := ints(b["input_ids"]), ints(b["labels"])
	fmt.Fprintf(w, "example %d: %d tokens, %d counted\n", i, len(ids), counted)
	open, close := "[", "]"
	if terminal {
		open, close = "\x1b[1;32m", "\x1b[0m"
	}
	var idText, text strings.Builder
	for lo := 0; lo < len(ids); {
		on := lo > 0 && labels[lo] != ignore
		hi := lo + 1
		for hi < len(ids) && (labels[hi] != ignore) == on {
			hi++
		}
		run, strs := make([]int, hi-lo), make([]string, hi-lo)
		for j := range run {
			run[j], strs[j] = int(ids[lo+j]), strconv.FormatInt(ids[lo+j], 10)
		}
		if lo > 0 {
			idText.WriteByte(' ')
		}
		piece, idPiece := "", strings.Join(strs, " ")
		if tk != nil {
			piece = tk.Tok.Decode(run, false)
		}
		if on {
			piece, idPiece = open+piece+close, open+idPiece+close
		}
		idText.WriteString(idPiece)
		text.WriteString(piece)
		lo = hi
	}
	fmt.Fprintf(w, "  ids:  %s\n", idText.String())
	if tk != nil {
		fmt.Fprintf(w, "  text: %s\n", text.String())
	}
}

// codec is data --text and --decode.
func codec(c *cli.Context, tk *dataset.Tokenizer) error {
	w := c.App.Writer
	if c.IsSet("text") {
		ids, err := tk.Tok.Encode(c.String("text"), true)
		if err != nil {
			return fmt.Errorf("data: --text: %w", err)
		}
		strs, toks := make([]string, len(ids)), make([]string, len(ids))
		for j, id := range ids {
			strs[j] = strconv.Itoa(id)
			tok, _ := tk.Tok.Token(id)
			toks[j] = strconv.Quote(tok)
		}
		fmt.Fprintf(w, "ids:    %s\ntokens: %s\n", strings.Join(strs, " "), strings.Join(toks, " "))
	}
	if c.IsSet("decode") {
		var ids []int
		for _, f := range strings.Split(c.String("decode"), ",") {
			id, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || id < 0 {
				return fmt.Errorf("data: --decode %q: %q is not a token id", c.String("decode"), f)
			}
			if _, ok := tk.Tok.Token(id); !ok {
				return fmt.Errorf("data: --decode: id %d is not in the vocabulary of %s (%d tokens)", id, tk.Dir, tk.Tok.VocabSize())
			}
			ids = append(ids, id)
		}
		fmt.Fprintln(w, tk.Tok.Decode(ids, false))
	}
	return nil
}
