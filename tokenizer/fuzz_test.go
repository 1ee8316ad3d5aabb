package tokenizer

import "testing"

// exercise encodes and decodes a few strings: a loaded file must never
// make these panic either.
func exercise(t *testing.T, tk *Tokenizer) {
	for _, s := range []string{"", "ab c", " a  <s>b\n\t", "héllo wörld 😀", "\xff\xfe", "<unk></s><R> word"} {
		for _, special := range []bool{false, true} {
			ids, err := tk.Encode(s, special)
			if err != nil {
				continue
			}
			tk.Decode(ids, false)
			tk.Decode(ids, true)
		}
	}
	tk.Decode([]int{-1, 0, 1, 2, 3, 1 << 30}, false)
}

func FuzzLoadTokenizerJSON(f *testing.F) {
	f.Add([]byte(toyJSON("")))
	f.Add([]byte(`{"model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0], ["a", -1]]}, "pre_tokenizer": {"type": "Metaspace"}}`))
	f.Add([]byte(`{"model": {"vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}, "pre_tokenizer": {"type": "ByteLevel"}, "decoder": {"type": "ByteLevel"}}`))
	f.Add([]byte(`{"model": {"type": "BPE", "vocab": {}, "merges": []}, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Contiguous", "invert": true}, {"type": "Digits"}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<16 {
			return
		}
		tk, err := parseTokenizerJSON(data)
		if err != nil {
			return
		}
		tk.finish()
		exercise(t, tk)
	})
}

func FuzzLoadSentencePiece(f *testing.F) {
	f.Add(spProto(toySP(2, true), 2, true, nil))
	f.Add(spProto(toySP(1, false), 1, false, nil))
	f.Add(spProto(toySP(1, true), 1, true, nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<16 {
			return
		}
		tk, err := parseSentencePiece(data)
		if err != nil {
			return
		}
		exercise(t, tk)
	})
}

// FuzzEncode feeds arbitrary text to the toy tokenizer; with byte
// fallback and the Prepend/Replace normalizer, decoding gives the text
// back whenever it does not start with a space.
func FuzzEncode(f *testing.F) {
	tk, err := parseTokenizerJSON([]byte(toyJSON("")))
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{"ab", "a b c", "x<L> y", "<R>   z", "word", "é\x80"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ids, err := tk.Encode(s, true)
		if err != nil {
			t.Fatal(err)
		}
		got := tk.Decode(ids, true)
		if len(s) > 0 && s[0] != ' ' && isPlain(s) && got != s {
			t.Fatalf("Decode(Encode(%q)) = %q", s, got)
		}
	})
}

// isPlain: valid UTF-8 without the added tokens' text, which lstrip and
// rstrip change.
func isPlain(s string) bool {
	for _, r := range s {
		if r == '\uFFFD' || r == '<' || r == '▁' {
			return false
		}
	}
	return true
}
