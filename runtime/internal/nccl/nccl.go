// Package nccl is NCCL (libnccl.so.2) and the few CUDA runtime entries
// its use needs, loaded with dlopen when a data-parallel run asks for
// them, so loracc builds and runs without either. No NCCL header is
// here: ln.h declares the entries we call with their C signatures and the
// enum values we pass, from NCCL's documentation (ncclGetVersion,
// ncclGetUniqueId, ncclCommInitRank, ncclAllReduce, ncclCommDestroy,
// ncclCommAbort, ncclCommGetAsyncError, ncclGetErrorString).
//
// Two all-reduces: AllReduce on device pointers in a CUDA stream (ORT's
// compute stream, for a step whose gradients stay on the GPU), which
// only enqueues; and AllReduceHost on host memory, staged through a
// device buffer on the communicator's own stream, waited for by polling
// with a deadline and NCCL's asynchronous error, so a rank that dies
// makes the others fail (the communicator is then aborted) instead of
// blocking forever in the library.
package nccl

/*
#cgo LDFLAGS: -ldl
#include "ln.h"
*/
import "C"

import (
	"fmt"
	"sync"
	"time"
	"unsafe"
)

// DataType is an ncclDataType_t.
type DataType int

// The data types loracc reduces (ncclInt64, ncclFloat32, ncclFloat16,
// ncclBfloat16 of nccl.h).
const (
	Int64    DataType = 4
	Float16  DataType = 6
	Float32  DataType = 7
	BFloat16 DataType = 9
)

// UniqueIDBytes is NCCL_UNIQUE_ID_BYTES.
const UniqueIDBytes = C.LN_UNIQUE_ID_BYTES

// Lib is a loaded libnccl.so.2 with the CUDA runtime beside it.
type Lib struct{ l *C.lnLib }

// Open loads NCCL from ncclPath and the CUDA runtime from cudartPath
// ("" for each: the names the dynamic linker finds, libnccl.so.2 and
// libcudart.so.13/.12). The library is never unloaded: a process loads
// it once.
func Open(ncclPath, cudartPath string) (*Lib, error) {
	cn, cc := C.CString(ncclPath), C.CString(cudartPath)
	defer C.free(unsafe.Pointer(cn))
	defer C.free(unsafe.Pointer(cc))
	var buf [1024]C.char
	var which C.int
	l := C.ln_open(cn, cc, &which, &buf[0], C.size_t(len(buf)))
	if l == nil {
		why := C.GoString(&buf[0])
		if which == 1 {
			return nil, &MissingError{Lib: orDefault(ncclPath, "libnccl.so.2"), Why: why}
		}
		return nil, &MissingError{Lib: orDefault(cudartPath, "libcudart.so.13 or .12"), Why: why}
	}
	return &Lib{l: l}, nil
}

// MissingError is Open's error when a library cannot be loaded (or lacks
// an entry we call); callers add how to point at it.
type MissingError struct {
	Lib string // the library, as asked for
	Why string // the dynamic linker's message
}

func (e *MissingError) Error() string { return fmt.Sprintf("nccl: cannot load %s: %s", e.Lib, e.Why) }

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// status turns an ln_ status into an error naming what failed.
func (l *Lib) status(st C.int, what string) error {
	switch {
	case st == 0:
		return nil
	case st > 0:
		return fmt.Errorf("nccl: %s: %s (ncclResult_t %d)", what, C.GoString(C.ln_error(l.l, st)), int(st))
	}
	return fmt.Errorf("nccl: %s: CUDA: %s (cudaError_t %d)", what, C.GoString(C.ln_error(l.l, st)), -int(st))
}

// Version is the library's version, e.g. "2.21.5".
func (l *Lib) Version() (string, error) {
	var v C.int
	if err := l.status(C.ln_version(l.l, &v), "ncclGetVersion"); err != nil {
		return "", err
	}
	n := int(v)
	if n >= 10000 { // NCCL ≥ 2.9: major·10000 + minor·100 + patch
		return fmt.Sprintf("%d.%d.%d", n/10000, n%10000/100, n%100), nil
	}
	return fmt.Sprintf("%d.%d.%d", n/1000, n%1000/100, n%100), nil
}

// UniqueID is a new ncclUniqueId, made by rank 0 and sent to the others.
func (l *Lib) UniqueID() ([UniqueIDBytes]byte, error) {
	var id [UniqueIDBytes]byte
	err := l.status(C.ln_unique_id(l.l, (*C.char)(unsafe.Pointer(&id[0]))), "ncclGetUniqueId")
	return id, err
}

// Comm is a communicator of one rank on one GPU. Its methods are for one
// goroutine at a time; Close and Abort are safe twice.
type Comm struct {
	lib *Lib
	mu  sync.Mutex
	c   *C.lnComm // C memory: the device buffer and handles live in it
}

// NewComm joins the communicator of nranks ranks that id names, as rank
// on CUDA device dev. ncclCommInitRank waits for every rank; when they
// have not all come within timeout, NewComm returns an error (the call
// itself stays blocked in its thread until the process ends).
func (l *Lib) NewComm(id [UniqueIDBytes]byte, nranks, rank, dev int, timeout time.Duration) (*Comm, error) {
	c := &Comm{lib: l, c: (*C.lnComm)(C.calloc(1, C.size_t(unsafe.Sizeof(C.lnComm{}))))}
	done := make(chan error, 1)
	go func() {
		cid := C.CBytes(id[:])
		defer C.free(cid)
		done <- l.status(C.ln_init(l.l, c.c, (*C.char)(cid), C.int(nranks), C.int(rank), C.int(dev)), fmt.Sprintf("ncclCommInitRank (rank %d of %d, device %d)", rank, nranks, dev))
	}()
	select {
	case err := <-done:
		if err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	case <-time.After(timeout):
		return nil, fmt.Errorf("nccl: ncclCommInitRank (rank %d of %d) did not return within %s: is a rank missing, or can the hosts not reach each other (NCCL_SOCKET_IFNAME, NCCL_DEBUG=INFO)?", rank, nranks, timeout)
	}
}

// AllReduce enqueues the sum of count elements of type dt from device
// memory send into device memory recv (send == recv: in place) on the
// CUDA stream (a cudaStream_t; 0 is the default stream). It returns when
// the work is enqueued: the caller orders later work on the stream.
func (c *Comm) AllReduce(send, recv uintptr, count int, dt DataType, stream uintptr) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.c == nil || c.c.comm == nil {
		return fmt.Errorf("nccl: all-reduce on a closed communicator")
	}
	return c.lib.status(C.ln_allreduce(c.lib.l, c.c, C.uintptr_t(send), C.uintptr_t(recv), C.size_t(count), C.int(dt), C.lnNcclSum, C.uintptr_t(stream)), "ncclAllReduce")
}

// AllReduceHost replaces the count elements of type dt (elsize bytes
// each) at host by their sum over the ranks, through device memory. It
// waits at most timeout; then, or on an asynchronous NCCL error (a peer
// gone), the communicator is aborted and an error returned.
func (c *Comm) AllReduceHost(host unsafe.Pointer, count, elsize int, dt DataType, timeout time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.c == nil || c.c.comm == nil {
		return fmt.Errorf("nccl: all-reduce on a closed communicator")
	}
	if count == 0 {
		return nil
	}
	if err := c.lib.status(C.ln_start_host(c.lib.l, c.c, host, C.size_t(count), C.size_t(elsize), C.int(dt)), "ncclAllReduce"); err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for wait := 20 * time.Microsecond; ; wait = min(2*wait, time.Millisecond) {
		st := C.ln_query(c.lib.l, c.c)
		if st == 0 {
			break
		}
		if st != C.LN_PENDING {
			err := c.lib.status(st, "all-reduce")
			C.ln_abort(c.lib.l, c.c)
			return fmt.Errorf("%w (a rank failed or is gone; the communicator was aborted)", err)
		}
		if time.Now().After(deadline) {
			C.ln_abort(c.lib.l, c.c)
			return fmt.Errorf("nccl: an all-reduce of %d values did not finish within %s (a rank hung or gone?); the communicator was aborted", count, timeout)
		}
		time.Sleep(wait)
	}
	return c.lib.status(C.ln_fetch_host(c.lib.l, c.c, host, C.size_t(count*elsize)), "copying the sums to the host")
}

// Abort stops the communicator's pending work (ncclCommAbort), for a run
// that failed; Close then frees the rest.
func (c *Comm) Abort() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.c != nil {
		C.ln_abort(c.lib.l, c.c)
	}
}

// Close destroys the communicator and frees its device buffer and
// stream. Safe twice and on a half-built one.
func (c *Comm) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.c == nil {
		return nil
	}
	err := c.lib.status(C.ln_destroy(c.lib.l, c.c), "ncclCommDestroy")
	C.free(unsafe.Pointer(c.c))
	c.c = nil
	return err
}
