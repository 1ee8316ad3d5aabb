package dataset

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/loracc/loracc/chat"
	"github.com/loracc/loracc/tokenizer"
)

// Tokenizer is a model's tokenizer as text data needs it: the tokenizer,
// its chat template when the folder has one, and a hash of its files, so
// that tokens cached for one tokenizer are never reused for another.
type Tokenizer struct {
	Dir string // the folder it was loaded from, for messages
	Tok *tokenizer.Tokenizer
	// Key is a SHA-256 over the names and bytes of the tokenizer files
	// in Dir.
	Key  string
	chat *chat.Template
	// chatErr says why chat is nil; it is reported only when a file of
	// messages needs the template, as text data does not.
	chatErr error
	// before and after are the ids Encode(text, true) puts around the
	// text's own (BOS, EOS, a CLS/SEP pair): prompt/completion records
	// are encoded in two pieces and get them around both.
	before, after []int
}

// tokenizerFiles are the files that decide a tokenizer's ids or a chat
// template's text, in a fixed order for Key.
func tokenizerFiles() []string {
	return []string{"tokenizer.json", "tokenizer.model", "encoder.json", "vocab.bpe", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"}
}

// LoadTokenizer loads the tokenizer in dir (see tokenizer.Load) and its
// chat template (from tokenizer_config.json or chat_template.jinja).
func LoadTokenizer(dir string) (*Tokenizer, error) {
	tok, err := tokenizer.Load(dir)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	for _, name := range tokenizerFiles() {
		f, err := os.Open(filepath.Join(dir, name))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("dataset: tokenizer: %w", err)
		}
		fmt.Fprintf(h, "%s\x00", name)
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("dataset: tokenizer: %s: %w", name, err)
		}
		h.Write([]byte{0})
	}
	t := &Tokenizer{Dir: dir, Tok: tok, Key: fmt.Sprintf("%x", h.Sum(nil))}
	cfg := filepath.Join(dir, "tokenizer_config.json")
	if _, err := os.Stat(cfg); err != nil {
		t.chatErr = fmt.Errorf("%s has no tokenizer_config.json, so no chat template", dir)
	} else if t.chat, err = chat.FromConfig(cfg); err != nil {
		t.chatErr = err
	}
	if err := t.probeSpecials(); err != nil {
		return nil, err
	}
	return t, nil
}

// probeSpecials finds what the post-processor adds by encoding one word
// with and without it: the tokenizer package keeps its post-processor to
// itself, and this way whatever it does (a template, Bert's pair of
// tokens, nothing) is what prompt/completion records get.
func (t *Tokenizer) probeSpecials() error {
	const probe = "Hello"
	plain, err := t.Tok.Encode(probe, false)
	if err != nil {
		return fmt.Errorf("dataset: tokenizer %s: %w", t.Dir, err)
	}
	full, err := t.Tok.Encode(probe, true)
	if err != nil {
		return fmt.Errorf("dataset: tokenizer %s: %w", t.Dir, err)
	}
	for i := 0; i+len(plain) <= len(full); i++ {
		if slices.Equal(full[i:i+len(plain)], plain) {
			t.before, t.after = full[:i], full[i+len(plain):]
			return nil
		}
	}
	return fmt.Errorf("dataset: tokenizer %s: its post-processor changes the text's own ids (%v becomes %v); prompt/completion records cannot be split", t.Dir, plain, full)
}

// Chat is the tokenizer's chat template, or why there is none.
func (t *Tokenizer) Chat() (*chat.Template, error) {
	if t.chat == nil {
		return nil, t.chatErr
	}
	return t.chat, nil
}
