package runtime

import (
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/runtime/internal/ort"
)

// DeviceValue is a tensor a BoundSession left in its device memory (GPU
// memory under CUDA), to feed a later run without crossing to the host.
// Close releases it; it is safe twice.
type DeviceValue struct{ v *ort.Value }

// Address is where the value's data lies in device memory (a CUDA
// pointer under CUDA), to sum gradients in place with
// NCCLComm.AllReduceDevice; valid until Close.
func (d *DeviceValue) Address() (uintptr, error) { return d.v.Address() }

// Close releases the value.
func (d *DeviceValue) Close() {
	if d != nil {
		d.v.Close()
	}
}

// BoundSession runs a model with some inputs and outputs kept in device
// memory between runs (ONNX Runtime's IoBinding): a training step's
// adapter and optimizer state stay on the GPU, and only the loss and the
// gradient norm come back each step. Run is not for concurrent use.
type BoundSession struct {
	env  *Env
	name string
	opts ort.Options
	s    *ort.BoundSession

	mu      sync.Mutex
	fetches map[string]*ort.BoundSession // identity graphs that copy values to the host
}

// NewBoundSession opens the model file at path for bound runs.
func (e *Env) NewBoundSession(path string, opts SessionOptions) (*BoundSession, error) {
	o, err := opts.ort()
	if err != nil {
		return nil, fmt.Errorf("runtime: %s: %w", path, err)
	}
	return e.newBound(path, o, opts.device())
}

// newBound opens a bound session under ORT options o.
func (e *Env) newBound(path string, o ort.Options, device string) (*BoundSession, error) {
	if err := e.addSession(); err != nil {
		return nil, fmt.Errorf("runtime: %s: %w", path, err)
	}
	s, err := ort.NewBoundSession(e.libPath, path, nil, o)
	if err != nil {
		e.removeSession()
		return nil, fmt.Errorf("runtime: %s: creating %s session: %w", path, device, err)
	}
	return &BoundSession{env: e, name: path, opts: o, s: s, fetches: map[string]*ort.BoundSession{}}, nil
}

// MemoryStats are the statistics of the session's device allocator, by
// ONNX Runtime's names (MaxInUse: the peak of bytes in use;
// TotalAllocated: what its arena holds).
func (b *BoundSession) MemoryStats() (map[string]int64, error) { return b.s.MemoryStats() }

// Close releases the session; it is safe twice.
func (b *BoundSession) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.s == nil {
		return
	}
	b.s.Close()
	for _, f := range b.fetches {
		f.Close()
	}
	b.s, b.fetches = nil, nil
	b.env.removeSession()
}

// Run feeds host inputs (copied for the run) and device inputs, and
// returns the outputs named in toHost as host tensors and those in
// toDevice as DeviceValues the caller owns. Every output of the model is
// in one of the lists.
func (b *BoundSession) Run(host map[string]Tensor, dev map[string]*DeviceValue, toHost, toDevice []string) (map[string]Tensor, map[string]*DeviceValue, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.s == nil {
		return nil, nil, fmt.Errorf("runtime: %s: session is closed", b.name)
	}
	hin := make(map[string]ort.HostTensor, len(host))
	for k, t := range host {
		hin[k] = ort.HostTensor{DType: t.DType, Shape: t.Shape, Data: t.Data}
	}
	din := make(map[string]*ort.Value, len(dev))
	for k, d := range dev {
		if d == nil {
			return nil, nil, fmt.Errorf("runtime: %s: input %q: no value", b.name, k)
		}
		din[k] = d.v
	}
	hout, dout, err := b.s.Run(hin, din, toHost, toDevice)
	if err != nil {
		return nil, nil, fmt.Errorf("runtime: %s: %w", b.name, err)
	}
	return fromHost(hout), wrap(dout), nil
}

// LoraAdapter is an .onnx_adapter as ONNX Runtime loads it, to activate
// per run: the Adapters API of multi-LoRA serving.
type LoraAdapter struct{ a *ort.LoraAdapter }

// LoadAdapter parses an .onnx_adapter file's bytes with ONNX Runtime's
// own loader.
func (b *BoundSession) LoadAdapter(data []byte) (*LoraAdapter, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.s == nil {
		return nil, fmt.Errorf("runtime: %s: session is closed", b.name)
	}
	a, err := b.s.LoadAdapter(data)
	if err != nil {
		return nil, fmt.Errorf("runtime: %s: %w", b.name, err)
	}
	return &LoraAdapter{a: a}, nil
}

// Close releases the adapter.
func (l *LoraAdapter) Close() { l.a.Close() }

// RunActive runs on host inputs with the given adapters active (ONNX
// Runtime feeds their tensors to the inputs of the same names) and
// returns the outputs named in toHost, which must be all of them.
func (b *BoundSession) RunActive(host map[string]Tensor, toHost []string, active ...*LoraAdapter) (map[string]Tensor, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.s == nil {
		return nil, fmt.Errorf("runtime: %s: session is closed", b.name)
	}
	hin := make(map[string]ort.HostTensor, len(host))
	for k, t := range host {
		hin[k] = ort.HostTensor{DType: t.DType, Shape: t.Shape, Data: t.Data}
	}
	as := make([]*ort.LoraAdapter, len(active))
	for i, l := range active {
		as[i] = l.a
	}
	out, err := b.s.RunActive(hin, toHost, as...)
	if err != nil {
		return nil, fmt.Errorf("runtime: %s: %w", b.name, err)
	}
	return fromHost(out), nil
}

// Fetch copies device values to the host (for a checkpoint or an
// evaluation): it runs an identity graph over them on the same provider,
// built once per set of names, types and shapes.
func (b *BoundSession) Fetch(vals map[string]*DeviceValue) (map[string]Tensor, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.s == nil {
		return nil, fmt.Errorf("runtime: %s: session is closed", b.name)
	}
	names := make([]string, 0, len(vals))
	for k := range vals {
		names = append(names, k)
	}
	sort.Strings(names)
	specs := make([]tensorSpec, len(names))
	din := map[string]*ort.Value{}
	for i, n := range names {
		dt, shape, err := vals[n].v.Info()
		if err != nil {
			return nil, fmt.Errorf("runtime: fetch %q: %w", n, err)
		}
		specs[i] = tensorSpec{dt, shape}
		din[fmt.Sprintf("in%d", i)] = vals[n].v
	}
	f, outs, err := b.identity(specs)
	if err != nil {
		return nil, err
	}
	hout, _, err := f.Run(nil, din, outs, nil)
	if err != nil {
		return nil, fmt.Errorf("runtime: fetch: %w", err)
	}
	res := map[string]Tensor{}
	for i, n := range names {
		t := hout[outs[i]]
		res[n] = Tensor{DType: t.DType, Shape: t.Shape, Data: t.Data}
	}
	return res, nil
}

func fromHost(m map[string]ort.HostTensor) map[string]Tensor {
	out := make(map[string]Tensor, len(m))
	for k, t := range m {
		out[k] = Tensor{DType: t.DType, Shape: t.Shape, Data: t.Data}
	}
	return out
}

func wrap(m map[string]*ort.Value) map[string]*DeviceValue {
	out := make(map[string]*DeviceValue, len(m))
	for k, v := range m {
		out[k] = &DeviceValue{v: v}
	}
	return out
}

// tensorSpec is a tensor's element type and static shape.
type tensorSpec struct {
	dt    graph.DataType
	shape []int64
}

// identity returns a session (built once per list of specs, on the same
// provider) of a graph copying inputs in0, in1, ... to outputs out0,
// out1, ...: what moves tensors between the host and device buffers with
// ONNX Runtime's own copies. It returns the output names. Callers hold b.mu.
func (b *BoundSession) identity(specs []tensorSpec) (*ort.BoundSession, []string, error) {
	var key strings.Builder
	m := graph.NewModel(13)
	bld := &graph.Builder{G: m.Graph, Prefix: "copy"}
	var outs []string
	for i, sp := range specs {
		fmt.Fprintf(&key, "%s%v;", sp.dt, sp.shape)
		dims := make([]graph.Dim, len(sp.shape))
		for j, d := range sp.shape {
			dims[j] = graph.Dim{Value: d}
		}
		x := m.Graph.AddInput(fmt.Sprintf("in%d", i), &graph.TensorType{DType: sp.dt, Shape: dims})
		y := bld.Op("Identity", fmt.Sprintf("out%d", i), []*graph.Value{x})
		y.Type = &graph.TensorType{DType: sp.dt, Shape: dims}
		m.Graph.AddOutput(y)
		outs = append(outs, y.Name)
	}
	if f := b.fetches[key.String()]; f != nil {
		return f, outs, nil
	}
	data, err := graph.Encode(m)
	if err != nil {
		return nil, nil, err
	}
	o := b.opts
	o.CUDAGraph = false
	f, err := ort.NewBoundSession(b.env.libPath, "", data, o)
	if err != nil {
		return nil, nil, fmt.Errorf("runtime: copy graph: %w", err)
	}
	b.fetches[key.String()] = f
	return f, outs, nil
}
