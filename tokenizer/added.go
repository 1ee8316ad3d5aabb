package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// addedToken is one entry of tokenizer.json's added_tokens: text matched
// verbatim before the model sees the input.
type addedToken struct {
	id         int
	content    string
	special    bool
	normalized bool // matched against the normalized text, not the raw one
	lstrip     bool // swallows the whitespace on its left
	rstrip     bool // swallows the whitespace on its right
	singleWord bool // only matches when not inside a word
}

// addedVocab splits text on added tokens the way HF's AddedVocabulary
// does: the non-normalized tokens are found in the raw text, the pieces
// between them are normalized, and the normalized tokens are found in
// those. Matching is leftmost-longest, as HF's Aho-Corasick is built.
type addedVocab struct {
	raw, normed trie
}

// segment is a piece of the input after added-token splitting: either an
// added token (id >= 0) or normalized text for the pre-tokenizer.
type segment struct {
	text  string
	id    int
	start bool // the piece begins at offset 0 of the original input
}

func newAddedVocab(tokens []addedToken, norm normalizer) *addedVocab {
	v := &addedVocab{}
	for _, a := range tokens {
		if a.content == "" {
			continue
		}
		if a.normalized {
			pat := a.content
			if norm != nil {
				pat = norm.normalize(pat)
			}
			v.normed.add(pat, a)
		} else {
			v.raw.add(a.content, a)
		}
	}
	return v
}

// split appends the segments of text to out, normalizing the non-token
// pieces. Empty pieces are dropped, as HF drops empty splits.
func (v *addedVocab) split(text string, norm normalizer, out []segment) []segment {
	first := len(out)
	out = v.raw.split(text, true, out)
	if norm == nil && len(v.normed.nodes) == 0 {
		return out
	}
	var tmp []segment
	for _, s := range out[first:] {
		if s.id >= 0 {
			tmp = append(tmp, s)
			continue
		}
		n := s.text
		if norm != nil {
			n = norm.normalize(n)
		}
		tmp = v.normed.split(n, s.start, tmp)
	}
	return append(out[:first], tmp...)
}

// trie is a byte trie of added tokens for leftmost-longest matching.
type trie struct {
	nodes []trieNode
	first [256]bool // bytes that can start a token: a quick skip
	toks  []addedToken
}

type trieNode struct {
	next map[byte]int32
	tok  int32 // index into toks + 1; 0: no token ends here
}

func (t *trie) add(s string, a addedToken) {
	if len(t.nodes) == 0 {
		t.nodes = append(t.nodes, trieNode{})
	}
	n := int32(0)
	for i := 0; i < len(s); i++ {
		c := s[i]
		nx, ok := t.nodes[n].next[c]
		if !ok {
			if t.nodes[n].next == nil {
				t.nodes[n].next = map[byte]int32{}
			}
			nx = int32(len(t.nodes))
			t.nodes[n].next[c] = nx
			t.nodes = append(t.nodes, trieNode{})
		}
		n = nx
	}
	if t.nodes[n].tok != 0 {
		// The same content twice: HF keeps the later id in its map.
		t.toks[t.nodes[n].tok-1] = a
		return
	}
	t.toks = append(t.toks, a)
	t.nodes[n].tok = int32(len(t.toks))
	t.first[s[0]] = true
}

// longest returns the token index+1 and end of the longest token starting
// at text[i], or 0.
func (t *trie) longest(text string, i int) (int32, int) {
	n, best, end := int32(0), int32(0), 0
	for j := i; j < len(text); j++ {
		nx, ok := t.nodes[n].next[text[j]]
		if !ok {
			break
		}
		n = nx
		if t.nodes[n].tok != 0 {
			best, end = t.nodes[n].tok, j+1
		}
	}
	return best, end
}

// split appends the pieces of text to out, cut at the tokens it
// contains, applying single_word, lstrip and rstrip as HF's find_matches
// does; empty pieces are dropped. start says whether text begins the
// original input.
func (t *trie) split(text string, start bool, out []segment) []segment {
	if len(t.nodes) == 0 {
		if text != "" {
			out = append(out, segment{text: text, id: -1, start: start})
		}
		return out
	}
	prev := 0 // end of the last accepted match
	push := func(a, b int) {
		if a < b {
			out = append(out, segment{text: text[a:b], id: -1, start: start && a == 0})
		}
	}
	for i := 0; i < len(text); {
		if !t.first[text[i]] {
			i++
			continue
		}
		k, end := t.longest(text, i)
		if k == 0 {
			i++
			continue
		}
		a := t.toks[k-1]
		mstart, mend := i, end
		if a.singleWord && (endsWithWord(text[:mstart]) || startsWithWord(text[mend:])) {
			// HF skips this match and resumes after it (Aho-Corasick's
			// find_iter does not revisit overlapping starts).
			i = end
			continue
		}
		if a.lstrip {
			mstart = max(prev, mstart-trailingSpace(text[:mstart]))
		}
		if a.rstrip {
			mend += leadingSpace(text[mend:])
		}
		push(prev, mstart)
		out = append(out, segment{text: text[mstart:mend], id: a.id, start: start && mstart == 0})
		prev = mend
		i = mend
	}
	push(prev, len(text))
	return out
}

// isWordRune is Rust regex's Unicode \w: letters, marks, decimal digits,
// connector punctuation and the joiners.
func isWordRune(r rune) bool {
	return unicode.IsLetter(r) || unicode.IsMark(r) || unicode.Is(unicode.Nd, r) ||
		unicode.Is(unicode.Pc, r) || r == 0x200C || r == 0x200D
}

func endsWithWord(s string) bool {
	r, n := utf8.DecodeLastRuneInString(s)
	return n > 0 && isWordRune(r)
}

func startsWithWord(s string) bool {
	r, n := utf8.DecodeRuneInString(s)
	return n > 0 && isWordRune(r)
}

// trailingSpace is the byte length of the whitespace run ending s.
func trailingSpace(s string) int {
	n := 0
	for len(s) > n {
		r, sz := utf8.DecodeLastRuneInString(s[:len(s)-n])
		if !unicode.IsSpace(r) {
			break
		}
		n += sz
	}
	return n
}

// leadingSpace is the byte length of the whitespace run starting s.
func leadingSpace(s string) int {
	n := 0
	for n < len(s) {
		r, sz := utf8.DecodeRuneInString(s[n:])
		if !unicode.IsSpace(r) {
			break
		}
		n += sz
	}
	return n
}
