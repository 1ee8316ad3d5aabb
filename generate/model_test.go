package generate

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/ortest"
	"github.com/loracc/loracc/internal/testmodels"
	"github.com/loracc/loracc/runtime"
)

// llamaModel builds a tiny Llama (testmodels) into a temp file and opens
// it for generation.
func llamaModel(t *testing.T, env *runtime.Env, cache bool) *Model {
	t.Helper()
	cfg := testmodels.DefaultLlama()
	cfg.Cache = cache
	m, err := testmodels.Llama(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return openModel(t, env, m)
}

func openModel(t *testing.T, env *runtime.Env, m *graph.Model) *Model {
	t.Helper()
	path := filepath.Join(t.TempDir(), "model.onnx")
	if err := graph.Save(m, path, graph.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	s, err := env.NewSession(path, runtime.SessionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	gm, err := NewModel(s)
	if err != nil {
		t.Fatal(err)
	}
	return gm
}

func gen(t *testing.T, m *Model, prompt []int, opts Options) Result {
	t.Helper()
	var emitted []int
	res, err := m.Generate(prompt, opts, func(id int) error {
		emitted = append(emitted, id)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(emitted, res.Tokens) {
		t.Fatalf("emitted %v, result %v", emitted, res.Tokens)
	}
	return res
}

var prompt = []int{187, 5, 900, 42, 17}

// TestCacheEqualsRecompute: greedy and sampled generation through the KV
// cache give the tokens that rerunning the whole sequence gives, on the
// cached model and on the variant without cache inputs; the cache runs
// one step per token.
func TestCacheEqualsRecompute(t *testing.T) {
	env := ortest.Env(t)
	cached, plain := llamaModel(t, env, true), llamaModel(t, env, false)
	if ok, layers := cached.Cached(); !ok || layers != 2 {
		t.Fatalf("cached model: Cached() = %v, %d", ok, layers)
	}
	if ok, _ := plain.Cached(); ok {
		t.Fatal("model without past inputs reported a cache")
	}
	for _, s := range []Sampling{{}, {Temperature: 0.8, TopK: 50, TopP: 0.9, Seed: 3}} {
		opts := Options{MaxNewTokens: 12, Sampling: s}
		withCache := gen(t, cached, prompt, opts)
		opts.NoCache = true
		recompute := gen(t, cached, prompt, opts)
		noInputs := gen(t, plain, prompt, opts)
		if len(withCache.Tokens) != 12 || withCache.Stop != -1 || withCache.Steps != 12 {
			t.Fatalf("%+v: %d tokens in %d steps, stop %d", s, len(withCache.Tokens), withCache.Steps, withCache.Stop)
		}
		if !slices.Equal(withCache.Tokens, recompute.Tokens) || !slices.Equal(withCache.Tokens, noInputs.Tokens) {
			t.Errorf("%+v: cache %v, recompute %v, model without cache %v", s, withCache.Tokens, recompute.Tokens, noInputs.Tokens)
		}
		// A constant output would make the comparison empty.
		if slices.Min(withCache.Tokens) == slices.Max(withCache.Tokens) {
			t.Errorf("%+v: one token repeated: %v", s, withCache.Tokens)
		}
	}
}

func TestStopToken(t *testing.T) {
	env := ortest.Env(t)
	m := llamaModel(t, env, true)
	all := gen(t, m, prompt, Options{MaxNewTokens: 8})
	stopAt := all.Tokens[3]
	first := slices.Index(all.Tokens, stopAt)
	res := gen(t, m, prompt, Options{MaxNewTokens: 8, Stop: []int{9999, stopAt}})
	if res.Stop != stopAt || !slices.Equal(res.Tokens, all.Tokens[:first]) {
		t.Errorf("stop on %d: got %v (stop %d), want %v", stopAt, res.Tokens, res.Stop, all.Tokens[:first])
	}
}

func TestGenerateBadInput(t *testing.T) {
	env := ortest.Env(t)
	m := llamaModel(t, env, true)
	for _, tc := range []struct {
		prompt []int
		opts   Options
		want   string
	}{
		{nil, Options{MaxNewTokens: 1}, "empty prompt"},
		{[]int{1256}, Options{MaxNewTokens: 1}, "outside the model's vocabulary of 1256"},
		{[]int{-1}, Options{MaxNewTokens: 1}, "outside"},
		{prompt, Options{}, "max new tokens 0"},
		{prompt, Options{MaxNewTokens: 1, Sampling: Sampling{Temperature: -2}}, "temperature -2"},
	} {
		_, err := m.Generate(tc.prompt, tc.opts, func(int) error { return nil })
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Generate(%v, %+v): error %v, want %q", tc.prompt, tc.opts, err, tc.want)
		}
	}
}

// TestModelSignatures: models generate cannot drive are refused with the
// input or output that is the problem.
func TestModelSignatures(t *testing.T) {
	env := ortest.Env(t)
	cfg := testmodels.DefaultLlama()
	cfg.Cache = true
	build := func(edit func(*graph.Model)) *graph.Model {
		m, err := testmodels.Llama(cfg)
		if err != nil {
			t.Fatal(err)
		}
		edit(m)
		return m
	}
	open := func(m *graph.Model) error {
		path := filepath.Join(t.TempDir(), "m.onnx")
		if err := graph.Save(m, path, graph.SaveOptions{}); err != nil {
			t.Fatal(err)
		}
		s, err := env.NewSession(path, runtime.SessionOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		_, err = NewModel(s)
		return err
	}
	dropOutput := func(name string) func(*graph.Model) {
		return func(m *graph.Model) {
			m.Graph.Outputs = slices.DeleteFunc(m.Graph.Outputs, func(v *graph.Value) bool { return v.Name == name })
		}
	}
	for _, tc := range []struct {
		name string
		edit func(*graph.Model)
		want string
	}{
		{"no present", dropOutput("present.1.value"), "past_key_values.1: no matching present.1.key and present.1.value"},
		{"no logits", dropOutput("logits"), "no logits output"},
		{"extra input", func(m *graph.Model) {
			x := m.Graph.AddInput("token_type_ids", &graph.TensorType{DType: graph.Int64, Shape: []graph.Dim{{Value: 1}}})
			id := &graph.Builder{G: m.Graph}
			out := id.Op("Identity", "tt", []*graph.Value{x})
			out.Type = x.Type
			m.Graph.AddOutput(out)
		}, "input token_type_ids"},
	} {
		if err := open(build(tc.edit)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		}
	}
}
