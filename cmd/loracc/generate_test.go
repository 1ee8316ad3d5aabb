package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/loracc/loracc/chat"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/testmodels"
	"github.com/loracc/loracc/tokenizer"
)

// unigramTokenizer is the committed trained Unigram tokenizer; the tiny
// Llama's vocabulary (1256) is its size.
const unigramTokenizer = "../../testdata/tokenizer/expected/trained/unigram/tokenizer.json"

// llamaDir writes the tiny Llama (with or without KV cache) and the
// Unigram tokenizer into one folder, as a model folder ships them, and
// returns the model's path.
func llamaDir(t *testing.T, cache bool) string {
	t.Helper()
	cfg := testmodels.DefaultLlama()
	cfg.Cache = cache
	m, err := testmodels.Llama(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "model.onnx")
	if err := graph.Save(m, path, graph.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	tok, err := os.ReadFile(unigramTokenizer)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "tokenizer.json"), string(tok))
	return path
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// genRun runs `loracc generate` with --verbose and returns stdout and the
// prompt and generated ids from stderr.
func genRun(t *testing.T, args ...string) (text, promptIDs, genIDs string) {
	t.Helper()
	var out, errb bytes.Buffer
	args = append([]string{"loracc", "generate", "--device", "cpu", "--verbose"}, args...)
	if err := run(args, &out, &errb); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, errb.String())
	}
	find := func(key string) string {
		m := regexp.MustCompile(key + ` ids: \[([0-9 ]*)\]`).FindStringSubmatch(errb.String())
		if m == nil {
			t.Fatalf("no %q ids in stderr:\n%s", key, errb.String())
		}
		return m[1]
	}
	return out.String(), find("prompt"), find("generated")
}

func genErr(t *testing.T, args ...string) error {
	t.Helper()
	var out, errb bytes.Buffer
	return run(append([]string{"loracc", "generate", "--device", "cpu"}, args...), &out, &errb)
}

func loadTok(t *testing.T, dir string) *tokenizer.Tokenizer {
	t.Helper()
	tok, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func idList(t *testing.T, s string) []int {
	t.Helper()
	var ids []int
	if err := json.Unmarshal([]byte("["+strings.ReplaceAll(strings.TrimSpace(s), " ", ",")+"]"), &ids); err != nil {
		t.Fatalf("ids %q: %v", s, err)
	}
	return ids
}

// TestGenerateCacheEqualsNoCache: on the tiny Llama, greedy generation
// through the KV cache, with --no-cache, and on the variant exported
// without cache inputs gives the same tokens and text; the text is the
// tokenizer's decode of those tokens; --prompt adds BOS but not EOS.
func TestGenerateCacheEqualsNoCache(t *testing.T) {
	env(t)
	cached, plain := llamaDir(t, true), llamaDir(t, false)
	args := []string{"--prompt", "the cat sat", "--max-new-tokens", "10"}
	text, p1, g1 := genRun(t, append([]string{cached}, args...)...)
	_, p2, g2 := genRun(t, append([]string{cached, "--no-cache"}, args...)...)
	_, p3, g3 := genRun(t, append([]string{plain}, args...)...)
	if g1 != g2 || g1 != g3 || p1 != p2 || p1 != p3 {
		t.Errorf("cache %s, --no-cache %s, model without cache %s", g1, g2, g3)
	}
	ids := idList(t, g1)
	if len(ids) != 10 {
		t.Errorf("%d tokens, want --max-new-tokens 10", len(ids))
	}
	tok := loadTok(t, filepath.Dir(cached))
	if want := tok.Decode(ids, true) + "\n"; text != want {
		t.Errorf("stdout %q, want the decode %q", text, want)
	}
	prompt := idList(t, p1)
	bos, _ := tok.BOS()
	eos, _ := tok.EOS()
	if prompt[0] != bos || prompt[len(prompt)-1] == eos {
		t.Errorf("prompt ids %v: want BOS %d first and no EOS %d last", prompt, bos, eos)
	}
}

func TestGenerateSamplingSeeds(t *testing.T) {
	env(t)
	model := llamaDir(t, true)
	sample := func(seed string) string {
		_, _, ids := genRun(t, model, "--prompt", "hello", "--max-new-tokens", "12", "--temperature", "1.2", "--top-k", "0", "--seed", seed)
		return ids
	}
	a, b, c := sample("1"), sample("1"), sample("2")
	if a != b {
		t.Errorf("seed 1 twice: %s and %s", a, b)
	}
	if a == c {
		t.Errorf("seeds 1 and 2 both gave %s", a)
	}
	_, _, greedy := genRun(t, model, "--prompt", "hello", "--max-new-tokens", "12")
	if a == greedy {
		t.Errorf("sampling at T=1.2 gave the greedy tokens %s", a)
	}
}

// TestGenerateStops: a stop id ends generation before it is printed,
// whether it is the tokenizer's EOS (tokenizer_config.json) or listed in
// the model's generation_config.json.
func TestGenerateStops(t *testing.T) {
	env(t)
	model := llamaDir(t, true)
	dir := filepath.Dir(model)
	_, _, all := genRun(t, model, "--prompt", "hello", "--max-new-tokens", "8")
	ids := idList(t, all)
	tok := loadTok(t, dir)
	// Stop on a token that first appears at position ≥ 1, so the stop is
	// not at the start and nothing before it is the stop id.
	stopAt := -1
	for i := 1; i < len(ids) && stopAt < 0; i++ {
		if !tok.IsSpecial(ids[i]) && !slices.Contains(ids[:i], ids[i]) {
			stopAt = i
		}
	}
	if stopAt < 0 {
		t.Fatalf("no usable stop token in %v", ids)
	}
	want := strings.Join(strings.Fields(all)[:stopAt], " ")

	writeFile(t, filepath.Join(dir, "generation_config.json"), `{"eos_token_id": [9999, `+strings.Fields(all)[stopAt]+`]}`)
	_, _, got := genRun(t, model, "--prompt", "hello", "--max-new-tokens", "8")
	if got != want {
		t.Errorf("generation_config stop: generated %s, want %s", got, want)
	}
	os.Remove(filepath.Join(dir, "generation_config.json"))

	piece, ok := tok.Token(ids[stopAt])
	if !ok {
		t.Fatalf("no token for id %d", ids[stopAt])
	}
	cfg, _ := json.Marshal(map[string]string{"eos_token": piece})
	writeFile(t, filepath.Join(dir, "tokenizer_config.json"), string(cfg))
	text, _, got := genRun(t, model, "--prompt", "hello", "--max-new-tokens", "8")
	if got != want {
		t.Errorf("tokenizer EOS %q: generated %s, want %s", piece, got, want)
	}
	if wantText := tok.Decode(idList(t, want), true) + "\n"; text != wantText {
		t.Errorf("stdout %q, want %q", text, wantText)
	}
}

// chatTemplate is a small template in the style of real ones: BOS, role
// headers, an end-of-turn token, and the generation prompt.
const chatTemplate = `{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}</s>{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}`

func TestGenerateMessages(t *testing.T) {
	env(t)
	model := llamaDir(t, true)
	dir := filepath.Dir(model)
	cfg, _ := json.Marshal(map[string]string{"chat_template": chatTemplate, "bos_token": "<s>", "eos_token": "</s>"})
	writeFile(t, filepath.Join(dir, "tokenizer_config.json"), string(cfg))
	msgs := filepath.Join(dir, "chat.json")
	writeFile(t, msgs, `[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]`)
	_, prompt, _ := genRun(t, model, "--messages", msgs, "--max-new-tokens", "3")

	tmpl, err := chat.FromConfig(filepath.Join(dir, "tokenizer_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := tmpl.Render([]chat.Message{{Role: "system", Content: "be brief"}, {Role: "user", Content: "hello there"}}, chat.Options{AddGenerationPrompt: true, TextOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(r.Text, "[assistant]") {
		t.Fatalf("render %q lacks the generation prompt", r.Text)
	}
	want, err := loadTok(t, dir).Encode(r.Text, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := idList(t, prompt); !equalInts(got, want) {
		t.Errorf("prompt ids %v, want the template's render encoded %v", got, want)
	}
	// The {"messages": [...]} form reads the same.
	writeFile(t, msgs, `{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]}`)
	if _, p, _ := genRun(t, model, "--messages", msgs, "--max-new-tokens", "1"); p != prompt {
		t.Errorf("object form: prompt %s, want %s", p, prompt)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestGenerateAdapter: an adapter with non-zero weights changes the
// output, and applying it in memory (--adapter), to the injected model
// (inject --from-adapter) and to the fused model (fuse) generates the same
// tokens.
func TestGenerateAdapter(t *testing.T) {
	env(t)
	base := llamaDir(t, true)
	dir := filepath.Dir(base)
	lora := filepath.Join(dir, "model.lora.onnx")
	mustLoracc(t, "inject", base, "--rank", "4", "--target", `self_attn\.(q|v)_proj$`, "--seed", "1", "-o", lora)
	ad := filepath.Join(dir, "model.lora.adapter")
	randomizeAdapter(t, ad, 5)
	fused := filepath.Join(dir, "model.fused.onnx")
	mustLoracc(t, "fuse", base, "--adapter", ad, "-o", fused)
	injected := filepath.Join(dir, "model.injected.onnx")
	mustLoracc(t, "inject", base, "--from-adapter", ad, "-o", injected, "--adapter", filepath.Join(dir, "copy.adapter"))

	args := []string{"--prompt", "the cat sat", "--max-new-tokens", "10"}
	_, _, plain := genRun(t, append([]string{base}, args...)...)
	_, _, mem := genRun(t, append([]string{base, "--adapter", ad}, args...)...)
	_, _, inj := genRun(t, append([]string{injected}, args...)...)
	_, _, fu := genRun(t, append([]string{fused}, args...)...)
	// The stale injected model (its initial B=0 adapter) with --adapter: the
	// strip pass replaces its branches with the given adapter's.
	_, _, over := genRun(t, append([]string{lora, "--adapter", ad}, args...)...)
	if mem == plain {
		t.Fatalf("the adapter did not change the tokens %s", plain)
	}
	if inj != mem || fu != mem || over != mem {
		t.Errorf("--adapter %s, injected %s, fused %s, re-adapted injected %s", mem, inj, fu, over)
	}
	// A base with external data (in its own folder, not the working
	// directory): the in-memory model must carry the data itself.
	m, err := graph.Load(base)
	if err != nil {
		t.Fatal(err)
	}
	ext := filepath.Join(t.TempDir(), "external.onnx")
	if err := graph.Save(m, ext, graph.SaveOptions{Externalize: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(ext + ".data"); err != nil {
		t.Fatalf("no external data written: %v", err)
	}
	writeFile(t, filepath.Join(filepath.Dir(ext), "tokenizer.json"), readText(t, unigramTokenizer))
	if _, _, got := genRun(t, append([]string{ext, "--adapter", ad}, args...)...); got != mem {
		t.Errorf("external-data base with --adapter: %s, want %s", got, mem)
	}
}

func readText(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// TestGenerateGPT2Tiny: a model with input_ids only and no cache (the
// tiny GPT-2 export of testdata, vocabulary 256) generates by rerunning
// the sequence; a prompt id past its vocabulary is refused by name.
func TestGenerateGPT2Tiny(t *testing.T) {
	env(t)
	model := copyModel(t, "../../testdata/models/gpt2_tiny.onnx")
	tokDir := filepath.Dir(llamaDir(t, false))
	var out, errb bytes.Buffer
	if err := run([]string{"loracc", "generate", model, "--tokenizer", tokDir, "--prompt", "a", "--max-new-tokens", "5", "--device", "cpu"}, &out, &errb); err != nil {
		t.Fatalf("%v\n%s", err, errb.String())
	}
	if !strings.Contains(errb.String(), "5 new tokens") || !strings.Contains(errb.String(), "no KV cache") {
		t.Errorf("stderr %q: want 5 new tokens without a KV cache", errb.String())
	}
	err := genErr(t, model, "--tokenizer", tokDir, "--prompt", "understanding")
	if err == nil || !strings.Contains(err.Error(), "outside the model's vocabulary of 256") {
		t.Errorf("prompt past the vocabulary: %v", err)
	}
}

func TestGenerateBadFlags(t *testing.T) {
	env(t)
	model := llamaDir(t, true)
	dir := filepath.Dir(model)
	badJSON := filepath.Join(dir, "bad.json")
	writeFile(t, badJSON, `[{"content": "no role"}]`)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{model}, "exactly one of --prompt TEXT and --messages"},
		{[]string{model, "--prompt", "a", "--messages", badJSON}, "exactly one of"},
		{[]string{model, "--prompt", "a", "--temperature", "-1"}, "--temperature -1: must be ≥ 0"},
		{[]string{model, "--prompt", "a", "--temperature", "NaN"}, "--temperature NaN"},
		{[]string{model, "--prompt", "a", "--temperature", "1", "--top-p", "0"}, "--top-p 0: must be in (0, 1]"},
		{[]string{model, "--prompt", "a", "--temperature", "1", "--top-k", "-3"}, "--top-k -3"},
		{[]string{model, "--prompt", "a", "--top-k", "5"}, "--top-k applies to sampling, but --temperature is 0"},
		{[]string{model, "--prompt", "a", "--max-new-tokens", "0"}, "--max-new-tokens 0: must be at least 1"},
		{[]string{model, "--prompt", "a", "--device", "tpu"}, `--device "tpu"`},
		{[]string{model, "--messages", badJSON}, `message 0: "role" must be a non-empty string`},
		{[]string{model, "--messages", filepath.Join(dir, "missing.json")}, "missing.json"},
		{[]string{model, "--prompt", "a", "--tokenizer", t.TempDir()}, "no tokenizer.json"},
		{[]string{model, "--prompt", "a", "--adapter", t.TempDir()}, "adapter_config.json"},
		{[]string{filepath.Join(dir, "nope.onnx"), "--prompt", "a"}, "nope.onnx"},
	} {
		err := genErr(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("generate %s: error %v, want %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
	// --messages without a chat template says what is missing.
	writeFile(t, badJSON, `[{"role": "user", "content": "hi"}]`)
	if err := genErr(t, model, "--messages", badJSON); err == nil || !strings.Contains(err.Error(), "chat template") {
		t.Errorf("--messages without tokenizer_config.json: %v", err)
	}
}

// TestGenerateRealChatTemplate: Qwen3's real tokenizer and chat template
// (LORACC_TOKENIZERS_DIR) on a tiny Llama sized to its vocabulary: the
// prompt is the template's render with the generation prompt, encoded
// without added specials, and the stop ids hold the config's <|im_end|>.
func TestGenerateRealChatTemplate(t *testing.T) {
	env(t)
	root := os.Getenv("LORACC_TOKENIZERS_DIR")
	if root == "" {
		if os.Getenv("LORACC_REQUIRE_REAL") == "1" {
			t.Fatal("LORACC_TOKENIZERS_DIR is not set (scripts/fetch-tokenizers.sh prints it)")
		}
		t.Skip("LORACC_TOKENIZERS_DIR is not set; run scripts/fetch-tokenizers.sh")
	}
	tokDir := filepath.Join(root, "qwen3")
	tok := loadTok(t, tokDir)
	// A narrow model keeps the 151k-row embedding small.
	m, err := testmodels.Llama(testmodels.LlamaConfig{Vocab: tok.VocabSize(), Hidden: 8, Heads: 2, KVHeads: 1, Intermediate: 16, Layers: 1, Cache: true})
	if err != nil {
		t.Fatal(err)
	}
	model := filepath.Join(t.TempDir(), "qwen_tiny.onnx")
	if err := graph.Save(m, model, graph.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	msgs := filepath.Join(filepath.Dir(model), "chat.json")
	writeFile(t, msgs, `[{"role": "user", "content": "Wie geht's? 🙂"}]`)
	_, prompt, gen := genRun(t, model, "--tokenizer", tokDir, "--messages", msgs, "--max-new-tokens", "4")
	tmpl, err := chat.FromConfig(filepath.Join(tokDir, "tokenizer_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := tmpl.Render([]chat.Message{{Role: "user", Content: "Wie geht's? 🙂"}}, chat.Options{AddGenerationPrompt: true, TextOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(r.Text, "<|im_start|>assistant\n") {
		t.Fatalf("Qwen3 render %q lacks the generation prompt", r.Text)
	}
	want, err := tok.Encode(r.Text, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := idList(t, prompt); !equalInts(got, want) {
		t.Errorf("prompt ids %v, want %v", got, want)
	}
	if n := len(idList(t, gen)); n == 0 || n > 4 {
		t.Errorf("generated %d tokens", n)
	}
	imEnd, ok := tok.TokenID("<|im_end|>")
	stop, err := stopIDs(tok, filepath.Dir(model))
	if err != nil || !ok || !slices.Contains(stop, imEnd) {
		t.Errorf("stop ids %v (%v), want <|im_end|> = %d among them", stop, err, imEnd)
	}
}
