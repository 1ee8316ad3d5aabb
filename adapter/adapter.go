// Package adapter reads and writes LoRA adapters in PEFT's directory format
// (adapter_config.json + adapter_model.safetensors), so adapters trained by
// loracc load in PEFT and adapters trained in PEFT load in loracc.
//
// It imports graph only for element types and fp16/bf16 conversion; nothing
// in it knows about ONNX.
package adapter

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// The file names and key layout PEFT uses. PEFT's save_pretrained strips the
// adapter name from parameter keys, so a saved LoRA layer for module M is
// "base_model.model.M.lora_A.weight" and "...lora_B.weight".
const (
	ConfigFile  = "adapter_config.json"
	WeightsFile = "adapter_model.safetensors"

	keyPrefix = "base_model.model."
	suffixA   = ".lora_A.weight"
	suffixB   = ".lora_B.weight"
)

// Layer is the LoRA pair for one module: the module's output gains
// Scale·B·A·x. Both matrices are row-major float32 in PEFT's layout.
type Layer struct {
	Name    string    // module path in the base model, e.g. "model.layers.0.self_attn.q_proj"
	Rank    int       // r
	In, Out int       // the module's input and output features
	A       []float32 // lora_A.weight, shape [Rank, In]
	B       []float32 // lora_B.weight, shape [Out, Rank]
}

// Adapter is a LoRA adapter: its config and its layers, sorted by name.
type Adapter struct {
	Config Config
	Layers []Layer
}

// Layer returns the layer for module name, or nil.
func (a *Adapter) Layer(name string) *Layer {
	i := sort.Search(len(a.Layers), func(i int) bool { return a.Layers[i].Name >= name })
	if i < len(a.Layers) && a.Layers[i].Name == name {
		return &a.Layers[i]
	}
	return nil
}

// maxListed caps how many offending keys an error lists.
const maxListed = 10

// Load reads a PEFT LoRA adapter directory. Weights of any float dtype
// (F32, F16, BF16, F64) are converted to float32. Every key must be a
// lora_A or lora_B weight and every layer must have both, with shapes
// [r, in] and [out, r] and r equal to the config's rank for that module;
// anything else (DoRA magnitudes, lora_B biases, embedding LoRA, extra
// modules_to_save weights) is reported rather than silently dropped, since
// dropping it would change what the adapter computes.
func Load(dir string) (*Adapter, error) {
	cfg, err := ReadConfig(filepath.Join(dir, ConfigFile))
	if err != nil {
		return nil, fmt.Errorf("adapter %s: %w", dir, err)
	}
	if cfg.UseDora {
		return nil, fmt.Errorf("adapter %s: use_dora is set; DoRA adapters are not supported", dir)
	}
	wpath := filepath.Join(dir, WeightsFile)
	f, err := ReadSafetensors(wpath)
	if err != nil {
		return nil, fmt.Errorf("adapter %s: %w", dir, err)
	}
	type pair struct{ a, b *NamedTensor }
	pairs := map[string]*pair{}
	var unknown []string
	for i := range f.Tensors {
		t := &f.Tensors[i]
		name, isA, ok := splitKey(t.Name)
		if !ok {
			unknown = append(unknown, t.Name)
			continue
		}
		p := pairs[name]
		if p == nil {
			p = &pair{}
			pairs[name] = p
		}
		if isA {
			p.a = t
		} else {
			p.b = t
		}
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("adapter %s: %s: unexpected keys (want base_model.model.<module>.lora_A.weight / .lora_B.weight): %s", dir, WeightsFile, listKeys(unknown))
	}
	ad := &Adapter{Config: cfg, Layers: make([]Layer, 0, len(pairs))}
	for _, name := range sortedKeys(pairs) {
		p := pairs[name]
		l, err := loadLayer(name, p.a, p.b, &cfg)
		if err != nil {
			return nil, fmt.Errorf("adapter %s: %s: %w", dir, WeightsFile, err)
		}
		ad.Layers = append(ad.Layers, l)
	}
	return ad, nil
}

// splitKey parses "base_model.model.<name>.lora_{A,B}.weight".
func splitKey(key string) (name string, isA, ok bool) {
	rest, ok := strings.CutPrefix(key, keyPrefix)
	if !ok {
		return "", false, false
	}
	if n, ok := strings.CutSuffix(rest, suffixA); ok && n != "" {
		return n, true, true
	}
	if n, ok := strings.CutSuffix(rest, suffixB); ok && n != "" {
		return n, false, true
	}
	return "", false, false
}

func listKeys(keys []string) string {
	sort.Strings(keys)
	if len(keys) <= maxListed {
		return strings.Join(keys, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(keys[:maxListed], ", "), len(keys)-maxListed)
}

// loadLayer checks one A/B pair and decodes it.
func loadLayer(name string, a, b *NamedTensor, cfg *Config) (Layer, error) {
	switch {
	case a == nil:
		return Layer{}, fmt.Errorf("layer %q: %s%s has no matching %s", name, keyPrefix+name, suffixB, suffixA[1:])
	case b == nil:
		return Layer{}, fmt.Errorf("layer %q: %s%s has no matching %s", name, keyPrefix+name, suffixA, suffixB[1:])
	}
	for _, t := range []*NamedTensor{a, b} {
		if !t.DType.IsFloat() {
			return Layer{}, fmt.Errorf("tensor %q: dtype %s, want a float type", t.Name, t.DType)
		}
		if len(t.Shape) != 2 {
			return Layer{}, fmt.Errorf("tensor %q: shape %v, want 2-D", t.Name, t.Shape)
		}
		for _, d := range t.Shape {
			// Bounded by the file size already; this keeps int safe on
			// 32-bit platforms and rejects empty matrices.
			if d <= 0 || d > math.MaxInt32 {
				return Layer{}, fmt.Errorf("tensor %q: shape %v, want positive dimensions", t.Name, t.Shape)
			}
		}
	}
	if a.Shape[0] != b.Shape[1] {
		return Layer{}, fmt.Errorf("layer %q: lora_A shape %v [r, in] and lora_B shape %v [out, r] disagree on r", name, a.Shape, b.Shape)
	}
	l := Layer{Name: name, Rank: int(a.Shape[0]), In: int(a.Shape[1]), Out: int(b.Shape[0])}
	if want := cfg.Rank(name); l.Rank != want {
		return Layer{}, fmt.Errorf("layer %q: rank %d (lora_A %v, lora_B %v) but the config gives rank %d", name, l.Rank, a.Shape, b.Shape, want)
	}
	var err error
	if l.A, err = a.Floats(); err != nil {
		return Layer{}, err
	}
	if l.B, err = b.Floats(); err != nil {
		return Layer{}, err
	}
	for _, m := range []struct {
		t    *NamedTensor
		vals []float32
	}{{a, l.A}, {b, l.B}} {
		if i := nonFinite(m.vals); i >= 0 {
			return Layer{}, fmt.Errorf("tensor %q: element %d is %v; an adapter must hold finite numbers", m.t.Name, i, m.vals[i])
		}
	}
	return l, nil
}

// nonFinite is the index of the first NaN or ±Inf in v, or -1. A
// non-finite adapter would turn every output of its layer into NaN after
// fuse or inject, and train would start from a NaN loss.
func nonFinite(v []float32) int {
	for i, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return i
		}
	}
	return -1
}

// Validate checks the config and that every layer has a unique non-empty
// name, positive sizes, matrices of the stated shapes and the rank the
// config gives it: exactly what Load accepts, so a saved adapter loads.
func (a *Adapter) Validate() error {
	if err := a.Config.Validate(); err != nil {
		return err
	}
	if a.Config.UseDora {
		return fmt.Errorf("use_dora is set; DoRA adapters are not supported")
	}
	seen := make(map[string]bool, len(a.Layers))
	for i := range a.Layers {
		l := &a.Layers[i]
		switch {
		case l.Name == "":
			return fmt.Errorf("layer %d has no name", i)
		case seen[l.Name]:
			return fmt.Errorf("layer %q appears twice", l.Name)
		case l.Rank <= 0 || l.In <= 0 || l.Out <= 0 || l.Rank > math.MaxInt32 || l.In > math.MaxInt32 || l.Out > math.MaxInt32:
			return fmt.Errorf("layer %q: rank %d, in %d, out %d: want positive sizes", l.Name, l.Rank, l.In, l.Out)
		case int64(len(l.A)) != int64(l.Rank)*int64(l.In):
			return fmt.Errorf("layer %q: A has %d values, want rank %d × in %d", l.Name, len(l.A), l.Rank, l.In)
		case int64(len(l.B)) != int64(l.Out)*int64(l.Rank):
			return fmt.Errorf("layer %q: B has %d values, want out %d × rank %d", l.Name, len(l.B), l.Out, l.Rank)
		}
		if want := a.Config.Rank(l.Name); l.Rank != want {
			return fmt.Errorf("layer %q: rank %d but the config gives rank %d", l.Name, l.Rank, want)
		}
		seen[l.Name] = true
	}
	return nil
}

// Save writes the adapter to dir in PEFT's format, creating dir if needed:
// float32 weights with the {"format": "pt"} metadata that transformers
// checks for, and the config. Each file is written atomically and
// deterministically; the pair is not one transaction, so the weights go
// first and the config, which marks the directory as an adapter, last.
func (a *Adapter) Save(dir string) error {
	if err := a.Validate(); err != nil {
		return fmt.Errorf("adapter %s: %w", dir, err)
	}
	tensors := make([]NamedTensor, 0, 2*len(a.Layers))
	for _, l := range a.Layers {
		tensors = append(tensors,
			FloatTensor(keyPrefix+l.Name+suffixA, []int64{int64(l.Rank), int64(l.In)}, l.A),
			FloatTensor(keyPrefix+l.Name+suffixB, []int64{int64(l.Out), int64(l.Rank)}, l.B))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("adapter %s: %w", dir, err)
	}
	if err := WriteSafetensors(filepath.Join(dir, WeightsFile), tensors, map[string]string{"format": "pt"}); err != nil {
		return fmt.Errorf("adapter %s: %w", dir, err)
	}
	if err := WriteConfig(filepath.Join(dir, ConfigFile), a.Config); err != nil {
		return fmt.Errorf("adapter %s: %w", dir, err)
	}
	return nil
}

// Transpose returns the [cols, rows] transpose of a row-major [rows, cols]
// matrix. Graphs hold a layer's factors as lora_Aᵀ [in, r] and lora_Bᵀ
// [r, out], PEFT files as lora_A [r, in] and lora_B [out, r].
func Transpose(x []float32, rows, cols int) []float32 {
	out := make([]float32, len(x))
	for i := 0; i < rows; i++ {
		for j := 0; j < cols; j++ {
			out[j*rows+i] = x[i*cols+j]
		}
	}
	return out
}

// SortLayers orders the layers by name, as Layer's lookup expects.
func (a *Adapter) SortLayers() {
	sort.Slice(a.Layers, func(i, j int) bool { return a.Layers[i].Name < a.Layers[j].Name })
}
