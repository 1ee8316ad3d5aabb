package runtime

// A captured step runs a static-shape graph on fixed device buffers, the
// form a CUDA graph needs: ONNX Runtime records the step's kernels once and
// replays them, so a step costs no per-kernel launch work on the host. A
// replay reads and writes the addresses it recorded, so every input and
// output has a buffer allocated once: the fed inputs (batch, lr, step) are
// copied into theirs each run; the carried ones (params, optimizer state)
// are read from one set of buffers and written to another, which Commit
// copies back (device to device) when the caller takes the run. One
// binding, one recorded graph. On the CPU there is no capture, and the
// same buffers and binding just run.

import (
	"fmt"
	"slices"
	"sort"

	"github.com/loracc/loracc/runtime/internal/ort"
)

// StepSpec says how a CapturedStep moves data.
type StepSpec struct {
	// Feed are inputs copied from the host into their buffers every run.
	Feed []string
	// Carry maps an input to the output that replaces it for the next run.
	Carry map[string]string
	// Fetch are outputs copied to the host every run.
	Fetch []string
}

// CapturedStep runs one static-shape graph on fixed buffers (see above).
type CapturedStep struct {
	b     *BoundSession
	spec  StepSpec
	feed  map[string]*ort.Value    // by input
	sets  [2]map[string]*ort.Value // carried tensors by input name: read, written
	fetch map[string]*ort.Value    // by output
	bind  *ort.FixedBinding
	specs map[string]tensorSpec
}

// CanCapture says whether the model at path can be recorded as a CUDA
// graph: nil, or why not — a symbolic dim, or ONNX Runtime refusing the
// capture when it opens the model (a node off the CUDA provider, a host
// copy). It opens the model on CUDA with graph capture on and closes it.
func (e *Env) CanCapture(path string, opts SessionOptions) error {
	mio, err := readModelFile(path)
	if err != nil {
		return fmt.Errorf("runtime: %s: %w", path, err)
	}
	for _, info := range append(append([]IOInfo(nil), mio.inputs...), mio.outputs...) {
		if info.Shape == nil || slices.Contains(info.Shape, -1) {
			return fmt.Errorf("%q has no static shape (compile the step with --static)", info.Name)
		}
	}
	opts.Device = "cuda"
	o, err := opts.ort()
	if err != nil {
		return err
	}
	o.CUDAGraph = true
	b, err := e.newBound(path, o, "cuda")
	if err != nil {
		return err
	}
	b.Close()
	return nil
}

// NewCapturedStep opens the model at path for captured runs (with
// opts.CUDAGraph on CUDA). Every input and output needs a static shape,
// and every one is in spec.
func (e *Env) NewCapturedStep(path string, opts SessionOptions, spec StepSpec) (_ *CapturedStep, err error) {
	mio, err := readModelFile(path)
	if err != nil {
		return nil, fmt.Errorf("runtime: %s: %w", path, err)
	}
	o, err := opts.ort()
	if err != nil {
		return nil, fmt.Errorf("runtime: %s: %w", path, err)
	}
	o.CUDAGraph = opts.Device == "cuda"
	o.SharedArena = false // see SessionOptions.SharedArena
	b, err := e.newBound(path, o, opts.device())
	if err != nil {
		return nil, err
	}
	s := b.s
	c := &CapturedStep{b: b, spec: spec,
		feed: map[string]*ort.Value{}, fetch: map[string]*ort.Value{}, specs: map[string]tensorSpec{}}
	c.sets[0], c.sets[1] = map[string]*ort.Value{}, map[string]*ort.Value{}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	for _, info := range append(append([]IOInfo(nil), mio.inputs...), mio.outputs...) {
		for _, d := range info.Shape {
			if d < 0 {
				return nil, fmt.Errorf("runtime: %s: %q has a symbolic dim; a captured step needs static shapes", path, info.Name)
			}
		}
		if info.Shape == nil {
			return nil, fmt.Errorf("runtime: %s: %q has no shape", path, info.Name)
		}
		c.specs[info.Name] = tensorSpec{info.DType, info.Shape}
	}
	alloc := func(name string) (*ort.Value, error) {
		sp, ok := c.specs[name]
		if !ok {
			return nil, fmt.Errorf("runtime: %s: the graph has no %q", path, name)
		}
		return s.Alloc(sp.dt, sp.shape)
	}
	bound := map[string]bool{}
	for _, n := range spec.Feed {
		if c.feed[n], err = alloc(n); err != nil {
			return nil, err
		}
		bound[n] = true
	}
	for in, out := range spec.Carry {
		for p := range 2 {
			if c.sets[p][in], err = alloc(in); err != nil {
				return nil, err
			}
		}
		bound[in], bound[out] = true, true
	}
	for _, n := range spec.Fetch {
		if c.fetch[n], err = alloc(n); err != nil {
			return nil, err
		}
		bound[n] = true
	}
	for _, info := range append(append([]IOInfo(nil), mio.inputs...), mio.outputs...) {
		if !bound[info.Name] {
			return nil, fmt.Errorf("runtime: %s: %q is neither fed, carried nor fetched", path, info.Name)
		}
	}
	ins, outs := map[string]*ort.Value{}, map[string]*ort.Value{}
	for n, v := range c.feed {
		ins[n] = v
	}
	for n, v := range c.fetch {
		outs[n] = v
	}
	for in, out := range spec.Carry {
		ins[in], outs[out] = c.sets[0][in], c.sets[1][in]
	}
	if c.bind, err = s.NewFixedBinding(ins, outs, 1); err != nil {
		return nil, fmt.Errorf("runtime: %s: %w", path, err)
	}
	return c, nil
}

// Load copies carried tensors (by input name) from the host into the set
// the next run reads.
func (c *CapturedStep) Load(vals map[string]Tensor) error {
	return c.copyIn(vals, c.sets[0])
}

// Run copies feeds into their buffers, runs the graph and returns the
// fetched outputs. The carried outputs are taken only by Commit.
func (c *CapturedStep) Run(feeds map[string]Tensor) (map[string]Tensor, error) {
	in := map[string]Tensor{}
	for _, n := range c.spec.Feed {
		t, ok := feeds[n]
		if !ok {
			return nil, fmt.Errorf("runtime: %s: nothing to feed %q", c.b.name, n)
		}
		in[n] = t
	}
	if err := c.copyIn(in, c.feed); err != nil {
		return nil, err
	}
	if err := c.bind.Run(); err != nil {
		return nil, fmt.Errorf("runtime: %s: %w", c.b.name, err)
	}
	return c.copyOut(c.fetch)
}

// Commit takes the last run's carried outputs as the next run's inputs:
// a device-to-device copy through an identity graph.
func (c *CapturedStep) Commit() error {
	b := c.b
	b.mu.Lock()
	defer b.mu.Unlock()
	names := make([]string, 0, len(c.sets[1]))
	for n := range c.sets[1] {
		names = append(names, n)
	}
	sort.Strings(names)
	specs := make([]tensorSpec, len(names))
	dev, into := map[string]*ort.Value{}, map[string]*ort.Value{}
	for i, n := range names {
		specs[i] = c.specs[n]
		dev[fmt.Sprintf("in%d", i)] = c.sets[1][n]
		into[fmt.Sprintf("out%d", i)] = c.sets[0][n]
	}
	f, _, err := b.identity(specs)
	if err != nil {
		return err
	}
	if _, _, err := f.RunInto(nil, dev, nil, nil, into); err != nil {
		return fmt.Errorf("runtime: %s: carrying the state: %w", b.name, err)
	}
	return nil
}

// State copies the current carried tensors to the host, by input name.
func (c *CapturedStep) State() (map[string]Tensor, error) { return c.copyOut(c.sets[0]) }

// copyIn copies host tensors into device buffers through an identity
// graph whose outputs are bound to the buffers.
func (c *CapturedStep) copyIn(vals map[string]Tensor, dst map[string]*ort.Value) error {
	b := c.b
	b.mu.Lock()
	defer b.mu.Unlock()
	names := sortedNames(vals)
	specs := make([]tensorSpec, len(names))
	host := map[string]ort.HostTensor{}
	into := map[string]*ort.Value{}
	for i, n := range names {
		d, ok := dst[n]
		if !ok {
			return fmt.Errorf("runtime: %s: no buffer for %q", b.name, n)
		}
		t := vals[n]
		if sp := c.specs[n]; t.DType != sp.dt || fmt.Sprint(t.Shape) != fmt.Sprint(sp.shape) {
			return fmt.Errorf("runtime: %s: %q is %s%v, the graph takes %s%v", b.name, n, t.DType, t.Shape, sp.dt, sp.shape)
		}
		specs[i] = tensorSpec{t.DType, t.Shape}
		host[fmt.Sprintf("in%d", i)] = ort.HostTensor{DType: t.DType, Shape: t.Shape, Data: t.Data}
		into[fmt.Sprintf("out%d", i)] = d
	}
	f, _, err := b.identity(specs)
	if err != nil {
		return err
	}
	if _, _, err := f.RunInto(host, nil, nil, nil, into); err != nil {
		return fmt.Errorf("runtime: %s: copying in: %w", b.name, err)
	}
	return nil
}

// copyOut copies device buffers to the host, keyed like src.
func (c *CapturedStep) copyOut(src map[string]*ort.Value) (map[string]Tensor, error) {
	vals := map[string]*DeviceValue{}
	for n, v := range src {
		vals[n] = &DeviceValue{v: v}
	}
	return c.b.Fetch(vals)
}

// Close releases the bindings, buffers and session; safe twice.
// MemoryStats are the step session's allocator statistics
// (BoundSession.MemoryStats).
func (c *CapturedStep) MemoryStats() (map[string]int64, error) { return c.b.MemoryStats() }

func (c *CapturedStep) Close() {
	if c.bind != nil {
		c.bind.Close()
		c.bind = nil
	}
	for p := range 2 {
		for _, v := range c.sets[p] {
			v.Close()
		}
	}
	for _, m := range []map[string]*ort.Value{c.feed, c.fetch} {
		for _, v := range m {
			v.Close()
		}
	}
	c.b.Close()
}

func sortedNames(m map[string]Tensor) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
