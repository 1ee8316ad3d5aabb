package tokenizer

import (
	"errors"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// piece is a word candidate during pre-tokenization.
type piece struct {
	text  string
	first bool // starts at offset 0 of the input (Metaspace's "first")
	// bytes: text is raw and still owes the byte-level map, which the
	// BPE model applies itself (a lazy byteLevel saves a string per word).
	bytes bool
}

// scratch holds the buffers of one Encode call, pooled per Tokenizer.
type scratch struct {
	a, b  []piece
	m     [][2]int
	spans []span
	segs  []segment
	syms  []byte
	free  [][]piece // spare piece buffers for Sequence stages
}

func (sc *scratch) getBuf() []piece {
	if n := len(sc.free); n > 0 {
		b := sc.free[n-1]
		sc.free = sc.free[:n-1]
		return b[:0]
	}
	return make([]piece, 0, 64)
}

func (sc *scratch) putBuf(b []piece) {
	clear(b)
	sc.free = append(sc.free, b)
}

// preTokenizer splits pieces into words; the model sees each word alone.
// It appends its output to out, which never aliases in.
type preTokenizer interface {
	preTokenize(in, out []piece, sc *scratch) ([]piece, error)
}

// behavior is what a split does with the matched ranges (HF's
// SplitDelimiterBehavior).
type behavior int

const (
	removed behavior = iota
	isolated
	mergedWithPrevious
	mergedWithNext
	contiguous
)

// span is a range of a piece, matched or not.
type span struct {
	a, b  int
	match bool
}

// splitSpans applies behavior b to the matches m of p (sorted, disjoint)
// and appends the resulting non-empty pieces to out.
func splitSpans(out []piece, p piece, m [][2]int, b behavior, invert bool, sc *scratch) []piece {
	s := p.text
	add := func(a, b int) {
		if a < b {
			out = append(out, piece{text: s[a:b], first: p.first && a == 0, bytes: p.bytes})
		}
	}
	if b == isolated || (b == removed && !invert) {
		// The common cases, without building spans.
		prev := 0
		for _, r := range m {
			add(prev, r[0])
			if b == isolated {
				add(r[0], r[1])
			}
			prev = r[1]
		}
		add(prev, len(s))
		return out
	}
	spans := sc.spans[:0]
	prev := 0
	for _, r := range m {
		if prev < r[0] {
			spans = append(spans, span{prev, r[0], invert})
		}
		spans = append(spans, span{r[0], r[1], !invert})
		prev = r[1]
	}
	if prev < len(s) || len(spans) == 0 {
		spans = append(spans, span{prev, len(s), invert})
	}
	sc.spans = spans
	var merged []span
	switch b {
	case removed:
		for _, sp := range spans {
			if !sp.match {
				merged = append(merged, sp)
			}
		}
	case mergedWithPrevious:
		prevMatch := false
		for _, sp := range spans {
			if sp.match && !prevMatch && len(merged) > 0 {
				merged[len(merged)-1].b = sp.b
			} else {
				merged = append(merged, sp)
			}
			prevMatch = sp.match
		}
	case mergedWithNext:
		nextMatch := false
		for i := len(spans) - 1; i >= 0; i-- {
			sp := spans[i]
			if sp.match && !nextMatch && len(merged) > 0 {
				merged[len(merged)-1].a = sp.a
			} else {
				merged = append(merged, sp)
			}
			nextMatch = sp.match
		}
		slices.Reverse(merged)
	case contiguous:
		prevMatch := false
		for _, sp := range spans {
			if sp.match == prevMatch && len(merged) > 0 {
				merged[len(merged)-1].b = sp.b
			} else {
				merged = append(merged, sp)
			}
			prevMatch = sp.match
		}
	}
	for _, sp := range merged {
		add(sp.a, sp.b)
	}
	return out
}

// split is HF's Split pre-tokenizer.
type split struct {
	pat      pattern
	behavior behavior
	invert   bool
}

func (t split) preTokenize(in, out []piece, sc *scratch) ([]piece, error) {
	for _, p := range in {
		m, err := t.pat.findAll(p.text, sc.m[:0])
		if err != nil {
			return nil, err
		}
		sc.m = m
		out = splitSpans(out, p, m, t.behavior, t.invert, sc)
	}
	return out, nil
}

// byteLevel is HF's ByteLevel pre-tokenizer: an optional leading space,
// GPT-2's regex split, then each byte mapped to its printable rune.
type byteLevel struct {
	addPrefixSpace bool
	re             *regex // nil when use_regex is false
	// lazy leaves the byte map to the BPE model (piece.bytes); set by
	// Tokenizer.finish when nothing after this pre-tokenizer reads text.
	lazy bool
}

// gpt2Pattern is GPT-2's pre-tokenizer regex, which HF's ByteLevel uses.
const gpt2Pattern = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`

func (t byteLevel) preTokenize(in, out []piece, sc *scratch) ([]piece, error) {
	start := len(out)
	for _, p := range in {
		if p.bytes {
			return nil, errors.New("byte-level pre-tokenizer applied twice")
		}
		if t.addPrefixSpace && !strings.HasPrefix(p.text, " ") {
			p.text = " " + p.text
		}
		if t.re == nil {
			out = append(out, p)
			continue
		}
		m, err := t.re.findAll(p.text, sc.m[:0])
		if err != nil {
			return nil, err
		}
		sc.m = m
		out = splitSpans(out, p, m, isolated, false, sc)
	}
	for i := start; i < len(out); i++ {
		if t.lazy {
			out[i].bytes = true
			continue
		}
		sc.syms = byteLevelMap(sc.syms[:0], out[i].text)
		out[i].text = string(sc.syms)
	}
	return out, nil
}

// prependScheme says when Metaspace adds its replacement in front.
type prependScheme int

const (
	prependAlways prependScheme = iota
	prependFirst
	prependNever
)

// metaspace is SentencePiece's whitespace handling as HF's Metaspace
// pre-tokenizer: spaces become the replacement (▁), one is prepended, and
// pieces are split before each replacement.
type metaspace struct {
	repl   string
	scheme prependScheme
	split  bool
}

func (t metaspace) preTokenize(in, out []piece, sc *scratch) ([]piece, error) {
	for _, p := range in {
		s := strings.ReplaceAll(p.text, " ", t.repl)
		if !strings.HasPrefix(s, t.repl) && (t.scheme == prependAlways || (t.scheme == prependFirst && p.first)) {
			s = t.repl + s
		}
		p.text = s
		if !t.split {
			out = append(out, p)
			continue
		}
		m, _ := literal(t.repl).findAll(s, sc.m[:0])
		sc.m = m
		out = splitSpans(out, p, m, mergedWithNext, false, sc)
	}
	return out, nil
}

// runeClass splits each piece by a rune predicate: the runes for which
// match is true are the delimiters, handled with behavior.
type runeClass struct {
	match    func(r rune) bool
	behavior behavior
	each     bool // every matching rune is its own match (else runs)
}

func (t runeClass) preTokenize(in, out []piece, sc *scratch) ([]piece, error) {
	for _, p := range in {
		m := sc.m[:0]
		s := p.text
		for i := 0; i < len(s); {
			r, n := utf8.DecodeRuneInString(s[i:])
			if !t.match(r) {
				i += n
				continue
			}
			j := i + n
			for !t.each && j < len(s) {
				r2, n2 := utf8.DecodeRuneInString(s[j:])
				if !t.match(r2) {
					break
				}
				j += n2
			}
			m = append(m, [2]int{i, j})
			i = j
		}
		sc.m = m
		out = splitSpans(out, p, m, t.behavior, false, sc)
	}
	return out, nil
}

// isPunct is HF's punctuation test: Rust's is_ascii_punctuation (which
// counts ASCII symbols such as $ + < = > ^ ` | ~) or Unicode P*.
func isPunct(r rune) bool {
	return unicode.IsPunct(r) || (r < 128 && unicode.IsSymbol(r))
}

// whitespace is HF's Whitespace pre-tokenizer, `\w+|[^\w\s]+`, written
// out: runs of word runes and runs of other non-space runes.
type whitespace struct{}

func (whitespace) preTokenize(in, out []piece, _ *scratch) ([]piece, error) {
	for _, p := range in {
		s := p.text
		for i := 0; i < len(s); {
			r, n := utf8.DecodeRuneInString(s[i:])
			if unicode.IsSpace(r) {
				i += n
				continue
			}
			word := isWordRune(r)
			j := i + n
			for j < len(s) {
				r2, n2 := utf8.DecodeRuneInString(s[j:])
				if unicode.IsSpace(r2) || isWordRune(r2) != word {
					break
				}
				j += n2
			}
			out = append(out, piece{text: s[i:j], first: p.first && i == 0, bytes: p.bytes})
			i = j
		}
	}
	return out, nil
}

type preSequence []preTokenizer

// preTokenize runs the stages; the intermediate results live in spare
// buffers of sc, and the last stage writes into out.
func (t preSequence) preTokenize(in, out []piece, sc *scratch) ([]piece, error) {
	var spare []piece
	for i, x := range t {
		dst := out
		if i < len(t)-1 {
			dst = sc.getBuf()
		}
		res, err := x.preTokenize(in, dst, sc)
		if spare != nil {
			sc.putBuf(spare)
			spare = nil
		}
		if err != nil {
			return nil, err
		}
		if i == len(t)-1 {
			return res, nil
		}
		in, spare = res, res
	}
	return append(out, in...), nil
}

// isNumeric is Rust's char::is_numeric (categories Nd, Nl, No).
func isNumeric(r rune) bool { return unicode.IsNumber(r) }

// isSpace is Rust's char::is_whitespace (the White_Space property).
func isSpace(r rune) bool { return unicode.IsSpace(r) }
