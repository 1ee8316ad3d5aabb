package lora

import (
	"bytes"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/testmodels"
)

// TestUnpackRepack: unless told to keep it (or given an adapter of the
// packed module), unpack splits each packed qkv_proj that
// GroupQueryAttention reads into q_proj, k_proj and v_proj targets of the
// right widths, whose weights are the packed weight's column blocks
// (MatMul) or row blocks (MatMulNBits); repack restores the packed graph
// exactly: the same nodes in the same order, the same initializers, byte
// for byte.
func TestUnpackRepack(t *testing.T) {
	for _, int4 := range []bool{false, true} {
		t.Run(fmt.Sprintf("int4=%v", int4), func(t *testing.T) {
			o := testmodels.TinyGenai()
			o.Packed, o.Int4 = true, int4
			m, err := testmodels.GenaiLlama(o)
			if err != nil {
				t.Fatal(err)
			}
			before := snapshot(t, m)
			// Kept whole when asked, or for an adapter of the packed module.
			phi3 := &adapter.Adapter{Layers: []adapter.Layer{{Name: "model.layers.0.self_attn.qkv_proj"}}}
			for _, c := range []*Options{{KeepPacked: true}, {Adapter: phi3}} {
				if n, err := Unpack(m, c); n != 0 || err != nil {
					t.Fatalf("unpack with %+v split %d (%v)", c, n, err)
				}
			}
			n, err := Unpack(m, nil)
			if err != nil || n != int(o.Layers) {
				t.Fatalf("unpack split %d projections (%v), want %d", n, err, o.Layers)
			}
			if err := m.Graph.Verify(); err != nil {
				t.Fatal(err)
			}
			all, _ := FindTargets(m)
			widths := map[string]int64{}
			for _, tg := range all {
				widths[tg.Name] = tg.Out
			}
			head := o.Hidden / o.Heads
			for part, want := range map[string]int64{"q_proj": o.Heads * head, "k_proj": o.KVHeads * head, "v_proj": o.KVHeads * head} {
				if got := widths["model.layers.1.attn."+part]; got != want {
					t.Errorf("target model.layers.1.attn.%s has %d outputs, want %d (targets %v)", part, got, want, widths)
				}
			}
			if _, ok := widths["model.layers.1.attn.qkv_proj"]; ok {
				t.Errorf("the packed projection is still a target")
			}
			if !int4 {
				// The q block of row r is the packed row's first columns.
				ref, err := testmodels.GenaiLlama(o)
				if err != nil {
					t.Fatal(err)
				}
				packed := graph.ConstTensor(findValue(t, ref, "model.layers.0.attn.qkv_proj.MatMul.weight"))
				q := graph.ConstTensor(findValue(t, m, "model.layers.0.attn.q_proj.MatMul.weight"))
				pv, _ := packed.Floats()
				qv, _ := q.Floats()
				w, qw := packed.Dims[1], q.Dims[1]
				for r := range q.Dims[0] {
					for c := range qw {
						if qv[r*qw+c] != pv[r*w+c] {
							t.Fatalf("q_proj[%d, %d] = %v, packed %v", r, c, qv[r*qw+c], pv[r*w+c])
						}
					}
				}
			}
			if n, err := Repack(m, nil); err != nil || n != int(o.Layers) {
				t.Fatalf("repack joined %d (%v), want %d", n, err, o.Layers)
			}
			if err := m.Graph.Verify(); err != nil {
				t.Fatal(err)
			}
			after := snapshot(t, m)
			if after.nodes != before.nodes {
				t.Errorf("nodes after repack:\n%s\nbefore:\n%s", after.nodes, before.nodes)
			}
			if len(after.inits) != len(before.inits) {
				t.Errorf("%d initializers after repack, %d before", len(after.inits), len(before.inits))
			}
			for name, b := range before.inits {
				if !bytes.Equal(after.inits[name], b) {
					t.Errorf("initializer %q differs after repack", name)
				}
			}
		})
	}
}

type graphSnapshot struct {
	nodes string
	inits map[string][]byte
}

func snapshot(t *testing.T, m *graph.Model) graphSnapshot {
	t.Helper()
	s := graphSnapshot{inits: map[string][]byte{}}
	var lines []string
	for _, n := range m.Graph.Nodes {
		var ins []string
		for _, v := range n.Inputs() {
			if v != nil {
				ins = append(ins, v.Name)
			}
		}
		lines = append(lines, fmt.Sprintf("%s %s(%s) -> %s", n.Name, n.Op, strings.Join(ins, ", "), n.Output(0).Name))
	}
	s.nodes = strings.Join(lines, "\n")
	for _, v := range m.Graph.Initializers {
		b, err := v.Const.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		s.inits[v.Name+" "+fmt.Sprint(v.Const.Dims)] = bytes.Clone(b)
	}
	return s
}

func findValue(t *testing.T, m *graph.Model, name string) *graph.Value {
	t.Helper()
	v := m.Graph.Lookup(name)
	if v == nil {
		var names []string
		for _, i := range m.Graph.Initializers {
			names = append(names, i.Name)
		}
		sort.Strings(names)
		t.Fatalf("no value %q (initializers: %v)", name, names)
	}
	return v
}
