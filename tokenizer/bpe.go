package tokenizer

import (
	"strings"
	"sync"
	"unicode/utf8"
)

// model turns one pre-tokenized word into ids, appended to ids.
type model interface {
	tokenize(w piece, ids []int) ([]int, error)
}

// bpe is byte-pair encoding as HF's BPE model runs it: a word starts as
// its characters (or, with byte fallback, the <0xXX> tokens of unknown
// ones) and the adjacent pair of lowest merge rank is merged until none is
// left, leftmost first on ties.
type bpe struct {
	vocab        map[string]int
	merges       map[uint64]uint64 // pairKey(a, b) → rank<<32 | merged id
	unk          int               // -1: unknown characters are dropped, as in HF
	fuseUnk      bool
	byteFallback bool
	ignoreMerges bool // a word found whole in the vocabulary is one token
	prefix       string
	suffix       string
	byteIDs      [256]int // <0xXX> ids; -1 where missing
	cache        *wordCache

	// For pieces still in raw bytes (piece.bytes): the id of each byte's
	// byte-level rune, the vocabulary keyed by raw bytes (for
	// ignore_merges), and a cache keyed by raw words.
	byteSym  [256]int
	byteOK   bool // every byte has a symbol
	rawVocab map[string]int
	rawCache *wordCache

	// splitAt ("▁" or ""): words are cut before each ▁ that follows
	// another rune, and the parts merged alone. Exact when no merged token
	// holds a ▁ after another rune (true of SentencePiece vocabularies),
	// and it turns Llama-2's whole-line words into cacheable ones.
	splitAt string
}

// initSplit enables splitAt when it cannot change the result.
func (m *bpe) initSplit(meta string) {
	if m.ignoreMerges || m.prefix != "" || m.suffix != "" {
		return
	}
	if _, ok := m.vocab[meta]; !ok {
		return
	}
	for tok := range m.vocab {
		if crossesMeta(tok, meta) {
			return
		}
	}
	m.splitAt = meta
}

// crossesMeta reports whether tok has meta right after another rune.
func crossesMeta(tok, meta string) bool {
	for i := 1; i < len(tok); i++ {
		if strings.HasPrefix(tok[i:], meta) && !strings.HasSuffix(tok[:i], meta) {
			return true
		}
	}
	return false
}

// initByteLevel prepares the raw-byte path.
func (m *bpe) initByteLevel() {
	m.byteOK = true
	for b := range m.byteSym {
		id, ok := m.vocab[string(byteRunes[b])]
		if !ok {
			id, m.byteOK = -1, false
		}
		m.byteSym[b] = id
	}
	m.rawCache = newWordCache()
	if m.ignoreMerges {
		m.rawVocab = make(map[string]int, len(m.vocab))
		var buf []byte
		for tok, id := range m.vocab {
			buf = byteLevelUnmap(buf[:0], tok)
			m.rawVocab[string(buf)] = id
		}
	}
}

func pairKey(a, b int) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

func (m *bpe) initBytes() {
	for b := range m.byteIDs {
		id, ok := m.vocab[byteToken(b)]
		if !ok {
			id = -1
		}
		m.byteIDs[b] = id
	}
}

func (m *bpe) tokenize(w piece, ids []int) ([]int, error) {
	if m.splitAt != "" && !w.bytes && len(w.text) > 32 {
		s, start := w.text, 0
		for i := 1; i < len(s); i++ {
			if strings.HasPrefix(s[i:], m.splitAt) && !strings.HasSuffix(s[:i], m.splitAt) {
				ids = m.tokenizeWord(piece{text: s[start:i]}, ids)
				start = i
			}
		}
		return m.tokenizeWord(piece{text: s[start:]}, ids), nil
	}
	return m.tokenizeWord(w, ids), nil
}

func (m *bpe) tokenizeWord(w piece, ids []int) []int {
	word, cache, vocab := w.text, m.cache, m.vocab
	if w.bytes {
		if !m.byteOK {
			return m.tokenizeWord(piece{text: string(byteLevelMap(nil, word))}, ids)
		}
		cache, vocab = m.rawCache, m.rawVocab
	}
	if m.ignoreMerges {
		if id, ok := vocab[word]; ok {
			return append(ids, id)
		}
	}
	if got, ok := cache.get(word); ok {
		return append(ids, got...)
	}
	var buf [32]int
	var syms []int
	if w.bytes {
		syms = buf[:0]
		for i := 0; i < len(word); i++ {
			syms = append(syms, m.byteSym[word[i]])
		}
	} else {
		syms = m.initial(word, buf[:0])
	}
	if len(syms) <= 48 {
		syms = m.mergeSmall(syms)
	} else {
		syms = m.mergeHeap(syms)
	}
	cache.put(word, syms)
	return append(ids, syms...)
}

// initial returns the starting symbols of word.
func (m *bpe) initial(word string, syms []int) []int {
	unk, unkPending := -1, false
	var tmp []byte
	for i := 0; i < len(word); {
		_, n := utf8.DecodeRuneInString(word[i:])
		s := word[i : i+n]
		if m.prefix != "" || m.suffix != "" {
			tmp = tmp[:0]
			if i > 0 {
				tmp = append(tmp, m.prefix...)
			}
			tmp = append(tmp, s...)
			if i+n == len(word) {
				tmp = append(tmp, m.suffix...)
			}
			s = string(tmp)
		}
		i += n
		if id, ok := m.vocab[s]; ok {
			if unkPending {
				syms = append(syms, unk)
				unkPending = false
			}
			syms = append(syms, id)
			continue
		}
		if m.byteFallback && m.allBytes(s) {
			// HF adds the bytes without flushing a pending unknown first.
			for j := 0; j < len(s); j++ {
				syms = append(syms, m.byteIDs[s[j]])
			}
			continue
		}
		if m.unk < 0 {
			continue
		}
		if unkPending && !m.fuseUnk {
			syms = append(syms, unk)
		}
		unk, unkPending = m.unk, true
	}
	if unkPending {
		syms = append(syms, unk)
	}
	return syms
}

func (m *bpe) allBytes(s string) bool {
	for j := 0; j < len(s); j++ {
		if m.byteIDs[s[j]] < 0 {
			return false
		}
	}
	return true
}

const noMerge = ^uint64(0)

func (m *bpe) rank(a, b int) uint64 {
	if r, ok := m.merges[pairKey(a, b)]; ok {
		return r
	}
	return noMerge
}

// mergeSmall merges a short word in place: the pair ranks are kept in a
// slice and only the neighbours of a merge are looked up again.
func (m *bpe) mergeSmall(syms []int) []int {
	if len(syms) < 2 {
		return syms
	}
	var rbuf [48]uint64
	ranks := rbuf[:len(syms)-1]
	for i := range ranks {
		ranks[i] = m.rank(syms[i], syms[i+1])
	}
	for len(ranks) > 0 {
		best, pos := noMerge, -1
		for i, r := range ranks {
			if r != noMerge && (pos < 0 || r>>32 < best>>32) {
				best, pos = r, i
			}
		}
		if pos < 0 {
			break
		}
		syms[pos] = int(uint32(best))
		syms = append(syms[:pos+1], syms[pos+2:]...)
		ranks = append(ranks[:pos], ranks[pos+1:]...)
		if pos > 0 {
			ranks[pos-1] = m.rank(syms[pos-1], syms[pos])
		}
		if pos < len(ranks) {
			ranks[pos] = m.rank(syms[pos], syms[pos+1])
		}
	}
	return syms
}

// mergeHeap merges a long word with a heap of candidate pairs over a
// linked list, O(n log n): a megabyte of spaces is one word for some
// pre-tokenizers.
func (m *bpe) mergeHeap(syms []int) []int {
	n := len(syms)
	next := make([]int32, n)
	prev := make([]int32, n)
	alive := make([]bool, n)
	for i := range syms {
		next[i], prev[i], alive[i] = int32(i+1), int32(i-1), true
	}
	next[n-1] = -1
	h := pairHeap{}
	push := func(i int) {
		j := next[i]
		if j < 0 {
			return
		}
		if r := m.rank(syms[i], syms[j]); r != noMerge {
			h.push(pairEntry{rank: uint32(r >> 32), pos: int32(i), left: int32(syms[i]), right: int32(syms[j]), merged: uint32(r)})
		}
	}
	for i := 0; i < n-1; i++ {
		push(i)
	}
	for h.len() > 0 {
		e := h.pop()
		i := int(e.pos)
		j := next[i]
		if !alive[i] || j < 0 || syms[i] != int(e.left) || syms[j] != int(e.right) {
			continue
		}
		syms[i] = int(e.merged)
		alive[j] = false
		next[i] = next[j]
		if next[j] >= 0 {
			prev[next[j]] = int32(i)
		}
		if p := prev[i]; p >= 0 {
			push(int(p))
		}
		push(i)
	}
	out := syms[:0]
	for i := 0; i >= 0 && i < n; i = int(next[i]) {
		out = append(out, syms[i])
	}
	return out
}

type pairEntry struct {
	rank, merged     uint32
	pos, left, right int32
}

// pairHeap is a binary min-heap on (rank, pos).
type pairHeap struct{ a []pairEntry }

func (h *pairHeap) len() int { return len(h.a) }

func less(x, y pairEntry) bool { return x.rank < y.rank || (x.rank == y.rank && x.pos < y.pos) }

func (h *pairHeap) push(e pairEntry) {
	h.a = append(h.a, e)
	for i := len(h.a) - 1; i > 0; {
		p := (i - 1) / 2
		if !less(h.a[i], h.a[p]) {
			break
		}
		h.a[i], h.a[p] = h.a[p], h.a[i]
		i = p
	}
}

func (h *pairHeap) pop() pairEntry {
	top := h.a[0]
	last := len(h.a) - 1
	h.a[0] = h.a[last]
	h.a = h.a[:last]
	for i := 0; ; {
		l, r, s := 2*i+1, 2*i+2, i
		if l < last && less(h.a[l], h.a[s]) {
			s = l
		}
		if r < last && less(h.a[r], h.a[s]) {
			s = r
		}
		if s == i {
			break
		}
		h.a[i], h.a[s] = h.a[s], h.a[i]
		i = s
	}
	return top
}

// wordCache remembers the ids of recent words. It is bounded (cleared
// when full, so memory stays flat on endless distinct words) and locked,
// so one Tokenizer serves many goroutines.
type wordCache struct {
	mu sync.RWMutex
	m  map[string][]int
}

const wordCacheSize = 1 << 16

// maxCachedWord keeps pathological words (a megabyte of spaces) out.
const maxCachedWord = 256

func newWordCache() *wordCache { return &wordCache{m: make(map[string][]int, 1024)} }

func (c *wordCache) get(w string) ([]int, bool) {
	if c == nil || len(w) > maxCachedWord {
		return nil, false
	}
	c.mu.RLock()
	ids, ok := c.m[w]
	c.mu.RUnlock()
	return ids, ok
}

func (c *wordCache) put(w string, ids []int) {
	if c == nil || len(w) > maxCachedWord {
		return
	}
	cp := append([]int(nil), ids...)
	// w is usually a slice of the caller's text: cloned, the key does not
	// keep a whole document alive.
	w = strings.Clone(w)
	c.mu.Lock()
	if len(c.m) >= wordCacheSize {
		clear(c.m)
	}
	c.m[w] = cp
	c.mu.Unlock()
}
