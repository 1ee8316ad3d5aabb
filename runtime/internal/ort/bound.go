package ort

/*
#include "lc.h"
*/
import "C"

import (
	"bytes"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"github.com/loracc/loracc/graph"
)

// BoundSession runs a model through an IoBinding, so that chosen outputs
// stay in the session's device memory as Values and are fed back as
// inputs without crossing to the host: the adapter and optimizer state of
// a training step live on the GPU for the whole run. On the CPU provider
// "device memory" is host memory, and everything works the same.
type BoundSession struct {
	mu              sync.Mutex
	api             capi
	env, sess, bind unsafe.Pointer
	hostMem, devMem unsafe.Pointer
	alloc           unsafe.Pointer // device allocator, made by Alloc
	closed          bool
}

// NewBoundSession opens the model at path (or the serialized model, when
// model is not nil) with the library lib (already loaded by Init) under o.
func NewBoundSession(lib, path string, model []byte, o Options) (_ *BoundSession, err error) {
	api, err := loadAPI(lib)
	if err != nil {
		return nil, err
	}
	s := &BoundSession{api: api}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	// ORT's environment is one per process: the level Acquire set.
	if err := api.check(C.lc_create_env(api.t, C.int(envLogLevel()), &s.env), "creating the environment"); err != nil {
		return nil, err
	}
	var so unsafe.Pointer
	if err := api.check(C.lc_create_session_options(api.t, &so), "creating session options"); err != nil {
		return nil, err
	}
	defer api.release(C.lcReleaseSessionOptions, so)
	if o.IntraOpThreads > 0 {
		if err := api.check(C.lc_set_threads(api.t, so, C.int(o.IntraOpThreads)), "setting intra-op threads"); err != nil {
			return nil, err
		}
	}
	if o.DisableOptimizations {
		if err := api.check(C.lc_set_opt_level(api.t, so, 0), "disabling graph optimizations"); err != nil {
			return nil, err
		}
	}
	if o.OptimizedModelPath != "" {
		p := C.CString(o.OptimizedModelPath)
		defer C.free(unsafe.Pointer(p))
		if err := api.check(C.lc_optimized_model_path(api.t, so, p), "setting the optimized model path"); err != nil {
			return nil, err
		}
	}
	if o.NoMemPattern {
		if err := api.check(C.lc_disable_mem_pattern(api.t, so), "disabling the memory pattern"); err != nil {
			return nil, err
		}
	}
	if o.SharedArena {
		cuda := C.int(0)
		if o.CUDA {
			cuda = 1
		}
		err := sharedArena(o, func(extend int, limit int64) error {
			return api.check(C.lc_register_arena(api.t, s.env, cuda, C.int(o.CUDADeviceID), C.int(extend), C.size_t(limit)), "registering the shared arena")
		})
		if err != nil {
			return nil, err
		}
		key, val := C.CString("session.use_env_allocators"), C.CString("1")
		defer C.free(unsafe.Pointer(key))
		defer C.free(unsafe.Pointer(val))
		if err := api.check(C.lc_config_entry(api.t, so, key, val), "using the shared arena"); err != nil {
			return nil, err
		}
	}
	memName := "Cpu"
	if o.CUDA {
		id := C.CString(fmt.Sprint(o.CUDADeviceID))
		defer C.free(unsafe.Pointer(id))
		graphs := C.int(0)
		if o.CUDAGraph {
			graphs = 1
		}
		extend := C.CString(o.ArenaExtend)
		defer C.free(unsafe.Pointer(extend))
		limit := ""
		if o.GPUMemLimit > 0 {
			limit = fmt.Sprint(o.GPUMemLimit)
		}
		climit := C.CString(limit)
		defer C.free(unsafe.Pointer(climit))
		if err := api.check(C.lc_append_cuda(api.t, so, id, graphs, extend, climit), "enabling the cuda execution provider"); err != nil {
			return nil, err
		}
		memName = "Cuda"
	}
	if model != nil {
		buf := C.CBytes(model)
		defer C.free(buf)
		if err := api.check(C.lc_create_session_bytes(api.t, s.env, buf, C.size_t(len(model)), so, &s.sess), "creating the session"); err != nil {
			return nil, err
		}
	} else {
		cpath := C.CString(path)
		defer C.free(unsafe.Pointer(cpath))
		if err := api.check(C.lc_create_session(api.t, s.env, cpath, so, &s.sess), "creating the session"); err != nil {
			return nil, err
		}
	}
	if err := api.check(C.lc_create_binding(api.t, s.sess, &s.bind), "creating the io binding"); err != nil {
		return nil, err
	}
	for _, m := range []struct {
		name string
		out  *unsafe.Pointer
	}{{"Cpu", &s.hostMem}, {memName, &s.devMem}} {
		cn := C.CString(m.name)
		err := api.check(C.lc_mem_info(api.t, cn, C.int(o.CUDADeviceID), m.out), "memory info "+m.name)
		C.free(unsafe.Pointer(cn))
		if err != nil {
			return nil, err
		}
	}
	return s, nil
}

// MemoryStats are the statistics of the session's device allocator (ORT's
// arena on CUDA), by ORT's names: InUse, MaxInUse (the peak of bytes in
// use), TotalAllocated (what the arena holds from the device), NumAllocs,
// ... An allocator that keeps none gives an empty map.
func (s *BoundSession) MemoryStats() (map[string]int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("memory stats: the session is closed")
	}
	if s.alloc == nil {
		if err := s.api.check(C.lc_allocator(s.api.t, s.sess, s.devMem, &s.alloc), "creating the device allocator"); err != nil {
			return nil, err
		}
	}
	buf := make([]byte, 4096)
	if err := s.api.check(C.lc_alloc_stats(s.api.t, s.alloc, (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf))), "reading the allocator's statistics"); err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, line := range strings.Split(string(buf[:bytes.IndexByte(buf, 0)]), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if n, err := strconv.ParseInt(v, 10, 64); ok && err == nil {
			out[k] = n
		}
	}
	return out, nil
}

// Ways to bind a name (bindOne).
const (
	bindInput    = iota // an input to a value
	bindOutput          // an output into a value
	bindOutputTo        // an output to memory ORT allocates (a memory info)
)

// bindOne binds name on binding b to p, as kind says.
func (a capi) bindOne(b unsafe.Pointer, kind int, name string, p unsafe.Pointer) error {
	if p == nil {
		return fmt.Errorf("%q: released value", name)
	}
	cn := C.CString(name)
	defer C.free(unsafe.Pointer(cn))
	var st unsafe.Pointer
	switch kind {
	case bindInput:
		st = C.lc_bind_input(a.t, b, cn, p)
	case bindOutput:
		st = C.lc_bind_output(a.t, b, cn, p)
	default:
		st = C.lc_bind_output_to(a.t, b, cn, p)
	}
	return a.check(st, "binding "+name)
}

// Close releases the session; it is safe twice and on a half-built one.
func (s *BoundSession) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	a := s.api
	a.release(C.lcReleaseIoBinding, s.bind)
	a.release(C.lcReleaseAllocator, s.alloc)
	a.release(C.lcReleaseSession, s.sess)
	a.release(C.lcReleaseMemoryInfo, s.hostMem)
	a.release(C.lcReleaseMemoryInfo, s.devMem)
	a.release(C.lcReleaseEnv, s.env)
}

// Run binds host inputs (copied for the run) and device inputs (Values of
// earlier runs), runs, and returns the outputs named in toHost as host
// tensors and those in toDevice as new Values the caller owns. Every
// output of the graph must be in one of the two lists.
func (s *BoundSession) Run(host map[string]HostTensor, dev map[string]*Value, toHost, toDevice []string) (map[string]HostTensor, map[string]*Value, error) {
	return s.RunInto(host, dev, toHost, toDevice, nil)
}

// RunInto is Run that also writes the outputs named in into into the
// given values (device buffers allocated beforehand).
func (s *BoundSession) RunInto(host map[string]HostTensor, dev map[string]*Value, toHost, toDevice []string, into map[string]*Value) (map[string]HostTensor, map[string]*Value, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, nil, ErrClosed
	}
	return s.run(nil, host, dev, toHost, toDevice, into)
}

// run is RunInto under run options opts (nil: the defaults), with s.mu held.
func (s *BoundSession) run(opts unsafe.Pointer, host map[string]HostTensor, dev map[string]*Value, toHost, toDevice []string, into map[string]*Value) (map[string]HostTensor, map[string]*Value, error) {
	a := s.api
	defer C.lc_clear(a.t, s.bind)
	var scratch []unsafe.Pointer // C copies of host inputs and their OrtValues
	defer func() {
		for i := len(scratch) - 1; i >= 0; i-- {
			if i%2 == 1 {
				a.release(C.lcReleaseValue, scratch[i])
			} else {
				C.free(scratch[i])
			}
		}
	}()
	for name, t := range host {
		v, buf, err := s.hostValue(t)
		if err != nil {
			return nil, nil, fmt.Errorf("input %q: %w", name, err)
		}
		scratch = append(scratch, buf, v)
		if err := a.bindOne(s.bind, bindInput, name, v); err != nil {
			return nil, nil, err
		}
	}
	for name, v := range dev {
		if err := a.bindOne(s.bind, bindInput, name, valuePtr(v)); err != nil {
			return nil, nil, err
		}
	}
	names := append(append([]string(nil), toHost...), toDevice...)
	for i, name := range names {
		mem := s.devMem
		if i < len(toHost) {
			mem = s.hostMem
		}
		if err := a.bindOne(s.bind, bindOutputTo, name, mem); err != nil {
			return nil, nil, err
		}
	}
	// Outputs written into given buffers are bound last, so the bound
	// values come back with the named ones first.
	for name, v := range into {
		if err := a.bindOne(s.bind, bindOutput, name, valuePtr(v)); err != nil {
			return nil, nil, err
		}
	}
	if err := a.check(C.lc_run(a.t, s.sess, opts, s.bind), "run"); err != nil {
		return nil, nil, err
	}
	if len(toDevice) > 0 || len(into) > 0 {
		// Another session may read these buffers next, on its own stream.
		if err := a.check(C.lc_sync(a.t, s.bind, 1), "synchronizing outputs"); err != nil {
			return nil, nil, err
		}
	}
	if len(names) == 0 {
		return map[string]HostTensor{}, map[string]*Value{}, nil
	}
	vals := make([]unsafe.Pointer, len(names)+len(into))
	var n C.size_t
	if err := a.check(C.lc_outputs(a.t, s.bind, (*unsafe.Pointer)(unsafe.Pointer(&vals[0])), C.size_t(len(vals)), &n), "reading outputs"); err != nil {
		return nil, nil, err
	}
	if int(n) != len(vals) {
		for _, v := range vals[:min(int(n), len(vals))] {
			a.release(C.lcReleaseValue, v)
		}
		return nil, nil, fmt.Errorf("the binding returned %d outputs for %d bound", n, len(vals))
	}
	for _, v := range vals[len(names):] {
		a.release(C.lcReleaseValue, v) // references to the into buffers
	}
	outHost := map[string]HostTensor{}
	outDev := map[string]*Value{}
	var firstErr error
	for i, name := range names {
		if i >= len(toHost) {
			v := &Value{api: a, v: vals[i]}
			runtime.SetFinalizer(v, (*Value).Close)
			outDev[name] = v
			continue
		}
		t, err := s.read(vals[i])
		a.release(C.lcReleaseValue, vals[i])
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("output %q: %w", name, err)
		}
		outHost[name] = t
	}
	if firstErr != nil {
		for _, v := range outDev {
			v.Close()
		}
		return nil, nil, firstErr
	}
	return outHost, outDev, nil
}

// hostValue copies t into C memory and wraps it as an OrtValue on the
// CPU; both are released after the run.
func (s *BoundSession) hostValue(t HostTensor) (unsafe.Pointer, unsafe.Pointer, error) {
	size, err := graph.ByteSize(t.DType, t.Shape)
	if err != nil || size != int64(len(t.Data)) {
		return nil, nil, fmt.Errorf("%d bytes for %s%v", len(t.Data), t.DType, t.Shape)
	}
	buf := C.malloc(C.size_t(max(size, 1)))
	if len(t.Data) > 0 {
		C.memcpy(buf, unsafe.Pointer(&t.Data[0]), C.size_t(size))
	}
	var shape *C.int64_t
	if len(t.Shape) > 0 {
		shape = (*C.int64_t)(C.malloc(C.size_t(8 * len(t.Shape))))
		defer C.free(unsafe.Pointer(shape))
		dims := unsafe.Slice((*int64)(unsafe.Pointer(shape)), len(t.Shape))
		copy(dims, t.Shape)
	}
	var v unsafe.Pointer
	if err := s.api.check(C.lc_tensor(s.api.t, s.hostMem, buf, C.size_t(size), shape, C.size_t(len(t.Shape)), C.int(t.DType), &v), "creating a tensor"); err != nil {
		C.free(buf)
		return nil, nil, err
	}
	return v, buf, nil
}

// read copies a CPU OrtValue's tensor into Go memory.
func (s *BoundSession) read(v unsafe.Pointer) (HostTensor, error) {
	var dims [16]C.int64_t
	var rank C.size_t
	var typ C.int
	if err := s.api.check(C.lc_shape(s.api.t, v, &dims[0], 16, &rank, &typ), "reading a shape"); err != nil {
		return HostTensor{}, err
	}
	if rank > 16 {
		return HostTensor{}, fmt.Errorf("rank %d", rank)
	}
	t := HostTensor{DType: graph.DataType(typ), Shape: make([]int64, rank)}
	for i := range t.Shape {
		t.Shape[i] = int64(dims[i])
	}
	size, err := graph.ByteSize(t.DType, t.Shape)
	if err != nil {
		return HostTensor{}, err
	}
	var p unsafe.Pointer
	if err := s.api.check(C.lc_data(s.api.t, v, &p), "reading data"); err != nil {
		return HostTensor{}, err
	}
	t.Data = C.GoBytes(p, C.int(size))
	return t, nil
}

// Alloc makes a tensor in the session's device memory, through an
// allocator of the session (created on first use).
func (s *BoundSession) Alloc(dt graph.DataType, shape []int64) (*Value, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	a := s.api
	if s.alloc == nil {
		if err := a.check(C.lc_allocator(a.t, s.sess, s.devMem, &s.alloc), "creating a device allocator"); err != nil {
			return nil, err
		}
	}
	var dims *C.int64_t
	if len(shape) > 0 {
		dims = (*C.int64_t)(C.malloc(C.size_t(8 * len(shape))))
		defer C.free(unsafe.Pointer(dims))
		copy(unsafe.Slice((*int64)(unsafe.Pointer(dims)), len(shape)), shape)
	}
	var v unsafe.Pointer
	if err := a.check(C.lc_alloc_tensor(a.t, s.alloc, dims, C.size_t(len(shape)), C.int(dt), &v), "allocating a device tensor"); err != nil {
		return nil, err
	}
	val := &Value{api: a, v: v}
	runtime.SetFinalizer(val, (*Value).Close)
	return val, nil
}

// FixedBinding is a binding made once: every input and output of the
// graph bound to a given value, so that runs read and write the same
// addresses. That is what a CUDA graph replays; graph names its capture
// (ORT's gpu_graph_id), one per binding.
type FixedBinding struct {
	s          *BoundSession
	bind, opts unsafe.Pointer
	keep       []*Value // the bound values, alive as long as the binding
}

// NewFixedBinding binds inputs and outputs to the given values.
func (s *BoundSession) NewFixedBinding(inputs, outputs map[string]*Value, graph int) (_ *FixedBinding, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	a := s.api
	f := &FixedBinding{s: s}
	defer func() {
		if err != nil {
			f.release()
		}
	}()
	if err := a.check(C.lc_create_binding(a.t, s.sess, &f.bind), "creating an io binding"); err != nil {
		return nil, err
	}
	gid := C.CString(fmt.Sprint(graph))
	defer C.free(unsafe.Pointer(gid))
	if err := a.check(C.lc_run_options(a.t, gid, &f.opts), "run options"); err != nil {
		return nil, err
	}
	for _, side := range []struct {
		vals map[string]*Value
		kind int
	}{{inputs, bindInput}, {outputs, bindOutput}} {
		for name, v := range side.vals {
			if err := a.bindOne(f.bind, side.kind, name, valuePtr(v)); err != nil {
				return nil, err
			}
			f.keep = append(f.keep, v)
		}
	}
	return f, nil
}

// Run runs the graph on the bound values.
func (f *FixedBinding) Run() error {
	s := f.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || f.bind == nil {
		return ErrClosed
	}
	a := s.api
	if err := a.check(C.lc_sync(a.t, f.bind, 0), "synchronizing inputs"); err != nil {
		return err
	}
	if err := a.check(C.lc_run(a.t, s.sess, f.opts, f.bind), "run"); err != nil {
		return err
	}
	// The next copies into the fed buffers, and the fetches, must not
	// overtake this run.
	return a.check(C.lc_sync(a.t, f.bind, 1), "synchronizing outputs")
}

// Close releases the binding (not the values).
func (f *FixedBinding) Close() {
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	f.release()
}

func (f *FixedBinding) release() {
	f.s.api.release(C.lcReleaseIoBinding, f.bind)
	f.s.api.release(C.lcReleaseRunOptions, f.opts)
	f.bind, f.opts, f.keep = nil, nil, nil
}

// valuePtr is v's OrtValue, nil for a nil or released value.
func valuePtr(v *Value) unsafe.Pointer {
	if v == nil {
		return nil
	}
	return v.v
}
