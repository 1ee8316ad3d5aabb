package tokenizer

import (
	"slices"
	"testing"

	"golang.org/x/text/unicode/norm"
)

func TestNormalizers(t *testing.T) {
	re, err := compileRegex(` {2,}`)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		n    normalizer
		in   string
		want string
	}{
		{"nfc", unicodeNorm{norm.NFC}, "Cafe\u0301", "Café"},
		{"nfd", unicodeNorm{norm.NFD}, "é", "e\u0301"},
		{"nfkc", unicodeNorm{norm.NFKC}, "ﬁ ① ｈ", "fi 1 h"},
		{"lowercase", lowercase{}, "HeLLo İ", "hello i\u0307"},
		{"final sigma", lowercase{}, "ΟΔΥΣΣΕΥΣ Σ ΑΣ.", "οδυσσευς σ ας."},
		{"strip", strip{true, true}, " \t a b \n", "a b"},
		{"strip left", strip{true, false}, "  a ", "a "},
		{"strip accents", stripAccents{}, "e\u0301a", "ea"},
		{"prepend", prepend{"▁"}, "hi", "▁hi"},
		{"prepend empty", prepend{"▁"}, "", ""},
		{"replace literal", replace{literal(" "), "▁"}, "a b  c", "a▁b▁▁c"},
		{"replace regex", replace{re, " "}, "a  b     c d", "a b c d"},
		{"sequence", normSequence{prepend{"▁"}, replace{literal(" "), "▁"}}, "a b", "▁a▁b"},
		{"bert", bertNormalizer{cleanText: true, chinese: true, stripAccents: true, lowercase: true}, "Héllo\t世\u0000", "hello  世 "},
		{"sp whitespace", spNormalizer{dummyPrefix: true, removeExtra: true, escape: true}, "  a   b  ", "▁a▁b"},
		{"sp keep extra", spNormalizer{dummyPrefix: true, escape: true}, " a  b", "▁▁a▁▁b"},
		{"sp only spaces", spNormalizer{dummyPrefix: true, removeExtra: true, escape: true}, "   ", ""},
	} {
		if got := c.n.normalize(c.in); got != c.want {
			t.Errorf("%s(%q) = %q, want %q", c.name, c.in, got, c.want)
		}
	}
}

func words(ps []piece) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.text
	}
	return out
}

func preTok(t *testing.T, p preTokenizer, in string) []string {
	t.Helper()
	out, err := p.preTokenize([]piece{{text: in, first: true}}, nil, &scratch{})
	if err != nil {
		t.Fatal(err)
	}
	return words(out)
}

// TestSplitBehaviors uses the example of HF's SplitDelimiterBehavior docs.
func TestSplitBehaviors(t *testing.T) {
	in := "the-final--countdown"
	for b, want := range map[behavior][]string{
		removed:            {"the", "final", "countdown"},
		isolated:           {"the", "-", "final", "-", "-", "countdown"},
		mergedWithPrevious: {"the-", "final-", "-", "countdown"},
		mergedWithNext:     {"the", "-final", "-", "-countdown"},
		contiguous:         {"the", "-", "final", "--", "countdown"},
	} {
		if got := preTok(t, split{literal("-"), b, false}, in); !slices.Equal(got, want) {
			t.Errorf("behavior %d: got %q, want %q", b, got, want)
		}
	}
	if got, want := preTok(t, split{literal("-"), removed, true}, in), []string{"-", "-", "-"}; !slices.Equal(got, want) {
		t.Errorf("inverted removed: got %q, want %q", got, want)
	}
}

func TestPreTokenizers(t *testing.T) {
	re, err := compileRegex(gpt2Pattern)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		p    preTokenizer
		in   string
		want []string
	}{
		{"metaspace", metaspace{"▁", prependAlways, true}, "Hey friend", []string{"▁Hey", "▁friend"}},
		{"metaspace no split", metaspace{"▁", prependAlways, false}, "Hey friend", []string{"▁Hey▁friend"}},
		{"metaspace never", metaspace{"▁", prependNever, true}, "Hey  you", []string{"Hey", "▁", "▁you"}},
		{"digits", runeClass{match: isNumeric, behavior: isolated}, "a123b4", []string{"a", "123", "b", "4"}},
		{"digits each", runeClass{match: isNumeric, behavior: isolated, each: true}, "a12", []string{"a", "1", "2"}},
		{"whitespace", whitespace{}, "Hey, friend!  ok", []string{"Hey", ",", "friend", "!", "ok"}},
		{"whitespace split", runeClass{match: isSpace, behavior: removed}, " a\tb  c ", []string{"a", "b", "c"}},
		{"punctuation", runeClass{match: isPunct, behavior: isolated, each: true}, "a,b!!", []string{"a", ",", "b", "!", "!"}},
		{"byte level", byteLevel{addPrefixSpace: true, re: re}, "Hello  world's", []string{"ĠHello", "Ġ", "Ġworld", "'s"}},
		{"byte level bytes", byteLevel{re: re}, "é\n", []string{"Ã©", "Ċ"}},
		{"sequence", preSequence{split{literal(" "), removed, false}, runeClass{match: isNumeric, behavior: isolated}}, "ab12 c", []string{"ab", "12", "c"}},
	} {
		if got := preTok(t, c.p, c.in); !slices.Equal(got, c.want) {
			t.Errorf("%s(%q) = %q, want %q", c.name, c.in, got, c.want)
		}
	}
	// Metaspace's "first" prepends only to the piece at offset 0.
	m := metaspace{"▁", prependFirst, true}
	out, _ := m.preTokenize([]piece{{text: "a", first: true}, {text: "b"}}, nil, &scratch{})
	if got := words(out); !slices.Equal(got, []string{"▁a", "b"}) {
		t.Errorf("metaspace first: %q", got)
	}
}

func TestDecoders(t *testing.T) {
	for _, c := range []struct {
		name string
		d    decoder
		in   []string
		want string
	}{
		{"byte level", byteLevelDecoder{}, []string{"ĠHello", "Ġw", "Ã©"}, " Hello wé"},
		{"byte level invalid", byteLevelDecoder{}, []string{"a", "Ã", "b"}, "a\uFFFDb"},
		{"byte level foreign", byteLevelDecoder{}, []string{"Ġa", "<|im_end|>", "中"}, " a<|im_end|>中"},
		{"byte fallback", byteFallbackDecoder{}, []string{"<0x61>", "b", "<0xE2>", "<0x82>", "<0xAC>", "<0xE2>", "<0x82>"}, "ab\uFFFD\uFFFD\uFFFD\uFFFD\uFFFD"},
		{"byte fallback lower", byteFallbackDecoder{}, []string{"<0xe2>", "<0x82>", "<0xac>", "x"}, "€x"},
		{"fuse", fuseDecoder{}, []string{"a", "b"}, "ab"},
		{"strip", stripDecoder{" ", 1, 1}, []string{"  a ", " b"}, " ab"},
		{"metaspace", metaspaceDecoder{"▁", prependAlways}, []string{"▁Hey", "▁friend"}, "Hey friend"},
		{"metaspace never", metaspaceDecoder{"▁", prependNever}, []string{"▁Hey", "▁friend"}, " Hey friend"},
		{"wordpiece", wordPieceDecoder{"##", true}, []string{"un", "##believ", "##able", "."}, "unbelievable."},
		{"llama2 sequence", decSequence{replaceDecoder{replace{literal("▁"), " "}}, byteFallbackDecoder{}, fuseDecoder{}, stripDecoder{" ", 1, 0}},
			[]string{"▁Hello", "<0x21>", "▁", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>"}, "Hello! 😀"},
	} {
		if got := joinAll(c.d.decode(c.in)); got != c.want {
			t.Errorf("%s(%q) = %q, want %q", c.name, c.in, got, c.want)
		}
	}
}

func joinAll(s []string) string {
	out := ""
	for _, x := range s {
		out += x
	}
	return out
}

// TestLossyUTF8 checks the U+FFFD rule of Rust's from_utf8_lossy: one per
// maximal invalid prefix.
func TestLossyUTF8(t *testing.T) {
	for in, want := range map[string]string{
		"ok":               "ok",
		"\xE2\x82":         "\uFFFD",
		"\xF0\x9F\x98a":    "\uFFFDa",
		"\xC0\x80":         "\uFFFD\uFFFD",
		"a\xFFb":           "a\uFFFDb",
		"\xED\xA0\x80":     "\uFFFD\uFFFD\uFFFD",
		"\xE2\x82\xACx":    "€x",
		"\xF4\x90\x80\x80": "\uFFFD\uFFFD\uFFFD\uFFFD",
	} {
		if got := lossyUTF8([]byte(in)); got != want {
			t.Errorf("lossyUTF8(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestByteTables(t *testing.T) {
	if byteRunes[' '] != 'Ġ' || byteRunes['\n'] != 'Ċ' || byteRunes['a'] != 'a' {
		t.Fatalf("byte map: %q %q %q", byteRunes[' '], byteRunes['\n'], byteRunes['a'])
	}
	for b := 0; b < 256; b++ {
		if runeBytes[byteRunes[b]] != byte(b) {
			t.Fatalf("byte %d does not round-trip", b)
		}
	}
}

// TestUnescapeLine pins the corpus escapes to what make_expected.py's
// unescape gives for the same strings.
func TestUnescapeLine(t *testing.T) {
	for in, want := range map[string]string{
		`a\nb`: "a\nb", `\\n`: `\n`, `\u{41}\u{1F600}`: "A😀", `\u{D800}`: `\u{D800}`,
		`\u{110000}`: `\u{110000}`, `\u{zz}`: `\u{zz}`, `\u{41`: `\u{41`, `\`: `\`, `x\q`: `x\q`, `\\\t`: "\\\t",
	} {
		if got := unescapeLine(in); got != want {
			t.Errorf("unescapeLine(%q) = %q, want %q", in, got, want)
		}
	}
}
