package tokenizer

import (
	"fmt"
	"sort"
	"strings"
	"sync"
)

// Tokenizer turns text into token ids and back, reproducing the Hugging
// Face tokenizers pipeline: added tokens are split out first, then each
// remaining piece is normalized, pre-tokenized and handed to the model; a
// post-processor adds BOS/EOS. A Tokenizer is immutable after loading apart
// from its bounded word cache, which is locked, so it is safe for
// concurrent use.
type Tokenizer struct {
	model  model
	added  *addedVocab
	norm   normalizer   // nil: identity
	pre    preTokenizer // nil: the whole piece is one word
	post   postProcessor
	dec    decoder // nil: tokens joined by spaces, as HF does
	tokens []string
	ids    map[string]int
	// special marks ids that Decode(…, true) drops and IsSpecial reports.
	special map[int]bool
	bos     int // -1 when the model has none
	eos     int
	pad     int
	// configPost: tokenizer_config.json's add_bos_token/add_eos_token may
	// replace post (formats whose files do not fix BOS/EOS themselves).
	configPost bool

	maxLength int
	templates map[string]string
	pool      sync.Pool // *scratch
}

// Encode returns the token ids of text. With addSpecial the post-processor
// adds the special tokens the model expects (BOS/EOS). An error is returned
// only when a pre-tokenizer regex exceeds its time bound (possible only for
// regexes other than the GPT-2, Llama-3 and Qwen ones, which are
// scanned by hand). Characters a model cannot represent (no unknown token,
// no byte fallback) are dropped, as HF drops them.
func (t *Tokenizer) Encode(text string, addSpecial bool) ([]int, error) {
	ids, err := t.encodePieces(text, make([]int, 0, len(text)/3+4))
	if err != nil {
		return nil, err
	}
	if addSpecial && t.post != nil {
		ids = t.post.process(ids)
	}
	return ids, nil
}

func (t *Tokenizer) encodePieces(text string, ids []int) ([]int, error) {
	sc, _ := t.pool.Get().(*scratch)
	if sc == nil {
		sc = &scratch{}
	}
	defer func() {
		// Drop the references into text before pooling the buffers.
		clear(sc.a)
		clear(sc.b)
		clear(sc.segs)
		t.pool.Put(sc)
	}()
	sc.segs = t.added.split(text, t.norm, sc.segs[:0])
	for _, sp := range sc.segs {
		if sp.id >= 0 {
			ids = append(ids, sp.id)
			continue
		}
		words := append(sc.a[:0], piece{text: sp.text, first: sp.start})
		sc.a = words
		if t.pre != nil {
			var err error
			if words, err = t.pre.preTokenize(words, sc.b[:0], sc); err != nil {
				return nil, err
			}
			sc.b = words
		}
		for _, w := range words {
			if w.text == "" {
				continue
			}
			var err error
			if ids, err = t.model.tokenize(w, ids); err != nil {
				return nil, err
			}
		}
	}
	return ids, nil
}

// finish speeds up a loaded pipeline where that cannot change its ids: a
// ByteLevel pre-tokenizer that ends the pipeline before a plain BPE model
// leaves the byte map to the model, and SentencePiece-style words are
// merged ▁ by ▁ (bpe.splitAt).
func (t *Tokenizer) finish() {
	m, ok := t.model.(*bpe)
	if !ok {
		return
	}
	m.initSplit("▁")
	if m.prefix != "" || m.suffix != "" {
		return
	}
	switch p := t.pre.(type) {
	case byteLevel:
		p.lazy = true
		t.pre = p
	case preSequence:
		if len(p) == 0 {
			return
		}
		bl, ok := p[len(p)-1].(byteLevel)
		if !ok {
			return
		}
		bl.lazy = true
		q := append(preSequence(nil), p...)
		q[len(q)-1] = bl
		t.pre = q
	default:
		return
	}
	m.initByteLevel()
}

// Decode turns ids back into text through the decoder, as HF's
// Tokenizer.decode does. Ids outside the vocabulary are skipped; with
// skipSpecial so are special tokens.
func (t *Tokenizer) Decode(ids []int, skipSpecial bool) string {
	toks := make([]string, 0, len(ids))
	for _, id := range ids {
		if id < 0 || id >= len(t.tokens) || (t.tokens[id] == "" && !t.known(id)) {
			continue
		}
		if skipSpecial && t.special[id] {
			continue
		}
		toks = append(toks, t.tokens[id])
	}
	if t.dec == nil {
		return strings.Join(toks, " ")
	}
	return strings.Join(t.dec.decode(toks), "")
}

// known reports whether id names a token; tokens holds "" for holes in
// sparse vocabularies, and "" is never a real token's content.
func (t *Tokenizer) known(id int) bool {
	got, ok := t.ids[t.tokens[id]]
	return ok && got == id
}

// TokenID returns the id of a token given by its vocabulary string (for
// byte-level models the mapped form, such as "Ġthe").
func (t *Tokenizer) TokenID(tok string) (int, bool) {
	id, ok := t.ids[tok]
	return id, ok
}

// Token returns the vocabulary string of id.
func (t *Tokenizer) Token(id int) (string, bool) {
	if id < 0 || id >= len(t.tokens) || !t.known(id) {
		return "", false
	}
	return t.tokens[id], true
}

// VocabSize is the largest id plus one: the number of embedding rows a
// model needs, added tokens included.
func (t *Tokenizer) VocabSize() int { return len(t.tokens) }

// BOS returns the beginning-of-sequence id, if the model has one.
func (t *Tokenizer) BOS() (int, bool) { return t.bos, t.bos >= 0 }

// EOS returns the end-of-sequence id, if the model has one.
func (t *Tokenizer) EOS() (int, bool) { return t.eos, t.eos >= 0 }

// Pad returns the padding id, if the model has one.
func (t *Tokenizer) Pad() (int, bool) { return t.pad, t.pad >= 0 }

// IsSpecial reports whether id is a special token (skipped by
// Decode(ids, true)).
func (t *Tokenizer) IsSpecial(id int) bool { return t.special[id] }

// MaxLength is tokenizer_config.json's model_max_length, 0 when absent or
// absurdly large (HF writes 1e30 for "no limit").
func (t *Tokenizer) MaxLength() int { return t.maxLength }

// ChatTemplate returns the raw Jinja chat template named name from
// tokenizer_config.json ("" or "default" for the default one). The chat
// package renders it; the tokenizer only keeps it.
func (t *Tokenizer) ChatTemplate(name string) (string, bool) {
	if name == "" {
		name = "default"
	}
	s, ok := t.templates[name]
	return s, ok
}

// ChatTemplateNames lists the names of the chat templates, sorted.
func (t *Tokenizer) ChatTemplateNames() []string {
	names := make([]string, 0, len(t.templates))
	for n := range t.templates {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// buildVocab fills tokens/ids from the model vocabulary and the added
// tokens; added tokens win on conflicts, as in HF's AddedVocabulary.
func (t *Tokenizer) buildVocab(modelVocab []string, added []addedToken) error {
	n := len(modelVocab)
	for _, a := range added {
		if a.id < 0 {
			return fmt.Errorf("added token %q has negative id %d", a.content, a.id)
		}
		if a.id >= maxVocab {
			return fmt.Errorf("added token %q has id %d, over the limit %d", a.content, a.id, maxVocab)
		}
		n = max(n, a.id+1)
	}
	t.tokens = make([]string, n)
	t.ids = make(map[string]int, n)
	for id, s := range modelVocab {
		t.tokens[id] = s
		if _, dup := t.ids[s]; !dup && s != "" {
			t.ids[s] = id
		}
	}
	t.special = map[int]bool{}
	for _, a := range added {
		if a.content == "" {
			continue // HF ignores empty added tokens
		}
		t.tokens[a.id] = a.content
		t.ids[a.content] = a.id
		if a.special {
			t.special[a.id] = true
		}
	}
	return nil
}

// maxVocab bounds ids read from files so a hostile id cannot make Load
// allocate gigabytes.
const maxVocab = 1 << 22
