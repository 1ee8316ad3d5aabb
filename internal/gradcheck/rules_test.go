package gradcheck

import (
	"os"
	"testing"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/runtime"
)

func openEnv(t *testing.T) *runtime.Env {
	t.Helper()
	lib, err := runtime.FindLibrary("")
	if err != nil {
		if os.Getenv("LORACC_REQUIRE_ORT") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	e, err := runtime.Open(lib)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// op builds y = op(inputs in order) with attributes.
func op(name string, ins []string, attrs ...*graph.Attr) func(*graph.Builder, map[string]*graph.Value) (*graph.Value, error) {
	return func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
		var vs []*graph.Value
		for _, n := range ins {
			if n == "" {
				vs = append(vs, nil)
				continue
			}
			vs = append(vs, in[n])
		}
		return b.Op(name, "y", vs, attrs...), nil
	}
}

func p(name string, shape ...int64) Input { return Input{Name: name, Shape: shape, Param: true} }
func x(name string, shape ...int64) Input { return Input{Name: name, Shape: shape} }

// cases lists one or more finite-difference checks per gradient rule.
func cases() []Case {
	return []Case{
		{Name: "Identity", Inputs: []Input{p("a", 2, 3)}, Build: op("Identity", []string{"a"})},
		{Name: "Add broadcast", Inputs: []Input{p("a", 2, 3, 4), p("b", 3, 1)}, Build: op("Add", []string{"a", "b"})},
		{Name: "Add scalar", Inputs: []Input{p("a", 2, 3), p("b")}, Build: op("Add", []string{"a", "b"})},
		{Name: "Sub", Inputs: []Input{p("a", 2, 3), p("b", 3)}, Build: op("Sub", []string{"a", "b"})},
		{Name: "Mul", Inputs: []Input{p("a", 2, 3), p("b", 1, 3)}, Build: op("Mul", []string{"a", "b"})},
		{Name: "Mul frozen", Inputs: []Input{p("a", 2, 3), x("b", 2, 3)}, Build: op("Mul", []string{"a", "b"})},
		{Name: "Div", Inputs: []Input{p("a", 2, 3), {Name: "b", Shape: []int64{3}, Param: true, Positive: true}}, Build: op("Div", []string{"a", "b"})},
		{Name: "Neg", Inputs: []Input{p("a", 4)}, Build: op("Neg", []string{"a"})},
		{Name: "Sum", Inputs: []Input{p("a", 2, 3), p("b", 3), p("c", 2, 1)}, Build: op("Sum", []string{"a", "b", "c"})},
		{Name: "MatMul 2d", Inputs: []Input{p("a", 3, 4), p("b", 4, 5)}, Build: op("MatMul", []string{"a", "b"})},
		{Name: "MatMul batched x matrix", Inputs: []Input{p("a", 2, 3, 4), p("b", 4, 5)}, Build: op("MatMul", []string{"a", "b"})},
		{Name: "MatMul batched both", Inputs: []Input{p("a", 2, 3, 4), p("b", 2, 4, 5)}, Build: op("MatMul", []string{"a", "b"})},
		{Name: "MatMul broadcast batch", Inputs: []Input{p("a", 2, 1, 3, 4), p("b", 3, 4, 5)}, Build: op("MatMul", []string{"a", "b"})},
		{Name: "Gemm", Inputs: []Input{p("a", 3, 4), p("b", 4, 5), p("c", 5)}, Build: op("Gemm", []string{"a", "b", "c"}, graph.AttrF("alpha", 0.5), graph.AttrF("beta", 2))},
		{Name: "Gemm transB", Inputs: []Input{p("a", 3, 4), p("b", 5, 4), p("c", 3, 5)}, Build: op("Gemm", []string{"a", "b", "c"}, graph.AttrI("transB", 1))},
		{Name: "Gemm transA transB", Inputs: []Input{p("a", 4, 3), p("b", 5, 4)}, Build: op("Gemm", []string{"a", "b"}, graph.AttrI("transA", 1), graph.AttrI("transB", 1), graph.AttrF("alpha", 1.5))},
		{Name: "Gemm transA", Inputs: []Input{p("a", 4, 3), p("b", 4, 5)}, Build: op("Gemm", []string{"a", "b"}, graph.AttrI("transA", 1))},
	}
}

// TestGradientRules checks every case in float64 (ORT runs these ops in
// double) to 1e-6 relative.
func TestGradientRules(t *testing.T) {
	env := openEnv(t)
	for _, c := range cases() {
		t.Run(c.Name, func(t *testing.T) {
			res, err := Check(env, c, t.TempDir())
			if err != nil {
				t.Fatalf("%v\n%s", err, res.Graph)
			}
			tol := 1e-6
			if c.DType == graph.Float {
				tol = 2e-3
			}
			if res.RelErr > tol {
				t.Errorf("analytic %.10g, numeric %.10g, relative error %.3g > %g\n%s", res.Analytic, res.Numeric, res.RelErr, tol, res.Graph)
			}
		})
	}
}
