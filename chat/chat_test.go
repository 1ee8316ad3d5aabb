package chat

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func mustParse(t *testing.T, src string) *Template {
	t.Helper()
	tmpl, err := Parse(src)
	if err != nil {
		t.Fatalf("Parse(%q): %v", src, err)
	}
	return tmpl
}

// chatml is a small template without generation tags, for the prefix rule.
const chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}" +
	"{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"

func TestPrefixSpansCoverContentAndEndOfTurn(t *testing.T) {
	tmpl := mustParse(t, chatml)
	msgs := []Message{{Role: "user", Content: "hi"}, {Role: "assistant", Content: "hello  "}, {Role: "user", Content: "bye"}, {Role: "assistant", Content: "ciao"}}
	r, err := tmpl.Render(msgs, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range r.Assistant {
		got = append(got, r.Text[s.Start:s.End])
	}
	want := []string{"hello  <|im_end|>", "ciao<|im_end|>"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("spans %q, want %q", got, want)
	}
}

// The template with generation tags yields the same spans from its tags
// as the prefix rule finds on it, which ties the two methods together.
func TestGenerationSpansAgreeWithPrefixRule(t *testing.T) {
	src, err := os.ReadFile(filepath.Join("testdata", "chatml-generation.jinja"))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := mustParse(t, string(src))
	if !tmpl.generation {
		t.Fatal("generation tags not seen")
	}
	msgs := []Message{{Role: "system", Content: "sys"}, {Role: "user", Content: "q1"}, {Role: "assistant", Content: " a1 "},
		{Role: "user", Content: "q2"}, {Role: "assistant", Content: "a2"}}
	r, err := tmpl.Render(msgs, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, vals, err := tmpl.context(msgs, Options{})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := tmpl.exec(ctx, vals, false)
	if err != nil {
		t.Fatal(err)
	}
	text, _, err := cutSentinels(raw)
	if err != nil || text != r.Text {
		t.Fatalf("cut text %q (%v), want %q", text, err, r.Text)
	}
	// The prefix rule on the same template, its sentinels cut out.
	spans, err := tmpl.prefixSpansOf(msgs, Options{}, r.Text)
	if err != nil {
		t.Fatal(err)
	}
	if len(spans) != len(r.Assistant) {
		t.Fatalf("prefix spans %v, generation spans %v", spans, r.Assistant)
	}
	for i := range spans {
		if spans[i] != r.Assistant[i] {
			t.Errorf("span %d: prefix %v %q, generation %v %q", i, spans[i], r.Text[spans[i].Start:spans[i].End],
				r.Assistant[i], r.Text[r.Assistant[i].Start:r.Assistant[i].End])
		}
	}
}

func TestPrefixRuleRefusesTurnsRenderedDifferently(t *testing.T) {
	// The last assistant turn gets a marker the earlier ones lose, as
	// Qwen3 does with its think block.
	tmpl := mustParse(t, "{% for m in messages %}[{{ m.role }}]{% if m.role == 'assistant' and loop.last %}<last>{% endif %}{{ m.content }}{% endfor %}")
	_, err := tmpl.Render([]Message{{Role: "user", Content: "a"}, {Role: "assistant", Content: "b"}, {Role: "user", Content: "c"}}, Options{})
	if err == nil || !strings.Contains(err.Error(), "message 1") || !strings.Contains(err.Error(), "generation") {
		t.Fatalf("want a refusal naming message 1 and pointing to generation tags, got %v", err)
	}
	r, err := tmpl.Render([]Message{{Role: "user", Content: "a"}, {Role: "assistant", Content: "b"}, {Role: "user", Content: "c"}}, Options{TextOnly: true})
	if err != nil || r.Text != "[user]a[assistant]b[user]c" || r.Assistant != nil {
		t.Fatalf("TextOnly: %q %v %v", r.Text, r.Assistant, err)
	}
}

// When a turn renders differently once more turns follow, the end comes
// from a mark after the content, then the eos_token.
func TestPrefixRuleEndsByMark(t *testing.T) {
	tmpl := mustParse(t, "{% for m in messages %}[{{ m.role }}]{% if m.role == 'assistant' and loop.last %}<last>{% endif %}{{ m.content | trim }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}")
	msgs := []Message{{Role: "user", Content: "a"}, {Role: "assistant", Content: " b \n"}, {Role: "user", Content: "c"}, {Role: "assistant", Content: "d"}}
	r, err := tmpl.Render(msgs, Options{Extra: map[string]any{"eos_token": "</s>"}})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range r.Assistant {
		got = append(got, r.Text[s.Start:s.End])
	}
	if want := "b</s>|<last>d</s>"; strings.Join(got, "|") != want {
		t.Fatalf("spans %q, want %s", got, want)
	}
}

func TestRaiseExceptionSurfaces(t *testing.T) {
	tmpl := mustParse(t, "{% if messages[0].role != 'user' %}{{ raise_exception('first message must be from the user, got ' + messages[0].role) }}{% endif %}ok")
	_, err := tmpl.Render([]Message{{Role: "assistant", Content: "x"}}, Options{})
	var raised *RaisedError
	if !errors.As(err, &raised) || raised.Message != "first message must be from the user, got assistant" {
		t.Fatalf("got %v", err)
	}
}

func TestSyntaxErrorsNameTheConfig(t *testing.T) {
	for _, src := range []string{"{% if x %}no end", "{{ 'unterminated }}", "{% endfor %}", "{% for x in y %}{% endif %}", "{{ x", "{# open"} {
		dir := t.TempDir()
		path := filepath.Join(dir, "tokenizer_config.json")
		data, _ := json.Marshal(map[string]any{"chat_template": src})
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := FromConfig(path)
		if err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%q: want an error naming %s, got %v", src, path, err)
		}
	}
}

// The engine's parse errors give the template's own line numbers, though
// the template it parses is our rewrite.
func TestEngineErrorsKeepLineNumbers(t *testing.T) {
	_, err := Parse("a\nb\n{% if x %}\n\n  {{ 1 + }}{% endif %}")
	if err == nil || !strings.Contains(err.Error(), "line 5") {
		t.Fatalf("want an error at line 5, got %v", err)
	}
}

func writeConfig(t *testing.T, cfg map[string]any) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tokenizer_config.json")
	data, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestFromConfig(t *testing.T) {
	src := "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}{{ eos_token }}"
	msgs := []Message{{Role: "user", Content: "x"}}
	path := writeConfig(t, map[string]any{"chat_template": src, "bos_token": map[string]any{"content": "<s>", "lstrip": false}, "eos_token": "</s>"})
	tmpl, err := FromConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := tmpl.Render(msgs, Options{TextOnly: true}); err != nil || r.Text != "<s>x</s>" {
		t.Fatalf("got %q, %v", r.Text, err)
	}

	list := []map[string]string{{"name": "default", "template": "D{{ messages[0].content }}"}, {"name": "tool_use", "template": "T{{ messages[0].content }}"}}
	path = writeConfig(t, map[string]any{"chat_template": list})
	for name, want := range map[string]string{"": "Dx", "tool_use": "Tx"} {
		var opts []ConfigOption
		if name != "" {
			opts = append(opts, TemplateName(name))
		}
		tmpl, err := FromConfig(path, opts...)
		if err != nil {
			t.Fatal(err)
		}
		if r, err := tmpl.Render(msgs, Options{TextOnly: true}); err != nil || r.Text != want {
			t.Errorf("%q: got %q, %v", name, r.Text, err)
		}
	}
	if _, err := FromConfig(path, TemplateName("rag")); err == nil || !strings.Contains(err.Error(), "tool_use") {
		t.Errorf("unknown name: want an error listing the names, got %v", err)
	}

	path = writeConfig(t, map[string]any{"bos_token": "<s>"})
	if _, err := FromConfig(path); err == nil || !strings.Contains(err.Error(), "no chat_template") {
		t.Errorf("missing template: %v", err)
	}
	if err := os.WriteFile(filepath.Join(filepath.Dir(path), "chat_template.jinja"), []byte("J{{ bos_token }}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if tmpl, err := FromConfig(path); err != nil {
		t.Error(err)
	} else if r, err := tmpl.Render(msgs, Options{TextOnly: true}); err != nil || r.Text != "J<s>" {
		t.Errorf("chat_template.jinja: got %q, %v", r.Text, err)
	}

	for _, bad := range []string{"{", `{"chat_template": 3}`, `{"chat_template": "x", "eos_token": 5}`} {
		path := filepath.Join(t.TempDir(), "tokenizer_config.json")
		if err := os.WriteFile(path, []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := FromConfig(path); err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: want an error naming the file, got %v", bad, err)
		}
	}
}

func TestContextAsTransformers(t *testing.T) {
	tmpl := mustParse(t, "{{ tools is none }} {{ documents is none }} {{ bos_token is defined }} {{ flag }} {{ messages[0].tool_calls[0].function.arguments | tojson }} {{ messages[0].content is none }}")
	msgs := []Message{{Role: "assistant", Fields: map[string]any{
		"content":    nil,
		"tool_calls": json.RawMessage(`[{"function": {"name": "f", "arguments": {"z": 1, "a": [true, null, 1.5]}}}]`),
	}}}
	r, err := tmpl.Render(msgs, Options{Extra: map[string]any{"flag": false}, TextOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if want := `True True False False {"z": 1, "a": [true, null, 1.5]} True`; r.Text != want {
		t.Fatalf("got  %q\nwant %q", r.Text, want)
	}
}

func TestBadInputIsRefused(t *testing.T) {
	tmpl := mustParse(t, chatml)
	for name, msgs := range map[string][]Message{
		"sentinel":      {{Role: "user", Content: "a" + genOpen}},
		"sentinel role": {{Role: genClose, Content: "a"}},
		"invalid utf-8": {{Role: "user", Content: "\xff"}},
		"bad field":     {{Role: "user", Fields: map[string]any{"x": make(chan int)}}},
		"bad raw json":  {{Role: "user", Fields: map[string]any{"x": json.RawMessage(`{"a":`)}}},
	} {
		if _, err := tmpl.Render(msgs, Options{}); err == nil {
			t.Errorf("%s: rendered", name)
		}
	}
	if _, err := tmpl.Render(nil, Options{Extra: map[string]any{"__loracc_tick": 1}}); err == nil {
		t.Error("reserved extra name accepted")
	}
	if _, err := Parse("a" + genOpen); err == nil {
		t.Error("template with a sentinel accepted")
	}
}

func TestBudgets(t *testing.T) {
	for src, want := range map[string]string{
		"{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}": "loop iterations",
		"{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}":                           "macros nest",
		"{{ range(200000) | length }}":                                                     "range too big",
		strings.Repeat("{% if true %}", 100) + strings.Repeat("{% endif %}", 100):          "nest more than",
		"{{ " + strings.Repeat("(", 100) + "1" + strings.Repeat(")", 100) + " }}":          "nest more than",
	} {
		start := time.Now()
		_, err := renderSnippet(src, nil)
		// On a loaded machine the deadline may stop a loop first.
		if err == nil || !strings.Contains(err.Error(), want) && !errors.Is(err, errBudget) {
			t.Errorf("%.40q: want %q, got %v", src, want, err)
		}
		if d := time.Since(start); d > renderTimeout+5*time.Second {
			t.Errorf("%.40q: took %v", src, d)
		}
	}
}

func TestStrftime(t *testing.T) {
	at := time.Date(2026, time.December, 1, 9, 5, 7, 0, time.UTC)
	for f, want := range map[string]string{
		"%d %b %Y":             "01 Dec 2026",
		"%A, %B %-d, %Y %H:%M": "Tuesday, December 1, 2026 09:05",
		"%I%p %j %y %% %Q":     "09AM 335 26 % %Q",
	} {
		if got := strftime(at, f); got != want {
			t.Errorf("%q: got %q, want %q", f, got, want)
		}
	}
	tmpl := mustParse(t, "{{ strftime_now('%Y-%m-%d') }}")
	tmpl.now = func() time.Time { return at }
	if r, err := tmpl.Render(nil, Options{TextOnly: true}); err != nil || r.Text != "2026-12-01" {
		t.Errorf("strftime_now: %q %v", r.Text, err)
	}
}

func TestPyFloat(t *testing.T) {
	for f, want := range map[float64]string{1: "1.0", 0.1: "0.1", 1e16: "1e+16", 1e15: "1000000000000000.0", 1e-5: "1e-05",
		0.0001: "0.0001", -2.5: "-2.5", 123456789: "123456789.0", 1.5e300: "1.5e+300", 0: "0.0"} {
		if got := pyFloat(f); got != want {
			t.Errorf("%v: got %s, want %s", f, got, want)
		}
	}
}
