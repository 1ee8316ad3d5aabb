package infer

import (
	"fmt"
	"strings"
	"testing"

	"github.com/loracc/loracc/graph"
)

// tg builds small graphs for the per-op tests: inputs of given shapes,
// constants and nodes, and checks what a fresh Inferer says about them.
type tg struct {
	t *testing.T
	m *graph.Model
	b *graph.Builder
}

func newTG(t *testing.T) *tg {
	m := graph.NewModel(18)
	return &tg{t: t, m: m, b: &graph.Builder{G: m.Graph}}
}

// in adds an input; each dim is an int (a size) or a string (a symbol).
// dims == nil with rank "?" is spelt in(name, dt, "?") and leaves the
// shape unknown.
func (g *tg) in(name string, dt graph.DataType, dims ...any) *graph.Value {
	if len(dims) == 1 && dims[0] == "?" {
		return g.m.Graph.AddInput(name, &graph.TensorType{DType: dt})
	}
	shape := make([]graph.Dim, len(dims))
	for i, d := range dims {
		switch d := d.(type) {
		case int:
			shape[i] = graph.Dim{Value: int64(d)}
		case string:
			shape[i] = graph.Dim{Param: d}
		default:
			g.t.Fatalf("dim %v: want int or string", d)
		}
	}
	return g.m.Graph.AddInput(name, &graph.TensorType{DType: dt, Shape: shape})
}

// ints adds a 1-D int64 constant.
func (g *tg) ints(xs ...int64) *graph.Value { return g.b.Int64s("c", xs) }

// op adds a node with one output, named after the op in lower case.
func (g *tg) op(op string, ins []*graph.Value, attrs ...*graph.Attr) *graph.Value {
	return g.b.Op(op, strings.ToLower(op), ins, attrs...)
}

// opN adds a node with n outputs and returns them.
func (g *tg) opN(op string, n int, ins []*graph.Value, attrs ...*graph.Attr) []*graph.Value {
	outs := make([]string, n)
	for i := range outs {
		outs[i] = fmt.Sprintf("%s_out%d", strings.ToLower(op), i)
	}
	return g.b.OpN(op, outs, ins, attrs...)
}

func vs(v ...*graph.Value) []*graph.Value { return v }

// showInfo prints an Info as "dtype rank dims": a dim is its size, its
// symbol, or "?" for unnamed unknown dims; dims nil print as "-".
// Symbols the inferer makes up ("value?axis") print as "~".
func showInfo(in Info) string {
	dims := "-"
	if in.Dims != nil {
		parts := make([]string, len(in.Dims))
		for i, d := range in.Dims {
			switch {
			case strings.Contains(d.Param, "?"):
				parts[i] = "~"
			case d.Param != "":
				parts[i] = d.Param
			case d.Value < 0:
				parts[i] = "?"
			default:
				parts[i] = fmt.Sprint(d.Value)
			}
		}
		dims = "[" + strings.Join(parts, ",") + "]"
	}
	return fmt.Sprintf("%s %d %s", in.DType, in.Rank, dims)
}

// check asserts what a fresh Inferer says about each value: want[i] is
// showInfo's text for vals[i].
func (g *tg) check(cases ...any) {
	g.t.Helper()
	if len(cases)%2 != 0 {
		g.t.Fatal("check wants value, text pairs")
	}
	inf := New()
	for i := 0; i < len(cases); i += 2 {
		v, want := cases[i].(*graph.Value), cases[i+1].(string)
		if got := showInfo(inf.Info(v)); got != want {
			g.t.Errorf("%s: got %q, want %q", v.Name, got, want)
		}
	}
}
