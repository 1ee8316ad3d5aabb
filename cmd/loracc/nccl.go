package main

// --comm nccl: the gradient sums go through NCCL on the ranks' GPUs; the
// rendezvous group carries the rest (the unique id NCCL's communicator
// is made from, the starting state, the agreements). Not yet run on a
// machine with several GPUs: see README "Several GPUs".

import (
	"fmt"
	"os"

	"github.com/loracc/loracc/dist"
	"github.com/loracc/loracc/runtime"
	"github.com/loracc/loracc/runtime/train"
)

// ncclRank is a rank's communicator with --comm nccl.
type ncclRank struct {
	comm  *runtime.NCCLComm
	group *dist.Group
}

func (n *ncclRank) Rank() int                             { return n.group.Rank() }
func (n *ncclRank) Size() int                             { return n.group.Size() }
func (n *ncclRank) AllReduceFloat32(buf []float32) error  { return n.comm.AllReduceFloat32(buf) }
func (n *ncclRank) AllReduceInt64(buf []int64) error      { return n.comm.AllReduceInt64(buf) }
func (n *ncclRank) Broadcast(buf []byte) error            { return n.group.Broadcast(buf) }
func (n *ncclRank) Agree(what string, value []byte) error { return n.group.Agree(what, value) }

// ncclComm loads NCCL (LORACC_NCCL_LIB, else libnccl.so.2 where the
// dynamic linker finds it), has rank 0 make the communicator's unique id
// and send it over the rendezvous, and joins the communicator on this
// rank's GPU (LOCAL_RANK).
func ncclComm(r *rank, device string) (train.Communicator, error) {
	if device != "cuda" {
		return nil, fmt.Errorf("--comm nccl sums on the GPUs; with --device %s use --comm tcp", device)
	}
	lib, err := runtime.OpenNCCL(os.Getenv("LORACC_NCCL_LIB"))
	if err != nil {
		return nil, fmt.Errorf("%w; point LORACC_NCCL_LIB at libnccl.so.2 (pip's nvidia-nccl-cu12 puts it in site-packages/nvidia/nccl/lib), or use --comm tcp", err)
	}
	id := make([]byte, runtime.NCCLUniqueIDBytes)
	if r.launch.Rank == 0 {
		if id, err = lib.UniqueID(); err != nil {
			return nil, err
		}
	}
	if err := r.group.Broadcast(id); err != nil {
		return nil, fmt.Errorf("sending NCCL's unique id: %w", err)
	}
	comm, err := lib.NewComm(id, r.launch.World, r.launch.Rank, r.launch.LocalRank, r.timeout)
	if err != nil {
		return nil, err
	}
	r.closers = append(r.closers, func(failed bool) {
		if failed {
			comm.Abort()
		}
		comm.Close()
	})
	return &ncclRank{comm: comm, group: r.group}, nil
}
