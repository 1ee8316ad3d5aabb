package tokenizer

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/text/unicode/norm"
)

// TestLoadErrors checks that bad files give errors naming the file and
// the problem.
func TestLoadErrors(t *testing.T) {
	good := toyJSON("")
	for _, c := range []struct {
		name, content, want string
	}{
		{"tokenizer.json", "{", "unexpected end"},
		{"tokenizer.json", `{"model": {"type": "WordLevel", "vocab": {}}}`, `unsupported type "WordLevel"`},
		{"tokenizer.json", strings.Replace(good, `["ab", "c"]`, `["ab", "zz"]`, 1), `model.merges[3] "ab" "zz": token not in the vocabulary`},
		{"tokenizer.json", strings.Replace(good, `"type": "Prepend"`, `"type": "Frobnicate"`, 1), `normalizer.normalizers[0]: unsupported normalizer type "Frobnicate"`},
		{"tokenizer.json", strings.Replace(good, `"content": " "`, `"content": 5`, 1), "decoder.decoders[0].content"},
		{"tokenizer.json", strings.Replace(good, `{"String": " "}`, `{"Regex": "(unclosed"}`, 1), "normalizer.normalizers[1].pattern"},
		{"tokenizer.json", strings.Replace(good, `"id": 1, "content": "<s>"`, `"id": -4, "content": "<s>"`, 1), "negative id"},
		{"tokenizer.json", strings.Replace(good, `"unk_token": "<unk>"`, `"unk_token": "<nope>"`, 1), `unk_token "<nope>"`},
		{"tokenizer.json", `{"model": {"type": "BPE", "vocab": {"a": 99999999999}}}`, "outside"},
		{"tokenizer.model", "\xff\xff\xff", "model"},
		{"tokenizer.model", "", "no pieces"},
	} {
		p := writeTemp(t, c.name, c.content)
		_, err := LoadFile(p)
		if err == nil {
			t.Errorf("%s %.40q: no error", c.name, c.content)
			continue
		}
		if !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("error %q: want the path and %q", err, c.want)
		}
	}
	if _, err := LoadFile(filepath.Join(t.TempDir(), "missing.json")); err == nil || !strings.Contains(err.Error(), "missing.json") {
		t.Errorf("missing file: %v", err)
	}
	dir := t.TempDir()
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), dir) {
		t.Errorf("empty dir: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "encoder.json"), []byte(`{"a": 0}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "vocab.bpe") {
		t.Errorf("encoder.json without vocab.bpe: %v", err)
	}
}

func TestConfig(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), []byte(toyJSON("")), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := `{"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>", "pad_token": "<unk>",
	  "unk_token": {"__type": "AddedToken", "content": "<unk>"}, "model_max_length": 4096,
	  "chat_template": [{"name": "default", "template": "{{ x }}"}, {"name": "tool_use", "template": "{{ y }}"}]}`
	if err := os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	tk, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if id, ok := tk.Pad(); !ok || id != 0 {
		t.Errorf("Pad = %d, %v", id, ok)
	}
	if tk.MaxLength() != 4096 {
		t.Errorf("MaxLength = %d", tk.MaxLength())
	}
	if s, ok := tk.ChatTemplate(""); !ok || s != "{{ x }}" {
		t.Errorf("default template = %q, %v", s, ok)
	}
	if s, ok := tk.ChatTemplate("tool_use"); !ok || s != "{{ y }}" {
		t.Errorf("tool_use template = %q, %v", s, ok)
	}
	if got := tk.ChatTemplateNames(); !slices.Equal(got, []string{"default", "tool_use"}) {
		t.Errorf("names = %v", got)
	}
	for _, bad := range []string{`{"bos_token": "<nope>"}`, `{"eos_token": 5}`, `{"chat_template": [{"name": "x"}]}`, `{"chat_template": 3}`, `[`} {
		if err := os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "tokenizer_config.json") {
			t.Errorf("config %s: err = %v", bad, err)
		}
	}
}

// TestConfigAddBOS: a SentencePiece model's BOS follows add_bos_token and
// add_eos_token.
func TestConfigAddBOS(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.model"), spProto(toySP(2, true), 2, true, nil), 0o644); err != nil {
		t.Fatal(err)
	}
	tk, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := mustEncode(t, tk, "ab", true); !slices.Equal(got, []int{1, 8}) {
		t.Errorf("default = %v", got)
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), []byte(`{"add_bos_token": false, "add_eos_token": true}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if tk, err = Load(dir); err != nil {
		t.Fatal(err)
	}
	if got := mustEncode(t, tk, "ab", true); !slices.Equal(got, []int{8, 2}) {
		t.Errorf("add_eos = %v", got)
	}
}

// TestRealSpecials checks the special ids the configs give.
func TestRealSpecials(t *testing.T) {
	for _, c := range []struct {
		name          string
		bos, eos, pad int // -1: none
		template      bool
	}{
		{"gpt2", 50256, 50256, -1, false},
		{"llama3", 128000, 128001, -1, true},
		{"qwen3", -1, 151645, 151643, true},
		{"llama2", 1, 2, -1, false},
	} {
		tk := loadReal(t, c.name)
		for _, f := range []struct {
			what string
			get  func() (int, bool)
			want int
		}{{"bos", tk.BOS, c.bos}, {"eos", tk.EOS, c.eos}, {"pad", tk.Pad, c.pad}} {
			id, ok := f.get()
			if !ok {
				id = -1
			}
			if id != f.want {
				t.Errorf("%s %s = %d, want %d", c.name, f.what, id, f.want)
			}
		}
		if _, ok := tk.ChatTemplate(""); ok != c.template {
			t.Errorf("%s: chat template present = %v", c.name, ok)
		}
	}
}

// TestConcurrentEncode shares one Tokenizer (and its word cache) between
// goroutines.
func TestConcurrentEncode(t *testing.T) {
	tk := loadReal(t, "llama3")
	lines := readCorpus(t)
	want := make([][]int, len(lines))
	for i, l := range lines {
		want[i] = mustEncode(t, tk, l, true)
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range lines {
				i := (k + g*37) % len(lines)
				got, err := tk.Encode(lines[i], true)
				if err != nil || !slices.Equal(got, want[i]) {
					t.Errorf("goroutine %d line %d differs", g, i+1)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// TestRoundTrip: decoding the ids of a line gives the line back for the
// byte-level tokenizers (llama2 loses nothing either on this corpus, but
// SentencePiece-style decoding is not lossless in general).
func TestRoundTrip(t *testing.T) {
	for _, name := range []string{"gpt2", "llama3", "qwen3"} {
		tk := loadReal(t, name)
		for i, l := range readCorpus(t) {
			if name == "qwen3" {
				l = norm.NFC.String(l) // Qwen normalizes to NFC first
			}
			if got := tk.Decode(mustEncode(t, tk, l, false), false); got != l {
				t.Errorf("%s line %d: round trip %q != %q", name, i+1, got, l)
			}
		}
	}
}
