package ort

import (
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"sync"

	ortgo "github.com/yalue/onnxruntime_go"

	"github.com/loracc/loracc/graph"
)

// Options are the session settings package runtime exposes.
type Options struct {
	CUDA                 bool
	CUDADeviceID         int
	DisableOptimizations bool
	IntraOpThreads       int
	// ProfilePrefix, when set, makes ORT write a JSON profile of every
	// node run (prefix_<date>.json) when the session ends.
	ProfilePrefix string
	// CUDAGraph captures the graph's kernels once and replays them
	// (BoundSession with FixedBindings only).
	CUDAGraph bool
	// ArenaExtend is the CUDA arena's growth strategy, ORT's
	// arena_extend_strategy ("kSameAsRequested" or "kNextPowerOfTwo"),
	// and GPUMemLimit its byte limit (gpu_mem_limit); zero values keep
	// ORT's defaults (BoundSession only).
	ArenaExtend string
	GPUMemLimit int64
	// NoMemPattern turns off ORT's memory pattern (one block planned for a
	// run's intermediates, allocated at once), so each value is allocated
	// and freed in the arena as it lives (BoundSession only).
	NoMemPattern bool
	// OptimizedModelPath, when set, makes ORT save the model it runs
	// after its graph optimizations there (BoundSession only): what to
	// read when ORT's rewrites or order are in question.
	OptimizedModelPath string
	// SharedArena makes the session allocate its device memory from one
	// arena per device that every such session of the process shares
	// (ORT's environment allocators), configured by the first one's
	// ArenaExtend and GPUMemLimit (BoundSession only). Sessions that run
	// one after another, such as the step graphs of several length
	// buckets, then hold the largest one's memory rather than the sum.
	SharedArena bool
}

// OutputSpec tells Run what it needs to know about one model output.
type OutputSpec struct {
	DType graph.DataType
	// Shape is the output's concrete shape for this run when Known: declared
	// static dims, with dim_params filled in from the inputs.
	Shape []int64
	Known bool
	// Want marks outputs the caller asked for; the rest are discarded.
	Want bool
}

// ErrClosed is returned by Run on a closed session.
var ErrClosed = errors.New("session is closed")

// Session is an ORT session plus the input/output names it was created with.
// Run may be called from many goroutines: the only state is the session
// pointer, guarded against Close by mu; every run builds its own values.
type Session struct {
	mu      sync.RWMutex
	s       *ortgo.DynamicAdvancedSession
	inputs  []string
	outputs []string
}

// NewSession creates a session from a model file, or from model bytes when
// model is non-nil. inputs and outputs must list every graph input (without
// initializers) and output, in the order Run will receive them.
func NewSession(path string, model []byte, inputs, outputs []string, o Options) (*Session, error) {
	opts, err := sessionOptions(o)
	if err != nil {
		return nil, err
	}
	defer opts.Destroy()
	var s *ortgo.DynamicAdvancedSession
	if model != nil {
		s, err = ortgo.NewDynamicAdvancedSessionWithONNXData(model, inputs, outputs, opts)
	} else {
		s, err = ortgo.NewDynamicAdvancedSession(path, inputs, outputs, opts)
	}
	if err != nil {
		return nil, err
	}
	return &Session{s: s, inputs: inputs, outputs: outputs}, nil
}

func sessionOptions(o Options) (*ortgo.SessionOptions, error) {
	opts, err := ortgo.NewSessionOptions()
	if err != nil {
		return nil, fmt.Errorf("creating session options: %w", err)
	}
	if err := configure(opts, o); err != nil {
		opts.Destroy()
		return nil, err
	}
	return opts, nil
}

func configure(opts *ortgo.SessionOptions, o Options) error {
	if o.DisableOptimizations {
		if err := opts.SetGraphOptimizationLevel(ortgo.GraphOptimizationLevelDisableAll); err != nil {
			return fmt.Errorf("disabling graph optimizations: %w", err)
		}
	}
	if o.IntraOpThreads < 0 {
		return fmt.Errorf("intra-op threads must be >= 0, got %d", o.IntraOpThreads)
	}
	if o.IntraOpThreads > 0 {
		if err := opts.SetIntraOpNumThreads(o.IntraOpThreads); err != nil {
			return fmt.Errorf("setting intra-op threads: %w", err)
		}
	}
	if o.ProfilePrefix != "" {
		if err := opts.EnableProfiling(o.ProfilePrefix); err != nil {
			return fmt.Errorf("enabling profiling: %w", err)
		}
	}
	if o.CUDA {
		cuda, err := ortgo.NewCUDAProviderOptions()
		if err != nil {
			return fmt.Errorf("cuda provider options: %w", err)
		}
		defer cuda.Destroy()
		if err := cuda.Update(map[string]string{"device_id": strconv.Itoa(o.CUDADeviceID)}); err != nil {
			return fmt.Errorf("cuda provider options: %w", err)
		}
		if err := opts.AppendExecutionProviderCUDA(cuda); err != nil {
			return fmt.Errorf("enabling cuda execution provider: %w", err)
		}
	}
	return nil
}

// Close destroys the session; it is safe to call twice and waits for
// running calls to finish.
func (s *Session) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.s == nil {
		return nil
	}
	err := s.s.Destroy()
	s.s = nil
	return err
}

// Run runs the model. ins follows the session's input order and outs its
// output order; the result has one entry per output, set only where Want.
//
// onnxruntime_go offers two ways to run, each able to return only some
// outputs (see values.go):
//   - all outputs by name (plain Run): native outputs of rank >= 1 are left
//     for ORT to allocate, so their shapes need not be known beforehand and
//     a wrong declared shape in the model does not matter; scalars and
//     non-native types are preallocated. It fails on any non-native output
//     of unknown shape or of rank 0, even one not asked for, and on models
//     without inputs (onnxruntime_go indexes the empty input list).
//   - an IoBinding of the wanted outputs only: each must be preallocated.
//
// Run takes the first that works for this call.
func (s *Session) Run(ins []Tensor, outs []OutputSpec) ([]Tensor, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.s == nil {
		return nil, ErrClosed
	}
	if len(ins) != len(s.inputs) || len(outs) != len(s.outputs) {
		return nil, fmt.Errorf("internal error: %d inputs and %d outputs for a session with %d and %d", len(ins), len(outs), len(s.inputs), len(s.outputs))
	}
	vals := make([]ortgo.Value, 0, len(ins))
	defer func() {
		for _, v := range vals {
			destroy(v)
		}
	}()
	for i, t := range ins {
		v, err := newInput(t)
		if err != nil {
			return nil, fmt.Errorf("input %q: %w", s.inputs[i], err)
		}
		vals = append(vals, v)
	}

	whyNotAll := s.cannotRunAll(outs)
	if whyNotAll == nil {
		return s.runAll(vals, outs)
	}
	if err := s.cannotRunBound(outs, whyNotAll); err != nil {
		return nil, err
	}
	return s.runBound(vals, outs)
}

// unknownShapeHint is the fix for the one case no way of running covers.
const unknownShapeHint = "onnxruntime_go v1.27.0 cannot return a %s tensor whose shape is not known before the run; " +
	"give its symbolic dims the dim_param names of input dims"

func (s *Session) cannotRunAll(outs []OutputSpec) error {
	if len(s.inputs) == 0 {
		return errors.New("model has no inputs")
	}
	for i, o := range outs {
		if nativeFor(o.DType) != nil {
			continue
		}
		if !o.Known {
			return fmt.Errorf("output %q: "+unknownShapeHint, s.outputs[i], o.DType)
		}
		if len(o.Shape) == 0 {
			return fmt.Errorf("output %q: onnxruntime_go cannot hold a rank-0 %s tensor", s.outputs[i], o.DType)
		}
	}
	return nil
}

func (s *Session) cannotRunBound(outs []OutputSpec, whyNotAll error) error {
	for i, o := range outs {
		if !o.Want || o.Known {
			continue
		}
		if nativeFor(o.DType) == nil {
			return fmt.Errorf("output %q: "+unknownShapeHint, s.outputs[i], o.DType)
		}
		return fmt.Errorf("%w, and output %q's shape is not known before the run", whyNotAll, s.outputs[i])
	}
	return nil
}

// runAll runs with every output named, letting ORT allocate native outputs
// of rank >= 1.
func (s *Session) runAll(ins []ortgo.Value, outs []OutputSpec) ([]Tensor, error) {
	bufs := make([]*output, len(outs))
	vals := make([]ortgo.Value, len(outs))
	defer func() {
		for _, v := range vals {
			destroy(v)
		}
	}()
	for i, o := range outs {
		if !o.Known || (len(o.Shape) > 0 && nativeFor(o.DType) != nil) {
			continue // ORT allocates
		}
		b, err := newOutput(o.DType, o.Shape)
		if err != nil {
			return nil, fmt.Errorf("output %q: %w", s.outputs[i], err)
		}
		bufs[i], vals[i] = b, b.value
	}
	if err := s.s.Run(ins, vals); err != nil {
		return nil, err
	}
	res := make([]Tensor, len(outs))
	for i, o := range outs {
		if !o.Want {
			continue
		}
		var err error
		if bufs[i] != nil {
			res[i], err = bufs[i].result(o.DType, o.Shape)
		} else {
			res[i], err = fromAllocated(o.DType, vals[i])
		}
		if err != nil {
			return nil, fmt.Errorf("output %q: %w", s.outputs[i], err)
		}
	}
	return res, nil
}

// runBound runs through an IoBinding with only the wanted outputs, all
// preallocated.
func (s *Session) runBound(ins []ortgo.Value, outs []OutputSpec) ([]Tensor, error) {
	b, err := s.s.CreateIoBinding()
	if err != nil {
		return nil, fmt.Errorf("creating io binding: %w", err)
	}
	defer b.Destroy()
	for i, v := range ins {
		if err := b.BindInput(s.inputs[i], v); err != nil {
			return nil, fmt.Errorf("binding input %q: %w", s.inputs[i], err)
		}
	}
	bufs := make([]*output, len(outs))
	defer func() {
		for _, o := range bufs {
			if o != nil {
				o.value.Destroy()
			}
		}
	}()
	for i, o := range outs {
		if !o.Want {
			continue
		}
		buf, err := newOutput(o.DType, o.Shape)
		if err != nil {
			return nil, fmt.Errorf("output %q: %w", s.outputs[i], err)
		}
		bufs[i] = buf
		if err := b.BindOutput(s.outputs[i], buf.value); err != nil {
			return nil, fmt.Errorf("binding output %q: %w", s.outputs[i], err)
		}
	}
	if err := s.s.RunWithBinding(b); err != nil {
		return nil, err
	}
	res := make([]Tensor, len(outs))
	for i, o := range outs {
		if bufs[i] == nil {
			continue
		}
		if res[i], err = bufs[i].result(o.DType, o.Shape); err != nil {
			return nil, fmt.Errorf("output %q: %w", s.outputs[i], err)
		}
	}
	return res, nil
}

// destroy frees an ORT value. onnxruntime_go can leave a typed nil pointer
// in an output slot when ORT fails to allocate it (a scalar output, for
// one), and calling Destroy on that panics; such slots hold nothing.
func destroy(v ortgo.Value) {
	if v == nil {
		return
	}
	if rv := reflect.ValueOf(v); rv.Kind() == reflect.Pointer && rv.IsNil() {
		return
	}
	v.Destroy()
}
