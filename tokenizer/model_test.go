package tokenizer

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

// toyJSON is a SentencePiece-style BPE tokenizer.json: ▁ for spaces, byte
// fallback, fused unknowns, and added tokens with each flag.
func toyJSON(extra string) string {
	vocab := []string{"<unk>", "<s>", "</s>", "▁", "a", "b", "c", "ab", "▁ab", "▁a", "abc"}
	var v []string
	for i, p := range vocab {
		v = append(v, fmt.Sprintf("%q: %d", p, i))
	}
	for b := 0; b < 256; b++ {
		v = append(v, fmt.Sprintf("%q: %d", byteToken(b), len(vocab)+b))
	}
	n := len(vocab) + 256
	return `{"added_tokens": [
	{"id": 0, "content": "<unk>", "special": true},
	{"id": 1, "content": "<s>", "special": true},
	{"id": 2, "content": "</s>", "special": true},
	{"id": ` + fmt.Sprint(n) + `, "content": "<L>", "lstrip": true, "special": true},
	{"id": ` + fmt.Sprint(n+1) + `, "content": "<R>", "rstrip": true},
	{"id": ` + fmt.Sprint(n+2) + `, "content": "word", "single_word": true}` + extra + `],
 "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
 "pre_tokenizer": null,
 "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}],
   "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}, "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}},
 "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
 "model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": true, "byte_fallback": true,
   "vocab": {` + strings.Join(v, ", ") + `},
   "merges": [["a", "b"], ["▁", "ab"], ["▁", "a"], ["ab", "c"]]}}`
}

func writeTemp(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func mustEncode(t *testing.T, tk *Tokenizer, s string, special bool) []int {
	t.Helper()
	ids, err := tk.Encode(s, special)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func TestToyBPE(t *testing.T) {
	tk, err := LoadFile(writeTemp(t, "tokenizer.json", toyJSON("")))
	if err != nil {
		t.Fatal(err)
	}
	n := 11 + 256
	x := 11 + int('x') // byte fallback id of "x"
	for _, c := range []struct {
		in   string
		want []int
	}{
		{"ab", []int{8}},
		{"abc", []int{8, 6}},    // ▁ a b c: (a,b) first, then (▁,ab) before (ab,c)
		{"a b", []int{9, 3, 5}}, // ▁a ▁ b: "▁b" is not a merge
		{"ax", []int{9, x}},
		{"", nil},
		{"a <L>b", []int{9, n, 3, 5}}, // <L> eats the space on its left
		{"<R>  ab", []int{n + 1, 8}},  // <R> eats the spaces on its right
		{"a word b", []int{9, 3, n + 2, 3, 3, 5}},
		{"awordb", append([]int{9}, append(bytesIDs("word"), 5)...)}, // not a single word
	} {
		got := mustEncode(t, tk, c.in, false)
		if !slices.Equal(got, c.want) {
			t.Errorf("Encode(%q) = %v, want %v", c.in, got, c.want)
		}
	}
	if got := mustEncode(t, tk, "ab", true); !slices.Equal(got, []int{1, 8, 2}) {
		t.Errorf("Encode with specials = %v", got)
	}
	if bos, ok := tk.BOS(); !ok || bos != 1 {
		t.Errorf("BOS = %d, %v", bos, ok)
	}
	if eos, ok := tk.EOS(); !ok || eos != 2 {
		t.Errorf("EOS = %d, %v", eos, ok)
	}
	if got := tk.Decode([]int{1, 9, 3, 5, 11 + 0xE2, 11 + 0x82, 11 + 0xAC, 2}, true); got != "a b€" {
		t.Errorf("Decode = %q", got)
	}
	if got := tk.Decode([]int{1, 9, 999999, -1}, false); got != "<s> a" {
		t.Errorf("Decode keeping specials = %q", got)
	}
	if !tk.IsSpecial(n) || tk.IsSpecial(n+1) || tk.VocabSize() != n+3 {
		t.Errorf("IsSpecial/VocabSize wrong: %v %v %d", tk.IsSpecial(n), tk.IsSpecial(n+1), tk.VocabSize())
	}
	if id, ok := tk.TokenID("▁ab"); !ok || id != 8 {
		t.Errorf("TokenID = %d, %v", id, ok)
	}
	if s, ok := tk.Token(n + 2); !ok || s != "word" {
		t.Errorf("Token = %q, %v", s, ok)
	}
	if _, ok := tk.Token(-3); ok {
		t.Error("Token(-3) found")
	}
}

func bytesIDs(s string) []int {
	var out []int
	for i := 0; i < len(s); i++ {
		out = append(out, 11+int(s[i]))
	}
	return out
}

func TestToyUnigram(t *testing.T) {
	js := `{"added_tokens": [{"id": 0, "content": "<unk>", "special": true}],
	"pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true},
	"decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"},
	"model": {"type": "Unigram", "unk_id": 0, "byte_fallback": %s, "vocab": [["<unk>", 0], ["▁", -2], ["a", -3], ["b", -3], ["ab", -4], ["▁ab", -5.5], ["▁a", -3]%s]}}`
	var bytes string
	for b := 0; b < 256; b++ {
		bytes += fmt.Sprintf(", [%q, -20]", byteToken(b))
	}
	tk, err := LoadFile(writeTemp(t, "u.json", fmt.Sprintf(js, "false", "")))
	if err != nil {
		t.Fatal(err)
	}
	// "▁ab": ▁ab scores -5.5; ▁a + b scores -6; ▁ + ab -6.
	if got := mustEncode(t, tk, "ab", false); !slices.Equal(got, []int{5}) {
		t.Errorf("unigram ab = %v", got)
	}
	// Unknown runs fuse into one <unk>.
	if got := mustEncode(t, tk, "axyb", false); !slices.Equal(got, []int{6, 0, 3}) {
		t.Errorf("unigram axyb = %v", got)
	}
	if got := tk.Decode([]int{6, 3, 1, 2}, false); got != "ab a" {
		t.Errorf("unigram decode = %q", got)
	}
	tk, err = LoadFile(writeTemp(t, "u.json", fmt.Sprintf(js, "true", bytes)))
	if err != nil {
		t.Fatal(err)
	}
	if got := mustEncode(t, tk, "axyb", false); !slices.Equal(got, []int{6, 7 + 'x', 7 + 'y', 3}) {
		t.Errorf("unigram byte fallback = %v", got)
	}
}

// spProto builds a ModelProto with protowire.
type spPiece struct {
	piece string
	score float32
	typ   pieceType
}

func spProto(pieces []spPiece, modelType int, byteFallback bool, extraNorm []byte) []byte {
	var b []byte
	for _, p := range pieces {
		var m []byte
		m = protowire.AppendTag(m, 1, protowire.BytesType)
		m = protowire.AppendString(m, p.piece)
		m = protowire.AppendTag(m, 2, protowire.Fixed32Type)
		m = protowire.AppendFixed32(m, math.Float32bits(p.score))
		m = protowire.AppendTag(m, 3, protowire.VarintType)
		m = protowire.AppendVarint(m, uint64(p.typ))
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendBytes(b, m)
	}
	var ts []byte
	ts = protowire.AppendTag(ts, 3, protowire.VarintType)
	ts = protowire.AppendVarint(ts, uint64(modelType))
	ts = protowire.AppendTag(ts, 35, protowire.VarintType)
	ts = protowire.AppendVarint(ts, protowire.EncodeBool(byteFallback))
	ts = protowire.AppendTag(ts, 999, protowire.BytesType) // unknown fields are skipped
	ts = protowire.AppendString(ts, "ignored")
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, ts)
	var ns []byte
	ns = protowire.AppendTag(ns, 1, protowire.BytesType)
	ns = protowire.AppendString(ns, "identity")
	ns = append(ns, extraNorm...)
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendBytes(b, ns)
	return b
}

func toySP(modelType int, byteFallback bool) []spPiece {
	p := []spPiece{{"<unk>", 0, spUnknown}, {"<s>", 0, spControl}, {"</s>", 0, spControl},
		{"▁", -1, spNormal}, {"a", -2, spNormal}, {"b", -2, spNormal}, {"ab", -1.5, spNormal},
		{"▁a", -1.2, spNormal}, {"▁ab", -3, spNormal}, {"<0x41>", 0, spByte}}
	if byteFallback {
		p = p[:len(p)-1]
		for b := 0; b < 256; b++ {
			p = append(p, spPiece{byteToken(b), 0, spByte})
		}
	}
	return p
}

func TestToySentencePiece(t *testing.T) {
	// BPE by score: in "▁ab" the pairs are (▁,a)→▁a -1.2 and (a,b)→ab
	// -1.5; ▁a wins, then (▁a,b)→▁ab.
	tk, err := LoadFile(writeTemp(t, "bpe.model", string(spProto(toySP(2, true), 2, true, nil))))
	if err != nil {
		t.Fatal(err)
	}
	if got := mustEncode(t, tk, "ab", false); !slices.Equal(got, []int{8}) {
		t.Errorf("sp bpe ab = %v", got)
	}
	if got := mustEncode(t, tk, "  ab  b ", true); !slices.Equal(got, []int{1, 8, 3, 5}) {
		t.Errorf("sp bpe with spaces = %v", got)
	}
	x := 9 + int('x')
	if got := mustEncode(t, tk, "ax", false); !slices.Equal(got, []int{7, x}) {
		t.Errorf("sp bpe byte fallback = %v", got)
	}
	if got := tk.Decode([]int{1, 8, 3, 5, 9 + 0xC3, 9 + 0xA9, 9 + 0xFF, 2}, false); got != "ab bé\uFFFD" {
		t.Errorf("sp decode = %q", got)
	}
	// "<s>" in text is not the control token.
	if got := mustEncode(t, tk, "<s>", false); slices.Contains(got, 1) {
		t.Errorf("control piece matched in text: %v", got)
	}
	// Unigram: "▁ab" as ▁a + b = -3.2, ▁ab = -3, ▁ + ab = -2.5: ▁ + ab.
	tk, err = LoadFile(writeTemp(t, "uni.model", string(spProto(toySP(1, false), 1, false, nil))))
	if err != nil {
		t.Fatal(err)
	}
	if got := mustEncode(t, tk, "ab", false); !slices.Equal(got, []int{3, 6}) {
		t.Errorf("sp unigram ab = %v", got)
	}
	if got := mustEncode(t, tk, "axy", false); !slices.Equal(got, []int{7, 0}) {
		t.Errorf("sp unigram unknown = %v", got)
	}
	if got := tk.Decode([]int{7, 0}, false); got != "a \u2047 " {
		t.Errorf("sp unigram decode unk = %q", got)
	}
	// Unigram ignores byte pieces' text: "<0x41>" is not matched.
	if got := mustEncode(t, tk, "<0x41>", false); slices.Contains(got, 9) {
		t.Errorf("byte piece matched as text: %v", got)
	}
}

func TestSentencePieceRejectsPrecompiled(t *testing.T) {
	var extra []byte
	extra = protowire.AppendTag(extra, 2, protowire.BytesType)
	extra = protowire.AppendBytes(extra, []byte{1, 2, 3})
	b := spProto(toySP(1, false), 1, false, nil)
	// Rename the rule and add a charsmap.
	b = append(b[:0:0], spProto(toySP(1, false), 1, false, extra)...)
	b = []byte(strings.Replace(string(b), "identity", "nmt_nfkc", 1))
	_, err := LoadFile(writeTemp(t, "n.model", string(b)))
	if err == nil || !strings.Contains(err.Error(), "nmt_nfkc") || !strings.Contains(err.Error(), "n.model") {
		t.Fatalf("err = %v", err)
	}
}

// TestSplitAtSame checks that merging ▁ by ▁ (bpe.splitAt) gives the ids
// of merging the whole word, on the corpus and random text.
func TestSplitAtSame(t *testing.T) {
	tk := loadReal(t, "llama2")
	m := tk.model.(*bpe)
	if m.splitAt == "" {
		t.Fatal("splitAt not enabled for llama2")
	}
	whole := *m
	whole.splitAt, whole.cache = "", newWordCache()
	plain := &Tokenizer{model: &whole, added: tk.added, norm: tk.norm, pre: tk.pre}
	inputs := readCorpus(t)
	r := rand.New(rand.NewPCG(3, 4))
	for range 500 {
		inputs = append(inputs, randomText(r, 40))
	}
	for _, in := range inputs {
		a, b := mustEncode(t, tk, in, false), mustEncode(t, plain, in, false)
		if !slices.Equal(a, b) {
			t.Fatalf("%q: split %v, whole %v", in, a, b)
		}
	}
}
