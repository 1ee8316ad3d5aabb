package branch

import (
	"fmt"
	"strings"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/graph"
)

// Adapter reads the adapter an injected model carries: the
// values of every branch's lora_A/lora_B initializers and its scale, so a
// run can start from the model alone. cfg supplies PEFT fields the graph
// does not hold (nil: rank and alpha are recovered from shapes and scale).
func Adapter(m *graph.Model, cfg *adapter.Config) (*adapter.Adapter, error) {
	branches, err := Find(m.Graph)
	if err != nil {
		return nil, err
	}
	if len(branches) == 0 {
		return nil, fmt.Errorf("the model has no LoRA branches (run loracc inject first)")
	}
	out := &adapter.Adapter{}
	if cfg != nil {
		out.Config = *cfg
	}
	alphas := map[string]float64{}
	for _, br := range branches {
		name := br.Target
		if br.A.Const == nil || br.B.Const == nil {
			return nil, fmt.Errorf("branch %q: lora_A/lora_B are not initializers (a model injected with --adapter-inputs needs --adapter)", name)
		}
		av, err := br.A.Const.Floats()
		if err != nil {
			return nil, err
		}
		bv, err := br.B.Const.Floats()
		if err != nil {
			return nil, err
		}
		ad, bd := br.A.Const.Dims, br.B.Const.Dims
		if len(ad) != 2 || len(bd) != 2 || ad[1] != bd[0] {
			return nil, fmt.Errorf("branch %q: lora_A %v and lora_B %v are not [in, r] and [r, out]", name, ad, bd)
		}
		r := int(ad[1])
		l, err := FromParams(adapter.Layer{Name: name, Rank: r, In: int(ad[0]), Out: int(bd[1])}, av, bv)
		if err != nil {
			return nil, err
		}
		out.Layers = append(out.Layers, l)
		if br.Scale != nil && br.Scale.Const != nil {
			if s, err := br.Scale.Const.Floats(); err == nil && len(s) == 1 {
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
