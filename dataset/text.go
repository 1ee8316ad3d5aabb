package dataset

// Text formats. A file of text records becomes token examples in the
// token-id format before anything reads it as examples: the examples are
// written as {"<ids>": [...], "<labels>": [...]} lines (cached in the run
// folder, see cache.go) and loaded by the same reader as hand-made token
// data, so the checks, the batching, the fingerprint and `loracc data
// --json` all see one thing.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/loracc/loracc/chat"
)

// Format is how a file's records are written. It is detected from the
// keys of the file's first record, and every later record must be of the
// same format.
type Format string

const (
	// FormatIDs: an object of token-id arrays per graph input (the
	// original format; also what ce and mse data use).
	FormatIDs Format = "token ids"
	// FormatText: {"text": ...}; the loss counts every token.
	FormatText Format = "text"
	// FormatPrompt: {"prompt": ..., "completion": ...}; the loss counts
	// the completion only unless TextOptions.PromptLoss.
	FormatPrompt Format = "prompt/completion"
	// FormatMessages: {"messages": [{"role": ..., "content": ...}, ...]},
	// rendered with the chat template; the loss counts assistant output.
	FormatMessages Format = "messages"
)

// DefaultMaxLength caps the tokenizer's model_max_length as the default
// truncation of text records: configs give 131072 or more for models
// nobody fine-tunes at that length on a LoRA budget, and one long record
// would set the memory of every padded batch.
const DefaultMaxLength = 4096

// TextOptions say how files of text records become token examples.
type TextOptions struct {
	// Tokenizer is called when a file of text records is loaded (token
	// data needs none); its error says where it looked.
	Tokenizer func() (*Tokenizer, error)
	// Packing concatenates the records' tokens, an EOS between
	// documents, and cuts the stream into examples of the maximum length.
	// Attention is not reset at document boundaries.
	Packing bool
	// PromptLoss counts the prompt's tokens of prompt/completion records
	// too (TRL's completion_only_loss=False).
	PromptLoss bool
	// CacheDir keeps the tokenised examples, keyed by the data file, the
	// tokenizer files and these options; "" tokenises every time.
	CacheDir string
}

// Stats says what loading did to a file's records.
type Stats struct {
	Format    Format `json:"format"`
	Records   int    `json:"records"`  // non-blank lines
	Examples  int    `json:"examples"` // examples loaded
	Truncated int    `json:"truncated"`
	// Skipped records have no counted token left (a conversation without
	// an assistant turn, a completion lost to truncation); they would add
	// nothing to the loss. Packed chunks without one are skipped too.
	Skipped   int `json:"skipped"`
	MaxLength int `json:"max_length"` // the limit applied to text records, 0: none
	// Cache is the file of token examples, "" when not cached; Reused
	// says it was there from an earlier run.
	Cache  string `json:"-"`
	Reused bool   `json:"-"`
}

// formatOfKeys is the format a record's keys say: token ids when any key
// names a graph input, else the text format of the keys present.
func formatOfKeys(keys map[string]json.RawMessage, graphField func(string) bool) Format {
	for k := range keys {
		if graphField(k) {
			return FormatIDs
		}
	}
	switch {
	case keys["messages"] != nil:
		return FormatMessages
	case keys["prompt"] != nil || keys["completion"] != nil:
		return FormatPrompt
	case keys["text"] != nil:
		return FormatText
	}
	return FormatIDs
}

// formatKeys are the keys each text format reads.
func formatKeys(f Format) []string {
	switch f {
	case FormatText:
		return []string{"text"}
	case FormatPrompt:
		return []string{"prompt", "completion"}
	case FormatMessages:
		return []string{"messages"}
	}
	return nil
}

// document is one record's tokens and which of them the loss counts.
type document struct {
	ids     []int
	counted []bool
	line    int
}

// encodeRecord turns one record of format f into a document. Keys of
// other text formats are an error (mixed formats); keys of no format (an
// "id", a "source") are ignored, as TRL ignores extra columns.
func encodeRecord(tk *Tokenizer, f Format, rec map[string]json.RawMessage, promptLoss bool) (document, error) {
	own := formatKeys(f)
	for _, other := range []Format{FormatText, FormatPrompt, FormatMessages} {
		if other == f {
			continue
		}
		for _, k := range formatKeys(other) {
			if rec[k] != nil && !slices.Contains(own, k) {
				return document{}, fmt.Errorf("field %q: a %s record in a file of %s records (the first record sets the format)", k, other, f)
			}
		}
	}
	switch f {
	case FormatText:
		text, err := stringField(rec, "text")
		if err != nil {
			return document{}, err
		}
		ids, err := tk.Tok.Encode(text, true)
		if err != nil {
			return document{}, fmt.Errorf("field %q: %w", "text", err)
		}
		d := document{ids: ids, counted: fill(len(ids), true)}
		tk.appendEOS(&d, true)
		return d, nil
	case FormatPrompt:
		prompt, err := stringField(rec, "prompt")
		if err != nil {
			return document{}, err
		}
		completion, err := stringField(rec, "completion")
		if err != nil {
			return document{}, err
		}
		p, err := tk.Tok.Encode(prompt, false)
		if err != nil {
			return document{}, fmt.Errorf("field %q: %w", "prompt", err)
		}
		c, err := tk.Tok.Encode(completion, false)
		if err != nil {
			return document{}, fmt.Errorf("field %q: %w", "completion", err)
		}
		// Two pieces split where the completion starts, which is where a
		// model generating the completion starts: the prompt is encoded
		// up to its end, the completion's tokens come after it.
		var d document
		d.add(tk.before, promptLoss)
		d.add(p, promptLoss)
		d.add(c, true)
		d.add(tk.after, true)
		tk.appendEOS(&d, true)
		return d, nil
	case FormatMessages:
		return tk.encodeMessages(rec)
	}
	return document{}, fmt.Errorf("format %s is not a text format", f)
}

func (d *document) add(ids []int, counted bool) {
	d.ids = append(d.ids, ids...)
	d.counted = append(d.counted, fill(len(ids), counted)...)
}

func fill(n int, v bool) []bool {
	out := make([]bool, n)
	if v {
		for i := range out {
			out[i] = true
		}
	}
	return out
}

// appendEOS ends d with the tokenizer's EOS when it has one and d does not
// already end with it (the post-processor may have added it), so the model
// learns to stop.
func (tk *Tokenizer) appendEOS(d *document, counted bool) {
	eos, ok := tk.Tok.EOS()
	if !ok || (len(d.ids) > 0 && d.ids[len(d.ids)-1] == eos) {
		return
	}
	d.add([]int{eos}, counted)
}

// stringField reads a string-valued key of a record.
func stringField(rec map[string]json.RawMessage, key string) (string, error) {
	raw, ok := rec[key]
	if !ok {
		return "", fmt.Errorf("field %q: missing", key)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fmt.Errorf("field %q: expected a string, got %s", key, jsonKind(raw))
	}
	return s, nil
}

// jsonKind names a JSON value's kind for a message.
func jsonKind(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "nothing"
	}
	return what(raw[0])
}

// encodeMessages renders a conversation with the chat template and marks
// the assistant spans' tokens.
func (tk *Tokenizer) encodeMessages(rec map[string]json.RawMessage) (document, error) {
	tmpl, err := tk.Chat()
	if err != nil {
		return document{}, fmt.Errorf("field %q: no chat template to render it: %w", "messages", err)
	}
	msgs, err := parseMessages(rec["messages"])
	if err != nil {
		return document{}, err
	}
	// A record's "tools" (TRL's tools column) reach the template as
	// apply_chat_template's tools argument.
	var opts chat.Options
	if tools := rec["tools"]; tools != nil {
		opts.Extra = map[string]any{"tools": tools}
	}
	r, err := tmpl.Render(msgs, opts)
	if err != nil {
		return document{}, fmt.Errorf("field %q: %w", "messages", err)
	}
	d, err := tk.encodeSpans(r.Text, r.Assistant)
	if err != nil {
		return document{}, fmt.Errorf("field %q: %w", "messages", err)
	}
	return d, nil
}

// encodeSpans encodes text in pieces cut at the span boundaries and
// counts the tokens of the spans' pieces.
//
// Why pieces rather than token offsets: a token of the whole text that
// straddles a boundary would have to be counted or not, and either is
// wrong; a piece ends at the boundary. The tokenizer has no offsets, and
// at inference the same cut happens: the prompt up to the generation
// prompt (where a span starts) is encoded alone and the model's tokens
// follow it. Spans end after an end-of-turn token, which is an added
// token and cuts the text anyway. The tests check, on the Llama-3, Qwen3
// and Gemma-3 templates and chat/testdata's conversations, that the
// pieces give the ids of the whole text. Special tokens are not added:
// templates print BOS themselves, as transformers encodes a rendered
// conversation with add_special_tokens=False.
func (tk *Tokenizer) encodeSpans(text string, spans []chat.Span) (document, error) {
	var d document
	pos := 0
	piece := func(end int, counted bool) error {
		if end <= pos {
			return nil
		}
		ids, err := tk.Tok.Encode(text[pos:end], false)
		if err != nil {
			return err
		}
		d.add(ids, counted)
		pos = end
		return nil
	}
	for _, sp := range spans {
		if sp.Start < pos || sp.End < sp.Start || sp.End > len(text) {
			return document{}, fmt.Errorf("assistant span [%d, %d) is out of order in %d bytes", sp.Start, sp.End, len(text))
		}
		if err := piece(sp.Start, false); err != nil {
			return document{}, err
		}
		if err := piece(sp.End, true); err != nil {
			return document{}, err
		}
	}
	if err := piece(len(text), false); err != nil {
		return document{}, err
	}
	return d, nil
}

// parseMessages reads the messages array: objects with a string role; a
// string content is Content, any other content (null, a list of parts)
// and every other key are passed to the template as they are.
func parseMessages(raw json.RawMessage) ([]chat.Message, error) {
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, fmt.Errorf("field %q: expected an array of messages, got %s", "messages", jsonKind(raw))
	}
	out := make([]chat.Message, 0, len(items))
	for i, item := range items {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(item, &m); err != nil || m == nil {
			return nil, fmt.Errorf("field \"messages[%d]\": expected an object, got %s", i, jsonKind(item))
		}
		msg := chat.Message{Fields: map[string]any{}}
		for k, v := range m {
			var s string
			isString := json.Unmarshal(v, &s) == nil
			switch {
			case k == "role" && !isString:
				return nil, fmt.Errorf("field \"messages[%d].role\": expected a string, got %s", i, jsonKind(v))
			case k == "role":
				msg.Role = s
			case k == "content" && isString:
				msg.Content = s
			default:
				msg.Fields[k] = v
			}
		}
		if _, ok := m["role"]; !ok {
			return nil, fmt.Errorf("field \"messages[%d].role\": missing", i)
		}
		out = append(out, msg)
	}
	return out, nil
}
