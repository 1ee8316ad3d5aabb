package rewrite

import (
	"math"
	"strings"
	"testing"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/lora"
)

// seedModel is the README's example: y = x·W with W [5, 4] = 1..20.
func seedModel(t *testing.T) *graph.Model {
	t.Helper()
	m := graph.NewModel(17)
	g := m.Graph
	x := g.AddInput("x", &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Param: "batch"}, {Value: 5}}})
	w := make([]float32, 20)
	for i := range w {
		w[i] = float32(i + 1)
	}
	wt, err := graph.NewFloatTensor("seed.weight", graph.Float, []int64{5, 4}, w)
	if err != nil {
		t.Fatal(err)
	}
	b := &graph.Builder{G: g}
	y := b.Op("MatMul", "y", []*graph.Value{x, b.Const(wt)})
	y.Type = &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Param: "batch"}, {Value: 4}}}
	g.AddOutput(y)
	return m
}

// seedAdapter holds the README's A (in×r) and B (r×out) in PEFT layout.
func seedAdapter() *adapter.Adapter {
	A := [][]float32{{.1, .2}, {.3, .4}, {.5, .6}, {.7, .8}, {.9, 1}}
	B := [][]float32{{1.1, 1.2, 1.3, 1.4}, {1.5, 1.6, 1.7, 1.8}}
	l := adapter.Layer{Name: "seed", Rank: 2, In: 5, Out: 4}
	for k := 0; k < 2; k++ { // lora_A [r, in] = Aᵀ
		for i := 0; i < 5; i++ {
			l.A = append(l.A, A[i][k])
		}
	}
	for j := 0; j < 4; j++ { // lora_B [out, r] = Bᵀ
		for k := 0; k < 2; k++ {
			l.B = append(l.B, B[k][j])
		}
	}
	cfg := adapter.NewConfig(2, 2, "seed")
	return &adapter.Adapter{Config: cfg, Layers: []adapter.Layer{l}}
}

var seedFused = [][]float64{
	{1.41, 2.44, 3.47, 4.50},
	{5.93, 7.00, 8.07, 9.14},
	{10.45, 11.56, 12.67, 13.78},
	{14.97, 16.12, 17.27, 18.42},
	{19.49, 20.68, 21.87, 23.06},
}

func TestSeedFuse(t *testing.T) {
	for _, injected := range []bool{false, true} {
		m := seedModel(t)
		c := &Context{Lora: lora.Options{Adapter: seedAdapter()}, Verify: true}
		passes := []string{"strip", "fuse"}
		if injected {
			passes = append([]string{"inject"}, passes...)
		}
		if err := Run(m, c, passes...); err != nil {
			t.Fatal(err)
		}
		if len(m.Graph.Nodes) != 1 || len(m.Graph.Initializers) != 1 {
			t.Fatalf("fused graph is not the base graph:\n%s", graph.Format(m))
		}
		w, err := m.Graph.Lookup("seed.weight").Const.Floats()
		if err != nil {
			t.Fatal(err)
		}
		for i := range seedFused {
			for j, want := range seedFused[i] {
				if got := float64(w[i*4+j]); math.Abs(got-want) > 1e-5 {
					t.Errorf("injected=%v W'[%d][%d] = %.6f, want %.2f", injected, i, j, got, want)
				}
			}
		}
	}
}

func TestInjectNamesAndStripRestoresBase(t *testing.T) {
	m := seedModel(t)
	base := graph.Format(m)
	c := &Context{Lora: lora.Options{Config: adapter.NewConfig(2, 2), Init: lora.Init{Method: "kaiming", Seed: 1}}, Verify: true}
	if err := Run(m, c, "inject"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"seed.lora_A", "seed.lora_B", "seed.lora_scale", "y", "y.base"} {
		if m.Graph.Lookup(name) == nil {
			t.Errorf("injected graph lacks %q:\n%s", name, graph.Format(m))
		}
	}
	if m.Graph.Outputs[0].Name != "y" {
		t.Errorf("graph output renamed to %q", m.Graph.Outputs[0].Name)
	}
	// A LoRA branch's own MatMuls are never targets.
	ts, skips := lora.FindTargets(m)
	if len(ts) != 1 || len(skips) != 2 {
		t.Errorf("targets %d skips %v", len(ts), skips)
	}
	// A second inject refuses the target that already has a branch.
	if err := Run(m, &Context{Lora: lora.Options{Config: adapter.NewConfig(2, 2)}}, "inject"); err == nil {
		t.Error("double inject succeeded")
	}
	if err := Run(m, c, "strip"); err != nil {
		t.Fatal(err)
	}
	if got := graph.Format(m); got != base {
		t.Errorf("strip did not restore the base:\n%s\nwant\n%s", got, base)
	}
}

func TestFuseRejectsMismatch(t *testing.T) {
	m := seedModel(t)
	a := seedAdapter()
	a.Layers[0].Name = "other"
	if err := Run(m, &Context{Lora: lora.Options{Adapter: a}}, "fuse"); err == nil {
		t.Error("fuse accepted an adapter naming no target")
	}
	a = seedAdapter()
	a.Layers[0].In = 6
	if err := Run(seedModel(t), &Context{Lora: lora.Options{Adapter: a}}, "fuse"); err == nil {
		t.Error("fuse accepted a shape mismatch")
	}
}

func TestMatchAdapterNames(t *testing.T) {
	m := seedModel(t)
	targets, _ := lora.FindTargets(m)
	for name, how := range map[string]string{"seed": "name", "model.seed": "suffix"} {
		a := seedAdapter()
		a.Layers[0].Name = name
		ms, err := lora.MatchAdapter(targets, a)
		if err != nil || len(ms) != 1 || ms[0].How != how {
			t.Errorf("layer %q: %v %v", name, ms, err)
		}
	}
	a := seedAdapter()
	a.Layers = append(a.Layers, a.Layers[0])
	a.Layers[1].Name = "missing"
	if _, err := lora.MatchAdapter(targets, a); err == nil || !strings.Contains(err.Error(), `"missing" matches no target`) {
		t.Errorf("leftover layer: %v", err)
	}
}

// TestFuseLowPrecision fuses the seed adapter into fp16 and bf16 copies of
// the seed weight: each fused weight equals the fp32 result rounded once
// to the type (within half a unit in the last place).
func TestFuseLowPrecision(t *testing.T) {
	for _, dt := range []graph.DataType{graph.Float16, graph.BFloat16} {
		m := seedModel(t)
		w := m.Graph.Lookup("seed.weight").Const
		vals, _ := w.Floats()
		raw, err := graph.EncodeFloats(dt, vals)
		if err != nil {
			t.Fatal(err)
		}
		w.DType = dt
		w.SetBytes(raw)
		if err := Run(m, &Context{Lora: lora.Options{Adapter: seedAdapter()}}, "fuse"); err != nil {
			t.Fatal(err)
		}
		got, _ := w.Floats()
		ulp := math.Pow(2, -10) // fp16: 10 mantissa bits
		if dt == graph.BFloat16 {
			ulp = math.Pow(2, -7)
		}
		for i := range seedFused {
			for j, want := range seedFused[i] {
				g := float64(got[i*4+j])
				if math.Abs(g-want) > want*ulp/2*1.0001 {
					t.Errorf("%s W'[%d][%d] = %v, fp32 %v: more than half an ulp apart", dt, i, j, g, want)
				}
			}
		}
	}
}
