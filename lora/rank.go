package lora

import (
	"fmt"

	"github.com/loracc/loracc/adapter"
)

// LargeRankFactor is how many times the weights it adapts an adapter may
// be with Options.AllowLargeRank; without it, at most once.
const LargeRankFactor = 16

// CheckRanks bounds the ranks cfg gives the targets. The rule is on the
// whole adapter: its parameters, the sum of r·(in+out), may not exceed
// the targets' own weights, the sum of in·out. A LoRA adapter is meant to
// be a small fraction of them, so a larger one is a mistaken --rank (or,
// knowingly, allowLarge: up to LargeRankFactor times). Small layers such
// as a 3-class head may still take the global rank: the sum decides. The
// counts are summed in float64, so no rank overflows them, and the check
// runs before anything is allocated.
func CheckRanks(ts []*Target, cfg adapter.Config, allowLarge bool) error {
	var lora, weights float64
	var big *Target
	bigRank := 0
	for _, t := range ts {
		r := cfg.Rank(t.Name)
		if r <= 0 {
			return fmt.Errorf("target %q: rank %d must be positive", t.Name, r)
		}
		lora += float64(r) * float64(t.In+t.Out)
		weights += float64(t.In) * float64(t.Out)
		if big == nil || r > bigRank {
			big, bigRank = t, r
		}
	}
	limit, hint := 1.0, fmt.Sprintf("lower the rank, or pass --allow-large-rank (up to %d×)", LargeRankFactor)
	if allowLarge {
		limit, hint = LargeRankFactor, "lower the rank"
	}
	if lora > limit*weights {
		return fmt.Errorf("the adapter would have %.4g parameters, %.3g× the %.4g of the %d weights it adapts (rank %d on %q, [%d, %d]); %s",
			lora, lora/weights, weights, len(ts), bigRank, big.Name, big.In, big.Out, hint)
	}
	return nil
}
