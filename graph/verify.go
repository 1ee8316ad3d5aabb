package graph

import (
	"errors"
	"fmt"
)

// Verify checks the IR invariants listed in the package doc on g and its
// subgraphs. Passes run it in tests after every rewrite.
func (g *Graph) Verify() error {
	var errs []error
	uses := map[*Value][]Use{}
	var visit func(*Graph)
	visit = func(sg *Graph) {
		for _, n := range sg.Nodes {
			if n.graph != sg {
				errs = append(errs, fmt.Errorf("node %q (%s) has a stale graph pointer", n.Name, n.Op))
			}
			for i, v := range n.inputs {
				if v == nil {
					continue
				}
				uses[v] = append(uses[v], Use{n, i})
				if sg.Lookup(v.Name) != v {
					errs = append(errs, fmt.Errorf("node %q (%s): input %q is not visible from graph %q", n.Name, n.Op, v.Name, sg.Name))
				}
			}
			for i, o := range n.outputs {
				if o != nil && (o.producer != n || o.outIndex != i) {
					errs = append(errs, fmt.Errorf("node %q (%s): output %q has producer mismatch", n.Name, n.Op, o.Name))
				}
			}
			for _, s := range n.Subgraphs() {
				if s.Parent != sg || s.Owner != n {
					errs = append(errs, fmt.Errorf("node %q (%s): subgraph %q has wrong parent", n.Name, n.Op, s.Name))
				}
				visit(s)
			}
		}
		for _, o := range sg.Outputs {
			if sg.Lookup(o.Name) != o {
				errs = append(errs, fmt.Errorf("graph %q: output %q is not defined", sg.Name, o.Name))
			}
		}
		for _, v := range sg.values {
			if v.Const != nil && v.producer != nil {
				errs = append(errs, fmt.Errorf("value %q is both an initializer and a node output", v.Name))
			}
		}
	}
	visit(g)
	var check func(*Graph)
	check = func(sg *Graph) {
		for _, v := range sg.values {
			if !sameUses(v.uses, uses[v]) {
				errs = append(errs, fmt.Errorf("value %q: use list %d entries, graph has %d readers", v.Name, len(v.uses), len(uses[v])))
			}
		}
		for _, n := range sg.Nodes {
			for _, s := range n.Subgraphs() {
				check(s)
			}
		}
	}
	check(g)
	return errors.Join(errs...)
}

func sameUses(a, b []Use) bool {
	if len(a) != len(b) {
		return false
	}
	count := map[Use]int{}
	for _, u := range a {
		count[u]++
	}
	for _, u := range b {
		count[u]--
	}
	for _, c := range count {
		if c != 0 {
			return false
		}
	}
	return true
}
