package tokenizer

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// scanAlphabet mixes every class the patterns distinguish: ASCII and
// other letters, digits of several scripts, apostrophes and contraction
// letters in both cases, each kind of whitespace, punctuation, symbols,
// marks and an invalid byte.
var scanAlphabet = []string{"a", "Z", "s", "S", "t", "T", "r", "R", "e", "E", "v", "m", "l", "L", "d", "D",
	"ſ", "K", "é", "ß", "中", "ア", "1", "9", "١", "Ⅻ", "½", "'", "’", " ", " ", "  ", "\t", "\n", "\r",
	"\r\n", "\u00a0", "\u3000", "\u2028", "\u0085", "\v", "\f", ".", "!", "$", "_", "-", "😀", "\u0301",
	"\u200d", "\xff"}

func randomText(r *rand.Rand, n int) string {
	var b strings.Builder
	for range n {
		b.WriteString(scanAlphabet[r.IntN(len(scanAlphabet))])
	}
	return b.String()
}

func TestScannersMatchRegexp2(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, src := range []string{gpt2Pattern, llama3Pattern, qwen2Pattern} {
		re, err := compileRegex(src)
		if err != nil {
			t.Fatal(err)
		}
		if re.fast == nil {
			t.Fatalf("no scanner for %q", src)
		}
		inputs := readCorpus(t)
		for range 3000 {
			inputs = append(inputs, randomText(r, r.IntN(12)))
		}
		for _, in := range inputs {
			checkScanner(t, re, in)
		}
	}
}

func checkScanner(t *testing.T, re *regex, in string) {
	t.Helper()
	want, err := re.slowFindAll(in, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := re.fast(in, nil)
	if !slices.Equal(got, want) {
		t.Fatalf("pattern %q on %q:\n got %v\nwant %v", re.src, in, got, want)
	}
}

func FuzzScanners(f *testing.F) {
	for _, s := range []string{"I'll go", "a  b\n\n c", "x'ſ", "12345 ab", " \r\n\t", "\xff'S"} {
		f.Add(s)
	}
	res := make([]*regex, 0, 3)
	for _, src := range []string{gpt2Pattern, llama3Pattern, qwen2Pattern} {
		re, err := compileRegex(src)
		if err != nil {
			f.Fatal(err)
		}
		res = append(res, re)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if len(s) > 256 {
			return
		}
		for _, re := range res {
			checkScanner(t, re, s)
		}
	})
}
