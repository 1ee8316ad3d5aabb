package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"
)

// The expected ids live in ../testdata/tokenizer/expected/ (written by
// make_expected.py with Hugging Face tokenizers and sentencepiece) and, for
// the tokenizers that folder lacks (all of them until it is committed),
// ../testdata/tokenizer/expected-js/ (written with transformers.js and
// gpt-3-encoder; see the README there). One JSON file per tokenizer:
//
//	{"tokenizer": "llama3", "load": "llama3" | "file": "trained/x.model",
//	 "cases": [{"line": 1, "text": "...", "ids": [...], "ids_special": [...],
//	            "decoded": "...", "decoded_skip": "..."}]}
//
// "load" names a folder under LORACC_TOKENIZERS_DIR, "file" a file
// relative to the expected folder. decoded is decode(ids, false) and
// decoded_skip decode(ids_special, true); absent fields are not compared.
const (
	expectedHF = "../testdata/tokenizer/expected"
	expectedJS = "../testdata/tokenizer/expected-js"
)

type expectedFile struct {
	Tokenizer string `json:"tokenizer"`
	Load      string `json:"load"`
	File      string `json:"file"`
	Generator string `json:"generator"`
	Cases     []struct {
		Line        int     `json:"line"`
		Text        string  `json:"text"`
		IDs         []int   `json:"ids"`
		IDsSpecial  []int   `json:"ids_special"`
		Decoded     *string `json:"decoded"`
		DecodedSkip *string `json:"decoded_skip"`
	} `json:"cases"`
}

// expectedFiles lists the reference files: all of expected/, plus those of
// expected-js/ for tokenizers expected/ lacks (make_expected.py may run
// without gemma3, say). Neither folder present is a failure.
func expectedFiles(t *testing.T) []string {
	hf, _ := filepath.Glob(filepath.Join(expectedHF, "*.json"))
	js, _ := filepath.Glob(filepath.Join(expectedJS, "*.json"))
	if len(hf) == 0 && len(js) == 0 {
		t.Fatalf("no expected ids: neither %s (Hugging Face, from make_expected.py) nor %s has JSON files", expectedHF, expectedJS)
	}
	if len(hf) == 0 {
		t.Logf("!!! %s is absent: comparing with the interim transformers.js ids of %s", expectedHF, expectedJS)
	}
	have := map[string]bool{}
	for _, f := range hf {
		have[filepath.Base(f)] = true
	}
	files := hf
	for _, f := range js {
		if !have[filepath.Base(f)] {
			if len(hf) > 0 {
				t.Logf("%s: no Hugging Face ids, using the interim %s", filepath.Base(f), f)
			}
			files = append(files, f)
		}
	}
	sort.Strings(files)
	return files
}

// TestExpected compares every corpus line of every tokenizer with the
// reference ids and decodes.
func TestExpected(t *testing.T) {
	for _, f := range expectedFiles(t) {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var e expectedFile
		if err := json.Unmarshal(data, &e); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		t.Run(e.Tokenizer, func(t *testing.T) {
			var tk *Tokenizer
			if e.File != "" {
				if tk, err = loadExpectedFile(filepath.Join(filepath.Dir(f), e.File)); err != nil {
					t.Fatal(err)
				}
			} else {
				tk = loadReal(t, e.Load)
			}
			checkCases(t, tk, &e)
		})
	}
}

func loadExpectedFile(path string) (*Tokenizer, error) {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		return Load(path)
	}
	return LoadFile(path)
}

func checkCases(t *testing.T, tk *Tokenizer, e *expectedFile) {
	corpus := readCorpus(t)
	if len(e.Cases) != len(corpus) {
		t.Errorf("%s has %d cases, the corpus %d lines: regenerate it", e.Tokenizer, len(e.Cases), len(corpus))
	}
	equal, shown, roundTrips := 0, 0, 0
	for _, c := range e.Cases {
		if c.Line < 1 || c.Line > len(corpus) || corpus[c.Line-1] != c.Text {
			t.Errorf("%s line %d: text differs from corpus.txt: regenerate the expected files", e.Tokenizer, c.Line)
		}
		var bad []string
		ids, err := tk.Encode(c.Text, false)
		if err != nil {
			bad = append(bad, "encode: "+err.Error())
		} else if !slices.Equal(ids, c.IDs) {
			bad = append(bad, "ids: got "+jsonStr(ids)+" want "+jsonStr(c.IDs))
		}
		if c.IDsSpecial != nil {
			got, err := tk.Encode(c.Text, true)
			if err == nil && !slices.Equal(got, c.IDsSpecial) {
				bad = append(bad, "ids_special: got "+jsonStr(got)+" want "+jsonStr(c.IDsSpecial))
			}
		}
		if c.Decoded != nil {
			got := tk.Decode(c.IDs, false)
			if got != *c.Decoded {
				bad = append(bad, "decoded: got "+jsonStr(got)+" want "+jsonStr(*c.Decoded))
			}
			// Where the reference round-trips, ours must too (implied by
			// the equality above; counted for the log).
			if *c.Decoded == c.Text && got == c.Text {
				roundTrips++
			}
		}
		if c.DecodedSkip != nil && c.IDsSpecial != nil {
			if got := tk.Decode(c.IDsSpecial, true); got != *c.DecodedSkip {
				bad = append(bad, "decoded_skip: got "+jsonStr(got)+" want "+jsonStr(*c.DecodedSkip))
			}
		}
		if len(bad) == 0 {
			equal++
			continue
		}
		if shown < 8 {
			shown++
			t.Errorf("line %d %s:\n  %s", c.Line, jsonStr(c.Text), joinLines(bad))
		}
	}
	t.Logf("%s (%s): %d/%d lines equal; %d round-trip through decode", e.Tokenizer, e.Generator, equal, len(e.Cases), roundTrips)
	if equal != len(e.Cases) {
		t.Errorf("%s: %d of %d lines differ", e.Tokenizer, len(e.Cases)-equal, len(e.Cases))
	}
}

func jsonStr(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func joinLines(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += "\n  "
		}
		out += x
	}
	return out
}
