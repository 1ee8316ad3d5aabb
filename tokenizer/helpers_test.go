package tokenizer

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// corpusPath is the committed multilingual corpus shared with
// make_expected.py.
const corpusPath = "../testdata/tokenizer/corpus.txt"

// unescapeLine decodes the corpus escapes: \n \r \t \\ and \u{HEX}. The
// same rule is in make_expected.py.
func unescapeLine(l string) string {
	var b strings.Builder
	for i := 0; i < len(l); i++ {
		c := l[i]
		if c != '\\' || i+1 >= len(l) {
			b.WriteByte(c)
			continue
		}
		switch l[i+1] {
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 't':
			b.WriteByte('\t')
		case '\\':
			b.WriteByte('\\')
		case 'u':
			end := strings.IndexByte(l[i:], '}')
			if i+2 < len(l) && l[i+2] == '{' && end > 0 {
				// Surrogates and values past U+10FFFF stay literal, as in
				// make_expected.py.
				if v, err := strconv.ParseUint(l[i+3:i+end], 16, 32); err == nil && utf8.ValidRune(rune(v)) {
					b.WriteRune(rune(v))
					i += end
					continue
				}
			}
			b.WriteByte(c)
			continue
		default:
			b.WriteByte(c)
			continue
		}
		i++
	}
	return b.String()
}

func readCorpus(t testing.TB) []string {
	t.Helper()
	data, err := os.ReadFile(corpusPath)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	for i, l := range lines {
		lines[i] = unescapeLine(l)
	}
	return lines
}

// tokenizersDir is where scripts/fetch-tokenizers.sh put the real files.
// Unset: the test skips, unless LORACC_REQUIRE_REAL=1 makes that a
// failure.
func tokenizersDir(t testing.TB) string {
	t.Helper()
	d := os.Getenv("LORACC_TOKENIZERS_DIR")
	if d == "" {
		if os.Getenv("LORACC_REQUIRE_REAL") == "1" {
			t.Fatal("LORACC_TOKENIZERS_DIR is unset but LORACC_REQUIRE_REAL=1: run scripts/fetch-tokenizers.sh")
		}
		t.Skip("LORACC_TOKENIZERS_DIR unset (scripts/fetch-tokenizers.sh prints it)")
	}
	return d
}

func loadReal(t testing.TB, name string) *Tokenizer {
	t.Helper()
	dir := filepath.Join(tokenizersDir(t), name)
	if _, err := os.Stat(dir); err != nil {
		if os.Getenv("LORACC_REQUIRE_REAL") == "1" {
			t.Fatalf("%s missing: %v", dir, err)
		}
		t.Skipf("%s missing", dir)
	}
	tk, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return tk
}
