package main

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/runtime"
	"github.com/urfave/cli/v2"
)

func openRuntime(c *cli.Context) (*runtime.Env, error) {
	lib, err := runtime.FindLibrary(c.String("ort-lib"))
	if err != nil {
		return nil, err
	}
	return runtime.Open(lib)
}

// Comparison is the largest difference between two models' outputs.
type Comparison struct {
	MaxAbs    float64 // max |a - b| over all outputs
	MaxRef    float64 // max |a| over all outputs
	Tolerance float64 // allowed MaxAbs / max(MaxRef, 1)
	Outputs   int
}

// Rel is the difference relative to the outputs' magnitude (at least 1, so
// outputs near zero are compared absolutely).
func (r Comparison) Rel() float64 { return r.MaxAbs / math.Max(r.MaxRef, 1) }

// OK reports whether the difference is within tolerance.
func (r Comparison) OK() bool { return r.Rel() <= r.Tolerance }

func (r Comparison) String() string {
	verdict := "ok"
	if !r.OK() {
		verdict = "FAILED"
	}
	return fmt.Sprintf("%d outputs, max abs diff %.3g, relative %.3g, tolerance %.3g: %s", r.Outputs, r.MaxAbs, r.Rel(), r.Tolerance, verdict)
}

// tolerance for comparing a rewritten model with its reference: the two
// compute the same function with different rounding.
func tolerance(dt graph.DataType) float64 {
	switch dt {
	case graph.Float16:
		return 1e-2
	case graph.BFloat16:
		return 5e-2
	}
	return 1e-5
}

// compareModels runs two models with the same inputs on seeded random data
// and compares all outputs of the first by name.
func compareModels(env *runtime.Env, refPath, gotPath, device string, seed uint64) (Comparison, error) {
	return compareModelsOn(env, refPath, gotPath, device, seed, checkSpec{})
}

// compareModelsOn is compareModels with the inputs spec gives (random
// data for the rest).
func compareModelsOn(env *runtime.Env, refPath, gotPath, device string, seed uint64, spec checkSpec) (Comparison, error) {
	// ORT's graph optimizations may change numerics differently in the two
	// models (QDQ fusions quantize activations, for one); the check is of
	// the functions the graphs define, so it runs them as written.
	opts := runtime.SessionOptions{Device: device, DisableOptimizations: true}
	ref, err := env.NewSession(refPath, opts)
	if err != nil {
		return Comparison{}, err
	}
	defer ref.Close()
	got, err := env.NewSession(gotPath, opts)
	if err != nil {
		return Comparison{}, err
	}
	defer got.Close()
	inputs, err := checkInputs(ref.Inputs(), spec, seed)
	if err != nil {
		return Comparison{}, errInputs{err}
	}
	var names []string
	res := Comparison{Tolerance: 1e-5}
	for _, o := range ref.Outputs() {
		names = append(names, o.Name)
		res.Tolerance = math.Max(res.Tolerance, tolerance(o.DType))
	}
	a, err := ref.Run(inputs, names)
	if err != nil {
		return res, err
	}
	b, err := got.Run(inputs, names)
	if err != nil {
		return res, err
	}
	for _, n := range names {
		av, err := floatsOf(a[n])
		if err != nil {
			continue // integer or bool outputs: compared exactly below
		}
		bv, err := floatsOf(b[n])
		if err != nil || len(av) != len(bv) {
			return res, fmt.Errorf("output %q: shapes differ", n)
		}
		for i := range av {
			res.MaxAbs = math.Max(res.MaxAbs, math.Abs(float64(av[i])-float64(bv[i])))
			res.MaxRef = math.Max(res.MaxRef, math.Abs(float64(av[i])))
		}
		res.Outputs++
	}
	return res, nil
}

func floatsOf(t runtime.Tensor) ([]float32, error) {
	return graph.DecodeFloats(t.DType, t.Data)
}

// RandomInputs makes seeded random data for every input: floats uniform in
// [-1, 1], integers in [0, 8) (valid token ids for any vocabulary), bools
// true. Symbolic dims become 2.
func RandomInputs(infos []runtime.IOInfo, seed uint64) (map[string]runtime.Tensor, error) {
	rng := rand.New(rand.NewPCG(seed, 0x10aacc))
	out := map[string]runtime.Tensor{}
	for _, in := range infos {
		if in.Shape == nil {
			return nil, fmt.Errorf("input %q has unknown rank; cannot make test data", in.Name)
		}
		shape := make([]int64, len(in.Shape))
		n := int64(1)
		for i, d := range in.Shape {
			if d < 0 {
				d = 2
			}
			shape[i] = d
			n *= d
		}
		vals := make([]float64, n)
		switch {
		case in.DType.IsFloat():
			for i := range vals {
				vals[i] = float64(float32(2*rng.Float64() - 1))
			}
		case in.DType == graph.Int64 || in.DType == graph.Int32:
			for i := range vals {
				vals[i] = float64(rng.IntN(8))
			}
		case in.DType == graph.Bool:
			for i := range vals {
				vals[i] = 1
			}
		default:
			return nil, fmt.Errorf("input %q: no test data for %s", in.Name, in.DType)
		}
		raw, err := encodeValues(in.DType, vals)
		if err != nil {
			return nil, fmt.Errorf("input %q: %w", in.Name, err)
		}
		out[in.Name] = runtime.Tensor{DType: in.DType, Shape: shape, Data: raw}
	}
	return out, nil
}

// errInputs marks an error in the inputs the user gave, which fuse
// reports as such rather than as a failed run.
type errInputs struct{ error }

func (e errInputs) Unwrap() error { return e.error }
