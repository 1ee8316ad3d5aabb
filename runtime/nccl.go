package runtime

// NCCL for data-parallel training on GPUs, through the dlopen layer of
// runtime/internal/nccl. Two ways to sum: AllReduceFloat32/Int64 on host
// memory, staged through a device buffer (what the training loop uses
// today, with the gradients fetched from ORT), and AllReduceDevice on
// device addresses in a CUDA stream, for a step whose gradients stay on
// the GPU: the GPU session will bind the gradient graph's outputs to
// device buffers (BoundSession), run NCCL on ORT's compute stream (the
// CUDA provider's user_compute_stream) or synchronise with it, and feed
// the sums to the optimizer graph without a host copy.

import (
	"fmt"
	"time"
	"unsafe"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/runtime/internal/nccl"
)

// NCCL is a loaded libnccl.so.2 (with the CUDA runtime).
type NCCL struct{ lib *nccl.Lib }

// NCCLUniqueIDBytes is the size of the id rank 0 makes and sends to the
// other ranks before they create their communicators.
const NCCLUniqueIDBytes = nccl.UniqueIDBytes

// OpenNCCL loads NCCL from path ("" : libnccl.so.2 where the dynamic
// linker finds it) and the CUDA runtime beside it. A missing library is
// an error naming it.
func OpenNCCL(path string) (*NCCL, error) {
	lib, err := nccl.Open(path, "")
	if err != nil {
		return nil, err
	}
	return &NCCL{lib: lib}, nil
}

// Version is the library's version, e.g. "2.21.5".
func (n *NCCL) Version() (string, error) { return n.lib.Version() }

// UniqueID is a new communicator id (rank 0's, sent to the others).
func (n *NCCL) UniqueID() ([]byte, error) {
	id, err := n.lib.UniqueID()
	return id[:], err
}

// NCCLComm is one rank's NCCL communicator on its GPU. Close releases it
// (safe twice).
type NCCLComm struct {
	c       *nccl.Comm
	timeout time.Duration
}

// NewComm joins the communicator named by id (NCCLUniqueIDBytes bytes)
// as rank of world on CUDA device. timeout bounds the join and every
// all-reduce on host memory.
func (n *NCCL) NewComm(id []byte, world, rank, device int, timeout time.Duration) (*NCCLComm, error) {
	if len(id) != NCCLUniqueIDBytes {
		return nil, fmt.Errorf("nccl: a unique id of %d bytes, want %d", len(id), NCCLUniqueIDBytes)
	}
	var u [NCCLUniqueIDBytes]byte
	copy(u[:], id)
	c, err := n.lib.NewComm(u, world, rank, device, timeout)
	if err != nil {
		return nil, err
	}
	return &NCCLComm{c: c, timeout: timeout}, nil
}

// AllReduceFloat32 replaces buf by its sum over the ranks.
func (c *NCCLComm) AllReduceFloat32(buf []float32) error {
	if len(buf) == 0 {
		return nil
	}
	return c.c.AllReduceHost(unsafe.Pointer(&buf[0]), len(buf), 4, nccl.Float32, c.timeout)
}

// AllReduceInt64 replaces buf by its sum over the ranks.
func (c *NCCLComm) AllReduceInt64(buf []int64) error {
	if len(buf) == 0 {
		return nil
	}
	return c.c.AllReduceHost(unsafe.Pointer(&buf[0]), len(buf), 8, nccl.Int64, c.timeout)
}

// AllReduceDevice enqueues the sum over the ranks of count elements of
// dtype (float32, float16, bfloat16 or int64) from device address send
// into recv (the same address: in place) on a CUDA stream (a
// cudaStream_t, 0 the default stream). It does not wait.
func (c *NCCLComm) AllReduceDevice(send, recv uintptr, count int, dtype graph.DataType, stream uintptr) error {
	var dt nccl.DataType
	switch dtype {
	case graph.Float:
		dt = nccl.Float32
	case graph.Float16:
		dt = nccl.Float16
	case graph.BFloat16:
		dt = nccl.BFloat16
	case graph.Int64:
		dt = nccl.Int64
	default:
		return fmt.Errorf("nccl: no all-reduce of %s", dtype)
	}
	return c.c.AllReduce(send, recv, count, dt, stream)
}

// Abort stops pending work after a failure (ncclCommAbort).
func (c *NCCLComm) Abort() { c.c.Abort() }

// Close destroys the communicator; safe twice.
func (c *NCCLComm) Close() error { return c.c.Close() }
