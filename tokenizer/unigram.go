package tokenizer

import (
	"fmt"
	"math"
	"unicode/utf8"
)

// unigram is a Unigram language model: the segmentation of a word that
// maximises the summed piece scores (Viterbi), as HF's Unigram and
// SentencePiece run it. A character no piece covers costs the lowest
// score minus 10 and becomes the unknown token; runs of unknowns are
// fused and, with byte fallback, spelled as <0xXX> tokens.
type unigram struct {
	pieces       map[string]int // matchable pieces → id
	scores       []float64      // by id
	maxLen       int            // longest piece in bytes
	unk          int
	unkScore     float64
	byteFallback bool
	byteIDs      [256]int
	cache        *wordCache
	// f32 sums path scores in float32, as SentencePiece does (HF uses
	// float64); near-ties between segmentations can go either way
	// otherwise.
	f32 bool
}

func (m *unigram) add(a, b float64) float64 {
	if m.f32 {
		return float64(float32(a) + float32(b))
	}
	return a + b
}

// unkPenalty is SentencePiece's kUnkPenalty, kept by HF.
const unkPenalty = 10.0

type node struct {
	score float64
	start int // -1: not reached
	id    int
}

func (m *unigram) tokenize(w piece, ids []int) ([]int, error) {
	word := w.text
	if w.bytes {
		word = string(byteLevelMap(nil, word))
	}
	if got, ok := m.cache.get(word); ok {
		return append(ids, got...), nil
	}
	best := make([]node, len(word)+1)
	for i := range best {
		best[i].start = -1
	}
	best[0] = node{start: 0, id: -1}
	for i := 0; i < len(word); {
		_, cl := utf8.DecodeRuneInString(word[i:])
		if best[i].start < 0 && i > 0 {
			i += cl
			continue
		}
		base := best[i].score
		single := false
		for l := 1; l <= m.maxLen && i+l <= len(word); l++ {
			id, ok := m.pieces[word[i:i+l]]
			if !ok {
				continue
			}
			s := m.add(base, m.scores[id])
			if b := &best[i+l]; b.start < 0 || s > b.score {
				*b = node{score: s, start: i, id: id}
			}
			if l == cl {
				single = true
			}
		}
		if !single {
			s := m.add(base, m.unkScore)
			if b := &best[i+cl]; b.start < 0 || s > b.score {
				*b = node{score: s, start: i, id: m.unk}
			}
		}
		i += cl
	}
	// Walk back, fusing runs of the unknown token into one span.
	type span struct{ a, b, id int }
	var rev []span
	for end := len(word); end > 0; {
		n := best[end]
		if n.start < 0 {
			break // unreachable only for invalid UTF-8 cut mid-rune
		}
		if n.id == m.unk && len(rev) > 0 && rev[len(rev)-1].id == m.unk && rev[len(rev)-1].a == end {
			rev[len(rev)-1].a = n.start
		} else {
			rev = append(rev, span{n.start, end, n.id})
		}
		end = n.start
	}
	start := len(ids)
	for k := len(rev) - 1; k >= 0; k-- {
		sp := rev[k]
		if sp.id != m.unk || m.unk < 0 {
			if sp.id >= 0 {
				ids = append(ids, sp.id)
			}
			continue
		}
		if m.byteFallback && m.allBytes(word[sp.a:sp.b]) {
			for j := sp.a; j < sp.b; j++ {
				ids = append(ids, m.byteIDs[word[j]])
			}
			continue
		}
		ids = append(ids, m.unk)
	}
	m.cache.put(word, ids[start:])
	return ids, nil
}

func (m *unigram) allBytes(s string) bool {
	for j := 0; j < len(s); j++ {
		if m.byteIDs[s[j]] < 0 {
			return false
		}
	}
	return true
}

// newUnigram builds the model from (piece, score) pairs in id order; match
// says which ids may be matched in text (SentencePiece excludes control,
// byte and unused pieces; HF matches all).
func newUnigram(vocab []string, scores []float64, unk int, byteFallback bool, match func(id int) bool) *unigram {
	m := &unigram{pieces: make(map[string]int, len(vocab)), scores: scores, unk: unk,
		byteFallback: byteFallback, cache: newWordCache()}
	minScore := math.Inf(1)
	for id, p := range vocab {
		if match != nil && !match(id) {
			continue // SentencePiece takes the minimum over normal pieces only
		}
		if scores[id] < minScore {
			minScore = scores[id]
		}
		if p == "" {
			continue
		}
		if _, dup := m.pieces[p]; !dup {
			m.pieces[p] = id
		}
		m.maxLen = max(m.maxLen, len(p))
	}
	if math.IsInf(minScore, 1) {
		minScore = 0
	}
	m.unkScore = minScore - unkPenalty
	for b := range m.byteIDs {
		m.byteIDs[b] = -1
	}
	for id, p := range vocab {
		if len(p) == 6 && p[0] == '<' && p[1] == '0' && p[2] == 'x' && p[5] == '>' {
			if v, ok := parseHexByte(p[3:5]); ok && m.byteIDs[v] < 0 && p == byteToken(v) {
				m.byteIDs[v] = id
			}
		}
	}
	return m
}

// byteToken is the vocabulary name of byte b, "<0xE2>".
func byteToken(b int) string { return fmt.Sprintf("<0x%02X>", b) }

// parseHexByte reads two hex digits, either case (HF's decoder uses
// from_str_radix).
func parseHexByte(s string) (int, bool) {
	if len(s) != 2 {
		return 0, false
	}
	v := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			v = v*16 + int(c-'0')
		case c >= 'A' && c <= 'F':
			v = v*16 + int(c-'A'+10)
		case c >= 'a' && c <= 'f':
			v = v*16 + int(c-'a'+10)
		default:
			return 0, false
		}
	}
	return v, true
}
