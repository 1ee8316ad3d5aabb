package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
)

// maxFileSize bounds what Load reads: Gemma-3's tokenizer.json, the
// largest supported, is 33 MB.
const maxFileSize = 1 << 30

// Load reads a model folder. It prefers tokenizer.json, then
// tokenizer.model (SentencePiece), then GPT-2's encoder.json + vocab.bpe,
// and applies tokenizer_config.json when present: special tokens,
// add_bos_token/add_eos_token, model_max_length and chat templates.
func Load(dir string) (*Tokenizer, error) {
	var t *Tokenizer
	var err error
	switch {
	case exists(filepath.Join(dir, "tokenizer.json")):
		t, err = LoadFile(filepath.Join(dir, "tokenizer.json"))
	case exists(filepath.Join(dir, "tokenizer.model")):
		t, err = LoadFile(filepath.Join(dir, "tokenizer.model"))
	case exists(filepath.Join(dir, "encoder.json")):
		t, err = loadGPT2(filepath.Join(dir, "encoder.json"), filepath.Join(dir, "vocab.bpe"))
	default:
		return nil, fmt.Errorf("tokenizer: %s: no tokenizer.json, tokenizer.model or encoder.json", dir)
	}
	if err != nil {
		return nil, err
	}
	cfg := filepath.Join(dir, "tokenizer_config.json")
	if exists(cfg) {
		if err := t.applyConfig(cfg); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// LoadFile reads one tokenizer file: a tokenizer.json (any name ending in
// .json), a SentencePiece .model, or a GPT-2 encoder.json whose vocab.bpe
// lies beside it.
func LoadFile(path string) (*Tokenizer, error) {
	if filepath.Base(path) == "encoder.json" {
		return loadGPT2(path, filepath.Join(filepath.Dir(path), "vocab.bpe"))
	}
	data, err := readFile(path)
	if err != nil {
		return nil, err
	}
	var t *Tokenizer
	if strings.HasSuffix(path, ".json") {
		t, err = parseTokenizerJSON(data)
	} else {
		t, err = parseSentencePiece(data)
	}
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %s: %w", path, err)
	}
	t.guessSpecials()
	t.finish()
	return t, nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func readFile(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	if st.Size() > maxFileSize {
		return nil, fmt.Errorf("tokenizer: %s: %d bytes, over the %d-byte limit", path, st.Size(), maxFileSize)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	return data, nil
}

// guessSpecials sets BOS/EOS from the post-processor's template when no
// tokenizer_config.json says otherwise.
func (t *Tokenizer) guessSpecials() {
	var tp *template
	switch p := t.post.(type) {
	case template:
		tp = &p
	case postSequence:
		for _, x := range p {
			if q, ok := x.(template); ok {
				tp = &q
			}
		}
	}
	if tp != nil && len(tp.before) > 0 && t.bos < 0 {
		t.bos = tp.before[0]
	}
	if tp != nil && len(tp.after) > 0 && t.eos < 0 {
		t.eos = tp.after[len(tp.after)-1]
	}
}

// hfConfig is the part of tokenizer_config.json the tokenizer uses.
type hfConfig struct {
	BOS          json.RawMessage `json:"bos_token"`
	EOS          json.RawMessage `json:"eos_token"`
	Pad          json.RawMessage `json:"pad_token"`
	Unk          json.RawMessage `json:"unk_token"`
	AddBOS       *bool           `json:"add_bos_token"`
	AddEOS       *bool           `json:"add_eos_token"`
	MaxLength    *float64        `json:"model_max_length"`
	ChatTemplate json.RawMessage `json:"chat_template"`
}

func (t *Tokenizer) applyConfig(path string) error {
	data, err := readFile(path)
	if err != nil {
		return err
	}
	var c hfConfig
	if err := json.Unmarshal(data, &c); err != nil {
		return fmt.Errorf("tokenizer: %s: %w", path, err)
	}
	wrap := func(err error) error { return fmt.Errorf("tokenizer: %s: %w", path, err) }
	for _, f := range []struct {
		key string
		raw json.RawMessage
		dst *int
	}{{"bos_token", c.BOS, &t.bos}, {"eos_token", c.EOS, &t.eos}, {"pad_token", c.Pad, &t.pad}} {
		id, ok, err := t.configToken(f.key, f.raw)
		if err != nil {
			return wrap(err)
		}
		if ok {
			*f.dst = id
		}
	}
	if _, _, err := t.configToken("unk_token", c.Unk); err != nil {
		return wrap(err)
	}
	if c.MaxLength != nil && *c.MaxLength > 0 && *c.MaxLength < math.MaxInt32 {
		t.maxLength = int(*c.MaxLength)
	}
	if t.templates, err = parseChatTemplates(c.ChatTemplate); err != nil {
		return wrap(err)
	}
	// Llama-2 and Gemma configs decide BOS/EOS with add_bos_token; the
	// tokenizer.json's template, when there is one, already encodes it.
	if (t.post == nil || t.configPost) && (c.AddBOS != nil || c.AddEOS != nil) {
		var p template
		if c.AddBOS != nil && *c.AddBOS && t.bos >= 0 {
			p.before = []int{t.bos}
		}
		if c.AddEOS != nil && *c.AddEOS && t.eos >= 0 {
			p.after = []int{t.eos}
		}
		t.post = p
	}
	return nil
}

// configToken reads a special token given as a string or as an AddedToken
// object {"content": ...}; null means none.
func (t *Tokenizer) configToken(key string, raw json.RawMessage) (int, bool, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return 0, false, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		var o struct{ Content *string }
		if err2 := json.Unmarshal(raw, &o); err2 != nil || o.Content == nil {
			return 0, false, fmt.Errorf("%s: neither a string nor {\"content\": ...}", key)
		}
		s = *o.Content
	}
	id, ok := t.ids[s]
	if !ok {
		return 0, false, fmt.Errorf("%s %q: not in the vocabulary", key, s)
	}
	return id, true, nil
}

// parseChatTemplates reads chat_template: one string, or a list of
// {"name", "template"}.
func parseChatTemplates(raw json.RawMessage) (map[string]string, error) {
	out := map[string]string{}
	if len(raw) == 0 || string(raw) == "null" {
		return out, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		out["default"] = s
		return out, nil
	}
	var list []struct {
		Name     *string
		Template *string
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, errors.New("chat_template: neither a string nor a list of {name, template}")
	}
	for i, e := range list {
		if e.Name == nil || e.Template == nil {
			return nil, fmt.Errorf("chat_template[%d]: needs name and template", i)
		}
		out[*e.Name] = *e.Template
	}
	return out, nil
}
