package lora

import (
	"fmt"
	"sort"
	"strings"

	"github.com/loracc/loracc/adapter"
)

// LayerMatch records which target an adapter layer was matched to, and how.
type LayerMatch struct {
	Layer  string // the adapter's module path (PEFT key without prefix and suffix)
	Target *Target
	How    string // "name", "suffix" or "weight name"
}

// MatchAdapter pairs every adapter layer with a target of the model. An
// adapter made by PEFT names PyTorch modules; the ONNX export may name
// targets with a prefix or suffix more or less (an export wrapper, a
// different root module) or only by weight. A layer matches, in order:
// the target of the same name; the single target whose name and the
// layer's end in each other at a dot; the target whose weight is named
// "<layer>.weight"; and, for onnxruntime-genai's models, the same with the
// layer's "self_attn" read as "attn". The shapes must agree ([in, out] of the module, in the
// target's orientation). Layers that match nothing, several targets, or a
// target of another shape are errors, listed together.
func MatchAdapter(targets []*Target, a *adapter.Adapter) ([]LayerMatch, error) {
	byName := map[string]*Target{}
	for _, t := range targets {
		byName[t.Name] = t
	}
	var out []LayerMatch
	var problems []string
	used := map[*Target]string{}
	// find applies the first three rules to name; ambiguous names a
	// problem.
	find := func(name string) (t *Target, how, ambiguous string) {
		if t := byName[name]; t != nil {
			return t, "name", ""
		}
		var cands []*Target
		for _, c := range targets {
			if strings.HasSuffix(c.Name, "."+name) || strings.HasSuffix(name, "."+c.Name) {
				cands = append(cands, c)
			}
		}
		switch len(cands) {
		case 1:
			return cands[0], "suffix", ""
		case 0:
			for _, c := range targets {
				if c.Weight.Name == name+".weight" {
					return c, "weight name", ""
				}
			}
			return nil, "", ""
		}
		var names []string
		for _, c := range cands {
			names = append(names, c.Name)
		}
		return nil, "", fmt.Sprintf("%q matches several targets (%s)", name, strings.Join(names, ", "))
	}
	for _, l := range a.Layers {
		t, how, ambiguous := find(l.Name)
		// onnxruntime-genai's model builder names a layer's attention
		// "attn" where Hugging Face (and so PEFT) names it "self_attn".
		if alias := strings.ReplaceAll(l.Name, ".self_attn.", ".attn."); t == nil && ambiguous == "" && alias != l.Name {
			if t, _, ambiguous = find(alias); t != nil {
				how = "genai name (self_attn as attn)"
			}
		}
		if ambiguous != "" {
			problems = append(problems, ambiguous)
			continue
		}
		if t == nil {
			problems = append(problems, fmt.Sprintf("%q matches no target", l.Name))
			continue
		}
		if int64(l.In) != t.In || int64(l.Out) != t.Out {
			problems = append(problems, fmt.Sprintf("%q is [in=%d, out=%d] but its target %q (node %q, %s, weight %q) is [in=%d, out=%d]",
				l.Name, l.In, l.Out, t.Name, t.Node.Name, t.Node.Op, t.Weight.Name, t.In, t.Out))
			continue
		}
		if prev, dup := used[t]; dup {
			problems = append(problems, fmt.Sprintf("%q and %q both match target %q", prev, l.Name, t.Name))
			continue
		}
		used[t] = l.Name
		out = append(out, LayerMatch{Layer: l.Name, Target: t, How: how})
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		return nil, fmt.Errorf("%w: %s (targets in the model: %s)", ErrMismatch, strings.Join(problems, "; "), targetList(targets))
	}
	return out, nil
}

// reportMatches logs every adapter key matched, and the model's targets
// the adapter leaves alone.
func reportMatches(c *Options, targets []*Target, ms []LayerMatch) {
	matched := map[*Target]bool{}
	for _, m := range ms {
		matched[m.Target] = true
		c.logf("adapter layer %s → node %q (%s, weight %q) by %s", m.Layer, m.Target.Node.Name, m.Target.Node.Op, m.Target.Weight.Name, m.How)
	}
	var left []string
	for _, t := range targets {
		if !matched[t] {
			left = append(left, t.Name)
		}
	}
	if len(left) > 0 {
		c.logf("%d targets have no adapter layer and stay as they are: %s", len(left), strings.Join(left, ", "))
	}
}
