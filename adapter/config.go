package adapter

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"sort"

	"github.com/loracc/loracc/graph"
)

// Config mirrors the LoRA fields of PEFT's adapter_config.json (LoraConfig).
// Fields PEFT may write as null are pointers or nil-able. Keys this struct
// does not know (PEFT grows new ones every release: layers_to_transform,
// loftq_config, lora_bias, ...) are kept verbatim in Extra so that reading
// and rewriting a config loses nothing.
type Config struct {
	PeftType string  `json:"peft_type"` // "LORA"
	TaskType *string `json:"task_type"` // e.g. "CAUSAL_LM", or null
	R        int     `json:"r"`         // default rank
	// LoraAlpha is PEFT's lora_alpha; PEFT types it int but reads any number.
	LoraAlpha float64 `json:"lora_alpha"`
	// TargetModules is the list form of target_modules (module-name
	// suffixes). PEFT also accepts one string, a regular expression that
	// must match the whole module name; that form is kept in TargetRegex
	// instead, and at most one of the two is set.
	TargetModules []string `json:"target_modules"`
	TargetRegex   string   `json:"-"`
	// RankPattern and AlphaPattern override R and LoraAlpha for modules
	// whose names match a key; see Rank.
	RankPattern  map[string]int     `json:"rank_pattern"`
	AlphaPattern map[string]float64 `json:"alpha_pattern"`
	UseRslora    bool               `json:"use_rslora"`
	FanInFanOut  bool               `json:"fan_in_fan_out"`
	Bias         string             `json:"bias"` // "none", "all" or "lora_only"
	LoraDropout  float64            `json:"lora_dropout"`
	// InitLoraWeights is a bool or an init method name in PEFT.
	InitLoraWeights     InitWeights `json:"init_lora_weights"`
	BaseModelNameOrPath *string     `json:"base_model_name_or_path"`
	ModulesToSave       []string    `json:"modules_to_save"`
	InferenceMode       bool        `json:"inference_mode"`
	UseDora             bool        `json:"use_dora"`
	Revision            *string     `json:"revision"`

	// Extra holds the raw JSON of every key not listed above.
	Extra map[string]json.RawMessage `json:"-"`
}

// InitWeights is PEFT's init_lora_weights: either a bool (true = PEFT's
// default Kaiming-uniform A, zero B; false = random B too, for tests) or the
// name of an initialisation method ("gaussian", "pissa", "olora", ...).
// Method is empty when the value is a bool.
type InitWeights struct {
	Bool   bool
	Method string
}

// MarshalJSON writes a string when Method is set, else a bool.
func (w InitWeights) MarshalJSON() ([]byte, error) {
	if w.Method != "" {
		return json.Marshal(w.Method)
	}
	return json.Marshal(w.Bool)
}

// UnmarshalJSON accepts a bool or a string.
func (w *InitWeights) UnmarshalJSON(b []byte) error {
	if err := json.Unmarshal(b, &w.Bool); err == nil {
		w.Method = ""
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("init_lora_weights must be a bool or a string, got %s", b)
	}
	if s == "" {
		return fmt.Errorf("init_lora_weights is an empty string")
	}
	*w = InitWeights{Method: s}
	return nil
}

// NewConfig returns a LoRA config with PEFT's defaults for everything but
// rank, alpha and target modules, marked for inference as PEFT marks the
// adapters it saves.
func NewConfig(r int, alpha float64, targets ...string) Config {
	c := peftDefaults()
	c.PeftType = "LORA"
	c.R, c.LoraAlpha = r, alpha
	c.TargetModules = append([]string(nil), targets...)
	c.InferenceMode = true
	return c
}

// peftDefaults holds LoraConfig's field defaults (peft/tuners/lora/config.py),
// which PEFT applies to keys missing from a config file. peft_type has none:
// a file without it is not a LoRA config we can trust.
func peftDefaults() Config {
	return Config{
		R:               8,
		LoraAlpha:       8,
		RankPattern:     map[string]int{},
		AlphaPattern:    map[string]float64{},
		Bias:            "none",
		InitLoraWeights: InitWeights{Bool: true},
	}
}

// targetModulesJSON lets target_modules be a list or one string.
type targetModulesJSON struct{ c *Config }

func (t targetModulesJSON) MarshalJSON() ([]byte, error) {
	if t.c.TargetRegex != "" {
		return json.Marshal(t.c.TargetRegex)
	}
	return json.Marshal(t.c.TargetModules)
}

func (t targetModulesJSON) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		t.c.TargetModules, t.c.TargetRegex = nil, s
		return nil
	}
	t.c.TargetRegex = ""
	return json.Unmarshal(b, &t.c.TargetModules)
}

// fields is the one table of known keys, used by both directions: the key
// and a pointer to where its value lives in c.
func (c *Config) fields() []struct {
	key string
	ptr any
} {
	return []struct {
		key string
		ptr any
	}{
		{"peft_type", &c.PeftType},
		{"task_type", &c.TaskType},
		{"r", &c.R},
		{"lora_alpha", &c.LoraAlpha},
		{"target_modules", &targetModulesJSON{c}},
		{"rank_pattern", &c.RankPattern},
		{"alpha_pattern", &c.AlphaPattern},
		{"use_rslora", &c.UseRslora},
		{"fan_in_fan_out", &c.FanInFanOut},
		{"bias", &c.Bias},
		{"lora_dropout", &c.LoraDropout},
		{"init_lora_weights", &c.InitLoraWeights},
		{"base_model_name_or_path", &c.BaseModelNameOrPath},
		{"modules_to_save", &c.ModulesToSave},
		{"inference_mode", &c.InferenceMode},
		{"use_dora", &c.UseDora},
		{"revision", &c.Revision},
	}
}

// UnmarshalJSON fills the known fields and keeps the rest in Extra. Known
// keys that are absent get PEFT's defaults, as PEFT's loader gives them
// (old configs predate use_rslora, use_dora, rank_pattern, ...).
func (c *Config) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	if raw == nil {
		return fmt.Errorf("config is null, want a JSON object")
	}
	*c = peftDefaults()
	for _, f := range c.fields() {
		v, ok := raw[f.key]
		if !ok {
			continue
		}
		delete(raw, f.key)
		if err := json.Unmarshal(v, f.ptr); err != nil {
			return fmt.Errorf("key %q: %w", f.key, err)
		}
	}
	if len(raw) > 0 {
		c.Extra = raw
	}
	return nil
}

// MarshalJSON merges the known fields with Extra. encoding/json sorts map
// keys, so the output is deterministic and ordered like PEFT's own
// json.dumps(..., sort_keys=True). An Extra key that shadows a known field
// is an error rather than a silent choice between the two.
func (c Config) MarshalJSON() ([]byte, error) {
	if c.TargetRegex != "" && c.TargetModules != nil {
		return nil, fmt.Errorf("config sets both target_modules forms (list and regex)")
	}
	out := make(map[string]json.RawMessage, len(c.Extra)+20)
	for k, v := range c.Extra {
		out[k] = v
	}
	for _, f := range c.fields() {
		if _, dup := out[f.key]; dup {
			return nil, fmt.Errorf("extra key %q duplicates a config field", f.key)
		}
		v, err := marshalNoHTML(f.ptr)
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", f.key, err)
		}
		out[f.key] = v
	}
	return marshalNoHTML(out)
}

// marshalNoHTML is json.Marshal without the \u003c-style escaping of <, >
// and &, which would only make regex patterns in configs harder to read.
func marshalNoHTML(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// Validate checks what the rest of loracc relies on: a LoRA config with a
// positive rank everywhere and patterns that compile. Patterns are Python
// regular expressions in PEFT; the few Python-only constructs (look-around,
// back-references) do not compile in Go's RE2 and are reported here rather
// than silently never matching.
func (c Config) Validate() error {
	if c.PeftType != "LORA" {
		return fmt.Errorf("peft_type is %q, want \"LORA\"", c.PeftType)
	}
	if c.R <= 0 {
		return fmt.Errorf("r is %d, want > 0", c.R)
	}
	if math.IsNaN(c.LoraAlpha) || math.IsInf(c.LoraAlpha, 0) {
		return fmt.Errorf("lora_alpha is %v", c.LoraAlpha)
	}
	if c.TargetRegex != "" && c.TargetModules != nil {
		return fmt.Errorf("both target_modules forms (list and regex) are set")
	}
	if c.TargetRegex != "" {
		if _, err := CompileRegexp(`^(?:` + c.TargetRegex + `)$`); err != nil {
			return fmt.Errorf("target_modules %s: %w", Abbrev(c.TargetRegex), err)
		}
	}
	for _, k := range sortedKeys(c.RankPattern) {
		if c.RankPattern[k] <= 0 {
			return fmt.Errorf("rank_pattern %s: rank %d, want > 0", Abbrev(k), c.RankPattern[k])
		}
		if _, err := patternRegexp(k); err != nil {
			return fmt.Errorf("rank_pattern %s: %w", Abbrev(k), err)
		}
	}
	for _, k := range sortedKeys(c.AlphaPattern) {
		if v := c.AlphaPattern[k]; math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("alpha_pattern %s: alpha %v", Abbrev(k), v)
		}
		if _, err := patternRegexp(k); err != nil {
			return fmt.Errorf("alpha_pattern %s: %w", Abbrev(k), err)
		}
	}
	return nil
}

// Pattern matching, as PEFT does it (peft/utils/other.py get_pattern_key,
// used by LoraModel._create_and_replace, unchanged through 0.20/0.21): the
// keys of rank_pattern / alpha_pattern are tried in dict order, and the
// first key K for which re.match(rf"(.*\.)?({K})$", name) succeeds wins;
// with none, r / lora_alpha apply. So a key matches a module whose full
// dotted name ends with a match of K starting at a dot boundary (or the
// whole name), and "." inside K matches any character.
//
// "Dict order" is the order of keys in adapter_config.json, and PEFT writes
// that file with sort_keys=True, so for every file PEFT saved the order is
// sorted order, which is what Go maps give us here too. (A hand-written
// config with overlapping patterns in unsorted order could resolve
// differently in PEFT; PEFT itself loses that order on its next save.)

// patternRegexp compiles a pattern key the way PEFT applies it.
func patternRegexp(key string) (*regexp.Regexp, error) {
	return CompileRegexp(`^(?:.*\.)?(?:` + key + `)$`)
}

// patternKey returns the first key (in sorted order) whose pattern matches
// name. Keys that do not compile are skipped; Validate reports them.
func patternKey(keys []string, name string) (string, bool) {
	for _, k := range keys {
		re, err := patternRegexp(k)
		if err == nil && re.MatchString(name) {
			return k, true
		}
	}
	return "", false
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Rank is the LoRA rank PEFT gives the module called name (its dotted path
// in the base model, e.g. "model.layers.0.self_attn.q_proj"): the value of
// the first matching rank_pattern key, else r.
func (c Config) Rank(name string) int {
	if k, ok := patternKey(sortedKeys(c.RankPattern), name); ok {
		return c.RankPattern[k]
	}
	return c.R
}

// Alpha is lora_alpha for the module called name, with alpha_pattern
// overrides matched like Rank.
func (c Config) Alpha(name string) float64 {
	if k, ok := patternKey(sortedKeys(c.AlphaPattern), name); ok {
		return c.AlphaPattern[k]
	}
	return c.LoraAlpha
}

// Scale is the factor PEFT multiplies the LoRA product B·A by for module
// name: alpha/r, or alpha/sqrt(r) with use_rslora (rank-stabilised LoRA),
// using the pattern-resolved rank and alpha. It returns 0 for a rank <= 0,
// which Validate rejects.
func (c Config) Scale(name string) float64 {
	r := c.Rank(name)
	if r <= 0 {
		return 0
	}
	alpha := c.Alpha(name)
	if c.UseRslora {
		return alpha / math.Sqrt(float64(r))
	}
	return alpha / float64(r)
}

// maxConfigFile bounds an adapter_config.json: PEFT writes a few hundred
// bytes; a megabyte leaves room for long target lists and regexes.
const maxConfigFile = 1 << 20

// ReadConfig reads and validates an adapter_config.json.
func ReadConfig(path string) (Config, error) {
	b, err := graph.ReadRegular(path, maxConfigFile, "an adapter config")
	if err != nil {
		return Config{}, fmt.Errorf("adapter config: %w", err)
	}
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return Config{}, fmt.Errorf("adapter config %s: %w", path, err)
	}
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("adapter config %s: %w", path, err)
	}
	return c, nil
}

// EncodeConfig returns the bytes WriteConfig writes: JSON with sorted keys,
// two-space indent and a final newline, without HTML escaping.
func EncodeConfig(c Config) ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	flat, err := marshalNoHTML(c)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := json.Indent(&b, flat, "", "  "); err != nil {
		return nil, err
	}
	b.WriteByte('\n')
	return b.Bytes(), nil
}

// WriteConfig validates c and writes it to path atomically.
func WriteConfig(path string, c Config) error {
	b, err := EncodeConfig(c)
	if err != nil {
		return fmt.Errorf("adapter config %s: %w", path, err)
	}
	return writeFileAtomic(path, b)
}
