package rewrite

import (
	"strings"
	"testing"

	"github.com/loracc/loracc/graph"
)

// TestPassOrderTable: every constraint names passes of the table.
func TestPassOrderTable(t *testing.T) {
	known := map[string]bool{}
	for _, p := range Passes() {
		known[p.Name] = true
	}
	for _, r := range passOrder {
		for _, first := range strings.Split(r.first, "|") {
			if !known[first] || !known[r.then] || r.why == "" {
				t.Errorf("constraint %+v names an unknown pass or gives no reason", r)
			}
		}
	}
}

// TestRunChecksOrder: pipelines the table forbids are refused with the
// reason, before any pass runs; the order checks count passes an earlier
// Run on the same Context ran.
func TestRunChecksOrder(t *testing.T) {
	for _, tc := range []struct {
		pipe []string
		want string
	}{
		{[]string{"optimizer"}, `pass "optimizer" needs pass "autodiff" before it (or pass "reduced-grads")`},
		{[]string{"params", "loss", "grads"}, `pass "grads" needs pass "autodiff" before it`},
		{[]string{"params", "optimizer", "reduced-grads"}, `pass "reduced-grads" must run before pass "optimizer"`},
		{[]string{"params", "prune", "loss"}, `pass "loss" must run before pass "prune"`},
		{[]string{"fuse", "strip"}, `pass "strip" must run before pass "fuse"`},
		{[]string{"params", "autodiff"}, `pass "autodiff" needs pass "loss" before it: autodiff differentiates the loss`},
		{[]string{"inject", "nope"}, `unknown pass "nope"`},
	} {
		m := graph.NewModel(17)
		before := graph.Format(m)
		err := Run(m, &Context{}, tc.pipe...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want %q", tc.pipe, err, tc.want)
		}
		if graph.Format(m) != before {
			t.Errorf("%v: the model changed although the pipeline was refused", tc.pipe)
		}
	}
	if err := checkOrder([]string{"params", "loss"}, []string{"autodiff", "optimizer"}); err != nil {
		t.Errorf("passes of an earlier Run: %v", err)
	}
	if err := checkOrder(nil, []string{"params", "reduced-grads", "optimizer", "prune"}); err != nil {
		t.Errorf("the optimizer half of a split step: %v", err)
	}
	if err := checkOrder(nil, []string{"inject", "strip", "fuse"}); err != nil {
		t.Errorf("inject → strip → fuse: %v", err)
	}
}
