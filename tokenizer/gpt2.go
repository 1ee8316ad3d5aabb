package tokenizer

import (
	"encoding/json"
	"fmt"
	"strings"
)

// gpt2EOT is GPT-2's only special token.
const gpt2EOT = "<|endoftext|>"

// loadGPT2 reads OpenAI's encoder.json (token → id, byte-level strings)
// and vocab.bpe (a version line, then one merge "a b" per line, in rank
// order) as a byte-level BPE with GPT-2's regex, the settings HF's
// GPT2TokenizerFast uses: no prefix space, <|endoftext|> a special added
// token that is also BOS, EOS and (by HF's convention) unk, and no
// post-processor.
func loadGPT2(encPath, bpePath string) (*Tokenizer, error) {
	enc, err := readFile(encPath)
	if err != nil {
		return nil, err
	}
	merges, err := readFile(bpePath)
	if err != nil {
		return nil, err
	}
	var vmap map[string]int
	if err := json.Unmarshal(enc, &vmap); err != nil {
		return nil, fmt.Errorf("tokenizer: %s: %w", encPath, err)
	}
	vocab, err := vocabByID(vmap)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %s: %w", encPath, err)
	}
	m := &bpe{vocab: vmap, unk: -1, cache: newWordCache(), merges: map[uint64]uint64{}}
	m.initBytes()
	lines := strings.Split(string(merges), "\n")
	rank := 0
	for i, l := range lines {
		l = strings.TrimRight(l, "\r")
		if l == "" || (i == 0 && strings.HasPrefix(l, "#")) {
			continue
		}
		a, b, ok := strings.Cut(l, " ")
		if !ok || strings.Contains(b, " ") {
			return nil, fmt.Errorf("tokenizer: %s:%d: %q is not two tokens separated by one space", bpePath, i+1, l)
		}
		ia, okA := vmap[a]
		ib, okB := vmap[b]
		ic, okC := vmap[a+b]
		if !okA || !okB || !okC {
			return nil, fmt.Errorf("tokenizer: %s:%d: merge %q: token not in %s", bpePath, i+1, l, encPath)
		}
		m.merges[pairKey(ia, ib)] = uint64(rank)<<32 | uint64(uint32(ic))
		rank++
	}
	re, err := compileRegex(gpt2Pattern)
	if err != nil {
		return nil, err
	}
	t := &Tokenizer{model: m, pre: byteLevel{re: re}, dec: byteLevelDecoder{}, bos: -1, eos: -1, pad: -1}
	var added []addedToken
	if id, ok := vmap[gpt2EOT]; ok {
		added = append(added, addedToken{id: id, content: gpt2EOT, special: true})
		t.bos, t.eos = id, id
	}
	if err := t.buildVocab(vocab, added); err != nil {
		return nil, fmt.Errorf("tokenizer: %s: %w", encPath, err)
	}
	t.added = newAddedVocab(added, nil)
	t.finish()
	return t, nil
}
