package ort

// Our own cgo on ONNX Runtime's C API, for what onnxruntime_go v1.27 does
// not expose: IoBinding with outputs kept in device memory (its binding
// knows only CPU memory, and its session handles are private). The C API
// is a table of function pointers (struct OrtApi) that only grows at its
// end, so an entry's index is fixed for every library of API version ≥
// the one that added it; we declare the few entries we call by index, with
// their C signatures, instead of including onnxruntime_c_api.h. The
// library is the one onnxruntime_go loaded (dlopen of the same path
// returns the same handle).

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef void OrtStatus;
typedef const void* lcPtr;
typedef struct {
	lcPtr* (*GetApi)(uint32_t version);
	const char* (*GetVersionString)(void);
} lcApiBase;
typedef const lcApiBase* (*lcGetApiBase)(void);

// Indices in struct OrtApi (onnxruntime_c_api.h, API 24).
enum {
	lcGetErrorMessage = 2, lcCreateEnv = 3, lcCreateSession = 7, lcCreateSessionFromArray = 8, lcCreateSessionOptions = 10,
	lcSetSessionGraphOptimizationLevel = 23, lcSetIntraOpNumThreads = 24,
	lcCreateTensorWithDataAsOrtValue = 49, lcGetTensorMutableData = 51,
	lcGetTensorElementType = 60, lcGetDimensionsCount = 61, lcGetDimensions = 62, lcGetTensorTypeAndShape = 65,
	lcCreateMemoryInfo = 68, lcCreateCpuMemoryInfo = 69, lcAllocatorFree = 76, lcGetAllocatorWithDefaultOptions = 78,
	lcReleaseEnv = 92, lcReleaseStatus = 93, lcReleaseMemoryInfo = 94, lcReleaseSession = 95, lcReleaseValue = 96,
	lcReleaseTensorTypeAndShapeInfo = 99, lcReleaseSessionOptions = 100,
	lcRunWithBinding = 133, lcCreateIoBinding = 134, lcReleaseIoBinding = 135, lcBindInput = 136, lcBindOutput = 137,
	lcBindOutputToDevice = 138, lcGetBoundOutputValues = 140, lcClearBoundInputs = 141, lcClearBoundOutputs = 142,
	lcSessionOptionsAppendExecutionProvider_CUDA_V2 = 204, lcCreateCUDAProviderOptions = 205,
	lcUpdateCUDAProviderOptions = 206, lcReleaseCUDAProviderOptions = 208,
};

static lcPtr* lc_api(const char* lib, uint32_t version, char** err) {
	void* h = dlopen(lib, RTLD_NOW | RTLD_GLOBAL);
	if (!h) { *err = dlerror(); return NULL; }
	lcGetApiBase base = (lcGetApiBase)dlsym(h, "OrtGetApiBase");
	if (!base) { *err = dlerror(); return NULL; }
	lcPtr* api = base()->GetApi(version);
	if (!api) { *err = "the library does not provide this API version"; }
	return api;
}

// lc_msg returns status's message (copied by the caller) and releases it.
static const char* lc_msg(lcPtr* api, OrtStatus* st) {
	return ((const char* (*)(const OrtStatus*))api[lcGetErrorMessage])(st);
}
static void lc_release_status(lcPtr* api, OrtStatus* st) {
	((void (*)(OrtStatus*))api[lcReleaseStatus])(st);
}
static void lc_release(lcPtr* api, int idx, void* p) {
	if (p) ((void (*)(void*))api[idx])(p);
}
static OrtStatus* lc_create_env(lcPtr* api, void** out) {
	return ((OrtStatus* (*)(int, const char*, void**))api[lcCreateEnv])(3, "loracc", out); // ORT_LOGGING_LEVEL_ERROR
}
static OrtStatus* lc_create_session_options(lcPtr* api, void** out) {
	return ((OrtStatus* (*)(void**))api[lcCreateSessionOptions])(out);
}
static OrtStatus* lc_set_threads(lcPtr* api, void* so, int n) {
	return ((OrtStatus* (*)(void*, int))api[lcSetIntraOpNumThreads])(so, n);
}
static OrtStatus* lc_set_opt_level(lcPtr* api, void* so, int level) {
	return ((OrtStatus* (*)(void*, int))api[lcSetSessionGraphOptimizationLevel])(so, level);
}
static OrtStatus* lc_append_cuda(lcPtr* api, void* so, const char* device) {
	void* opts = NULL;
	OrtStatus* st = ((OrtStatus* (*)(void**))api[lcCreateCUDAProviderOptions])(&opts);
	if (st) return st;
	const char* keys[] = {"device_id"};
	const char* vals[] = {device};
	st = ((OrtStatus* (*)(void*, const char* const*, const char* const*, size_t))api[lcUpdateCUDAProviderOptions])(opts, keys, vals, 1);
	if (!st) st = ((OrtStatus* (*)(void*, const void*))api[lcSessionOptionsAppendExecutionProvider_CUDA_V2])(so, opts);
	((void (*)(void*))api[lcReleaseCUDAProviderOptions])(opts);
	return st;
}
static OrtStatus* lc_create_session(lcPtr* api, void* env, const char* path, void* so, void** out) {
	return ((OrtStatus* (*)(void*, const char*, void*, void**))api[lcCreateSession])(env, path, so, out);
}
static OrtStatus* lc_create_session_bytes(lcPtr* api, void* env, const void* data, size_t len, void* so, void** out) {
	return ((OrtStatus* (*)(void*, const void*, size_t, void*, void**))api[lcCreateSessionFromArray])(env, data, len, so, out);
}
static OrtStatus* lc_create_binding(lcPtr* api, void* sess, void** out) {
	return ((OrtStatus* (*)(void*, void**))api[lcCreateIoBinding])(sess, out);
}
static OrtStatus* lc_mem_info(lcPtr* api, const char* name, int id, void** out) {
	if (name[0] == 'C' && name[1] == 'p' && name[2] == 'u')
		return ((OrtStatus* (*)(int, int, void**))api[lcCreateCpuMemoryInfo])(0, 0, out); // device allocator, default mem
	return ((OrtStatus* (*)(const char*, int, int, int, void**))api[lcCreateMemoryInfo])(name, 0, id, 0, out);
}
static OrtStatus* lc_tensor(lcPtr* api, void* info, void* data, size_t len, int64_t* shape, size_t rank, int type, void** out) {
	return ((OrtStatus* (*)(void*, void*, size_t, const int64_t*, size_t, int, void**))api[lcCreateTensorWithDataAsOrtValue])(info, data, len, shape, rank, type, out);
}
static OrtStatus* lc_bind_input(lcPtr* api, void* b, const char* name, void* v) {
	return ((OrtStatus* (*)(void*, const char*, const void*))api[lcBindInput])(b, name, v);
}
static OrtStatus* lc_bind_output_to(lcPtr* api, void* b, const char* name, void* info) {
	return ((OrtStatus* (*)(void*, const char*, const void*))api[lcBindOutputToDevice])(b, name, info);
}
static OrtStatus* lc_run(lcPtr* api, void* sess, void* b) {
	return ((OrtStatus* (*)(void*, const void*, const void*))api[lcRunWithBinding])(sess, NULL, b);
}
static void lc_clear(lcPtr* api, void* b) {
	((void (*)(void*))api[lcClearBoundInputs])(b);
	((void (*)(void*))api[lcClearBoundOutputs])(b);
}
// lc_outputs returns the bound output values in binding order; the array
// is freed here, the values belong to the caller.
static OrtStatus* lc_outputs(lcPtr* api, void* b, void** vals, size_t cap, size_t* n) {
	void* alloc = NULL;
	OrtStatus* st = ((OrtStatus* (*)(void**))api[lcGetAllocatorWithDefaultOptions])(&alloc);
	if (st) return st;
	void** arr = NULL;
	st = ((OrtStatus* (*)(const void*, void*, void***, size_t*))api[lcGetBoundOutputValues])(b, alloc, &arr, n);
	if (st) return st;
	for (size_t i = 0; i < *n && i < cap; i++) vals[i] = arr[i];
	if (arr) ((OrtStatus* (*)(void*, void*))api[lcAllocatorFree])(alloc, arr);
	return NULL;
}
static OrtStatus* lc_data(lcPtr* api, void* v, void** out) {
	return ((OrtStatus* (*)(void*, void**))api[lcGetTensorMutableData])(v, out);
}
static OrtStatus* lc_shape(lcPtr* api, void* v, int64_t* dims, size_t cap, size_t* rank, int* type) {
	void* info = NULL;
	OrtStatus* st = ((OrtStatus* (*)(const void*, void**))api[lcGetTensorTypeAndShape])(v, &info);
	if (st) return st;
	st = ((OrtStatus* (*)(const void*, size_t*))api[lcGetDimensionsCount])(info, rank);
	if (!st && *rank <= cap) st = ((OrtStatus* (*)(const void*, int64_t*, size_t))api[lcGetDimensions])(info, dims, *rank);
	if (!st) st = ((OrtStatus* (*)(const void*, int*))api[lcGetTensorElementType])(info, type);
	((void (*)(void*))api[lcReleaseTensorTypeAndShapeInfo])(info);
	return st;
}
*/
import "C"

import (
	"fmt"
	"runtime"
	"sync"
	"unsafe"

	"github.com/loracc/loracc/graph"
)

// apiVersion is the C API version we ask for: the highest whose entries
// we use (IoBinding and CUDA provider options V2 exist since API 11).
const apiVersion = 11

// capi is the C API table of one library.
type capi struct{ t *C.lcPtr }

func loadAPI(lib string) (capi, error) {
	cl := C.CString(lib)
	defer C.free(unsafe.Pointer(cl))
	var cerr *C.char
	t := C.lc_api(cl, apiVersion, &cerr)
	if t == nil {
		return capi{}, fmt.Errorf("onnx runtime C API %d from %s: %s", apiVersion, lib, C.GoString(cerr))
	}
	return capi{t: t}, nil
}

// check turns a status into an error (nil for success), releasing it.
func (a capi) check(st unsafe.Pointer, what string) error {
	if st == nil {
		return nil
	}
	msg := C.GoString(C.lc_msg(a.t, st))
	C.lc_release_status(a.t, st)
	return fmt.Errorf("%s: %s", what, msg)
}

func (a capi) release(idx C.int, p unsafe.Pointer) {
	C.lc_release(a.t, idx, p)
}

// HostTensor is a tensor in Go memory: row-major little-endian data.
type HostTensor struct {
	DType graph.DataType
	Shape []int64
	Data  []byte
}

// Value is an OrtValue this package owns: a tensor an earlier run left in
// the session's device memory. Close releases it; it is safe twice.
type Value struct {
	api capi
	v   unsafe.Pointer
}

// Close releases the value.
func (v *Value) Close() {
	if v != nil && v.v != nil {
		v.api.release(C.lcReleaseValue, v.v)
		v.v = nil
	}
}

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
	if err := api.check(C.lc_create_env(api.t, &s.env), "creating the environment"); err != nil {
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
	memName := "Cpu"
	if o.CUDA {
		id := C.CString(fmt.Sprint(o.CUDADeviceID))
		defer C.free(unsafe.Pointer(id))
		if err := api.check(C.lc_append_cuda(api.t, so, id), "enabling the cuda execution provider"); err != nil {
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
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, nil, ErrClosed
	}
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
	cstr := func(s string) *C.char { return C.CString(s) }
	for name, t := range host {
		v, buf, err := s.hostValue(t)
		if err != nil {
			return nil, nil, fmt.Errorf("input %q: %w", name, err)
		}
		scratch = append(scratch, buf, v)
		cn := cstr(name)
		err = a.check(C.lc_bind_input(a.t, s.bind, cn, v), "binding input "+name)
		C.free(unsafe.Pointer(cn))
		if err != nil {
			return nil, nil, err
		}
	}
	for name, v := range dev {
		if v == nil || v.v == nil {
			return nil, nil, fmt.Errorf("input %q: released value", name)
		}
		cn := cstr(name)
		err := a.check(C.lc_bind_input(a.t, s.bind, cn, v.v), "binding input "+name)
		C.free(unsafe.Pointer(cn))
		if err != nil {
			return nil, nil, err
		}
	}
	names := append(append([]string(nil), toHost...), toDevice...)
	for i, name := range names {
		mem := s.devMem
		if i < len(toHost) {
			mem = s.hostMem
		}
		cn := cstr(name)
		err := a.check(C.lc_bind_output_to(a.t, s.bind, cn, mem), "binding output "+name)
		C.free(unsafe.Pointer(cn))
		if err != nil {
			return nil, nil, err
		}
	}
	if err := a.check(C.lc_run(a.t, s.sess, s.bind), "run"); err != nil {
		return nil, nil, err
	}
	if len(names) == 0 {
		return nil, nil, fmt.Errorf("no outputs bound")
	}
	vals := make([]unsafe.Pointer, len(names))
	var n C.size_t
	if err := a.check(C.lc_outputs(a.t, s.bind, (*unsafe.Pointer)(unsafe.Pointer(&vals[0])), C.size_t(len(vals)), &n), "reading outputs"); err != nil {
		return nil, nil, err
	}
	if int(n) != len(names) {
		for _, v := range vals[:min(int(n), len(vals))] {
			a.release(C.lcReleaseValue, v)
		}
		return nil, nil, fmt.Errorf("the binding returned %d outputs for %d bound", n, len(names))
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

// Info reads the value's element type and shape (metadata, on the host
// for any device).
func (v *Value) Info() (graph.DataType, []int64, error) {
	if v == nil || v.v == nil {
		return 0, nil, fmt.Errorf("released value")
	}
	var dims [16]C.int64_t
	var rank C.size_t
	var typ C.int
	if err := v.api.check(C.lc_shape(v.api.t, v.v, &dims[0], 16, &rank, &typ), "reading a shape"); err != nil {
		return 0, nil, err
	}
	if rank > 16 {
		return 0, nil, fmt.Errorf("rank %d", rank)
	}
	shape := make([]int64, rank)
	for i := range shape {
		shape[i] = int64(dims[i])
	}
	return graph.DataType(typ), shape, nil
}
