// Package train runs compiled training graphs: the step loop with its
// learning-rate schedule, evaluation, checkpoints that survive crashes,
// metrics and resumption. It knows graphs only through train.json
// (package trainio) and feeds ONNX Runtime through package runtime.
package train

import (
	"fmt"
	"strings"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/runtime"
)

// Params holds the adapter tensors as the training graph takes them:
// "<target>.lora_A" [in, r] and "<target>.lora_B" [r, out], float32.
type Params map[string]runtime.Tensor

// FromAdapter lays out a PEFT adapter (lora_A [r, in], lora_B [out, r]) as
// graph params (their transposes).
func FromAdapter(a *adapter.Adapter) Params {
	p := Params{}
	for _, l := range a.Layers {
		p[l.Name+".lora_A"] = runtime.FloatTensor([]int64{int64(l.In), int64(l.Rank)}, adapter.Transpose(l.A, l.Rank, l.In))
		p[l.Name+".lora_B"] = runtime.FloatTensor([]int64{int64(l.Rank), int64(l.Out)}, adapter.Transpose(l.B, l.Out, l.Rank))
	}
	return p
}

// ToAdapter writes params back into a copy of the adapter's layout.
func ToAdapter(p Params, like *adapter.Adapter) (*adapter.Adapter, error) {
	out := &adapter.Adapter{Config: like.Config}
	for _, l := range like.Layers {
		a, b := p[l.Name+".lora_A"], p[l.Name+".lora_B"]
		av, err := a.Floats()
		if err != nil {
			return nil, fmt.Errorf("param %q: %w", l.Name+".lora_A", err)
		}
		bv, err := b.Floats()
		if err != nil {
			return nil, fmt.Errorf("param %q: %w", l.Name+".lora_B", err)
		}
		if len(av) != l.In*l.Rank || len(bv) != l.Rank*l.Out {
			return nil, fmt.Errorf("layer %q: params have %d and %d values, want %d and %d", l.Name, len(av), len(bv), l.In*l.Rank, l.Rank*l.Out)
		}
		nl := l
		nl.A = adapter.Transpose(av, l.In, l.Rank)
		nl.B = adapter.Transpose(bv, l.Rank, l.Out)
		out.Layers = append(out.Layers, nl)
	}
	return out, nil
}

// AdapterFromModel reads the adapter an injected model carries: the
// values of every branch's lora_A/lora_B initializers and its scale, so a
// run can start from the model alone. cfg supplies PEFT fields the graph
// does not hold (nil: rank and alpha are recovered from shapes and scale).
func AdapterFromModel(m *graph.Model, branchKey string, cfg *adapter.Config) (*adapter.Adapter, error) {
	type pair struct{ a, b, s *graph.Value }
	pairs := map[string]*pair{}
	var order []string
	m.Graph.Walk(func(n *graph.Node) {
		name := n.MetadataValue(branchKey)
		if name == "" {
			return
		}
		p := pairs[name]
		if p == nil {
			p = &pair{}
			pairs[name] = p
			order = append(order, name)
		}
		switch n.Op {
		case "MatMul":
			if p.a == nil {
				p.a = n.Input(1)
			} else {
				p.b = n.Input(1)
			}
		case "Mul":
			p.s = n.Input(1)
		}
	})
	if len(order) == 0 {
		return nil, fmt.Errorf("the model has no LoRA branches (run loracc inject first)")
	}
	out := &adapter.Adapter{}
	if cfg != nil {
		out.Config = *cfg
	}
	alphas := map[string]float64{}
	for _, name := range order {
		p := pairs[name]
		if p.a == nil || p.b == nil || p.a.Const == nil || p.b.Const == nil {
			return nil, fmt.Errorf("branch %q: lora_A/lora_B are not initializers (a model injected with --adapter-inputs needs --adapter)", name)
		}
		av, err := p.a.Const.Floats()
		if err != nil {
			return nil, err
		}
		bv, err := p.b.Const.Floats()
		if err != nil {
			return nil, err
		}
		in, r, out2 := int(p.a.Const.Dims[0]), int(p.a.Const.Dims[1]), int(p.b.Const.Dims[1])
		out.Layers = append(out.Layers, adapter.Layer{Name: name, Rank: r, In: in, Out: out2, A: adapter.Transpose(av, in, r), B: adapter.Transpose(bv, r, out2)})
		if p.s != nil && p.s.Const != nil {
			if s, err := p.s.Const.Floats(); err == nil && len(s) == 1 {
				alphas[name] = float64(s[0]) * float64(r)
			}
		}
	}
	if cfg == nil {
		out.Config = recoverConfig(out.Layers, alphas)
	}
	out.SortLayers()
	return out, nil
}

// recoverConfig builds a PEFT config from the layers' ranks and alphas:
// the most common rank and alpha become r and lora_alpha, the others
// patterns on their full names.
func recoverConfig(layers []adapter.Layer, alphas map[string]float64) adapter.Config {
	rc, ac := map[int]int{}, map[float64]int{}
	for _, l := range layers {
		rc[l.Rank]++
		ac[alphas[l.Name]]++
	}
	r, alpha := mostCommon(rc), mostCommon(ac)
	cfg := adapter.NewConfig(r, alpha)
	for _, l := range layers {
		cfg.TargetModules = append(cfg.TargetModules, l.Name)
		key := strings.ReplaceAll(l.Name, ".", `\.`) // PEFT anchors keys at a dot and the end
		if l.Rank != r {
			if cfg.RankPattern == nil {
				cfg.RankPattern = map[string]int{}
			}
			cfg.RankPattern[key] = l.Rank
		}
		if a := alphas[l.Name]; a != alpha {
			if cfg.AlphaPattern == nil {
				cfg.AlphaPattern = map[string]float64{}
			}
			cfg.AlphaPattern[key] = a
		}
	}
	return cfg
}

func mostCommon[K int | float64](m map[K]int) K {
	var best K
	n := -1
	for k, c := range m {
		if c > n || (c == n && k < best) {
			best, n = k, c
		}
	}
	return best
}
