package tokenizer

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// This file reads SentencePiece .model files (a ModelProto) by hand with
// protowire: only the fields below are needed, and the generated schema
// would be a large dependency for a dozen fields. Unknown fields are
// skipped; malformed ones are errors.

// pieceType is ModelProto.SentencePiece.Type.
type pieceType int

const (
	spNormal      pieceType = 1
	spUnknown     pieceType = 2
	spControl     pieceType = 3
	spUserDefined pieceType = 4
	spUnused      pieceType = 5
	spByte        pieceType = 6
)

type spModel struct {
	pieces       []string
	scores       []float64
	types        []pieceType
	modelType    int // 1 unigram, 2 BPE
	byteFallback bool
	unkID        int
	bosID        int
	eosID        int
	padID        int
	unkSurface   string
	wsSuffix     bool
	normName     string
	charsmap     bool
	dummyPrefix  bool
	removeExtra  bool
	escapeWS     bool
}

// parseSentencePiece builds a Tokenizer from a .model file's bytes.
func parseSentencePiece(data []byte) (*Tokenizer, error) {
	m := spModel{modelType: 1, unkID: 0, bosID: 1, eosID: 2, padID: -1, unkSurface: " \u2047 ",
		dummyPrefix: true, removeExtra: true, escapeWS: true}
	err := eachField(data, "model", func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		switch num {
		case 1:
			return m.readPiece(v, typ)
		case 2:
			return m.readTrainer(v, typ)
		case 3:
			return m.readNormalizer(v, typ)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(m.pieces) == 0 {
		return nil, errors.New("model: no pieces")
	}
	if m.charsmap {
		return nil, fmt.Errorf("normalizer_spec: the precompiled rule %q is not supported (train with normalization_rule_name=identity)", m.normName)
	}
	return m.build()
}

// eachField walks the fields of one message; v is the payload of
// length-delimited fields, x the value of varint and fixed ones.
func eachField(b []byte, what string, fn func(protowire.Number, protowire.Type, []byte, uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("%s: bad tag: %w", what, protowire.ParseError(n))
		}
		b = b[n:]
		var v []byte
		var x uint64
		switch typ {
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(b)
		case protowire.VarintType:
			x, n = protowire.ConsumeVarint(b)
		case protowire.Fixed32Type:
			var y uint32
			y, n = protowire.ConsumeFixed32(b)
			x = uint64(y)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return fmt.Errorf("%s: field %d: %w", what, num, protowire.ParseError(n))
		}
		b = b[n:]
		if err := fn(num, typ, v, x); err != nil {
			return err
		}
	}
	return nil
}

func want(what string, got, wantT protowire.Type) error {
	if got != wantT {
		return fmt.Errorf("%s: wire type %d, want %d", what, got, wantT)
	}
	return nil
}

func (m *spModel) readPiece(b []byte, typ protowire.Type) error {
	i := len(m.pieces)
	what := fmt.Sprintf("pieces[%d]", i)
	if err := want(what, typ, protowire.BytesType); err != nil {
		return err
	}
	if i >= maxVocab {
		return fmt.Errorf("%s: over the limit of %d pieces", what, maxVocab)
	}
	p, score, pt := "", 0.0, spNormal
	err := eachField(b, what, func(num protowire.Number, t protowire.Type, v []byte, x uint64) error {
		switch num {
		case 1:
			if err := want(what+".piece", t, protowire.BytesType); err != nil {
				return err
			}
			if !utf8.Valid(v) {
				return fmt.Errorf("%s.piece: not UTF-8", what)
			}
			p = string(v)
		case 2:
			if err := want(what+".score", t, protowire.Fixed32Type); err != nil {
				return err
			}
			score = float64(math.Float32frombits(uint32(x)))
		case 3:
			if err := want(what+".type", t, protowire.VarintType); err != nil {
				return err
			}
			if x < 1 || x > 6 {
				return fmt.Errorf("%s.type: unknown %d", what, x)
			}
			pt = pieceType(x)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if math.IsNaN(score) {
		return fmt.Errorf("%s.score: NaN", what)
	}
	m.pieces = append(m.pieces, p)
	m.scores = append(m.scores, score)
	m.types = append(m.types, pt)
	return nil
}

func (m *spModel) readTrainer(b []byte, typ protowire.Type) error {
	if err := want("trainer_spec", typ, protowire.BytesType); err != nil {
		return err
	}
	return eachField(b, "trainer_spec", func(num protowire.Number, t protowire.Type, v []byte, x uint64) error {
		i32 := func(dst *int) error {
			if err := want(fmt.Sprintf("trainer_spec field %d", num), t, protowire.VarintType); err != nil {
				return err
			}
			*dst = int(int32(x))
			return nil
		}
		switch num {
		case 3:
			return i32(&m.modelType)
		case 24:
			m.wsSuffix = x != 0
		case 35:
			m.byteFallback = x != 0
		case 40:
			return i32(&m.unkID)
		case 41:
			return i32(&m.bosID)
		case 42:
			return i32(&m.eosID)
		case 43:
			return i32(&m.padID)
		case 44:
			m.unkSurface = string(v)
		}
		return nil
	})
}

func (m *spModel) readNormalizer(b []byte, typ protowire.Type) error {
	if err := want("normalizer_spec", typ, protowire.BytesType); err != nil {
		return err
	}
	return eachField(b, "normalizer_spec", func(num protowire.Number, t protowire.Type, v []byte, x uint64) error {
		switch num {
		case 1:
			m.normName = string(v)
		case 2:
			m.charsmap = len(v) > 0
		case 3:
			m.dummyPrefix = x != 0
		case 4:
			m.removeExtra = x != 0
		case 5:
			m.escapeWS = x != 0
		}
		return nil
	})
}

func (m *spModel) id(i int) int {
	if i >= 0 && i < len(m.pieces) && m.types[i] != spNormal {
		return i
	}
	return -1
}

// build assembles the pipeline: SentencePiece's whitespace normalizer,
// user-defined pieces split out like added tokens, then the Unigram or
// score-ranked BPE model.
func (m *spModel) build() (*Tokenizer, error) {
	t := &Tokenizer{bos: m.id(m.bosID), eos: m.id(m.eosID), pad: m.id(m.padID), configPost: true}
	t.norm = spNormalizer{m.dummyPrefix, m.removeExtra, m.escapeWS, m.wsSuffix}
	var added []addedToken
	for id, p := range m.pieces {
		switch m.types[id] {
		case spUserDefined:
			added = append(added, addedToken{id: id, content: p, normalized: true})
		case spControl:
			added = append(added, addedToken{id: id, content: p, special: true})
		}
	}
	unk := m.id(m.unkID)
	switch m.modelType {
	case 1:
		u := newUnigram(m.pieces, m.scores, unk, m.byteFallback, func(id int) bool { return m.types[id] == spNormal })
		u.f32 = true
		u.unkScore = float64(float32(u.unkScore))
		t.model = u
	case 2:
		t.model = m.bpeModel(unk)
	default:
		return nil, fmt.Errorf("trainer_spec.model_type %d: only UNIGRAM (1) and BPE (2) are supported", m.modelType)
	}
	if err := t.buildVocab(m.pieces, nil); err != nil {
		return nil, err
	}
	for _, a := range added {
		if a.special {
			t.special[a.id] = true
		}
	}
	// Control pieces are not matched in text: only user-defined ones are.
	var matched []addedToken
	for _, a := range added {
		if !a.special {
			matched = append(matched, a)
		}
	}
	t.added = newAddedVocab(matched, nil)
	t.dec = spDecoder{types: m.typeMap(), unkSurface: m.unkSurface, dummyPrefix: m.dummyPrefix, removeExtra: m.removeExtra}
	if t.bos >= 0 {
		t.post = template{before: []int{t.bos}}
	}
	return t, nil
}

func (m *spModel) typeMap() map[string]pieceType {
	out := make(map[string]pieceType, len(m.pieces))
	for id, p := range m.pieces {
		if _, dup := out[p]; !dup {
			out[p] = m.types[id]
		}
	}
	return out
}

// bpeModel ranks merges by the score of the merged piece, as
// SentencePiece's BPE picks the adjacent pair whose concatenation scores
// highest (leftmost on ties): equal scores get equal ranks.
func (m *spModel) bpeModel(unk int) *bpe {
	vocab := map[string]int{}
	for id, p := range m.pieces {
		if m.types[id] == spNormal {
			if _, dup := vocab[p]; !dup {
				vocab[p] = id
			}
		}
	}
	distinct := append([]float64(nil), m.scores...)
	sort.Sort(sort.Reverse(sort.Float64Slice(distinct)))
	rankOf := map[float64]int{}
	for _, s := range distinct {
		if _, ok := rankOf[s]; !ok {
			rankOf[s] = len(rankOf)
		}
	}
	b := &bpe{vocab: vocab, unk: unk, fuseUnk: true, byteFallback: m.byteFallback,
		merges: map[uint64]uint64{}, cache: newWordCache()}
	for id, p := range m.pieces {
		if m.types[id] != spNormal || utf8.RuneCountInString(p) < 2 {
			continue
		}
		for i := range p {
			if i == 0 {
				continue
			}
			a, okA := vocab[p[:i]]
			c, okC := vocab[p[i:]]
			if okA && okC {
				b.merges[pairKey(a, c)] = uint64(rankOf[m.scores[id]])<<32 | uint64(uint32(id))
			}
		}
	}
	for i := range b.byteIDs {
		b.byteIDs[i] = -1
	}
	for id, p := range m.pieces {
		if m.types[id] == spByte && len(p) == 6 && strings.HasPrefix(p, "<0x") {
			if v, ok := parseHexByte(p[3:5]); ok && p == byteToken(v) {
				b.byteIDs[v] = id
			}
		}
	}
	return b
}

// spNormalizer is SentencePiece's whitespace handling under the identity
// rule: drop leading, trailing and repeated spaces, add the dummy prefix
// space, and write spaces as ▁.
type spNormalizer struct {
	dummyPrefix, removeExtra, escape, suffix bool
}

func (n spNormalizer) normalize(s string) string {
	if n.removeExtra {
		var b strings.Builder
		prevSpace := true
		for i := 0; i < len(s); i++ {
			if s[i] == ' ' {
				if !prevSpace {
					b.WriteByte(' ')
				}
				prevSpace = true
				continue
			}
			prevSpace = false
			b.WriteByte(s[i])
		}
		s = strings.TrimRight(b.String(), " ")
	}
	if s == "" {
		return s
	}
	if n.dummyPrefix {
		if n.suffix {
			s += " "
		} else {
			s = " " + s
		}
	}
	if n.escape {
		s = strings.ReplaceAll(s, " ", "▁")
		if n.removeExtra {
			// SentencePiece trims trailing ▁ after escaping, input ones too.
			for !n.suffix && strings.HasSuffix(s, "▁") {
				s = s[:len(s)-len("▁")]
			}
		}
	}
	return s
}

// spDecoder is SentencePiece's DecodeIds: control pieces vanish, the
// unknown piece reads as unk_surface, runs of byte pieces become UTF-8
// (one U+FFFD per invalid byte), ▁ becomes a space, and the dummy-prefix
// ▁ is dropped: from the first piece, or while the text is still empty;
// once a piece has given up its ▁ and extra whitespace is kept, the next
// keeps its own (" a" round-trips to " a").
type spDecoder struct {
	types       map[string]pieceType
	unkSurface  string
	dummyPrefix bool
	removeExtra bool
}

func (d spDecoder) decode(toks []string) []string {
	var out strings.Builder
	var run []byte
	flush := func() {
		for len(run) > 0 {
			r, n := utf8.DecodeRune(run)
			out.WriteRune(r) // RuneError is U+FFFD, for one byte
			run = run[n:]
		}
	}
	bosWS, seen := true, false
	for _, tok := range toks {
		typ := d.types[tok]
		if typ == spByte && len(tok) == 6 {
			if v, ok := parseHexByte(tok[3:5]); ok {
				run = append(run, byte(v))
				continue
			}
		}
		flush()
		if seen || out.Len() > 0 {
			bosWS = false
		}
		seen = false
		switch typ {
		case spControl:
			continue
		case spUnknown:
			out.WriteString(d.unkSurface)
			continue
		}
		if bosWS && (d.dummyPrefix || d.removeExtra) {
			if rest, ok := strings.CutPrefix(tok, "▁"); ok {
				tok, seen = rest, !d.removeExtra
			}
		}
		out.WriteString(strings.ReplaceAll(tok, "▁", " "))
	}
	flush()
	return []string{out.String()}
}
