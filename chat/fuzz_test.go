package chat

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// renderWithin renders and fails the test if the render does not return
// within limit: a hung render would otherwise hang the whole test binary.
func renderWithin(t *testing.T, tmpl *Template, msgs []Message, opts Options, limit time.Duration) (Rendered, error) {
	t.Helper()
	type result struct {
		r   Rendered
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := tmpl.Render(msgs, opts)
		done <- result{r, err}
	}()
	select {
	case res := <-done:
		return res.r, res.err
	case <-time.After(limit):
		t.Fatalf("render did not finish within %v", limit)
		return Rendered{}, nil
	}
}

// checkRendered asserts what holds for every successful render.
func checkRendered(t *testing.T, src string, r Rendered) {
	t.Helper()
	if strings.Contains(r.Text, genOpen) || strings.Contains(r.Text, genClose) {
		t.Fatalf("%q: sentinel left in the text", src)
	}
	prev := Span{}
	for i, s := range r.Assistant {
		if s.Start < 0 || s.End < s.Start || s.End > len(r.Text) {
			t.Fatalf("%q: span %d %v out of the text (%d bytes)", src, i, s, len(r.Text))
		}
		if i > 0 && s.Start < prev.Start {
			t.Fatalf("%q: spans out of order: %v", src, r.Assistant)
		}
		prev = s
	}
}

// FuzzRender feeds arbitrary templates and message text through Parse and
// Render: nothing may panic or hang, and successful renders keep their
// invariants. `go test -fuzz FuzzRender ./chat/` explores further.
func FuzzRender(f *testing.F) {
	seeds := []string{
		chatml,
		"{%- for m in messages -%}{%- generation -%}{{ m.content | trim }}{%- endgeneration -%}{%- endfor -%}",
		"{% set ns = namespace(x=0) %}{% for m in messages[::-1] %}{% set ns.x = ns.x + 1 %}{% if loop.last %}{{ ns.x }}{% endif %}{% endfor %}",
		"{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{% endif %}{{ n }}{% endmacro %}{{ f(3) }}",
		"{{ messages | tojson(indent=2) }}{{ raise_exception('x') if messages | length > 5 }}",
		"{% for i in range(3) %}{% if i == 1 %}{% continue %}{% endif %}{{ i }}{% endfor %}",
		"{% raw %}{{ x }}{% endraw %}{# c #}  {%+ if true +%}\n{% endif %}",
		"{{ {'a': {'b': messages[0].content}}['a']['b'].split(' ')[::-1] | join('~') }}",
	}
	for i, s := range seeds {
		f.Add(s, "hello  world", i%2 == 0)
	}
	f.Fuzz(func(t *testing.T, src, content string, agp bool) {
		tmpl, err := Parse(src)
		if err != nil {
			return
		}
		msgs := []Message{{Role: "system", Content: "s"}, {Role: "user", Content: content}, {Role: "assistant", Content: content}}
		r, err := renderWithin(t, tmpl, msgs, Options{AddGenerationPrompt: agp}, 60*time.Second)
		if err == nil {
			checkRendered(t, src, r)
		}
	})
}

// genTemplate builds a random template from the constructs chat templates
// use, so that random tests reach the engine rather than its parser's
// error paths.
func genTemplate(rng *rand.Rand, depth int, inLoop bool) string {
	exprs := []string{"m.content", "m.role", "messages | length", "loop.index", "'x' ~ m.role", "m.content | trim",
		"m.content.split(' ')[::-1] | join(',')", "ns.n", "m | tojson", "range(3) | list", "none", "1.5", "m.missing | default('d')",
		"messages[0].content[1:]", "m.content | upper", "(messages | selectattr('role', 'equalto', 'user') | list | length)"}
	conds := []string{"true", "loop.first", "loop.last", "m.role == 'assistant'", "m.content is string", "'o' in m.content",
		"add_generation_prompt", "ns.n > 1", "m.content.startswith('h')", "not loop.last"}
	ws := func() string { return []string{"", "-", "", "+"}[rng.Intn(4)] }
	wsEnd := func() string { return []string{"", "-", ""}[rng.Intn(3)] }
	texts := []string{"", " ", "\n", "  \n", "text", "\n  ", "a\n\n"}
	var b strings.Builder
	n := 1 + rng.Intn(4)
	for range n {
		b.WriteString(texts[rng.Intn(len(texts))])
		switch k := rng.Intn(7); {
		case k == 0 || depth > 3:
			fmt.Fprintf(&b, "{{%s %s %s}}", []string{"", "-"}[rng.Intn(2)], exprs[rng.Intn(len(exprs))], wsEnd())
		case k == 1:
			fmt.Fprintf(&b, "{%%%s if %s %s%%}%s{%%%s endif %s%%}", ws(), conds[rng.Intn(len(conds))], wsEnd(), genTemplate(rng, depth+1, inLoop), ws(), wsEnd())
		case k == 2:
			fmt.Fprintf(&b, "{%%%s for m in messages %s%%}%s{%%%s endfor %s%%}", ws(), wsEnd(), genTemplate(rng, depth+1, true), ws(), wsEnd())
		case k == 3:
			fmt.Fprintf(&b, "{%%%s generation %s%%}%s{%%%s endgeneration %s%%}", ws(), wsEnd(), genTemplate(rng, depth+1, false), ws(), wsEnd())
		case k == 4:
			fmt.Fprintf(&b, "{%% set ns.n = ns.n + 1 %%}{#%s note %s#}", ws(), wsEnd())
		case k == 5 && inLoop:
			fmt.Fprintf(&b, "{%%%s if loop.index > 2 %%}{%% %s %%}{%% endif %s%%}", ws(), []string{"break", "continue"}[rng.Intn(2)], wsEnd())
		case k == 5:
			fmt.Fprintf(&b, "{%%%s set m = messages[%d] %s%%}", ws(), rng.Intn(3), wsEnd())
		default:
			fmt.Fprintf(&b, "{%% macro mac(m) %%}%s{%% endmacro %%}{{ mac(messages[-1]) }}", genTemplate(rng, depth+1, false))
		}
	}
	return b.String()
}

// genPrelude defines what generated templates refer to outside loops.
const genPrelude = "{% set ns = namespace(n=0) %}{% set m = messages[0] %}"

// TestRandomTemplates renders a few thousand generated templates: none may
// panic or run long.
func TestRandomTemplates(t *testing.T) {
	rng := rand.New(rand.NewSource(18))
	msgs := []Message{{Role: "user", Content: "hello there"}, {Role: "assistant", Content: " ok \n"}, {Role: "user", Content: "é😀"}}
	count := 2000
	if testing.Short() {
		count = 200
	}
	rendered := 0
	for range count {
		src := genPrelude + genTemplate(rng, 0, false)
		tmpl, err := Parse(src)
		if err != nil {
			t.Fatalf("generated template refused: %v\n%s", err, src)
		}
		start := time.Now()
		r, err := renderWithin(t, tmpl, msgs, Options{AddGenerationPrompt: rng.Intn(2) == 0}, 60*time.Second)
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("render took %v:\n%s", d, src)
		}
		if err == nil {
			checkRendered(t, src, r)
			rendered++
		}
	}
	t.Logf("%d of %d generated templates rendered (the rest were refused, e.g. by the prefix rule)", rendered, count)
}

// lexGen builds a random template that stresses the lexer: whitespace of
// every kind around tags with every whitespace sign, raw blocks, comments,
// string literals with escapes and closers inside them.
func lexGen(rng *rand.Rand, depth int) string {
	frag := []string{" ", "\t", "\n", "x", "  \n", "\n\n", " y ", "\r\n", "\u00a0", "é"}
	sg := func() string { return []string{"", "-", "+", ""}[rng.Intn(4)] }
	se := func() string { return []string{"", "-", ""}[rng.Intn(3)] }
	var b strings.Builder
	for range 1 + rng.Intn(5) {
		for range rng.Intn(3) {
			b.WriteString(frag[rng.Intn(len(frag))])
		}
		switch k := rng.Intn(8); {
		case k == 0:
			fmt.Fprintf(&b, "{{%s %s %s}}", []string{"", "-"}[rng.Intn(2)], []string{"'a'", "\"b\\n\"", "'\\t\\u00e9\\x41'", "1.0", "none", "[1, 'z']", "{'k': {'v': 1}}['k']"}[rng.Intn(7)], se())
		case k == 1 && depth < 3:
			fmt.Fprintf(&b, "{%%%s if %s %s%%}%s{%%%s else %s%%}%s{%%%s endif %s%%}", sg(), []string{"true", "false"}[rng.Intn(2)], se(), lexGen(rng, depth+1), sg(), se(), lexGen(rng, depth+1), sg(), se())
		case k == 2:
			fmt.Fprintf(&b, "{#%s c %s#}", sg(), []string{"", "-", "+"}[rng.Intn(3)])
		case k == 3:
			fmt.Fprintf(&b, "{%%%s raw %s%%} {{ r }}\n {%%%s endraw %s%%}", sg(), se(), sg(), se())
		case k == 4:
			fmt.Fprintf(&b, "{%%%s set v = '%s' %s%%}{{ v }}", sg(), []string{"a%}b", "q\\nq", "}}"}[rng.Intn(3)], se())
		case k == 5 && depth < 3:
			fmt.Fprintf(&b, "{%%%s for i in [1, 2] %s%%}%s{%%%s endfor %s%%}", sg(), se(), lexGen(rng, depth+1), sg(), se())
		default:
			b.WriteString(frag[rng.Intn(len(frag))])
		}
	}
	return b.String()
}

// corpusFile holds lexGen templates; make_expected.py renders them.
var corpusFile = filepath.Join("testdata", "lexer-corpus.json")

// TestWriteLexerCorpus regenerates the corpus when LORACC_WRITE_CORPUS=1
// (then rerun make_expected.py).
func TestWriteLexerCorpus(t *testing.T) {
	if os.Getenv("LORACC_WRITE_CORPUS") != "1" {
		t.Skip("set LORACC_WRITE_CORPUS=1 to rewrite " + corpusFile)
	}
	rng := rand.New(rand.NewSource(3))
	var srcs []string
	for range 400 {
		srcs = append(srcs, lexGen(rng, 0))
	}
	data, err := json.MarshalIndent(map[string]any{
		"about":     "Random templates from fuzz_test.go's lexGen that stress Jinja2's whitespace rules; make_expected.py renders them.",
		"templates": srcs,
	}, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(corpusFile, append(data, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestLexerCorpus wants every corpus template rendered as the reference
// rendered it.
func TestLexerCorpus(t *testing.T) {
	exp := loadExpected(t)
	data, err := os.ReadFile(corpusFile)
	if err != nil {
		t.Fatal(err)
	}
	var f struct{ Templates []string }
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatalf("%s: %v", corpusFile, err)
	}
	if len(exp.Corpus) != len(f.Templates) {
		t.Fatalf("%d corpus renders for %d templates: rerun make_expected.py", len(exp.Corpus), len(f.Templates))
	}
	bad := 0
	for i, src := range f.Templates {
		got, err := renderSnippet(src, nil)
		want := exp.Corpus[i]
		switch {
		case want.Error != "":
			if err == nil {
				t.Logf("template %d: the reference fails (%s), we render %q", i, want.Error, got)
			}
		case err != nil || got != *want.Text:
			bad++
			if bad <= 5 {
				t.Errorf("template %d %q:\n got %q %v\nwant %q", i, src, got, err, *want.Text)
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d corpus templates differ", bad, len(f.Templates))
	}
}
