package adapter

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// peftConfig is shaped like a PEFT 0.21 adapter_config.json, with keys this
// package does not model (auto_mapping, loftq_config, peft_version, ...).
const peftConfig = `{
  "alpha_pattern": {"k_proj": 32},
  "auto_mapping": {"base_model_class": "GPT2LMHeadModel", "parent_library": "transformers.models.gpt2.modeling_gpt2"},
  "base_model_name_or_path": "gpt2",
  "bias": "none",
  "fan_in_fan_out": true,
  "inference_mode": true,
  "init_lora_weights": "gaussian",
  "layers_pattern": null,
  "layers_to_transform": [0, 1],
  "loftq_config": {},
  "lora_alpha": 16,
  "lora_bias": false,
  "lora_dropout": 0.05,
  "megatron_core": "megatron.core",
  "modules_to_save": null,
  "peft_type": "LORA",
  "peft_version": "0.21.0",
  "r": 8,
  "rank_pattern": {"q_proj": 4, "layers.1.self_attn.k_proj": 2},
  "revision": null,
  "target_modules": ["q_proj", "k_proj", "v_proj"],
  "task_type": "CAUSAL_LM",
  "use_dora": false,
  "use_rslora": false,
  "weird": "<&>"
}`

func writeTemp(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func generic(t *testing.T, b []byte) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%v in %s", err, b)
	}
	return v
}

func TestConfigRoundTripKeepsUnknownKeys(t *testing.T) {
	path := writeTemp(t, ConfigFile, peftConfig)
	c, err := ReadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.R != 8 || c.LoraAlpha != 16 || c.TaskType == nil || *c.TaskType != "CAUSAL_LM" || c.Revision != nil ||
		c.InitLoraWeights != (InitWeights{Method: "gaussian"}) || !c.FanInFanOut || c.LoraDropout != 0.05 {
		t.Errorf("fields: %+v", c)
	}
	for _, k := range []string{"auto_mapping", "layers_pattern", "layers_to_transform", "loftq_config", "lora_bias", "megatron_core", "peft_version", "weird"} {
		if _, ok := c.Extra[k]; !ok {
			t.Errorf("extra key %q lost", k)
		}
	}
	out := filepath.Join(t.TempDir(), ConfigFile)
	if err := WriteConfig(out, c); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	if !reflect.DeepEqual(generic(t, b), generic(t, []byte(peftConfig))) {
		t.Errorf("rewrite changed the config:\n%s", b)
	}
	if !bytes.Contains(b, []byte(`"<&>"`)) {
		t.Errorf("HTML-escaped output:\n%s", b)
	}
	// Deterministic: a second write of a re-read config is byte-identical.
	c2, err := ReadConfig(out)
	if err != nil {
		t.Fatal(err)
	}
	out2 := filepath.Join(t.TempDir(), ConfigFile)
	if err := WriteConfig(out2, c2); err != nil {
		t.Fatal(err)
	}
	if b2, _ := os.ReadFile(out2); !bytes.Equal(b, b2) {
		t.Errorf("second write differs:\n%s\n%s", b, b2)
	}
}

func TestConfigVariants(t *testing.T) {
	for _, tc := range []struct {
		name  string
		json  string
		check func(Config) bool
	}{
		{"init true", `{"peft_type":"LORA","r":4,"init_lora_weights":true}`, func(c Config) bool { return c.InitLoraWeights == InitWeights{Bool: true} }},
		{"init false", `{"peft_type":"LORA","r":4,"init_lora_weights":false}`, func(c Config) bool { return c.InitLoraWeights == InitWeights{} }},
		{"init pissa", `{"peft_type":"LORA","r":4,"init_lora_weights":"pissa_niter_4"}`, func(c Config) bool { return c.InitLoraWeights.Method == "pissa_niter_4" }},
		{"target regex", `{"peft_type":"LORA","r":4,"target_modules":".*\\.(q|v)_proj"}`, func(c Config) bool {
			return c.TargetRegex == `.*\.(q|v)_proj` && c.TargetModules == nil
		}},
		{"target null", `{"peft_type":"LORA","r":4,"target_modules":null}`, func(c Config) bool { return c.TargetModules == nil && c.TargetRegex == "" }},
		{"defaults for missing keys", `{"peft_type":"LORA"}`, func(c Config) bool {
			return c.R == 8 && c.LoraAlpha == 8 && c.Bias == "none" && c.InitLoraWeights.Bool && c.RankPattern != nil
		}},
		{"fractional alpha", `{"peft_type":"LORA","r":4,"lora_alpha":0.5}`, func(c Config) bool { return c.Scale("x") == 0.125 }},
	} {
		path := writeTemp(t, ConfigFile, tc.json)
		c, err := ReadConfig(path)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if !tc.check(c) {
			t.Errorf("%s: got %+v", tc.name, c)
		}
		// Whatever we read, we write back to the same JSON values.
		b, err := EncodeConfig(c)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		var back Config
		if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, c) {
			t.Errorf("%s: round trip gave %+v (%v), want %+v", tc.name, back, err, c)
		}
	}
}

func TestReadConfigErrors(t *testing.T) {
	for _, tc := range []struct{ name, json, want string }{
		{"not json", `{"r":`, "unexpected"},
		{"null", `null`, "null"},
		{"array", `[]`, "cannot unmarshal"},
		{"not lora", `{"peft_type":"IA3","r":4}`, "IA3"},
		{"no peft_type", `{"r":4}`, "peft_type"},
		{"zero rank", `{"peft_type":"LORA","r":0}`, "r is 0"},
		{"string rank", `{"peft_type":"LORA","r":"8"}`, `"r"`},
		{"bad init", `{"peft_type":"LORA","r":4,"init_lora_weights":3}`, "init_lora_weights"},
		{"bad rank pattern", `{"peft_type":"LORA","r":4,"rank_pattern":{"q_proj":0}}`, "q_proj"},
		{"python-only regex", `{"peft_type":"LORA","r":4,"alpha_pattern":{"(?<=a)b":2}}`, "alpha_pattern"},
		{"bad target regex", `{"peft_type":"LORA","r":4,"target_modules":"("}`, "target_modules"},
		{"over a megabyte", `{"peft_type":"LORA","r":4,"target_modules":["` + strings.Repeat("q", maxConfigFile) + `"]}`, "the limit for an adapter config"},
	} {
		path := writeTemp(t, ConfigFile, tc.json)
		_, err := ReadConfig(path)
		if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one naming %s and %q", tc.name, err, path, tc.want)
		}
	}
	if _, err := ReadConfig(filepath.Join(t.TempDir(), "missing.json")); err == nil || !strings.Contains(err.Error(), "missing.json") {
		t.Errorf("missing file: %v", err)
	}
}

func TestWriteConfigRejects(t *testing.T) {
	dir := t.TempDir()
	c := NewConfig(4, 8, "q_proj")
	c.Extra = map[string]json.RawMessage{"r": json.RawMessage(`16`)}
	path := filepath.Join(dir, ConfigFile)
	if err := WriteConfig(path, c); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("extra shadowing r: %v", err)
	}
	c = NewConfig(4, 8, "q_proj")
	c.TargetRegex = "x"
	if err := WriteConfig(path, c); err == nil {
		t.Error("both target forms: no error")
	}
	if _, err := os.Stat(path); err == nil {
		t.Error("file written despite errors")
	}
}

func TestRankScalePatterns(t *testing.T) {
	c := NewConfig(8, 16)
	c.RankPattern = map[string]int{
		"q_proj":                    4,
		"layers.1.self_attn.k_proj": 2,
		`layers\.[2-3]\.mlp\..*`:    16,
	}
	c.AlphaPattern = map[string]float64{"k_proj": 32}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		rank  int
		alpha float64
	}{
		{"model.layers.0.self_attn.q_proj", 4, 16},
		{"q_proj", 4, 16}, // the whole name may match
		{"model.layers.1.self_attn.k_proj", 2, 32},
		{"model.layers.0.self_attn.k_proj", 8, 32},
		{"model.layers.0.self_attn.v_proj", 8, 16},
		{"model.layers.0.self_attn.xq_proj", 8, 16},   // a match must start at a dot
		{"model.layers.0.self_attn.q_proj.x", 8, 16},  // and run to the end
		{"model.layers.1xself_attn.k_proj", 2, 32},    // "." in a key is a regex dot
		{"model.layers.2.mlp.up_proj", 16, 16},        // a real regex
		{"model.layers.4.mlp.up_proj", 8, 16},         //
		{"model.layers.31.self_attn.k_proj", 8, 32},   // "layers.1" needs a dot before it
		{"model.xlayers.1.self_attn.k_proj", 8, 32},   // likewise
		{"decoder.layers.1.self_attn.k_proj", 2, 32},  // any prefix ending in a dot
		{"model.layers.1.self_attn.k_proj_x", 8, 16},  // no suffix
		{"model.layers.3.mlp.down_proj.base", 16, 16}, // ".*" in the key runs on
	} {
		if got := c.Rank(tc.name); got != tc.rank {
			t.Errorf("Rank(%q) = %d, want %d", tc.name, got, tc.rank)
		}
		if got := c.Alpha(tc.name); got != tc.alpha {
			t.Errorf("Alpha(%q) = %v, want %v", tc.name, got, tc.alpha)
		}
		if got, want := c.Scale(tc.name), tc.alpha/float64(tc.rank); got != want {
			t.Errorf("Scale(%q) = %v, want %v", tc.name, got, want)
		}
	}
	c.UseRslora = true
	if got, want := c.Scale("model.layers.0.self_attn.q_proj"), 16/math.Sqrt(4); got != want {
		t.Errorf("rslora Scale = %v, want %v", got, want)
	}
}

// TestPatternOrder pins the tie-break between overlapping keys: PEFT takes
// the first matching key in file order, and PEFT writes files with sorted
// keys, so the first in sorted order wins, even when a later one is more
// specific.
func TestPatternOrder(t *testing.T) {
	c := NewConfig(8, 8)
	c.RankPattern = map[string]int{"q_proj": 4, "self_attn.q_proj": 2, "model.layers.0.self_attn.q_proj": 6}
	for name, want := range map[string]int{
		"model.layers.0.self_attn.q_proj": 6, // "model..." < "q_proj" < "self_attn..."
		"model.layers.1.self_attn.q_proj": 4, // "q_proj" before "self_attn.q_proj"
	} {
		if got := c.Rank(name); got != want {
			t.Errorf("Rank(%q) = %d, want %d", name, got, want)
		}
	}
}

// TestLongRegexpErrorIsShort: a megabyte of bad regular expression gives
// a one-line error that quotes 80 bytes of it and says its length.
func TestLongRegexpErrorIsShort(t *testing.T) {
	expr := "(" + strings.Repeat("a", 1<<20)
	_, err := CompileRegexp(expr)
	if err == nil || len(err.Error()) > 200 || !strings.Contains(err.Error(), "missing closing )") || !strings.Contains(err.Error(), "(1048577 bytes)") {
		t.Errorf("error %.300q", err)
	}
	c := NewConfig(2, 2)
	c.TargetRegex = expr
	if err := c.Validate(); err == nil || len(err.Error()) > 400 {
		t.Errorf("config error %.500q", err)
	}
}
