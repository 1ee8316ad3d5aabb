package dataset

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad feeds arbitrary files to Load under the lm, ce and mse specs of
// the tests, and an lm spec with vocabulary bounds: it must return an error or a Set whose every example can be
// counted and batched into tensors of consistent sizes, never panic.
// A crasher goes under testdata/fuzz/FuzzLoad as a regression case (none
// so far: about 1.7M executions over 5 minutes found nothing).
func FuzzLoad(f *testing.F) {
	for _, seed := range []string{
		`{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}` + "\n" + `{"input_ids": [4], "labels": [-100], "attention_mask": [1]}`,
		`{"input_ids": [1, 2], "token_type_ids": [0, 1], "y": 3, "attention_mask": [true, 0]}`,
		`{"x": [0.5, -1e-3, 3], "grid": [[1, 2], [3, 4]], "labels": [1.25, -2]}`,
		`{"x": [1, 2, 1e400], "grid": [[1, 2]], "labels": [1, 2]}`,
		`{"input_ids": [[1, 2]], "labels": [1, 2]}`,
		`{"input_ids": [1, [2]], "labels": [1, 2]}`,
		`{"input_ids": [1, 2.5], "labels": [1, "2"]}`,
		`{"input_ids": [], "labels": [], "x": {"a": [null, true]}}`,
		`{"in\u0070ut_ids": [1], "labels": [1]} `,
		"\xef\xbb\xbf{\"input_ids\": [1], \"labels\": [1]}\r\n\n",
		`[1, 2]`,
		``,
		`{"input_ids": [99999999999999999999], "labels": [-0]}`,
	} {
		f.Add([]byte(seed))
	}
	dir := f.TempDir()
	bounded := lmSpec(f) // with the vocabulary checks
	bounded.Ranges = map[string]Range{"input_ids": {Size: 8, Of: "a table of 8 rows"}}
	bounded.Classes = Range{Size: 5, Of: "5 classes"}
	specs := []Spec{lmSpec(f), ceSpec(f), mseSpec(f), bounded}
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "train.jsonl")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		for _, spec := range specs {
			s, err := Load(path, spec)
			if err != nil {
				continue
			}
			if s.Len() <= 0 {
				t.Fatalf("loaded %d examples without an error", s.Len())
			}
			checkBounds(t, s)
			for i := range s.Len() {
				if s.Tokens(i) < 0 {
					t.Fatalf("Tokens(%d) < 0", i)
				}
				checkBatch(t, s, []int{i})
			}
			checkBatch(t, s, Order(s.Len(), 1, 0))
		}
	})
}

// checkBatch batches idx and checks every tensor's bytes match its shape;
// a shape mismatch between examples is a fine error for ce and mse.
func checkBatch(t *testing.T, s *Set, idx []int) {
	b, err := s.Batch(idx)
	if err != nil {
		if len(idx) == 1 || s.spec.Loss == "lm" {
			// One example always stacks; so does any lm batch, since
			// the lm spec of the tests has sequence fields only.
			t.Fatalf("Batch(%v): %v", idx, err)
		}
		return
	}
	for _, f := range s.fields {
		tn, ok := b[f.name]
		if !ok {
			t.Fatalf("no tensor %q", f.name)
		}
		if tn.Shape[0] != int64(len(idx)) {
			t.Fatalf("%s: batch dim %d, want %d", f.name, tn.Shape[0], len(idx))
		}
		if want := count(tn.Shape) * f.kind.size(); len(tn.Data) != want {
			t.Fatalf("%s: %d bytes for shape %v, want %d", f.name, len(tn.Data), tn.Shape, want)
		}
	}
}

// checkBounds fails if a loaded field holds a value its Range refuses.
func checkBounds(t *testing.T, s *Set) {
	for _, f := range s.fields {
		if f.limit.Size == 0 {
			continue
		}
		for _, v := range f.ints {
			if (v < 0 || v >= f.limit.Size) && !(f == s.labels && v == s.spec.IgnoreIndex) {
				t.Fatalf("field %q holds %d, outside [0, %d)", f.name, v, f.limit.Size)
			}
		}
	}
}

// FuzzTextRecords feeds arbitrary files of text records to Load with the
// committed Unigram tokenizer and a small chat template, truncating or
// packing to 8 tokens: an error or a Set whose every example batches and
// counts at least one token, never a panic.
func FuzzTextRecords(f *testing.F) {
	for _, seed := range []string{
		`{"text": "Hello world"}` + "\n" + `{"text": ""}`,
		`{"prompt": "a", "completion": "b"}` + "\n" + `{"prompt": "a long prompt here", "completion": " x"}`,
		`{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}`,
		`{"messages": [{"role": "user", "content": null}, {"role": "assistant", "content": [{"type": "text", "text": "x"}]}]}`,
		`{"messages": [{"role": "assistant", "content": "\udbff\udffc"}]}`,
		`{"text": "a"}` + "\n" + `{"prompt": "b", "completion": "c"}`,
		`{"messages": [1, {"role": 2}]}`,
		`{"text": "a", "input_ids": [1]}`,
	} {
		f.Add([]byte(seed))
	}
	dir := f.TempDir()
	tokDir := filepath.Join(dir, "tok")
	if err := os.MkdirAll(tokDir, 0o755); err != nil {
		f.Fatal(err)
	}
	src, err := os.ReadFile(filepath.Join("..", "testdata", "tokenizer", "expected", "trained", "unigram", "tokenizer.json"))
	if err != nil {
		f.Fatal(err)
	}
	cfg := `{"chat_template": "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"}`
	if os.WriteFile(filepath.Join(tokDir, "tokenizer.json"), src, 0o644) != nil || os.WriteFile(filepath.Join(tokDir, "tokenizer_config.json"), []byte(cfg), 0o644) != nil {
		f.Fatal("writing the tokenizer")
	}
	tk, err := LoadTokenizer(tokDir)
	if err != nil {
		f.Fatal(err)
	}
	var specs []Spec
	for _, packing := range []bool{false, true} {
		spec := lmSpec(f)
		spec.MaxLength = 8
		spec.Text = TextOptions{Tokenizer: func() (*Tokenizer, error) { return tk, nil }, Packing: packing}
		specs = append(specs, spec)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "train.jsonl")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		for _, spec := range specs {
			s, err := Load(path, spec)
			if err != nil {
				continue
			}
			if st := s.Stats(); st.Format != FormatIDs && st.Examples != s.Len() {
				t.Fatalf("stats %+v for %d examples", st, s.Len())
			}
			for i := range s.Len() {
				if s.SeqLen(i) > 8 || (s.Stats().Format != FormatIDs && s.Tokens(i) < 1) {
					t.Fatalf("example %d: %d tokens, %d counted", i, s.SeqLen(i), s.Tokens(i))
				}
				checkBatch(t, s, []int{i})
			}
		}
	})
}
