package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// The pre-tokenizer regexes of GPT-2, Llama-3 and Qwen2/3 are written out
// here as scanners: regexp2 runs them at ~3 MB/s, these at the speed of
// the BPE. Each follows the regex's ordered alternation and greedy
// backtracking exactly; TestScannersMatchRegexp2 and FuzzScanners check
// them against regexp2 on the same input.

const (
	llama3Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	qwen2Pattern  = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
)

// fastScanner returns the scanner for a known pattern, or nil.
func fastScanner(src string) func(s string, dst [][2]int) [][2]int {
	switch src {
	case gpt2Pattern:
		return func(s string, dst [][2]int) [][2]int { return scanAll(s, dst, gpt2At) }
	case llama3Pattern:
		return func(s string, dst [][2]int) [][2]int {
			return scanAll(s, dst, func(s string, i int) int { return llamaAt(s, i, 3) })
		}
	case qwen2Pattern:
		return func(s string, dst [][2]int) [][2]int {
			return scanAll(s, dst, func(s string, i int) int { return llamaAt(s, i, 1) })
		}
	}
	return nil
}

// scanAll collects the successive matches of at; at returns the end of
// the match at i, or i when none starts there (the rune is skipped, as a
// regex find-all would).
func scanAll(s string, dst [][2]int, at func(s string, i int) int) [][2]int {
	for i := 0; i < len(s); {
		j := at(s, i)
		if j <= i {
			_, n := utf8.DecodeRuneInString(s[i:])
			i += n
			continue
		}
		dst = append(dst, [2]int{i, j})
		i = j
	}
	return dst
}

// class of a rune for these patterns.
type class uint8

const (
	clsOther class = iota // [^\s\p{L}\p{N}]
	clsLetter
	clsNumber
	clsSpace
)

// asciiClass is the class of each ASCII byte: a table computed once and
// never written, not state.
var asciiClass = func() (t [128]class) {
	for b := range t {
		t[b] = classOfSlow(rune(b))
	}
	return t
}()

func classOfSlow(r rune) class {
	switch {
	case unicode.IsLetter(r):
		return clsLetter
	case unicode.IsNumber(r):
		return clsNumber
	case unicode.IsSpace(r):
		return clsSpace
	}
	return clsOther
}

// runeAt decodes the rune at i with its class and size; past the end it
// returns size 0.
func runeAt(s string, i int) (rune, class, int) {
	if i >= len(s) {
		return 0, clsOther, 0
	}
	if c := s[i]; c < utf8.RuneSelf {
		return rune(c), asciiClass[c], 1
	}
	r, n := utf8.DecodeRuneInString(s[i:])
	return r, classOfSlow(r), n
}

// run returns the end of the run of class k starting at i, at most max
// runes (max < 0: unbounded).
func run(s string, i int, k class, max int) int {
	for n := 0; max < 0 || n < max; n++ {
		_, c, sz := runeAt(s, i)
		if sz == 0 || c != k {
			break
		}
		i += sz
	}
	return i
}

// contraction matches 's 't 're 've 'm 'll 'd at i (s[i] == '\”), case
// sensitive or, with fold, case-insensitive as regexp2's (?i:...).
func contraction(s string, i int, fold bool) int {
	lower := func(j int) byte {
		if j >= len(s) {
			return 0
		}
		c := s[j]
		if fold && c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		return c
	}
	if fold && len(s) >= i+3 && s[i+1:i+3] == "ſ" {
		return i + 3 // U+017F folds to s, in regexp2 as in Oniguruma
	}
	switch lower(i + 1) {
	case 's', 't', 'm', 'd':
		return i + 2
	case 'r', 'v':
		if lower(i+2) == 'e' {
			return i + 3
		}
	case 'l':
		if lower(i+2) == 'l' {
			return i + 3
		}
	}
	return i
}

// spaceEnd handles `\s+(?!\S)|\s+` at a whitespace rune at i: the whole
// run when it ends the text, else the run less its last rune, else (a
// single rune before a non-space) that rune.
func spaceEnd(s string, i int) int {
	j := run(s, i, clsSpace, -1)
	if j == len(s) {
		return j
	}
	_, last := utf8.DecodeLastRuneInString(s[:j])
	if j-last > i {
		return j - last
	}
	return j
}

// gpt2At matches `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+|
// ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` at i.
func gpt2At(s string, i int) int {
	r, c, n := runeAt(s, i)
	if r == '\'' {
		if j := contraction(s, i, false); j > i {
			return j
		}
	}
	start := i
	if r == ' ' {
		if _, c2, n2 := runeAt(s, i+1); n2 > 0 && c2 != clsSpace {
			start, c = i+1, c2
		}
	}
	if c != clsSpace {
		return run(s, start, c, -1)
	}
	_ = n
	return spaceEnd(s, i)
}

// llamaAt matches the Llama-3 pattern (digits = 3) or Qwen2's (digits = 1)
// at i:
//
//	(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,digits}|
//	 ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
func llamaAt(s string, i int, digits int) int {
	r, c, n := runeAt(s, i)
	if r == '\'' {
		if j := contraction(s, i, true); j > i {
			return j
		}
	}
	// [^\r\n\p{L}\p{N}]?\p{L}+
	if c == clsLetter {
		return run(s, i, clsLetter, -1)
	}
	if r != '\r' && r != '\n' && c != clsNumber {
		if _, c2, _ := runeAt(s, i+n); c2 == clsLetter {
			return run(s, i+n, clsLetter, -1)
		}
	}
	if c == clsNumber {
		return run(s, i, clsNumber, digits)
	}
	// ` ?[^\s\p{L}\p{N}]+[\r\n]*`
	start := -1
	if c == clsOther {
		start = i
	} else if r == ' ' {
		if _, c2, _ := runeAt(s, i+1); c2 == clsOther && i+1 < len(s) {
			start = i + 1
		}
	}
	if start >= 0 {
		j := run(s, start, clsOther, -1)
		for j < len(s) && (s[j] == '\r' || s[j] == '\n') {
			j++
		}
		return j
	}
	// `\s*[\r\n]+`: the whitespace run up to its last \r or \n.
	j := run(s, i, clsSpace, -1)
	for k := j - 1; k >= i; k-- {
		if s[k] == '\r' || s[k] == '\n' {
			return k + 1
		}
	}
	return spaceEnd(s, i)
}
