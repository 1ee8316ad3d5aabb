package chat

import (
	"fmt"
	"math/rand"
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
		r, err := renderWithin(t, tmpl, msgs, Options{AddGenerationPrompt: agp}, 30*time.Second)
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
		r, err := renderWithin(t, tmpl, msgs, Options{AddGenerationPrompt: rng.Intn(2) == 0}, 10*time.Second)
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("render took %v:\n%s", d, src)
		}
		if err == nil {
			checkRendered(t, src, r)
			rendered++
		}
	}
	t.Logf("%d of %d generated templates rendered (the rest were refused, e.g. by the prefix rule)", rendered, count)
}
