package tokenizer

import (
	"encoding/json"
	"fmt"
	"strings"
)

// hfFile is the top level of a Hugging Face tokenizer.json.
type hfFile struct {
	AddedTokens []struct {
		ID         int    `json:"id"`
		Content    string `json:"content"`
		SingleWord bool   `json:"single_word"`
		Lstrip     bool   `json:"lstrip"`
		Rstrip     bool   `json:"rstrip"`
		Normalized bool   `json:"normalized"`
		Special    bool   `json:"special"`
	} `json:"added_tokens"`
	Normalizer    json.RawMessage `json:"normalizer"`
	PreTokenizer  json.RawMessage `json:"pre_tokenizer"`
	PostProcessor json.RawMessage `json:"post_processor"`
	Decoder       json.RawMessage `json:"decoder"`
	Model         json.RawMessage `json:"model"`
}

// parseTokenizerJSON builds a Tokenizer from the bytes of a tokenizer.json.
// Errors name the JSON path of the problem; the caller adds the file name.
func parseTokenizerJSON(data []byte) (*Tokenizer, error) {
	var f hfFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, err
	}
	t := &Tokenizer{bos: -1, eos: -1, pad: -1}
	var err error
	if o, ok, err := parseObj("normalizer", f.Normalizer); err != nil {
		return nil, err
	} else if ok {
		if t.norm, err = parseNormalizer(o); err != nil {
			return nil, err
		}
	}
	if o, ok, err := parseObj("pre_tokenizer", f.PreTokenizer); err != nil {
		return nil, err
	} else if ok {
		if t.pre, err = parsePreTokenizer(o); err != nil {
			return nil, err
		}
	}
	if o, ok, err := parseObj("decoder", f.Decoder); err != nil {
		return nil, err
	} else if ok {
		if t.dec, err = parseDecoder(o); err != nil {
			return nil, err
		}
	}
	mo, ok, err := parseObj("model", f.Model)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("model: missing")
	}
	var vocab []string
	if t.model, vocab, err = parseModel(mo); err != nil {
		return nil, err
	}
	added := make([]addedToken, 0, len(f.AddedTokens))
	for _, a := range f.AddedTokens {
		added = append(added, addedToken{id: a.ID, content: a.Content, special: a.Special,
			normalized: a.Normalized, lstrip: a.Lstrip, rstrip: a.Rstrip, singleWord: a.SingleWord})
	}
	if err := t.buildVocab(vocab, added); err != nil {
		return nil, fmt.Errorf("added_tokens: %w", err)
	}
	t.added = newAddedVocab(added, t.norm)
	if o, ok, err := parseObj("post_processor", f.PostProcessor); err != nil {
		return nil, err
	} else if ok {
		if t.post, err = t.parsePost(o); err != nil {
			return nil, err
		}
	}
	return t, err
}

// parseModel reads the model object and returns the vocabulary by id.
func parseModel(o obj) (model, []string, error) {
	t, err := o.str("type", "")
	if err != nil {
		return nil, nil, err
	}
	if t == "" {
		// Old files have no type; a merges field means BPE.
		if o.has("merges") {
			t = "BPE"
		} else if o.has("vocab") {
			t = "Unigram"
		}
	}
	switch t {
	case "BPE":
		return parseBPE(o)
	case "Unigram":
		return parseUnigram(o)
	}
	return nil, nil, fmt.Errorf("model: unsupported type %q (BPE and Unigram are)", t)
}

func parseBPE(o obj) (model, []string, error) {
	var vmap map[string]int
	if err := o.get("vocab", &vmap); err != nil {
		return nil, nil, err
	}
	vocab, err := vocabByID(vmap)
	if err != nil {
		return nil, nil, fmt.Errorf("model.vocab: %w", err)
	}
	m := &bpe{vocab: vmap, unk: -1, cache: newWordCache()}
	var e [7]error
	var unk string
	unk, e[0] = o.str("unk_token", "")
	m.fuseUnk, e[1] = o.boolean("fuse_unk", false)
	m.byteFallback, e[2] = o.boolean("byte_fallback", false)
	m.ignoreMerges, e[3] = o.boolean("ignore_merges", false)
	m.prefix, e[4] = o.str("continuing_subword_prefix", "")
	m.suffix, e[5] = o.str("end_of_word_suffix", "")
	if o.has("dropout") {
		var d float64
		if e[6] = o.get("dropout", &d); e[6] == nil && d > 0 {
			e[6] = fmt.Errorf("model.dropout: %v is not supported (encoding would be random)", d)
		}
	}
	if err := firstErr(e[:]...); err != nil {
		return nil, nil, err
	}
	if unk != "" {
		id, ok := vmap[unk]
		if !ok {
			return nil, nil, fmt.Errorf("model.unk_token %q: not in the vocabulary", unk)
		}
		m.unk = id
	}
	m.initBytes()
	pairs, err := readMerges(o)
	if err != nil {
		return nil, nil, err
	}
	m.merges = make(map[uint64]uint64, len(pairs))
	for rank, p := range pairs {
		a, okA := vmap[p[0]]
		b, okB := vmap[p[1]]
		// With a continuing_subword_prefix ("##"), the right part loses it
		// in the merged token, as in HF.
		c, okC := vmap[p[0]+strings.TrimPrefix(p[1], m.prefix)]
		if !okA || !okB || !okC {
			return nil, nil, fmt.Errorf("model.merges[%d] %q %q: token not in the vocabulary", rank, p[0], p[1])
		}
		m.merges[pairKey(a, b)] = uint64(rank)<<32 | uint64(uint32(c))
	}
	return m, vocab, nil
}

// readMerges accepts both merge forms: "a b" strings and ["a", "b"] pairs.
func readMerges(o obj) ([][2]string, error) {
	if !o.has("merges") {
		return nil, nil
	}
	var pairs [][2]string
	if err := json.Unmarshal(o.m["merges"], &pairs); err == nil {
		return pairs, nil
	}
	var lines []string
	if err := o.get("merges", &lines); err != nil {
		return nil, err
	}
	pairs = make([][2]string, len(lines))
	for i, l := range lines {
		a, b, ok := strings.Cut(l, " ")
		if !ok || strings.Contains(b, " ") {
			return nil, fmt.Errorf("model.merges[%d] %q: not two tokens separated by one space", i, l)
		}
		pairs[i] = [2]string{a, b}
	}
	return pairs, nil
}

// vocabByID inverts a token→id map; ids must be dense enough to index.
func vocabByID(vmap map[string]int) ([]string, error) {
	n := 0
	for tok, id := range vmap {
		if id < 0 || id >= maxVocab {
			return nil, fmt.Errorf("token %q has id %d, outside [0, %d)", tok, id, maxVocab)
		}
		n = max(n, id+1)
	}
	vocab := make([]string, n)
	for tok, id := range vmap {
		vocab[id] = tok
	}
	return vocab, nil
}

func parseUnigram(o obj) (model, []string, error) {
	var raw [][2]json.RawMessage
	if err := o.get("vocab", &raw); err != nil {
		return nil, nil, err
	}
	if len(raw) >= maxVocab {
		return nil, nil, fmt.Errorf("model.vocab: %d pieces, over the limit %d", len(raw), maxVocab)
	}
	vocab := make([]string, len(raw))
	scores := make([]float64, len(raw))
	for i, r := range raw {
		if err := json.Unmarshal(r[0], &vocab[i]); err != nil {
			return nil, nil, fmt.Errorf("model.vocab[%d]: %w", i, err)
		}
		if err := json.Unmarshal(r[1], &scores[i]); err != nil {
			return nil, nil, fmt.Errorf("model.vocab[%d]: %w", i, err)
		}
	}
	unk, err := o.integer("unk_id", -1)
	if err != nil {
		return nil, nil, err
	}
	if unk >= len(vocab) {
		return nil, nil, fmt.Errorf("model.unk_id %d: outside the %d pieces", unk, len(vocab))
	}
	bf, err := o.boolean("byte_fallback", false)
	if err != nil {
		return nil, nil, err
	}
	return newUnigram(vocab, scores, unk, bf, nil), vocab, nil
}

// parsePost reads the post-processor; ids must already be known.
func (t *Tokenizer) parsePost(o obj) (postProcessor, error) {
	typ, err := o.typ()
	if err != nil {
		return nil, err
	}
	switch typ {
	case "ByteLevel":
		return nil, nil // only trims offsets
	case "TemplateProcessing":
		return t.parseTemplate(o)
	case "BertProcessing", "RobertaProcessing":
		var sep, cls [2]json.RawMessage
		if err := firstErr(o.get("sep", &sep), o.get("cls", &cls)); err != nil {
			return nil, err
		}
		var sepID, clsID int
		if err := firstErr(json.Unmarshal(sep[1], &sepID), json.Unmarshal(cls[1], &clsID)); err != nil {
			return nil, fmt.Errorf("%s: %w", o.path, err)
		}
		for _, id := range []int{sepID, clsID} {
			if id < 0 || id >= len(t.tokens) {
				return nil, fmt.Errorf("%s: id %d outside the vocabulary", o.path, id)
			}
		}
		return template{before: []int{clsID}, after: []int{sepID}}, nil
	case "Sequence":
		subs, err := o.list("processors")
		if err != nil {
			return nil, err
		}
		var seq postSequence
		for _, s := range subs {
			p, err := t.parsePost(s)
			if err != nil {
				return nil, err
			}
			if p != nil {
				seq = append(seq, p)
			}
		}
		if len(seq) == 0 {
			return nil, nil
		}
		return seq, nil
	}
	return nil, fmt.Errorf("%s: unsupported post_processor type %q", o.path, typ)
}

func (t *Tokenizer) parseTemplate(o obj) (postProcessor, error) {
	var single []struct {
		SpecialToken *struct{ ID string } `json:"SpecialToken"`
		Sequence     *struct{ ID string } `json:"Sequence"`
	}
	var specials map[string]struct {
		IDs []int `json:"ids"`
	}
	if err := firstErr(o.get("single", &single), o.get("special_tokens", &specials)); err != nil {
		return nil, err
	}
	var p template
	seen := false
	for i, item := range single {
		switch {
		case item.Sequence != nil:
			seen = true
		case item.SpecialToken != nil:
			st, ok := specials[item.SpecialToken.ID]
			if !ok {
				return nil, fmt.Errorf("%s.single[%d]: special token %q not in special_tokens", o.path, i, item.SpecialToken.ID)
			}
			for _, id := range st.IDs {
				if id < 0 || id >= len(t.tokens) {
					return nil, fmt.Errorf("%s.special_tokens[%q]: id %d outside the vocabulary", o.path, item.SpecialToken.ID, id)
				}
			}
			if seen {
				p.after = append(p.after, st.IDs...)
			} else {
				p.before = append(p.before, st.IDs...)
			}
		default:
			return nil, fmt.Errorf("%s.single[%d]: neither SpecialToken nor Sequence", o.path, i)
		}
	}
	return p, nil
}
