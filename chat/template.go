package chat

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ardanlabs/jinja"
)

// Template is a parsed chat template. It is safe for concurrent renders.
type Template struct {
	name       string // where it came from, for errors
	eng        *jinja.Template
	generation bool // has {% generation %} tags: spans come from them
	// special holds the special tokens of tokenizer_config.json, which
	// apply_chat_template passes to the template.
	special map[string]string
	now     func() time.Time
}

// Message is one chat message. Role and Content are the usual keys; Fields
// holds any others (tool_calls, reasoning_content, name, ...), and a
// "content" or "role" key there replaces Content or Role, which is how a
// message gets a null content (nil) or a list of content parts. Pass
// json.RawMessage values to keep the key order a template may print.
type Message struct {
	Role    string
	Content string
	Fields  map[string]any
}

// Options control one render.
type Options struct {
	// AddGenerationPrompt is the template's add_generation_prompt.
	AddGenerationPrompt bool
	// Extra holds further template variables: enable_thinking, tools,
	// documents, date_string, ... tools and documents are none (Python's
	// None) unless given here, as transformers passes them.
	Extra map[string]any
	// TextOnly skips the assistant spans (and the extra renders the
	// prefix method needs for templates without generation tags).
	TextOnly bool
}

// Span is a half-open byte range [Start, End) of Rendered.Text.
type Span struct{ Start, End int }

// Rendered is a rendered conversation.
type Rendered struct {
	Text string
	// Assistant lists, in order, the spans of Text that are assistant
	// output: the text inside {% generation %} blocks when the template
	// has them, else what the prefix rule of spans.go finds.
	Assistant []Span
}

// Parse parses a chat template given as source text.
func Parse(src string) (*Template, error) {
	return parse("chat template", src)
}

func parse(name, src string) (*Template, error) {
	lx, err := lex(src)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	eng, err := jinja.Compile(lx.src)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &Template{name: name, eng: eng, generation: lx.hasGeneration, special: map[string]string{}, now: time.Now}, nil
}

// ConfigOption adjusts FromConfig.
type ConfigOption func(*configOptions)

type configOptions struct{ name string }

// TemplateName picks a named template when chat_template is a list of
// {name, template} (the default is the one named "default").
func TemplateName(name string) ConfigOption {
	return func(o *configOptions) { o.name = name }
}

// FromConfig reads a tokenizer_config.json: its chat_template (a string,
// or a list of {name, template}; when absent, a chat_template.jinja beside
// the file, where newer Hugging Face repositories keep it) and its special
// tokens bos_token, eos_token, unk_token, sep_token, pad_token, cls_token
// and mask_token (strings or {"content": ...} objects; null ones are left
// undefined, as apply_chat_template leaves them).
func FromConfig(path string, opts ...ConfigOption) (*Template, error) {
	o := configOptions{name: "default"}
	for _, opt := range opts {
		opt(&o)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("chat template: %w", err)
	}
	var cfg map[string]json.RawMessage
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	src, err := pickTemplate(path, cfg["chat_template"], o.name)
	if err != nil {
		return nil, err
	}
	t, err := parse(path, src)
	if err != nil {
		return nil, err
	}
	for _, key := range specialTokens {
		tok, ok, err := specialToken(cfg[key])
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", path, key, err)
		}
		if ok {
			t.special[key] = tok
		}
	}
	return t, nil
}

func pickTemplate(path string, raw json.RawMessage, name string) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		side := filepath.Join(filepath.Dir(path), "chat_template.jinja")
		data, err := os.ReadFile(side)
		if err != nil {
			return "", fmt.Errorf("%s: no chat_template, and no readable %s", path, side)
		}
		return string(data), nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var list []struct {
		Name     string `json:"name"`
		Template string `json:"template"`
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		return "", fmt.Errorf("%s: chat_template is neither a string nor a list of {name, template}", path)
	}
	var names []string
	for _, e := range list {
		if e.Name == name {
			return e.Template, nil
		}
		names = append(names, e.Name)
	}
	return "", fmt.Errorf("%s: no chat template named %q (have %s)", path, name, strings.Join(names, ", "))
}

// specialTokens are the tokens apply_chat_template passes to a template
// (its special_tokens_map, less the list of additional tokens).
var specialTokens = []string{"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}

// specialToken reads a token that is a string or {"content": ...}. A null
// or empty one is not passed, as special_tokens_map leaves it out.
func specialToken(raw json.RawMessage) (string, bool, error) {
	if len(raw) == 0 {
		return "", false, nil
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return "", false, err
	}
	switch x := v.(type) {
	case nil:
		return "", false, nil
	case string:
		return x, x != "", nil
	case map[string]any:
		if s, ok := x["content"].(string); ok {
			return s, s != "", nil
		}
	}
	return "", false, fmt.Errorf("neither a string nor an object with a string content")
}

// Render renders messages as transformers' apply_chat_template(messages,
// tokenize=False, ...) does, and finds the assistant spans.
func (t *Template) Render(messages []Message, opts Options) (Rendered, error) {
	r, err := t.render(messages, opts)
	if err != nil {
		return Rendered{}, fmt.Errorf("%s: %w", t.name, err)
	}
	return r, nil
}

func (t *Template) render(messages []Message, opts Options) (Rendered, error) {
	ctx, msgs, err := t.context(messages, opts)
	if err != nil {
		return Rendered{}, err
	}
	text, err := t.exec(ctx, msgs, opts.AddGenerationPrompt)
	if err != nil {
		return Rendered{}, err
	}
	if !t.generation {
		if opts.TextOnly {
			return Rendered{Text: text}, nil
		}
		spans, err := t.prefixSpans(ctx, msgs, messages, text, opts.AddGenerationPrompt)
		if err != nil {
			return Rendered{}, err
		}
		return Rendered{Text: text, Assistant: spans}, nil
	}
	out, spans, err := cutSentinels(text)
	if err != nil {
		return Rendered{}, err
	}
	if opts.TextOnly {
		spans = nil
	}
	return Rendered{Text: out, Assistant: spans}, nil
}

// context builds the template variables other than messages and
// add_generation_prompt, and the message values.
func (t *Template) context(messages []Message, opts Options) (map[string]jinja.Value, []jinja.Value, error) {
	ctx := map[string]jinja.Value{"tools": jinja.None(), "documents": jinja.None()}
	for k, v := range t.special {
		val, err := toValue(v, 0)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", k, err)
		}
		ctx[k] = val
	}
	for k, v := range opts.Extra {
		if strings.HasPrefix(k, "__loracc_") || k == "messages" || k == "add_generation_prompt" {
			return nil, nil, fmt.Errorf("option %q: the name is reserved", k)
		}
		val, err := toValue(v, 0)
		if err != nil {
			return nil, nil, fmt.Errorf("option %q: %w", k, err)
		}
		ctx[k] = val
	}
	msgs := make([]jinja.Value, len(messages))
	for i, m := range messages {
		d := jinja.NewDict()
		dict := d.AsDict()
		fields := map[string]any{"role": m.Role, "content": m.Content}
		for k, v := range m.Fields {
			fields[k] = v
		}
		// role and content first, as a JSON message usually has them.
		for _, k := range []string{"role", "content"} {
			val, err := toValue(fields[k], 1)
			if err != nil {
				return nil, nil, fmt.Errorf("message %d: %s: %w", i, k, err)
			}
			dict.Set(k, val)
			delete(fields, k)
		}
		rest, err := toValue(fields, 1)
		if err != nil {
			return nil, nil, fmt.Errorf("message %d: %w", i, err)
		}
		for _, k := range rest.AsDict().Keys {
			dict.Set(k, rest.AsDict().Data[k])
		}
		msgs[i] = d
	}
	return ctx, msgs, nil
}

// exec runs the engine on the first messages with the given
// add_generation_prompt.
func (t *Template) exec(ctx map[string]jinja.Value, msgs []jinja.Value, agp bool) (string, error) {
	vars := make(map[string]jinja.Value, len(ctx)+12)
	for k, v := range ctx {
		vars[k] = v
	}
	for k, v := range builtins(t.now) {
		vars[k] = v
	}
	// Each render gets its own list, so that the prefix renders, which
	// slice one list of values, cannot change each other's list.
	vars["messages"] = jinja.NewList(append([]jinja.Value(nil), msgs...))
	vars["add_generation_prompt"] = jinja.NewBool(agp)
	out, err := t.renderSafe(vars)
	if err != nil {
		var raised *RaisedError
		if errors.As(err, &raised) {
			return "", raised
		}
		return "", fmt.Errorf("render: %w", err)
	}
	return out, nil
}

// renderSafe turns a panic inside the engine into an error: bad input
// must not bring the trainer down, and the engine indexes slices on
// values a template controls.
func (t *Template) renderSafe(vars map[string]jinja.Value) (out string, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("template engine failed: %v", r)
		}
	}()
	return t.eng.RenderValues(vars)
}

// renderVars renders with the given variables and nothing else but the
// functions chat provides; generation sentinels are cut out. It backs the
// feature probes in the tests.
func (t *Template) renderVars(vars map[string]any) (string, error) {
	vals := builtins(t.now)
	for k, v := range vars {
		val, err := toValue(v, 0)
		if err != nil {
			return "", fmt.Errorf("%s: %w", k, err)
		}
		vals[k] = val
	}
	out, err := t.renderSafe(vals)
	if err != nil {
		return "", err
	}
	if t.generation {
		out, _, err = cutSentinels(out)
	}
	return out, err
}
