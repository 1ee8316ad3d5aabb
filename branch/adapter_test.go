package branch

import (
	"reflect"
	"slices"
	"testing"

	"github.com/loracc/loracc/adapter"
)

// TestRecoverConfig: rank and alpha recovered from a model's branches
// become r and lora_alpha where most layers agree, and patterns, on names
// escaped the way PEFT matches them, where a layer differs.
func TestRecoverConfig(t *testing.T) {
	layers := []adapter.Layer{{Name: "h.0.attn.c_attn", Rank: 4}, {Name: "h.0.mlp.c_fc", Rank: 8}, {Name: "h.1.attn.c_attn", Rank: 4}}
	alphas := map[string]float64{"h.0.attn.c_attn": 8, "h.0.mlp.c_fc": 8, "h.1.attn.c_attn": 16}
	cfg := recoverConfig(layers, alphas)
	if cfg.R != 4 || cfg.LoraAlpha != 8 {
		t.Errorf("r %d, alpha %g; want the most common, 4 and 8", cfg.R, cfg.LoraAlpha)
	}
	if want := map[string]int{`h\.0\.mlp\.c_fc`: 8}; !reflect.DeepEqual(cfg.RankPattern, want) {
		t.Errorf("rank pattern %v, want %v", cfg.RankPattern, want)
	}
	if want := map[string]float64{`h\.1\.attn\.c_attn`: 16}; !reflect.DeepEqual(cfg.AlphaPattern, want) {
		t.Errorf("alpha pattern %v, want %v", cfg.AlphaPattern, want)
	}
	if !slices.Equal(cfg.TargetModules, []string{"h.0.attn.c_attn", "h.0.mlp.c_fc", "h.1.attn.c_attn"}) || cfg.PeftType != "LORA" {
		t.Errorf("targets %v, type %q", cfg.TargetModules, cfg.PeftType)
	}
	// Each layer resolves back to its own rank and alpha.
	for _, l := range layers {
		if r, a := cfg.Rank(l.Name), cfg.Alpha(l.Name); r != l.Rank || a != alphas[l.Name] {
			t.Errorf("%s resolves to rank %d alpha %g, want %d and %g", l.Name, r, a, l.Rank, alphas[l.Name])
		}
	}

	// Uniform layers need no patterns; a tie goes to the smaller value,
	// so the result does not depend on map order.
	cfg = recoverConfig([]adapter.Layer{{Name: "a", Rank: 2}, {Name: "b", Rank: 2}}, map[string]float64{"a": 4, "b": 4})
	if cfg.R != 2 || cfg.LoraAlpha != 4 || len(cfg.RankPattern) != 0 || len(cfg.AlphaPattern) != 0 {
		t.Errorf("uniform layers: %+v", cfg)
	}
	for range 20 {
		cfg = recoverConfig([]adapter.Layer{{Name: "a", Rank: 8}, {Name: "b", Rank: 2}}, map[string]float64{"a": 16, "b": 2})
		if cfg.R != 2 || cfg.LoraAlpha != 2 || !reflect.DeepEqual(cfg.RankPattern, map[string]int{"a": 8}) {
			t.Fatalf("a tie: r %d alpha %g rank pattern %v, want 2, 2 and a: 8", cfg.R, cfg.LoraAlpha, cfg.RankPattern)
		}
	}
}
