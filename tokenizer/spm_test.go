package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestSentencePieceBPEMatchesLlama2 rebuilds Llama-2's tokenizer.model
// from its tokenizer.json: HF's converter orders the merges by the score
// of the merged piece, which in Llama-2 is minus its id (the ▁▁ and ▁▁▁▁
// runs score -1e9, so HF put them last). The .model path (score-ranked
// BPE, dummy prefix, byte fallback) must then give the tokenizer.json ids
// on every corpus line without special-token text.
func TestSentencePieceBPEMatchesLlama2(t *testing.T) {
	dir := filepath.Join(tokenizersDir(t), "llama2")
	hf := loadReal(t, "llama2")
	data, err := os.ReadFile(filepath.Join(dir, "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Model struct {
			Vocab map[string]int `json:"vocab"`
		} `json:"model"`
	}
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	vocab, err := vocabByID(f.Model.Vocab)
	if err != nil {
		t.Fatal(err)
	}
	pieces := make([]spPiece, len(vocab))
	for id, p := range vocab {
		switch {
		case id == 0:
			pieces[id] = spPiece{p, 0, spUnknown}
		case id <= 2:
			pieces[id] = spPiece{p, 0, spControl}
		case id <= 258:
			pieces[id] = spPiece{p, 0, spByte}
		case id <= 260:
			pieces[id] = spPiece{p, -1e9, spNormal}
		default:
			pieces[id] = spPiece{p, float32(-(id - 259)), spNormal}
		}
	}
	// Llama-2 keeps extra whitespace: remove_extra_whitespaces = false.
	var noExtra []byte
	noExtra = append(noExtra, 4<<3, 0)
	sp, err := parseSentencePiece(spProto(pieces, 2, true, noExtra))
	if err != nil {
		t.Fatal(err)
	}
	sp.finish()
	checked := 0
	for i, l := range readCorpus(t) {
		if strings.Contains(l, "<s>") || strings.Contains(l, "</s>") || strings.Contains(l, "<unk>") || l == "" {
			continue
		}
		want, got := mustEncode(t, hf, l, true), mustEncode(t, sp, l, true)
		if !slices.Equal(got, want) {
			t.Errorf("line %d %q:\n .model %v\n  .json %v", i+1, l, got, want)
		}
		if d, w := sp.Decode(got, true), hf.Decode(want, true); d != w {
			t.Errorf("line %d: decode %q, tokenizer.json %q", i+1, d, w)
		}
		checked++
	}
	t.Logf("%d lines compared", checked)
}
