package adapter

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/loracc/loracc/graph"
)

func seq(n int, start float32) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = start + float32(i)/8
	}
	return v
}

func sampleAdapter() *Adapter {
	cfg := NewConfig(2, 4, "q_proj", "v_proj")
	cfg.RankPattern = map[string]int{"v_proj": 1}
	return &Adapter{
		Config: cfg,
		Layers: []Layer{
			{Name: "model.layers.0.self_attn.q_proj", Rank: 2, In: 3, Out: 4, A: seq(6, 0), B: seq(8, -1)},
			{Name: "model.layers.0.self_attn.v_proj", Rank: 1, In: 3, Out: 2, A: seq(3, 1), B: seq(2, 2)},
		},
	}
}

func TestAdapterRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "adapter") // Save creates it
	in := sampleAdapter()
	if err := in.Save(dir); err != nil {
		t.Fatal(err)
	}
	out, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(out.Layers, in.Layers) {
		t.Errorf("layers changed:\n%+v\n%+v", out.Layers, in.Layers)
	}
	if !reflect.DeepEqual(out.Config, in.Config) {
		t.Errorf("config changed:\n%+v\n%+v", out.Config, in.Config)
	}
	if l := out.Layer("model.layers.0.self_attn.v_proj"); l == nil || l.Rank != 1 {
		t.Errorf("Layer lookup: %+v", l)
	}
	f, err := ReadSafetensors(filepath.Join(dir, WeightsFile))
	if err != nil {
		t.Fatal(err)
	}
	if f.Metadata["format"] != "pt" {
		t.Errorf("metadata %v lacks format=pt", f.Metadata)
	}
	a := f.Tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
	if a == nil || a.DType != graph.Float || !reflect.DeepEqual(a.Shape, []int64{2, 3}) {
		t.Errorf("lora_A tensor: %+v", a)
	}
}

func TestAdapterSaveDeterministic(t *testing.T) {
	root := t.TempDir()
	d1, d2 := filepath.Join(root, "1"), filepath.Join(root, "2")
	a := sampleAdapter()
	if err := a.Save(d1); err != nil {
		t.Fatal(err)
	}
	b := sampleAdapter()
	b.Layers[0], b.Layers[1] = b.Layers[1], b.Layers[0] // order must not matter
	if err := b.Save(d2); err != nil {
		t.Fatal(err)
	}
	if err := a.Save(d1); err != nil { // overwrite in place
		t.Fatal(err)
	}
	for _, name := range []string{ConfigFile, WeightsFile} {
		x, _ := os.ReadFile(filepath.Join(d1, name))
		y, _ := os.ReadFile(filepath.Join(d2, name))
		if len(x) == 0 || !bytes.Equal(x, y) {
			t.Errorf("%s differs between identical saves", name)
		}
	}
	ents, _ := os.ReadDir(d1)
	if len(ents) != 2 {
		t.Errorf("%d files in the adapter directory, want 2", len(ents))
	}
}

// TestLoadHalfPrecision loads weights stored as F16, BF16 and F64.
func TestLoadHalfPrecision(t *testing.T) {
	for _, dt := range []graph.DataType{graph.Float16, graph.BFloat16, graph.Double} {
		dir := t.TempDir()
		if err := WriteConfig(filepath.Join(dir, ConfigFile), NewConfig(1, 1)); err != nil {
			t.Fatal(err)
		}
		av, bv := []float32{0.5, -1.25}, []float32{3, 0.375, -2}
		ar, _ := graph.EncodeFloats(dt, av)
		br, _ := graph.EncodeFloats(dt, bv)
		tensors := []NamedTensor{
			{Name: "base_model.model.m.lora_A.weight", DType: dt, Shape: []int64{1, 2}, Data: ar},
			{Name: "base_model.model.m.lora_B.weight", DType: dt, Shape: []int64{3, 1}, Data: br},
		}
		if err := WriteSafetensors(filepath.Join(dir, WeightsFile), tensors, nil); err != nil {
			t.Fatal(err)
		}
		ad, err := Load(dir)
		if err != nil {
			t.Fatalf("%s: %v", dt, err)
		}
		l := ad.Layers[0]
		if l.Name != "m" || l.Rank != 1 || l.In != 2 || l.Out != 3 || !reflect.DeepEqual(l.A, av) || !reflect.DeepEqual(l.B, bv) {
			t.Errorf("%s: %+v", dt, l)
		}
	}
}

// TestLoadPEFTReference loads adapters saved by PEFT 0.21 itself, when the
// reference data is present.
func TestLoadPEFTReference(t *testing.T) {
	dirs, _ := filepath.Glob("../testdata/ref/*_lora_init")
	if len(dirs) == 0 {
		t.Skip("no PEFT reference adapters in ../testdata/ref")
	}
	for _, dir := range dirs {
		ad, err := Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(ad.Layers) == 0 {
			t.Fatalf("%s: no layers", dir)
		}
		for _, l := range ad.Layers {
			if l.Rank != ad.Config.R || len(l.A) != l.Rank*l.In || len(l.B) != l.Out*l.Rank {
				t.Errorf("%s: layer %q: %d×%d×%d", dir, l.Name, l.Rank, l.In, l.Out)
			}
		}
		// Saving it again reproduces PEFT's weights file byte for byte.
		out := t.TempDir()
		if err := ad.Save(out); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(filepath.Join(out, WeightsFile))
		want, _ := os.ReadFile(filepath.Join(dir, WeightsFile))
		if !bytes.Equal(got, want) {
			t.Errorf("%s: re-saved weights differ from PEFT's", dir)
		}
		back, err := ReadConfig(filepath.Join(out, ConfigFile))
		if err != nil || !reflect.DeepEqual(back, ad.Config) {
			t.Errorf("%s: re-saved config: %v", dir, err)
		}
	}
}

func TestLoadErrors(t *testing.T) {
	f32 := func(name string, shape ...int64) NamedTensor {
		n := int64(1)
		for _, d := range shape {
			n *= d
		}
		return FloatTensor(name, shape, make([]float32, n))
	}
	const pa, pb = "base_model.model.m.lora_A.weight", "base_model.model.m.lora_B.weight"
	for _, tc := range []struct {
		name    string
		cfg     Config
		tensors []NamedTensor
		want    []string
	}{
		{"unknown keys", NewConfig(2, 2), []NamedTensor{f32(pa, 2, 3), f32(pb, 4, 2),
			f32("base_model.model.m.lora_magnitude_vector", 4), f32("base_model.model.m.lora_B.bias", 4), f32("model.m.lora_A.weight", 2, 3)},
			[]string{"unexpected keys", "lora_magnitude_vector", "lora_B.bias", "model.m.lora_A.weight"}},
		{"adapter-name infix", NewConfig(2, 2), []NamedTensor{f32("base_model.model.m.lora_A.default.weight", 2, 3)},
			[]string{"lora_A.default.weight"}},
		{"missing B", NewConfig(2, 2), []NamedTensor{f32(pa, 2, 3)}, []string{pa, "lora_B.weight"}},
		{"missing A", NewConfig(2, 2), []NamedTensor{f32(pb, 4, 2)}, []string{pb, "lora_A.weight"}},
		{"rank disagreement", NewConfig(2, 2), []NamedTensor{f32(pa, 2, 3), f32(pb, 4, 3)}, []string{`"m"`, "[2 3]", "[4 3]"}},
		{"rank vs config", NewConfig(4, 2), []NamedTensor{f32(pa, 2, 3), f32(pb, 4, 2)}, []string{`"m"`, "rank 2", "rank 4"}},
		{"1-D A", NewConfig(2, 2), []NamedTensor{f32(pa, 6), f32(pb, 4, 2)}, []string{pa, "[6]"}},
		{"3-D B", NewConfig(2, 2), []NamedTensor{f32(pa, 2, 3), f32(pb, 4, 2, 1)}, []string{pb, "[4 2 1]"}},
		{"zero dim", NewConfig(2, 2), []NamedTensor{f32(pa, 2, 0), f32(pb, 4, 2)}, []string{pa, "[2 0]"}},
		{"int weights", NewConfig(2, 2), []NamedTensor{{Name: pa, DType: graph.Int32, Shape: []int64{2, 3}, Data: make([]byte, 24)}, f32(pb, 4, 2)},
			[]string{pa, "int32"}},
		{"NaN in B", NewConfig(2, 2), []NamedTensor{f32(pa, 2, 3), FloatTensor(pb, []int64{4, 2}, []float32{0, 0, 0, float32(math.NaN()), 0, 0, 0, 0})},
			[]string{pb, "element 3 is NaN", "finite"}},
		{"Inf in A", NewConfig(2, 2), []NamedTensor{FloatTensor(pa, []int64{2, 3}, []float32{float32(math.Inf(-1)), 0, 0, 0, 0, 0}), f32(pb, 4, 2)},
			[]string{pa, "element 0 is -Inf"}},
		{"dora", func() Config { c := NewConfig(2, 2); c.UseDora = true; return c }(), []NamedTensor{f32(pa, 2, 3), f32(pb, 4, 2)}, []string{"use_dora"}},
	} {
		dir := t.TempDir()
		if err := WriteConfig(filepath.Join(dir, ConfigFile), tc.cfg); err != nil {
			t.Fatal(err)
		}
		if err := WriteSafetensors(filepath.Join(dir, WeightsFile), tc.tensors, nil); err != nil {
			t.Fatal(err)
		}
		_, err := Load(dir)
		if err == nil {
			t.Errorf("%s: no error", tc.name)
			continue
		}
		for _, w := range append([]string{dir}, tc.want...) {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not mention %q", tc.name, err, w)
			}
		}
	}
	// Missing files.
	dir := t.TempDir()
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), ConfigFile) {
		t.Errorf("no config: %v", err)
	}
	if err := WriteConfig(filepath.Join(dir, ConfigFile), NewConfig(2, 2)); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), WeightsFile) {
		t.Errorf("no weights: %v", err)
	}
}

func TestSaveRejects(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*Adapter)
		want   string
	}{
		{"short A", func(a *Adapter) { a.Layers[0].A = a.Layers[0].A[1:] }, "A has 5 values"},
		{"short B", func(a *Adapter) { a.Layers[1].B = nil }, "B has 0 values"},
		{"duplicate", func(a *Adapter) { a.Layers[1].Name = a.Layers[0].Name }, "twice"},
		{"no name", func(a *Adapter) { a.Layers[0].Name = "" }, "no name"},
		{"rank vs config", func(a *Adapter) { a.Config.RankPattern = nil }, "config gives rank 2"},
		{"zero rank", func(a *Adapter) { a.Layers[0].Rank, a.Layers[0].A, a.Layers[0].B = 0, nil, nil }, "positive"},
		{"bad config", func(a *Adapter) { a.Config.R = 0 }, "r is 0"},
	} {
		a := sampleAdapter()
		tc.mutate(a)
		dir := filepath.Join(t.TempDir(), "out")
		err := a.Save(dir)
		if err == nil || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one naming %s and %q", tc.name, err, dir, tc.want)
		}
		if _, serr := os.Stat(dir); serr == nil {
			t.Errorf("%s: directory created despite the error", tc.name)
		}
	}
}
