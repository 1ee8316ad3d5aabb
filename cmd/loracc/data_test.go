package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/loracc/loracc/dataset"
	"github.com/loracc/loracc/trainio"
)

// tinyTokenizer writes into dir a character-level tokenizer small enough
// for the tiny GPT-2's embedding: ids 0-2 are special (<eos>, <|user|>,
// <|assistant|>), 3 is the unknown "?", then space, a-z and ".,!". Its
// config sets EOS, a 32-token model_max_length and a chat template
// without generation tags, so messages get spans by chat's prefix rule.
func tinyTokenizer(t *testing.T, dir string) {
	t.Helper()
	vocab := map[string]int{"<eos>": 0, "<|user|>": 1, "<|assistant|>": 2, "?": 3}
	for _, r := range " abcdefghijklmnopqrstuvwxyz.,!" {
		vocab[string(r)] = len(vocab)
	}
	var added []map[string]any
	for i, tok := range []string{"<eos>", "<|user|>", "<|assistant|>"} {
		added = append(added, map[string]any{"id": i, "content": tok, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true})
	}
	tj := map[string]any{
		"version": "1.0", "added_tokens": added, "normalizer": nil, "pre_tokenizer": nil, "post_processor": nil,
		"decoder": map[string]any{"type": "Fuse"},
		"model":   map[string]any{"type": "BPE", "unk_token": "?", "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": []string{}},
	}
	cfg := map[string]any{
		"eos_token": "<eos>", "model_max_length": 32,
		"chat_template": "{% for m in messages %}{{ '<|' + m.role + '|>' + m.content }}{% if m.role == 'assistant' %}<eos>{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}",
	}
	for name, v := range map[string]any{"tokenizer.json": tj, "tokenizer_config.json": cfg} {
		js, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), js, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// textRun injects the tiny GPT-2 into dir beside a tiny tokenizer and
// writes n records of each text format; it returns the train command line
// for a run folder and a data file.
func textRun(t *testing.T, dir string) func(run, data string, extra ...string) []string {
	t.Helper()
	lora := filepath.Join(dir, "g.lora.onnx")
	mustLoracc(t, "inject", "../../testdata/models/gpt2_tiny.onnx", "--rank", "4", "--seed", "1", "-o", lora)
	tinyTokenizer(t, dir)
	words := []string{"apple", "banana", "cherry", "date", "elder", "fig", "grape", "honeydew"}
	var text, prompt, msgs strings.Builder
	for i := range 24 {
		a, b := words[i%len(words)], words[(i*3+1)%len(words)]
		fmt.Fprintf(&text, `{"text": "the %s and the %s."}`+"\n", a, b)
		fmt.Fprintf(&prompt, `{"prompt": "name a fruit", "completion": " %s!"}`+"\n", a)
		fmt.Fprintf(&msgs, `{"messages": [{"role": "user", "content": "a fruit?"}, {"role": "assistant", "content": "%s."}, {"role": "user", "content": "more?"}, {"role": "assistant", "content": "%s!"}]}`+"\n", a, b)
	}
	for name, s := range map[string]string{"text.jsonl": text.String(), "prompt.jsonl": prompt.String(), "messages.jsonl": msgs.String()} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return func(run, data string, extra ...string) []string {
		a := []string{"train", lora, "--data", filepath.Join(dir, data), "--loss", "lm", "--logits", "logits", "--labels", "labels",
			"--batch-size", "4", "--lr", "0.01", "--device", "cpu", "--save-every", "0", "--out", run}
		return append(a, extra...)
	}
}

// trainOut runs train and returns stdout+stderr and the error.
func trainOut(t *testing.T, args []string) (string, error) {
	t.Helper()
	var out, errb strings.Builder
	err := run(append([]string{"loracc"}, args...), &out, &errb)
	return out.String() + errb.String(), err
}

// TestTrainTextData: train on {"text"} records with the tokenizer found
// beside the model: the records are tokenised, cached in RUN/data, the
// loss falls; a resume with the same file reuses the cached tokens, and a
// resume after the file changed is refused by the data fingerprint.
func TestTrainTextData(t *testing.T) {
	env(t)
	dir := t.TempDir()
	args := textRun(t, dir)
	rundir := filepath.Join(dir, "run")
	out, err := trainOut(t, args(rundir, "text.jsonl", "--max-steps", "12"))
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(out, "text.jsonl: text, 24 records → 24 examples; 0 truncated, 0 skipped (max length 32); tokens cached in "+filepath.Join(rundir, "data")) {
		t.Errorf("no data line:\n%s", out)
	}
	caches, _ := filepath.Glob(filepath.Join(rundir, "data", "text.*.tokens.jsonl"))
	if len(caches) != 1 {
		t.Fatalf("caches %v", caches)
	}
	loss := lossValues(t, rundir)
	if len(loss) != 12 || !(loss[11] < loss[0]) {
		t.Errorf("loss %v: want 12 steps, falling", loss)
	}
	out, err = trainOut(t, args(rundir, "text.jsonl", "--max-steps", "14", "--resume"))
	if err != nil || !strings.Contains(out, "tokens reused from "+caches[0]) {
		t.Errorf("resume on the same file: %v\n%s", err, out)
	}
	data := filepath.Join(dir, "text.jsonl")
	b, _ := os.ReadFile(data)
	if err := os.WriteFile(data, append(b, `{"text": "one more."}`+"\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := trainOut(t, args(rundir, "text.jsonl", "--max-steps", "16", "--resume")); err == nil || !strings.Contains(err.Error(), "the checkpoint was made on other data") {
		t.Errorf("resume on a changed file: %v\n%s", err, out)
	}
}

// TestTrainMessagesData: a messages run trains on the assistant turns; the
// examples `loracc data --json` prints are the cached tokens train fed
// (ids and labels line for line, a mask of ones), and exactly the
// assistant's tokens are counted.
func TestTrainMessagesData(t *testing.T) {
	env(t)
	dir := t.TempDir()
	args := textRun(t, dir)
	for _, data := range []string{"messages.jsonl", "prompt.jsonl"} {
		rundir := filepath.Join(dir, "run-"+data)
		if out, err := trainOut(t, args(rundir, data, "--max-steps", "6")); err != nil {
			t.Fatalf("%s: %v\n%s", data, err, out)
		}
		if loss := lossValues(t, rundir); len(loss) != 6 || !(loss[5] < loss[0]) {
			t.Errorf("%s: loss %v: want 6 steps, falling", data, loss)
		}
		caches, _ := filepath.Glob(filepath.Join(rundir, "data", "*.tokens.jsonl"))
		if len(caches) != 1 {
			t.Fatalf("caches %v", caches)
		}
		// What train fed: its cached tokens read as the train graph's
		// inputs (train.json), batched one example at a time.
		spec := dataset.Spec{Loss: "lm", Labels: "labels", IgnoreIndex: -100}
		for _, e := range readTrainIO(t, filepath.Join(rundir, "graphs")).Train.Inputs {
			if e.Role == trainio.RoleBatch || e.Role == trainio.RoleLabel {
				spec.Inputs = append(spec.Inputs, e)
				if e.Name == "attention_mask" {
					spec.MaskInput = e.Name
				}
			}
		}
		set, err := dataset.Load(caches[0], spec)
		if err != nil {
			t.Fatal(err)
		}
		shown := mustLoracc(t, "data", filepath.Join(dir, data), "--model", filepath.Join(dir, "g.lora.onnx"), "--json")
		shownLines := strings.Split(strings.TrimSpace(shown), "\n")
		if set.Len() != 24 || len(shownLines) != 24 {
			t.Fatalf("%s: %d examples fed, %d shown", data, set.Len(), len(shownLines))
		}
		for i := range shownLines {
			var s map[string][]int64
			if err := json.Unmarshal([]byte(shownLines[i]), &s); err != nil {
				t.Fatal(err)
			}
			b, err := set.Batch([]int{i})
			if err != nil {
				t.Fatal(err)
			}
			if len(b) != len(s) {
				t.Errorf("%s: train feeds %d inputs, data shows %d", data, len(b), len(s))
			}
			for name, tn := range b {
				if got := ints(tn); !slices.Equal(got, s[name]) {
					t.Errorf("%s: example %d: train feeds %s = %v, data shows %v", data, i, name, got, s[name])
				}
			}
		}
	}
	// Example 0 of the messages, as text: the assistant's words and <eos>
	// are counted (in brackets), the user's turns and the headers are not.
	out := mustLoracc(t, "data", filepath.Join(dir, "messages.jsonl"), "--tokenizer", dir)
	if !strings.Contains(out, "  text: <|user|>a fruit?<|assistant|>[apple.<eos>]<|user|>more?<|assistant|>[banana!<eos>]\n") {
		t.Errorf("data shows:\n%s", out)
	}
	out = mustLoracc(t, "data", filepath.Join(dir, "prompt.jsonl"), "--tokenizer", dir, "--loss-on-prompt")
	if !strings.Contains(out, "  text: n[ame a fruit apple!<eos>]\n") {
		t.Errorf("--loss-on-prompt shows:\n%s", out)
	}
}

// TestDataCommand: --text and --decode, the counts of truncated and
// skipped records, packing, and the errors for a missing tokenizer and a
// bad record.
func TestDataCommand(t *testing.T) {
	dir := t.TempDir()
	tinyTokenizer(t, dir)
	if out := mustLoracc(t, "data", "--tokenizer", dir, "--text", "hi!"); out != "ids:    12 13 33\ntokens: \"h\" \"i\" \"!\"\n" {
		t.Errorf("--text: %q", out)
	}
	if out := mustLoracc(t, "data", "--tokenizer", dir, "--decode", "12,13,0"); out != "hi<eos>\n" {
		t.Errorf("--decode: %q", out)
	}
	if _, err := loracc(t, "data", "--tokenizer", dir, "--decode", "12,999"); err == nil || !strings.Contains(err.Error(), "id 999 is not in the vocabulary") {
		t.Errorf("--decode 999: %v", err)
	}
	data := filepath.Join(dir, "d.jsonl")
	if err := os.WriteFile(data, []byte(`{"prompt": "a long prompt", "completion": " x"}`+"\n"+`{"prompt": "ab", "completion": " cd"}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errb strings.Builder
	if err := run([]string{"loracc", "data", data, "--tokenizer", dir, "--max-length", "6"}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errb.String(), "d.jsonl: prompt/completion, 2 records → 1 examples; 1 truncated, 1 skipped (max length 6)") ||
		!strings.Contains(out.String(), "example 0: 6 tokens, 4 counted\n  ids:  5 6 [4 7 8 0]\n  text: ab[ cd<eos>]\n") {
		t.Errorf("truncated and skipped:\n%s%s", errb.String(), out.String())
	}
	// Packed: 16 + 6 tokens in chunks of 5; the first two chunks hold
	// only the first prompt and are skipped.
	out.Reset()
	errb.Reset()
	if err := run([]string{"loracc", "data", data, "--tokenizer", dir, "--max-length", "5", "--packing", "--json"}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	if lines := strings.Split(strings.TrimSpace(out.String()), "\n"); len(lines) != 3 || lines[0] != `{"attention_mask":[1,1,1,1,1],"input_ids":[17,20,24,4,28],"labels":[-100,-100,-100,4,28]}` ||
		!strings.Contains(errb.String(), "2 records → 3 examples; 0 truncated, 2 skipped") {
		t.Errorf("packed:\n%s%s", errb.String(), out.String())
	}
	if _, err := loracc(t, "data", data, "--tokenizer", t.TempDir()); err == nil || !strings.Contains(err.Error(), "d.jsonl: prompt/completion records need a tokenizer: no tokenizer.json, tokenizer.model or encoder.json in") {
		t.Errorf("no tokenizer: %v", err)
	}
	// train looks in the model's folder by default and says so.
	bare := t.TempDir()
	lora := filepath.Join(bare, "g.lora.onnx")
	mustLoracc(t, "inject", "../../testdata/models/gpt2_tiny.onnx", "--rank", "2", "-o", lora)
	if _, err := loracc(t, "train", lora, "--data", data, "--loss", "lm", "--logits", "logits", "--labels", "labels", "--device", "cpu", "--out", filepath.Join(bare, "run")); err == nil ||
		!strings.Contains(err.Error(), "prompt/completion records need a tokenizer: no tokenizer.json, tokenizer.model or encoder.json in "+bare+" (the model's folder; pass --tokenizer DIR for another)") {
		t.Errorf("train without a tokenizer: %v", err)
	}
	if err := os.WriteFile(data, []byte(`{"prompt": "a", "completion": " b"}`+"\n"+`{"prompt": "a", "completion": 2}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loracc(t, "data", data, "--tokenizer", dir); err == nil || !strings.Contains(err.Error(), `d.jsonl:2: field "completion": expected a string, got a number`) {
		t.Errorf("bad record: %v", err)
	}
}
