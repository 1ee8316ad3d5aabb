package tokenizer

import (
	"strings"
	"unicode"

	"golang.org/x/text/unicode/norm"
)

// normalizer rewrites a piece of text before pre-tokenization. Offsets are
// not tracked: loracc needs ids, not alignments.
type normalizer interface {
	normalize(s string) string
}

type unicodeNorm struct{ form norm.Form }

func (n unicodeNorm) normalize(s string) string { return n.form.String(s) }

type lowercase struct{}

// normalize lowercases as Rust's str::to_lowercase does. Go's ToLower
// differs in two places Rust special-cases: U+0130 (İ) becomes "i̇", and a
// capital sigma ending a word becomes final ς.
func (lowercase) normalize(s string) string {
	if !strings.ContainsRune(s, 'İ') && !strings.ContainsRune(s, 'Σ') {
		return strings.ToLower(s)
	}
	rs := []rune(s)
	var b strings.Builder
	for i, r := range rs {
		switch {
		case r == 'İ':
			b.WriteString("i\u0307")
		case r == 'Σ' && finalSigma(rs, i):
			b.WriteRune('ς')
		default:
			b.WriteRune(unicode.ToLower(r))
		}
	}
	return b.String()
}

// finalSigma is Unicode's Final_Sigma condition, as Rust applies it: a
// cased letter before (skipping case-ignorable runes) and none after.
func finalSigma(rs []rune, i int) bool {
	ignorable := func(r rune) bool {
		return unicode.In(r, unicode.Mn, unicode.Me, unicode.Cf, unicode.Lm, unicode.Sk) || r == '\'' || r == '.' || r == ':' || r == '\u2019'
	}
	cased := func(r rune) bool { return unicode.IsUpper(r) || unicode.IsLower(r) || unicode.IsTitle(r) }
	before := false
	for j := i - 1; j >= 0; j-- {
		if !ignorable(rs[j]) {
			before = cased(rs[j])
			break
		}
	}
	if !before {
		return false
	}
	for j := i + 1; j < len(rs); j++ {
		if !ignorable(rs[j]) {
			return !cased(rs[j])
		}
	}
	return true
}

type strip struct{ left, right bool }

func (n strip) normalize(s string) string {
	if n.left {
		s = strings.TrimLeftFunc(s, unicode.IsSpace)
	}
	if n.right {
		s = strings.TrimRightFunc(s, unicode.IsSpace)
	}
	return s
}

// stripAccents removes combining marks, as HF's StripAccents (meant to
// follow NFD).
type stripAccents struct{}

func (stripAccents) normalize(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.Is(unicode.Mn, r) {
			return -1
		}
		return r
	}, s)
}

// prepend adds a prefix to non-empty pieces (Llama-2's "▁").
type prepend struct{ prefix string }

func (n prepend) normalize(s string) string {
	if s == "" {
		return s
	}
	return n.prefix + s
}

// replace substitutes a literal or a regex pattern.
type replace struct {
	pat     pattern
	content string
}

func (n replace) normalize(s string) string {
	if lit, ok := n.pat.(literal); ok {
		return strings.ReplaceAll(s, string(lit), n.content)
	}
	// A regex over its bound leaves the piece unchanged rather than
	// failing: normalizers cannot fail in HF either.
	m, err := n.pat.findAll(s, nil)
	if err != nil || len(m) == 0 {
		return s
	}
	var b strings.Builder
	prev := 0
	for _, r := range m {
		b.WriteString(s[prev:r[0]])
		b.WriteString(n.content)
		prev = r[1]
	}
	b.WriteString(s[prev:])
	return b.String()
}

// bertNormalizer is BERT's: drop control characters and map whitespace to
// spaces (clean_text), pad CJK ideographs with spaces, optionally strip
// accents and lowercase.
type bertNormalizer struct {
	cleanText, chinese, stripAccents, lowercase bool
}

func (n bertNormalizer) normalize(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case n.cleanText && (r == 0 || r == 0xFFFD || isBertControl(r)):
			continue
		case n.cleanText && (r == '\t' || r == '\n' || r == '\r' || unicode.Is(unicode.Zs, r)):
			b.WriteByte(' ')
		case n.chinese && isCJK(r):
			b.WriteByte(' ')
			b.WriteRune(r)
			b.WriteByte(' ')
		default:
			b.WriteRune(r)
		}
	}
	out := b.String()
	if n.stripAccents {
		out = stripAccents{}.normalize(norm.NFD.String(out))
	}
	if n.lowercase {
		out = lowercase{}.normalize(out)
	}
	return out
}

func isBertControl(r rune) bool {
	if r == '\t' || r == '\n' || r == '\r' {
		return false
	}
	return unicode.In(r, unicode.Cc, unicode.Cf, unicode.Co, unicode.Cs)
}

func isCJK(r rune) bool {
	return (r >= 0x4E00 && r <= 0x9FFF) || (r >= 0x3400 && r <= 0x4DBF) ||
		(r >= 0x20000 && r <= 0x2A6DF) || (r >= 0x2A700 && r <= 0x2B73F) ||
		(r >= 0x2B740 && r <= 0x2B81F) || (r >= 0x2B820 && r <= 0x2CEAF) ||
		(r >= 0xF900 && r <= 0xFAFF) || (r >= 0x2F800 && r <= 0x2FA1F)
}

type normSequence []normalizer

func (n normSequence) normalize(s string) string {
	for _, x := range n {
		s = x.normalize(s)
	}
	return s
}
