package rewrite

import (
	"os"
	"testing"

	"github.com/loracc/loracc/graph"
)

func TestZZDebugDims(t *testing.T) {
	if os.Getenv("ZZ_MODEL") == "" {
		t.Skip()
	}
	m, err := graph.Load(os.Getenv("ZZ_MODEL"))
	if err != nil {
		t.Fatal(err)
	}
	inf := newInferer()
	for _, n := range m.Graph.Nodes {
		if n.Op == "Constant" {
			continue
		}
		for _, o := range n.Outputs() {
			if o != nil {
				in := inf.info(o)
				t.Logf("%-40s %-12s r=%d %v", o.Name, n.Op, in.rank, in.dims)
			}
		}
	}
}
