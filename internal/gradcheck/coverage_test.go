package gradcheck

import (
	"slices"
	"strings"
	"testing"

	"github.com/loracc/loracc/autodiff"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
)

// allCases is every finite-difference case of this package.
func allCases() []Case {
	return slices.Concat(cases(), convCases(), nbitsCases(), skipNormCases())
}

// TestEveryRuleHasACase fails naming each op of autodiff's rule table
// that no finite-difference case differentiates. An op counts only where
// a case's forward graph has it on a path from a parameter to the output
// (so a Cast of an integer input, which gets no gradient, does not cover
// Cast); the ops are read from the graphs the cases build, not from their
// names.
func TestEveryRuleHasACase(t *testing.T) {
	covered := map[string][]string{}
	for _, c := range allCases() {
		mc, _, err := build(c)
		if err != nil {
			t.Fatalf("case %q: %v", c.Name, err)
		}
		ops := differentiatedOps(mc)
		if len(ops) == 0 {
			t.Errorf("case %q differentiates no op", c.Name)
		}
		for _, op := range ops {
			covered[op] = append(covered[op], c.Name)
		}
	}
	rules := autodiff.RuleOps()
	if len(rules) == 0 {
		t.Fatal("autodiff.RuleOps is empty")
	}
	var missing []string
	for _, op := range rules {
		if len(covered[op]) == 0 {
			missing = append(missing, op)
		}
	}
	if len(missing) > 0 {
		t.Errorf("gradient rules without a finite-difference case: %s", strings.Join(missing, ", "))
	}
	for op := range covered {
		if !slices.Contains(rules, op) {
			t.Errorf("cases differentiate %s, which has no rule (cases: %v)", op, covered[op])
		}
	}
}

// differentiatedOps is the rule-table keys of the nodes of mc's forward
// graph that lie between a parameter and the output.
func differentiatedOps(mc Model) []string {
	g := mc.M.Graph
	if err := g.SortTopo(); err != nil {
		return nil
	}
	inf := infer.New()
	fromParam := map[*graph.Value]bool{}
	for _, p := range mc.Params {
		fromParam[p] = true
	}
	for _, n := range g.Nodes {
		hit := false
		for _, in := range n.Inputs() {
			hit = hit || fromParam[in]
		}
		for _, o := range n.Outputs() {
			if dt := inf.DType(o); o != nil && hit && (dt == graph.Undefined || dt.IsFloat()) { // as autodiff: a bool or integer output carries no gradient
				fromParam[o] = true
			}
		}
	}
	toY := map[*graph.Value]bool{mc.Y: true}
	var ops []string
	for i := len(g.Nodes) - 1; i >= 0; i-- {
		n := g.Nodes[i]
		on := false
		for _, o := range n.Outputs() {
			on = on || (o != nil && toY[o] && fromParam[o])
		}
		if !on {
			continue
		}
		key := n.Op
		if n.Domain != "" && n.Domain != "ai.onnx" {
			key = n.Domain + "::" + n.Op
		}
		for _, in := range n.Inputs() {
			if in != nil && fromParam[in] && !isDiscrete(in) {
				toY[in] = true
			}
		}
		if slices.ContainsFunc(n.Inputs(), func(in *graph.Value) bool { return in != nil && fromParam[in] && !isDiscrete(in) }) {
			ops = append(ops, key)
		}
	}
	return ops
}

// isDiscrete reports whether v is declared with an integer or bool type
// (such a value carries no gradient).
func isDiscrete(v *graph.Value) bool {
	return v.Type != nil && v.Type.DType != graph.Undefined && !v.Type.DType.IsFloat()
}
