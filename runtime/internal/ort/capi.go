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
#include "lc.h"
*/
import "C"

import (
	"fmt"
	"unsafe"

	"github.com/loracc/loracc/graph"
)

// apiVersion is the C API version we ask for: the highest whose entries
// we use (IoBinding and CUDA provider options V2 since API 11; the
// allocator statistics, AllocatorGetStats, since API 23 — ORT 1.23).
const apiVersion = 23

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

// Address is where the value's data lies in its device's memory (a CUDA
// pointer for a CUDA value), for a library that works on it in place
// (NCCL); it is valid until Close.
func (v *Value) Address() (uintptr, error) {
	if v == nil || v.v == nil {
		return 0, fmt.Errorf("released value")
	}
	var p unsafe.Pointer
	if err := v.api.check(C.lc_data(v.api.t, v.v, &p), "reading a value's address"); err != nil {
		return 0, err
	}
	return uintptr(p), nil
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
