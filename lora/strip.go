package lora

// Pass "strip".
//
// Pre:  none (a model without branches is left as it is).
// Post: every LoRA branch inject added (nodes marked branch.Key) is gone,
//       with the initializers and graph inputs only it read; readers of a
//       branch's sum read the base output again, which takes back its
//       original name, so the graph is the base graph.

import (
	"github.com/loracc/loracc/branch"
	"github.com/loracc/loracc/graph"
)

// Strip is pass "strip".
func Strip(m *graph.Model, c *Options) error {
	count := 0
	var graphs []*graph.Graph
	graphs = append(graphs, m.Graph)
	m.Graph.Walk(func(n *graph.Node) { graphs = append(graphs, n.Subgraphs()...) })
	for _, g := range graphs {
		n, err := stripGraph(g)
		if err != nil {
			return err
		}
		count += n
	}
	if count > 0 {
		c.logf("removed %d LoRA branches", count)
	}
	return nil
}

func stripGraph(g *graph.Graph) (int, error) {
	var adds []*graph.Node
	for _, n := range g.Nodes {
		if n.Op == "Add" && n.MetadataValue(branch.Key) != "" {
			adds = append(adds, n)
		}
	}
	var feeds []*graph.Value // constants and inputs the branches read
	for _, add := range adds {
		base, sum := add.Input(0), add.Output(0)
		name := sum.Name
		if base.Type == nil && sum.Type != nil {
			// the base output may be an output again: it needs the type
			tt := *sum.Type
			base.Type = &tt
		}
		base.DocString, base.Metadata = sum.DocString, sum.Metadata
		sum.ReplaceAllUsesWith(base)
		if err := g.RemoveNode(add); err != nil {
			return 0, err
		}
		if err := base.Rename(name); err != nil {
			return 0, err
		}
	}
	// Remove the rest of the branches from the sum backwards: a branch node
	// goes once nothing reads its outputs.
	for changed := true; changed; {
		changed = false
		for _, n := range g.Nodes {
			if n.MetadataValue(branch.Key) == "" || !unused(n) {
				continue
			}
			for _, in := range n.Inputs() {
				if in != nil {
					feeds = append(feeds, in)
				}
			}
			if err := g.RemoveNode(n); err != nil {
				return 0, err
			}
			changed = true
			break
		}
	}
	seen := map[*graph.Value]bool{}
	for _, v := range feeds {
		if seen[v] || v.NumUses() > 0 || v.IsGraphOutput() {
			continue
		}
		seen[v] = true
		if v.Graph() == nil {
			continue
		}
		owner := v.Graph()
		var err error
		switch {
		case v.IsGraphInput():
			err = owner.RemoveInput(v)
		case v.Const != nil:
			err = owner.RemoveInitializer(v)
		}
		if err != nil {
			return 0, err
		}
	}
	return len(adds), nil
}

func unused(n *graph.Node) bool {
	for _, o := range n.Outputs() {
		if o != nil && (o.NumUses() > 0 || o.IsGraphOutput()) {
			return false
		}
	}
	return true
}
