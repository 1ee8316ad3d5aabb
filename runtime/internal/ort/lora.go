package ort

// ONNX Runtime's own LoRA adapters (.onnx_adapter): loaded with its
// loader and activated per run, the Adapters API of multi-LoRA serving.

/*
#include "lc.h"
*/
import "C"

import (
	"fmt"
	"runtime"
	"unsafe"
)

// RunActive runs on host inputs with the given adapters active: ONNX
// Runtime feeds each adapter's tensors to the inputs of the same names.
// It goes through the C API's Run, because RunWithBinding ignores active
// adapters (ORT logs "won't have an effect"), and returns the outputs
// named in toHost.
func (s *BoundSession) RunActive(host map[string]HostTensor, toHost []string, active ...*LoraAdapter) (map[string]HostTensor, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	a := s.api
	var opts unsafe.Pointer
	if err := a.check(C.lc_run_options(a.t, nil, &opts), "run options"); err != nil {
		return nil, err
	}
	defer a.release(C.lcReleaseRunOptions, opts)
	for _, l := range active {
		if l == nil || l.p == nil {
			return nil, fmt.Errorf("a closed adapter")
		}
		if err := a.check(C.lc_activate_lora(a.t, opts, l.p), "activating an adapter"); err != nil {
			return nil, err
		}
	}
	// Names and values in C memory for the call.
	cstrs := func(names []string) **C.char {
		p := (**C.char)(C.malloc(C.size_t(max(len(names), 1)) * C.size_t(unsafe.Sizeof(uintptr(0)))))
		arr := unsafe.Slice(p, max(len(names), 1))
		for i, n := range names {
			arr[i] = C.CString(n)
		}
		return p
	}
	freeStrs := func(p **C.char, n int) {
		for _, c := range unsafe.Slice(p, max(n, 1))[:n] {
			C.free(unsafe.Pointer(c))
		}
		C.free(unsafe.Pointer(p))
	}
	ptrs := func(n int) (unsafe.Pointer, []unsafe.Pointer) {
		p := C.calloc(C.size_t(max(n, 1)), C.size_t(unsafe.Sizeof(uintptr(0))))
		return p, unsafe.Slice((*unsafe.Pointer)(p), max(n, 1))[:n]
	}
	var inNames []string
	inVals, ins := ptrs(len(host))
	defer C.free(inVals)
	var bufs []unsafe.Pointer
	defer func() {
		for i, v := range ins {
			a.release(C.lcReleaseValue, v)
			if i < len(bufs) {
				C.free(bufs[i])
			}
		}
	}()
	for name, t := range host {
		v, buf, err := s.hostValue(t)
		if err != nil {
			return nil, fmt.Errorf("input %q: %w", name, err)
		}
		ins[len(inNames)] = v
		bufs = append(bufs, buf)
		inNames = append(inNames, name)
	}
	cin, cout := cstrs(inNames), cstrs(toHost)
	defer freeStrs(cin, len(inNames))
	defer freeStrs(cout, len(toHost))
	outVals, outs := ptrs(len(toHost))
	defer C.free(outVals)
	defer func() {
		for _, v := range outs {
			a.release(C.lcReleaseValue, v)
		}
	}()
	if err := a.check(C.lc_run_plain(a.t, s.sess, opts, cin, (*unsafe.Pointer)(inVals), C.size_t(len(inNames)), cout, C.size_t(len(toHost)), (*unsafe.Pointer)(outVals)), "run"); err != nil {
		return nil, err
	}
	res := map[string]HostTensor{}
	for i, name := range toHost {
		t, err := s.read(outs[i])
		if err != nil {
			return nil, fmt.Errorf("output %q: %w", name, err)
		}
		res[name] = t
	}
	return res, nil
}

// LoraAdapter is an .onnx_adapter loaded by ONNX Runtime itself
// (CreateLoraAdapterFromArray), to activate per run.
type LoraAdapter struct {
	api    capi
	p, buf unsafe.Pointer
}

// LoadAdapter parses an .onnx_adapter file's bytes with ONNX Runtime's
// own loader.
func (s *BoundSession) LoadAdapter(data []byte) (*LoraAdapter, error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("empty adapter")
	}
	// A C copy that lives as long as the adapter, whatever ORT keeps.
	buf := C.malloc(C.size_t(len(data)))
	C.memcpy(buf, unsafe.Pointer(&data[0]), C.size_t(len(data)))
	l := &LoraAdapter{api: s.api, buf: buf}
	if err := s.api.check(C.lc_lora(s.api.t, buf, C.size_t(len(data)), &l.p), "loading the adapter"); err != nil {
		C.free(buf)
		return nil, err
	}
	runtime.SetFinalizer(l, (*LoraAdapter).Close)
	return l, nil
}

// Close releases the adapter; it is safe twice.
func (l *LoraAdapter) Close() {
	if l.p != nil {
		l.api.release(C.lcReleaseLoraAdapter, l.p)
		C.free(l.buf)
		l.p, l.buf = nil, nil
	}
}
