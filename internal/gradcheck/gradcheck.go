// Package gradcheck checks gradient rules against central finite
// differences in ONNX Runtime. A case is a tiny forward graph; the checker
// adds loss = Σ y·r for a random r, asks autodiff.Gradients for the
// parameter gradients, and compares ⟨∇L, d⟩ with (L(x+εd) − L(x−εd)) / 2ε
// for a random direction d (JAX's check: one directional derivative per
// case, exact up to the difference scheme).
package gradcheck

import (
	"encoding/binary"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"

	"github.com/loracc/loracc/autodiff"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/runtime"
)

// Input is one graph input of a case.
type Input struct {
	Name  string
	Shape []int64
	// Param marks inputs the gradient is taken for (float inputs only).
	Param bool
	// Int, when set, makes an int64 input with these values.
	Int []int64
	// Bool, when set, makes a bool input with these values.
	Bool []bool
	// Float, when set, gives the values of a float input instead of
	// random ones in [-1, 1] (for ops with restricted domains).
	Float []float64
	// Positive draws random values in [0.5, 1.5] (Log, Sqrt, Pow bases).
	Positive bool
}

// Case is one forward computation to differentiate.
type Case struct {
	Name   string
	Opset  int64
	DType  graph.DataType // graph.Double or graph.Float
	Inputs []Input
	// Symbolic declares every dim of the float inputs as a named symbol
	// (one name per input and axis), so rules take their run-time-shape
	// paths. Int and bool inputs keep static shapes.
	Symbolic bool
	// Domains imports extra op domains (e.g. com.microsoft) at version 1.
	Domains []string
	// Build makes the forward graph from the inputs and returns y.
	Build func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error)
}

// Result is the comparison of one case.
type Result struct {
	Analytic, Numeric float64
	RelErr            float64
	Graph             string // the gradient graph, printed, for failures
	// Dead names the backward nodes whose outputs nothing reads: rules
	// should build only what the gradients use.
	Dead []string
}

// Check runs one case. Tolerances are the caller's: float64 cases agree to
// ~1e-8, float32 ones to ~1e-3.
func Check(env *runtime.Env, c Case, dir string) (Result, error) {
	mc, rng, err := build(c)
	if err != nil {
		return Result{}, err
	}
	return check(env, mc, dir, rng)
}

// build makes a case's forward model and feeds, and the random source
// that then picks r and the direction (seeded by the case's name).
func build(c Case) (Model, *rand.Rand, error) {
	if c.Opset == 0 {
		c.Opset = 17
	}
	if c.DType == graph.Undefined {
		c.DType = graph.Double
	}
	rng := rand.New(rand.NewPCG(uint64(len(c.Name)), 7))
	m := graph.NewModel(c.Opset)
	for _, d := range c.Domains {
		m.Opsets = append(m.Opsets, graph.Opset{Domain: d, Version: 1})
	}
	g := m.Graph
	vals := map[string]*graph.Value{}
	feeds := map[string]runtime.Tensor{}
	var params []*graph.Value
	for _, in := range c.Inputs {
		dims := make([]graph.Dim, len(in.Shape))
		for i, d := range in.Shape {
			dims[i] = graph.Dim{Value: d}
			if c.Symbolic && in.Int == nil && in.Bool == nil {
				dims[i] = graph.Dim{Value: -1, Param: fmt.Sprintf("%s_%d", in.Name, i)}
			}
		}
		switch {
		case in.Int != nil:
			vals[in.Name] = g.AddInput(in.Name, &graph.TensorType{DType: graph.Int64, Shape: dims})
			feeds[in.Name] = runtime.Int64Tensor(in.Shape, in.Int)
		case in.Bool != nil:
			vals[in.Name] = g.AddInput(in.Name, &graph.TensorType{DType: graph.Bool, Shape: dims})
			raw := make([]byte, len(in.Bool))
			for i, b := range in.Bool {
				if b {
					raw[i] = 1
				}
			}
			feeds[in.Name] = runtime.Tensor{DType: graph.Bool, Shape: in.Shape, Data: raw}
		default:
			v := g.AddInput(in.Name, &graph.TensorType{DType: c.DType, Shape: dims})
			vals[in.Name] = v
			x := in.Float
			if x == nil {
				x = make([]float64, count(in.Shape))
				for i := range x {
					x[i] = 2*rng.Float64() - 1
					if in.Positive {
						x[i] = 0.5 + rng.Float64()
					}
				}
			}
			feeds[in.Name] = tensor(c.DType, in.Shape, x)
			if in.Param {
				params = append(params, v)
			}
		}
	}
	b := &graph.Builder{G: g, Prefix: "fwd"}
	y, err := c.Build(b, vals)
	if err != nil {
		return Model{}, nil, err
	}
	y.Type = &graph.TensorType{DType: c.DType}
	return Model{M: m, Y: y, Feeds: feeds, Params: params}, rng, nil
}

// Model is a prebuilt forward computation to check: a whole model (say,
// an exported transformer with LoRA injected) instead of a Case.
type Model struct {
	M *graph.Model
	// Y is the float output the loss Σ y·r is built on (r random).
	Y *graph.Value
	// Feeds has a value for every graph input.
	Feeds map[string]runtime.Tensor
	// Params are the graph inputs (float32 or float64) the gradient is
	// taken for.
	Params []*graph.Value
	// Eps is the finite-difference step: 1e-6 for float64 outputs and
	// 1e-2 for float32 ones when zero.
	Eps float64
	// Seed picks r and the direction d.
	Seed uint64
}

// CheckModel compares ⟨∇L, d⟩ with the central difference for a prebuilt
// model. It replaces the model's outputs with the loss and the gradients.
func CheckModel(env *runtime.Env, mc Model, dir string) (Result, error) {
	return check(env, mc, dir, rand.New(rand.NewPCG(mc.Seed, 7)))
}

func check(env *runtime.Env, mc Model, dir string, rng *rand.Rand) (Result, error) {
	m, y, feeds, params := mc.M, mc.Y, mc.Feeds, mc.Params
	g := m.Graph
	dt := y.DType()
	if dt == graph.Undefined {
		return Result{}, fmt.Errorf("%q has no element type", y.Name)
	}
	// Find y's shape by running the forward graph once.
	g.Outputs = nil
	g.AddOutput(y)
	fwd := filepath.Join(dir, "fwd.onnx")
	if err := graph.Save(m, fwd, graph.SaveOptions{}); err != nil {
		return Result{}, err
	}
	yOut, err := runOnce(env, fwd, feeds, y.Name)
	if err != nil {
		return Result{}, fmt.Errorf("forward: %w", err)
	}
	g.Outputs = nil
	rv := make([]float64, count(yOut.Shape))
	for i := range rv {
		rv[i] = 2*rng.Float64() - 1
	}
	rDims := make([]graph.Dim, len(yOut.Shape))
	for i, d := range yOut.Shape {
		rDims[i] = graph.Dim{Value: d}
	}
	r := g.AddInput(g.UniqueName("r"), &graph.TensorType{DType: dt, Shape: rDims})
	feeds = maps.Clone(feeds)
	feeds[r.Name] = tensor(dt, yOut.Shape, rv)
	lb := &graph.Builder{G: g, Prefix: "loss"}
	rv2 := r
	if m.OpsetVersion("") < 10 {
		// Before opset 10 the gradient of Mul(y, r) cannot find at run
		// time how a y of symbolic shape broadcast against a static r:
		// reshaping r to Shape(y) tells the compiler they are alike.
		rv2 = lb.Op("Reshape", "r_like_y", []*graph.Value{r, lb.Op("Shape", "y_shape", []*graph.Value{y})})
	}
	loss := lb.Op("ReduceSum", "loss", []*graph.Value{lb.Op("Mul", "yr", []*graph.Value{y, rv2})}, graph.AttrI("keepdims", 0))
	loss.Type = &graph.TensorType{DType: dt, Shape: []graph.Dim{}}
	grads, err := autodiff.Gradients(m, loss, params)
	if err != nil {
		return Result{}, err
	}
	g.AddOutput(loss)
	var gradNames []string
	for i, gv := range grads {
		if gv == nil {
			return Result{}, fmt.Errorf("no gradient for %q", params[i].Name)
		}
		tt := *params[i].Type // a gradient is shaped like its parameter
		gv.Type = &tt
		g.AddOutput(gv)
		gradNames = append(gradNames, gv.Name)
	}
	if err := g.Verify(); err != nil {
		return Result{}, err
	}
	res := Result{Graph: graph.Format(m)}
	for _, n := range g.Nodes {
		if !strings.HasPrefix(n.Name, "grad/") {
			continue
		}
		used := false
		for _, o := range n.Outputs() {
			used = used || (o != nil && (o.NumUses() > 0 || o.IsGraphOutput()))
		}
		if !used {
			res.Dead = append(res.Dead, fmt.Sprintf("%s (%s)", n.Name, n.Op))
		}
	}
	full := filepath.Join(dir, "grad.onnx")
	if err := graph.Save(m, full, graph.SaveOptions{}); err != nil {
		return res, err
	}
	sess, err := env.NewSession(full, runtime.SessionOptions{DisableOptimizations: true})
	if err != nil {
		return res, err
	}
	defer sess.Close()
	outs, err := sess.Run(feeds, append([]string{loss.Name}, gradNames...))
	if err != nil {
		return res, err
	}
	// Directional derivative along a random d.
	dirs := map[string][]float64{}
	for i, p := range params {
		gvals, err := floats(outs[gradNames[i]])
		if err != nil {
			return res, err
		}
		base, err := floats(feeds[p.Name])
		if err != nil {
			return res, fmt.Errorf("parameter %q: %w", p.Name, err)
		}
		if len(gvals) != len(base) {
			return res, fmt.Errorf("gradient of %q has %d elements, the parameter %d", p.Name, len(gvals), len(base))
		}
		d := make([]float64, len(base))
		for k := range d {
			d[k] = 2*rng.Float64() - 1
			res.Analytic += gvals[k] * d[k]
		}
		dirs[p.Name] = d
	}
	eps := mc.Eps
	if eps == 0 {
		eps = 1e-6
		if dt != graph.Double {
			eps = 1e-2
		}
	}
	lossAt := func(sign float64) (float64, error) {
		shifted := maps.Clone(feeds)
		for _, p := range params {
			base, _ := floats(feeds[p.Name])
			x := make([]float64, len(base))
			for k := range x {
				x[k] = base[k] + sign*eps*dirs[p.Name][k]
			}
			shifted[p.Name] = tensor(feeds[p.Name].DType, feeds[p.Name].Shape, x)
		}
		o, err := sess.Run(shifted, []string{loss.Name})
		if err != nil {
			return 0, err
		}
		l, err := floats(o[loss.Name])
		if err != nil || len(l) != 1 {
			return 0, fmt.Errorf("loss: %v", err)
		}
		return l[0], nil
	}
	lp, err := lossAt(1)
	if err != nil {
		return res, err
	}
	lm, err := lossAt(-1)
	if err != nil {
		return res, err
	}
	res.Numeric = (lp - lm) / (2 * eps)
	res.RelErr = math.Abs(res.Analytic-res.Numeric) / math.Max(math.Max(math.Abs(res.Numeric), math.Abs(res.Analytic)), 1e-3)
	return res, nil
}

func runOnce(env *runtime.Env, path string, feeds map[string]runtime.Tensor, out string) (runtime.Tensor, error) {
	s, err := env.NewSession(path, runtime.SessionOptions{})
	if err != nil {
		return runtime.Tensor{}, err
	}
	defer s.Close()
	inputs := map[string]runtime.Tensor{}
	for _, in := range s.Inputs() {
		inputs[in.Name] = feeds[in.Name]
	}
	o, err := s.Run(inputs, []string{out})
	if err != nil {
		return runtime.Tensor{}, err
	}
	return o[out], nil
}

// count is the element count of a test shape (graph.NumElements, which
// the cases' valid shapes never fail).
func count(shape []int64) int {
	n, _ := graph.NumElements(shape)
	return int(n)
}

func tensor(dt graph.DataType, shape []int64, x []float64) runtime.Tensor {
	if dt == graph.Double {
		raw := make([]byte, 8*len(x))
		for i, v := range x {
			binary.LittleEndian.PutUint64(raw[8*i:], math.Float64bits(v))
		}
		return runtime.Tensor{DType: dt, Shape: shape, Data: raw}
	}
	f := make([]float32, len(x))
	for i, v := range x {
		f[i] = float32(v)
	}
	return runtime.FloatTensor(shape, f)
}

func floats(t runtime.Tensor) ([]float64, error) {
	switch t.DType {
	case graph.Double:
		out := make([]float64, len(t.Data)/8)
		for i := range out {
			out[i] = math.Float64frombits(binary.LittleEndian.Uint64(t.Data[8*i:]))
		}
		return out, nil
	case graph.Float:
		f, err := t.Floats()
		out := make([]float64, len(f))
		for i, v := range f {
			out[i] = float64(v)
		}
		return out, err
	}
	return nil, fmt.Errorf("not a float tensor: %s", t.DType)
}

// TempDir is where Check writes its models when the caller has no test
// folder.
func TempDir() (string, error) { return os.MkdirTemp("", "gradcheck-") }
