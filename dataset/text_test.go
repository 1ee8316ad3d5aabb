package dataset

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"strings"

	"github.com/loracc/loracc/chat"
)

// realTokenizer loads one of scripts/fetch-tokenizers.sh's tokenizers,
// skipping without them unless LORACC_REQUIRE_REAL=1.
func realTokenizer(t *testing.T, name string) *Tokenizer {
	t.Helper()
	dir := os.Getenv("LORACC_TOKENIZERS_DIR")
	if dir == "" {
		if os.Getenv("LORACC_REQUIRE_REAL") == "1" {
			t.Fatal("LORACC_TOKENIZERS_DIR is not set (scripts/fetch-tokenizers.sh prints it)")
		}
		t.Skip("LORACC_TOKENIZERS_DIR is not set; run scripts/fetch-tokenizers.sh")
	}
	tk, err := LoadTokenizer(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

// testConversations reads chat's test conversations as chat messages and
// render options.
func testConversations(t *testing.T) map[string]struct {
	msgs []chat.Message
	opts chat.Options
} {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "chat", "testdata", "conversations.json"))
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Conversations []struct {
			Name                string                     `json:"name"`
			AddGenerationPrompt bool                       `json:"add_generation_prompt"`
			Messages            json.RawMessage            `json:"messages"`
			Extra               map[string]json.RawMessage `json:"extra"`
		} `json:"conversations"`
	}
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	out := map[string]struct {
		msgs []chat.Message
		opts chat.Options
	}{}
	for _, c := range f.Conversations {
		msgs, err := parseMessages(c.Messages)
		if err != nil {
			t.Fatalf("%s: %v", c.Name, err)
		}
		extra := map[string]any{"date_string": "26 Jul 2024"}
		for k, v := range c.Extra {
			extra[k] = v
		}
		out[c.Name] = struct {
			msgs []chat.Message
			opts chat.Options
		}{msgs, chat.Options{AddGenerationPrompt: c.AddGenerationPrompt, Extra: extra}}
	}
	return out
}

// TestSpansPiecesEqualWhole: encoding a rendered conversation in pieces
// cut at the assistant spans gives the ids of encoding it whole, for the
// real Llama-3, Llama-3.2, Qwen3 and Gemma-3 templates and every test
// conversation they render, so the assistant mask costs no change of ids.
func TestSpansPiecesEqualWhole(t *testing.T) {
	convs := testConversations(t)
	for _, name := range []string{"llama3", "llama3_2", "qwen3", "gemma3"} {
		t.Run(name, func(t *testing.T) {
			tk := realTokenizer(t, name)
			tmpl, err := tk.Chat()
			if err != nil {
				t.Fatal(err)
			}
			rendered, spans := 0, 0
			for cname, c := range convs {
				r, err := tmpl.Render(c.msgs, c.opts)
				if err != nil {
					continue // the template refuses it (roles not alternating, ...)
				}
				rendered++
				spans += len(r.Assistant)
				d, err := tk.encodeSpans(r.Text, r.Assistant)
				if err != nil {
					t.Fatalf("%s: %v", cname, err)
				}
				whole, err := tk.Tok.Encode(r.Text, false)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(d.ids, whole) {
					t.Errorf("%s: pieces give %v\nwhole text gives %v", cname, d.ids, whole)
				}
				// The counted tokens decode to the spans' text.
				var got, want string
				for _, sp := range r.Assistant {
					want += r.Text[sp.Start:sp.End]
				}
				var ids []int
				for j, id := range d.ids {
					if d.counted[j] {
						ids = append(ids, id)
					}
				}
				got = tk.Tok.Decode(ids, false)
				if got != want {
					t.Errorf("%s: counted tokens decode to %q, spans hold %q", cname, got, want)
				}
			}
			if rendered < 10 || spans < 10 {
				t.Errorf("only %d conversations rendered with %d spans", rendered, spans)
			}
		})
	}
}

// textSpec is lmSpec reading text records with tk.
func textSpec(t *testing.T, tk *Tokenizer) Spec {
	spec := lmSpec(t)
	spec.Text.Tokenizer = func() (*Tokenizer, error) { return tk, nil }
	return spec
}

// example returns example i's ids and labels as Batch feeds them.
func example(t *testing.T, s *Set, i int) (ids, labels, mask []int64) {
	t.Helper()
	b, err := s.Batch([]int{i})
	if err != nil {
		t.Fatal(err)
	}
	return ints64(t, b["input_ids"]), ints64(t, b["labels"]), ints64(t, b["attention_mask"])
}

func encode(t *testing.T, tk *Tokenizer, text string, special bool) []int64 {
	t.Helper()
	ids, err := tk.Tok.Encode(text, special)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]int64, len(ids))
	for i, id := range ids {
		out[i] = int64(id)
	}
	return out
}

func ignored(n int) []int64 {
	out := make([]int64, n)
	for i := range out {
		out[i] = -100
	}
	return out
}

func cat(parts ...[]int64) []int64 { return slices.Concat(parts...) }

// TestTextRecords: each format's ids are the tokenizer's with BOS as its
// post-processor adds it and one EOS at the end of text and completions;
// the labels hide exactly the prompt (or everything but the assistant's
// spans), and Tokens counts what the loss counts.
func TestTextRecords(t *testing.T) {
	tk := realTokenizer(t, "llama3_2") // its post-processor adds BOS; its config's EOS is <|eot_id|>
	bos, eos := int64(128000), int64(128009)
	s, err := load(t, textSpec(t, tk), `{"text": "Hello world"}
{"text": "Ends already<|eot_id|>", "id": 7}
`)
	if err != nil {
		t.Fatal(err)
	}
	ids, labels, mask := example(t, s, 0)
	want := cat([]int64{bos}, encode(t, tk, "Hello world", false), []int64{eos})
	if !slices.Equal(ids, want) || !slices.Equal(labels, want) || !slices.Equal(mask, []int64{1, 1, 1, 1}) {
		t.Errorf("text: ids %v labels %v mask %v, want ids = labels = %v", ids, labels, mask, want)
	}
	if s.Tokens(0) != len(want)-1 {
		t.Errorf("text: Tokens %d, want %d", s.Tokens(0), len(want)-1)
	}
	if ids, _, _ := example(t, s, 1); slices.Index(ids, eos) != len(ids)-1 {
		t.Errorf("text ending in EOS got another: %v", ids)
	}
	if st := s.Stats(); st.Format != FormatText || st.Records != 2 || st.Examples != 2 {
		t.Errorf("stats %+v", st)
	}

	for _, promptLoss := range []bool{false, true} {
		spec := textSpec(t, tk)
		spec.Text.PromptLoss = promptLoss
		s, err = load(t, spec, `{"prompt": "Q: 2+2?", "completion": " A: 4."}`+"\n")
		if err != nil {
			t.Fatal(err)
		}
		ids, labels, _ = example(t, s, 0)
		p, c := cat([]int64{bos}, encode(t, tk, "Q: 2+2?", false)), cat(encode(t, tk, " A: 4.", false), []int64{eos})
		wantLabels := cat(ignored(len(p)), c)
		if promptLoss {
			wantLabels = cat(p, c)
		}
		if !slices.Equal(ids, cat(p, c)) || !slices.Equal(labels, wantLabels) {
			t.Errorf("prompt loss %t: ids %v labels %v, want %v and %v", promptLoss, ids, labels, cat(p, c), wantLabels)
		}
		if n := s.Tokens(0); (!promptLoss && n != len(c)) || (promptLoss && n != len(p)+len(c)-1) {
			t.Errorf("prompt loss %t: Tokens %d", promptLoss, n)
		}
	}

	s, err = load(t, textSpec(t, tk), `{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye."}]}`+"\n")
	if err != nil {
		t.Fatal(err)
	}
	ids, labels, _ = example(t, s, 0)
	var counted []int
	for j, l := range labels {
		if l != -100 {
			if l != ids[j] {
				t.Fatalf("label %d is %d, its token %d", j, l, ids[j])
			}
			counted = append(counted, int(l))
		}
	}
	if got := tk.Tok.Decode(counted, false); got != "Hello.<|eot_id|>Bye.<|eot_id|>" {
		t.Errorf("messages: counted tokens decode to %q", got)
	}
	if n := len(ids); s.Tokens(0) != len(counted) || ids[0] != bos || slices.Index(ids[1:], bos) >= 0 || ids[n-1] != eos || ids[n-2] == eos {
		t.Errorf("messages: Tokens %d of %d counted; ids %v (one BOS from the template, no EOS appended)", s.Tokens(0), len(counted), ids)
	}
}

// TestMessagesTools: a record's "tools" reach the template, which prints
// them in the system turn (not counted).
func TestMessagesTools(t *testing.T) {
	tk := realTokenizer(t, "qwen3")
	s, err := load(t, textSpec(t, tk), `{"messages": [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "Sunny."}], "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]}`+"\n")
	if err != nil {
		t.Fatal(err)
	}
	ids, labels, _ := example(t, s, 0)
	var all, counted []int
	for j, id := range ids {
		all = append(all, int(id))
		if labels[j] != -100 {
			counted = append(counted, int(id))
		}
	}
	if text := tk.Tok.Decode(all, false); !strings.Contains(text, "get_weather") || strings.Contains(tk.Tok.Decode(counted, false), "get_weather") {
		t.Errorf("tools: rendered %q, counted %q", text, tk.Tok.Decode(counted, false))
	}
}

// TestTextEOSRules: a tokenizer whose config adds BOS and not EOS
// (Llama-2) gets BOS from the config and EOS from loracc; GPT-2, which
// adds neither, gets only the EOS.
func TestTextEOSRules(t *testing.T) {
	for _, c := range []struct {
		name     string
		bos, eos int64
	}{{"llama2", 1, 2}, {"gpt2", -1, 50256}} {
		tk := realTokenizer(t, c.name)
		s, err := load(t, textSpec(t, tk), `{"text": "Hello world"}`+"\n")
		if err != nil {
			t.Fatal(err)
		}
		ids, _, _ := example(t, s, 0)
		want := cat(encode(t, tk, "Hello world", false), []int64{c.eos})
		if c.bos >= 0 {
			want = cat([]int64{c.bos}, want)
		}
		if !slices.Equal(ids, want) {
			t.Errorf("%s: %v, want %v", c.name, ids, want)
		}
	}
}

// TestTextPackingAndTruncation: packing cuts the stream of documents
// (EOS-separated) into max-length chunks; without it long records are
// truncated and counted, and a record left with nothing to learn is
// skipped and counted.
func TestTextPackingAndTruncation(t *testing.T) {
	tk := realTokenizer(t, "gpt2")
	data := `{"text": "one two three four five six"}
{"text": "seven eight"}
{"prompt": "a b c d e f g h i j", "completion": " k"}
`
	spec := textSpec(t, tk)
	spec.MaxLength = 4
	if _, err := load(t, spec, data); err == nil || !strings.Contains(err.Error(), `train.jsonl:3: field "prompt": a prompt/completion record in a file of text records`) {
		t.Errorf("mixed formats: %v", err)
	}
	data = strings.Replace(data, `{"prompt": "a b c d e f g h i j", "completion": " k"}`, `{"text": "nine"}`, 1)
	s, err := load(t, spec, data)
	if err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Truncated != 1 || st.Examples != 3 || st.Skipped != 0 || st.MaxLength != 4 {
		t.Errorf("truncation stats %+v, want 1 truncated of 3", st)
	}
	if ids, _, _ := example(t, s, 0); !slices.Equal(ids, encode(t, tk, "one two three four", false)) {
		t.Errorf("truncated: %v", ids)
	}

	spec.Text.Packing = true
	s, err = load(t, spec, data)
	if err != nil {
		t.Fatal(err)
	}
	var stream []int64
	for _, text := range []string{"one two three four five six", "seven eight", "nine"} {
		stream = cat(stream, encode(t, tk, text, false), []int64{50256})
	}
	var got []int64
	for i := range s.Len() {
		ids, labels, _ := example(t, s, i)
		if len(ids) > 4 || (i < s.Len()-1 && len(ids) != 4) || !slices.Equal(ids, labels) {
			t.Errorf("chunk %d: ids %v labels %v", i, ids, labels)
		}
		got = append(got, ids...)
	}
	if !slices.Equal(got, stream) || s.Stats().Truncated != 0 {
		t.Errorf("packed stream %v, want %v (stats %+v)", got, stream, s.Stats())
	}

	spec = textSpec(t, tk)
	spec.MaxLength = 5
	s, err = load(t, spec, `{"prompt": "a b c d e f g h i j", "completion": " k"}
{"prompt": "a", "completion": " b"}
`)
	if err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Truncated != 1 || st.Skipped != 1 || st.Examples != 1 {
		t.Errorf("a completion lost to truncation: stats %+v, want 1 truncated, 1 skipped", st)
	}
}

// TestTextBadRecords: each bad record fails naming file:line and the
// field.
func TestTextBadRecords(t *testing.T) {
	tk := realTokenizer(t, "llama3_2")
	for _, c := range []struct{ data, want string }{
		{`{"text": "a"}` + "\n" + `{"text": 3}`, `train.jsonl:2: field "text": expected a string, got a number`},
		{`{"text": "a"}` + "\n\n" + `{"messages": []}`, `train.jsonl:3: field "messages": a messages record in a file of text records`},
		{`{"prompt": "a", "completion": "b"}` + "\n" + `{"prompt": "a"}`, `train.jsonl:2: field "completion": missing`},
		{`{"text": "a"}` + "\n" + `{"input_ids": [1, 2], "labels": [1, 2]}`, `train.jsonl:2: field "input_ids": a token ids record in a file of text records`},
		{`{"text": "a"}` + "\n" + `{"txt": "a"}`, `train.jsonl:2: field "text": missing`},
		{`{"text": "a"}` + "\n" + `{"text": "a"`, `train.jsonl:2: not JSON: unexpected end of JSON input`},
		{`{"messages": [{"role": "user", "content": "a"}, {"content": "b"}]}`, `train.jsonl:1: field "messages[1].role": missing`},
		{`{"messages": [{"role": 1, "content": "a"}]}`, `train.jsonl:1: field "messages[0].role": expected a string, got a number`},
		{`{"messages": {"role": "user"}}`, `train.jsonl:1: field "messages": expected an array of messages, got an object`},
		{`{"text": "a"}` + "\n" + `[1]`, `train.jsonl:2: expected a JSON object, got an array`},
		{`{"text": "a"}` + "\n" + `null`, `train.jsonl:2: expected a JSON object, got null`},
	} {
		if _, err := load(t, textSpec(t, tk), c.data); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: got %v, want %q", c.data, err, c.want)
		}
	}
	// Ids the model's embedding lacks name the record, not the token file.
	spec := textSpec(t, tk)
	spec.Ranges = map[string]Range{"input_ids": {Size: 1000, Of: `the 1000 rows of "wte"`}}
	if _, err := load(t, spec, `{"text": "Hello"}`); err == nil || !strings.Contains(err.Error(), `train.jsonl:1: field "text": token 0 has id 128000, outside [0, 1000), the 1000 rows of "wte"`) {
		t.Errorf("ids past the model's vocabulary: %v", err)
	}
	// No tokenizer: the loader's reason is passed on.
	spec = lmSpec(t)
	spec.Text.Tokenizer = func() (*Tokenizer, error) { return nil, os.ErrNotExist }
	if _, err := load(t, spec, `{"text": "a"}`); err == nil || !strings.Contains(err.Error(), "train.jsonl: text records need a tokenizer: file does not exist") {
		t.Errorf("no tokenizer: %v", err)
	}
	// Text records need the lm loss and a graph that takes only ids, labels and mask.
	spec = ceSpec(t)
	spec.Text.Tokenizer = func() (*Tokenizer, error) { return tk, nil }
	if _, err := load(t, spec, `{"text": "a"}`); err == nil || !strings.Contains(err.Error(), "text records train the lm loss, not ce") {
		t.Errorf("ce: %v", err)
	}
}

// TestTokenDataMaxLength: token data longer than MaxLength is refused
// naming the line; it is not truncated.
func TestTokenDataMaxLength(t *testing.T) {
	spec := lmSpec(t)
	spec.MaxLength = 2
	if _, err := load(t, spec, `{"input_ids": [1, 2], "labels": [1, 2]}`+"\n"+`{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}`); err == nil ||
		!strings.Contains(err.Error(), `train.jsonl:2: field "input_ids": 3 tokens, more than the maximum length 2`) {
		t.Errorf("got %v", err)
	}
}

// TestTextCache: the tokens are cached under CacheDir and reused for the
// same data and tokenizer (same examples, same fingerprint); another data
// file or tokenizer gets its own tokens and another fingerprint.
func TestTextCache(t *testing.T) {
	tk := realTokenizer(t, "gpt2")
	dir, cacheDir := t.TempDir(), t.TempDir()
	path := filepath.Join(dir, "train.jsonl")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	spec := textSpec(t, tk)
	spec.Text.CacheDir = cacheDir
	loadIt := func(spec Spec) *Set {
		s, err := Load(path, spec)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	write(`{"text": "Hello world"}` + "\n" + `{"text": "again"}` + "\n")
	a := loadIt(spec)
	b := loadIt(spec)
	if a.Stats().Reused || !b.Stats().Reused || a.Stats().Cache != b.Stats().Cache || a.Fingerprint() != b.Fingerprint() {
		t.Fatalf("second load: stats %+v then %+v, fingerprints %s %s", a.Stats(), b.Stats(), a.Fingerprint(), b.Fingerprint())
	}
	if filepath.Dir(a.Stats().Cache) != cacheDir || !strings.HasPrefix(filepath.Base(a.Stats().Cache), "train.") {
		t.Errorf("cache at %s", a.Stats().Cache)
	}
	if ia, _, _ := example(t, a, 1); !slices.Equal(ia, func() []int64 { ib, _, _ := example(t, b, 1); return ib }()) {
		t.Errorf("reused examples differ")
	}
	other := *tk
	other.Key = "another tokenizer"
	spec2 := spec
	spec2.Text.Tokenizer = func() (*Tokenizer, error) { return &other, nil }
	if c := loadIt(spec2); c.Stats().Reused || c.Stats().Cache == a.Stats().Cache {
		t.Errorf("another tokenizer reused %s", c.Stats().Cache)
	}
	write(`{"text": "Hello world!"}` + "\n" + `{"text": "again"}` + "\n")
	if c := loadIt(spec); c.Stats().Reused || c.Fingerprint() == a.Fingerprint() {
		t.Errorf("changed data: stats %+v, fingerprint %s (was %s)", c.Stats(), c.Fingerprint(), a.Fingerprint())
	}
	// A cache without its stats file (a run killed while writing it) is rebuilt.
	if err := os.Remove(strings.TrimSuffix(a.Stats().Cache, ".tokens.jsonl") + ".stats.json"); err != nil {
		t.Fatal(err)
	}
	write(`{"text": "Hello world"}` + "\n" + `{"text": "again"}` + "\n")
	if c := loadIt(spec); c.Stats().Reused || c.Fingerprint() != a.Fingerprint() {
		t.Errorf("half-written cache: stats %+v", c.Stats())
	}
}
