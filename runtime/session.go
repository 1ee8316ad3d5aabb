package runtime

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/runtime/internal/ort"
)

// SessionOptions configure a session. The zero value runs on CPU with ORT's
// default optimizations and thread count.
type SessionOptions struct {
	// Device is "cpu" (or "") or "cuda". A failure to enable CUDA is
	// returned as an error; whether to fall back to CPU is the caller's call.
	Device string
	// DisableOptimizations turns off ORT's graph rewrites, so the graph that
	// runs is the one we wrote (useful when checking our own rewrites).
	DisableOptimizations bool
	// IntraOpThreads is the thread count within one op; 0 lets ORT choose.
	IntraOpThreads int
	// CUDADeviceID selects the GPU when Device is "cuda".
	CUDADeviceID int
	// ProfilePrefix, when set, makes ONNX Runtime write a JSON profile of
	// every node run (PREFIX_<date>.json) when the session closes.
	ProfilePrefix string
	// ArenaExtend ("kSameAsRequested" or "kNextPowerOfTwo") and
	// GPUMemLimit (bytes) configure the CUDA arena of bound sessions and
	// captured steps; zero values keep ONNX Runtime's defaults.
	ArenaExtend string
	GPUMemLimit int64
	// NoMemPattern turns off ONNX Runtime's memory pattern for bound
	// sessions and captured steps: values are allocated in the arena as
	// they live instead of in one block planned for the whole run.
	NoMemPattern bool
	// OptimizedModelPath makes ONNX Runtime save the model a bound session
	// runs, after its own graph optimizations, to this path.
	OptimizedModelPath string
	// SharedArena makes bound sessions allocate device memory from one
	// arena per device shared by all such sessions of the process (ONNX
	// Runtime's environment allocators), made with the first one's
	// ArenaExtend and GPUMemLimit: bound sessions that run in turn (the
	// step graphs of several length buckets) then hold what the largest
	// needs, not the sum, and report the shared arena's statistics.
	// Captured steps keep their own arena: a replay writes where its
	// capture allocated, which a shared arena may since have handed out.
	SharedArena bool
}

func (o SessionOptions) device() string {
	if o.Device == "" {
		return "cpu"
	}
	return o.Device
}

func (o SessionOptions) ort() (ort.Options, error) {
	switch o.device() {
	case "cpu":
		return ort.Options{DisableOptimizations: o.DisableOptimizations, IntraOpThreads: o.IntraOpThreads, ProfilePrefix: o.ProfilePrefix, NoMemPattern: o.NoMemPattern, OptimizedModelPath: o.OptimizedModelPath,
			SharedArena: o.SharedArena}, nil
	case "cuda":
		return ort.Options{CUDA: true, CUDADeviceID: o.CUDADeviceID, DisableOptimizations: o.DisableOptimizations, IntraOpThreads: o.IntraOpThreads, ProfilePrefix: o.ProfilePrefix,
			ArenaExtend: o.ArenaExtend, GPUMemLimit: o.GPUMemLimit, NoMemPattern: o.NoMemPattern, OptimizedModelPath: o.OptimizedModelPath, SharedArena: o.SharedArena}, nil
	}
	return ort.Options{}, fmt.Errorf("unknown device %q (want cpu or cuda)", o.Device)
}

// IOInfo describes one model input or output as the model declares it.
type IOInfo struct {
	Name  string
	DType graph.DataType
	// Shape has -1 for symbolic or unknown dims. It is nil when the model
	// gives no shape at all (unknown rank) and empty for a scalar.
	Shape []int64
	// DimParams has, per dim, the dim_param name of a symbolic dim ("" for
	// others); same length as Shape.
	DimParams []string
}

// modelIO is what a session's model declares: the inputs ORT will ask for
// (declared inputs that are not initializers) and the outputs.
type modelIO struct {
	inputs, outputs []IOInfo
}

// readModelIO reads the model's signature (graph.ReadSignature, which
// skips the weights) in the form Run checks feeds against.
func readModelIO(r io.ReaderAt, size int64) (modelIO, error) {
	sig, err := graph.ReadSignature(r, size)
	if err != nil {
		return modelIO{}, err
	}
	conv := func(ps []graph.Port) []IOInfo {
		out := make([]IOInfo, len(ps))
		for i, p := range ps {
			info := IOInfo{Name: p.Name, DType: p.Type.DType}
			if p.Type.Shape != nil {
				info.Shape, info.DimParams = []int64{}, []string{}
				for _, d := range p.Type.Shape {
					size := d.Value
					if !d.Known() {
						size = -1
					}
					info.Shape = append(info.Shape, size)
					info.DimParams = append(info.DimParams, d.Param)
				}
			}
			out[i] = info
		}
		return out
	}
	return modelIO{inputs: conv(sig.Inputs), outputs: conv(sig.Outputs)}, nil
}

// Session is a loaded model. Run may be called from many goroutines at
// once: a Session holds nothing that a run changes.
type Session struct {
	env     *Env
	name    string // `model "path"`, for errors
	inputs  []IOInfo
	outputs []IOInfo
	inIdx   map[string]int
	outIdx  map[string]int
	ort     *ort.Session

	closeOnce sync.Once
	closeErr  error
}

func newSession(env *Env, name string, s *ort.Session, mio modelIO) *Session {
	sess := &Session{
		env: env, name: name, ort: s,
		inputs: mio.inputs, outputs: mio.outputs,
		inIdx: map[string]int{}, outIdx: map[string]int{},
	}
	for i, in := range mio.inputs {
		sess.inIdx[in.Name] = i
	}
	for i, out := range mio.outputs {
		sess.outIdx[out.Name] = i
	}
	return sess
}

// Inputs lists the inputs Run needs, in model order; inputs that have an
// initializer (optional overrides) are not listed and cannot be fed.
func (s *Session) Inputs() []IOInfo { return cloneInfos(s.inputs) }

// Outputs lists the model outputs in model order.
func (s *Session) Outputs() []IOInfo { return cloneInfos(s.outputs) }

func cloneInfos(infos []IOInfo) []IOInfo {
	out := make([]IOInfo, len(infos))
	for i, info := range infos {
		out[i] = IOInfo{Name: info.Name, DType: info.DType, Shape: slices.Clone(info.Shape), DimParams: slices.Clone(info.DimParams)}
	}
	return out
}

// Close frees the session; it is safe to call twice and waits for runs in
// progress.
func (s *Session) Close() error {
	if s.ort == nil {
		return nil // zero Session: nothing to free
	}
	s.closeOnce.Do(func() {
		if err := s.ort.Close(); err != nil {
			s.closeErr = fmt.Errorf("runtime: %s: close: %w", s.name, err)
		}
		s.env.removeSession()
	})
	return s.closeErr
}

// ErrClosed is returned (wrapped) by Run after Close.
var ErrClosed = ort.ErrClosed

// Run feeds every input listed by Inputs and returns the named outputs (all
// of them when outputs is nil). Input data is neither kept nor modified.
//
// Supported element types are those with a whole number of bytes per
// element: float32/16, bfloat16, float64, the integer types, bool and
// float8. Limits of onnxruntime_go v1.27.0: float16/bfloat16/float8 scalars
// (rank 0) cannot be fed or returned, and such an output can only be
// returned when its shape is known before the run — static, or made of
// dim_params that also name input dims; an output whose rank the model
// leaves undeclared cannot turn out to be a scalar. Outputs not asked for
// are not returned, but ORT may still compute them.
func (s *Session) Run(inputs map[string]Tensor, outputs []string) (map[string]Tensor, error) {
	res, err := s.run(inputs, outputs)
	if err != nil {
		return nil, fmt.Errorf("runtime: %s: %w", s.name, err)
	}
	return res, nil
}

func (s *Session) run(inputs map[string]Tensor, outputs []string) (map[string]Tensor, error) {
	if s.ort == nil {
		return nil, ErrClosed
	}
	for name := range inputs {
		if _, ok := s.inIdx[name]; !ok {
			return nil, fmt.Errorf("input %q: the model has no such input (inputs: %v)", name, names(s.inputs))
		}
	}
	ins := make([]ort.Tensor, len(s.inputs))
	for i, info := range s.inputs {
		t, ok := inputs[info.Name]
		if !ok {
			return nil, fmt.Errorf("input %q: missing", info.Name)
		}
		if t.DType != info.DType {
			return nil, fmt.Errorf("input %q: got %s, the model wants %s", info.Name, t.DType, info.DType)
		}
		if err := t.Validate(); err != nil {
			return nil, fmt.Errorf("input %q: %w", info.Name, err)
		}
		ins[i] = ort.Tensor(t)
	}

	dims := bindDims(s.inputs, ins)
	specs := make([]ort.OutputSpec, len(s.outputs))
	for i, info := range s.outputs {
		shape, known := concreteShape(info, dims)
		specs[i] = ort.OutputSpec{DType: info.DType, Shape: shape, Known: known, Want: outputs == nil}
	}
	for _, name := range outputs {
		i, ok := s.outIdx[name]
		if !ok {
			return nil, fmt.Errorf("output %q: the model has no such output (outputs: %v)", name, names(s.outputs))
		}
		specs[i].Want = true
	}

	got, err := s.ort.Run(ins, specs)
	if err != nil {
		if errors.Is(err, ort.ErrClosed) {
			return nil, ErrClosed
		}
		return nil, err
	}
	res := make(map[string]Tensor, len(specs))
	for i, spec := range specs {
		if spec.Want {
			res[s.outputs[i].Name] = Tensor(got[i])
		}
	}
	return res, nil
}

// bindDims maps each dim_param of the inputs to its size in this run. A
// name bound to two sizes maps to -1: ORT decides what that means, and we
// do not derive output shapes from it.
func bindDims(infos []IOInfo, ins []ort.Tensor) map[string]int64 {
	dims := map[string]int64{}
	for i, info := range infos {
		for d, p := range info.DimParams {
			if p == "" || d >= len(ins[i].Shape) {
				continue
			}
			size := ins[i].Shape[d]
			if old, ok := dims[p]; ok && old != size {
				size = -1
			}
			dims[p] = size
		}
	}
	return dims
}

// concreteShape is info's shape for this run if every dim is static or a
// bound dim_param.
func concreteShape(info IOInfo, dims map[string]int64) ([]int64, bool) {
	if info.Shape == nil {
		return nil, false
	}
	shape := make([]int64, len(info.Shape))
	for d, size := range info.Shape {
		if size < 0 {
			p := info.DimParams[d]
			if p == "" {
				return nil, false
			}
			bound, ok := dims[p]
			if !ok || bound < 0 {
				return nil, false
			}
			size = bound
		}
		shape[d] = size
	}
	return shape, true
}
