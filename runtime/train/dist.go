package train

// Data-parallel training: each of the Comm's ranks runs the same loop on
// its shard of every step's examples (dataset.Shard of the global batch
// of BatchSize·GradAccum·world examples), and the step is split where
// the gradients are (trainstep/split.go): the gradient graph on the
// shard, the sums of its gradients, loss and token count over the ranks,
// then the optimizer graph on the sums, which divides by the global count
// and clips after the sum, so every rank makes the same update as one
// process stepping on the whole global batch. The sums are bit-identical
// on every rank (dist.Group sums once on rank 0; NCCL's all-reduce gives
// every rank the same result), and so are the optimizer's inputs and
// outputs; each checkpoint checks that with a checksum of the state.
//
// Rank rules: rank 0 reads the checkpoint and broadcasts the starting
// params, state and progress (so resuming needs the run folder on rank
// 0's host only), and rank 0 alone writes the run folder: checkpoints,
// metrics.csv, loss.png, memory.json. Evaluation is sharded by batch and
// summed. A cancelled rank (Ctrl-C, SIGTERM) reports it in the step's
// all-reduce and every rank stops after that same step, so rank 0's
// checkpoint is one every rank reached.

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/runtime"
	"github.com/loracc/loracc/trainio"
)

// Communicator is what a data-parallel run needs of the other ranks:
// dist.Group over TCP on the host, or NCCL's all-reduce beside it. Every
// rank calls the same methods in the same order; a rank that fails or
// disappears makes the others' calls fail, never hang.
type Communicator interface {
	Rank() int
	Size() int
	// AllReduceFloat32 and AllReduceInt64 replace buf by its sum over
	// the ranks, the same on every rank.
	AllReduceFloat32(buf []float32) error
	AllReduceInt64(buf []int64) error
	// Broadcast replaces buf by rank 0's; the lengths agree.
	Broadcast(buf []byte) error
	// Agree fails on every rank when some rank's value differs.
	Agree(what string, value []byte) error
}

func worldOf(c Communicator) int {
	if c == nil {
		return 1
	}
	return max(c.Size(), 1)
}

// world is the number of ranks (1 alone).
func (r *runner) world() int { return worldOf(r.cfg.Comm) }

// rank is this process's rank (0 alone).
func (r *runner) rank() int {
	if r.cfg.Comm == nil {
		return 0
	}
	return r.cfg.Comm.Rank()
}

// stepIO is the IO of the graph that takes the params and optimizer
// state: train.onnx's, or a split step's optim.onnx's.
func (r *runner) stepIO() trainio.Graph {
	if r.cfg.Split {
		return *r.cfg.IO.Optim
	}
	return r.cfg.IO.Train
}

// checkDist refuses the combinations the split step does not support yet.
func checkDist(cfg Config) error {
	world := worldOf(cfg.Comm)
	if world > 1 && !cfg.Split {
		return fmt.Errorf("%d ranks need the split step (grad.onnx and optim.onnx)", world)
	}
	if !cfg.Split {
		return nil
	}
	if cfg.IO.Grad == nil || cfg.IO.Optim == nil {
		return fmt.Errorf("the split step needs grad.onnx and optim.onnx in train.json (export-train --split-step)")
	}
	for what, on := range map[string]bool{
		"static shapes": cfg.Static != nil, "captured steps": cfg.CUDAGraph, "device-resident state": cfg.DeviceState, "steps per run > 1": cfg.IO.StepsPerRun > 1,
	} {
		if on {
			return fmt.Errorf("the split step of data-parallel training and %s do not combine yet", what)
		}
	}
	return nil
}

// splitStep is a step as two graphs with an all-reduce between them.
type splitStep struct {
	grad, optim     graphRunner
	gradIO, optimIO trainio.Graph
}

// splitLoss names the loss runSplit adds to the optimizer's outputs.
const splitLoss = "loss"

// splitIO is the two graphs' IO as one step's, for the loop: the gradient
// graph's data inputs and the optimizer's, and the optimizer's outputs
// after the loss of the global batch, which runSplit computes.
func splitIO(grad, optim trainio.Graph) trainio.Graph {
	var io trainio.Graph
	for _, in := range grad.Inputs {
		if in.Role == trainio.RoleBatch || in.Role == trainio.RoleLabel {
			io.Inputs = append(io.Inputs, in)
		}
	}
	io.Inputs = append(io.Inputs, optim.Inputs...)
	io.Outputs = append([]trainio.Entry{{Name: splitLoss, DType: "float32", Shape: []trainio.Dim{}, Role: trainio.RoleLoss}}, optim.Outputs...)
	return io
}

// runSplit runs a split step: the gradient graph on this rank's batch
// (nothing for an empty shard, which adds zeros), the sums over the ranks
// of the gradients, loss sum and count (with the step's work for the
// metrics and whether any rank was cancelled), then the optimizer graph
// on the sums. The loss returned is the global sum over the global count.
func (r *runner) runSplit(s *splitStep, batch map[string]runtime.Tensor, lr, step runtime.Tensor, mb *microBatches, padded *float64) (map[string]runtime.Tensor, error) {
	type slot struct {
		name     string
		shape    []int64
		off, len int
	}
	var grads []slot
	var lossName, countName string
	total := 0
	for _, o := range s.gradIO.Outputs {
		switch o.Role {
		case trainio.RoleGrad:
			shape := make([]int64, len(o.Shape))
			for i, d := range o.Shape {
				if d.Symbolic() {
					return nil, fmt.Errorf("gradient %q has a symbolic dim %s", o.Name, d)
				}
				shape[i] = d.Size
			}
			n, err := graph.NumElements(shape)
			if err != nil {
				return nil, fmt.Errorf("gradient %q: %w", o.Name, err)
			}
			grads = append(grads, slot{o.Name, shape, total, int(n)})
			total += int(n)
		case trainio.RoleLossSum:
			lossName = o.Name
		case trainio.RoleCount:
			countName = o.Name
		}
	}
	if lossName == "" || countName == "" {
		return nil, fmt.Errorf("the gradient graph outputs no loss sum or count (compiled before the split step?)")
	}
	buf := make([]float32, total+1) // the gradients, then the loss sum
	var count int64
	if batch != nil {
		feeds, err := r.feeds(s.gradIO, batch, lr, step)
		if err != nil {
			return nil, err
		}
		out, err := s.grad.Run(feeds, outputNames(s.gradIO))
		if err != nil {
			return nil, fmt.Errorf("gradient graph: %w", err)
		}
		for _, g := range grads {
			f, err := out[g.name].Floats()
			if err != nil || len(f) != g.len {
				return nil, fmt.Errorf("gradient graph: output %q: %d values, %v", g.name, len(f), err)
			}
			copy(buf[g.off:], f)
		}
		l, err1 := out[lossName].Floats()
		c, err2 := out[countName].Int64s()
		if err1 != nil || err2 != nil || len(l) != 1 || len(c) != 1 {
			return nil, fmt.Errorf("gradient graph: outputs %q and %q are not scalars (%v, %v)", lossName, countName, err1, err2)
		}
		buf[total], count = l[0], c[0]
	}
	stop := int64(0)
	if r.ctx != nil && r.ctx.Err() != nil {
		stop = 1
	}
	ints := []int64{count, int64(mb.work[0]), int64(*padded), stop}
	if r.world() > 1 {
		if err := r.cfg.Comm.AllReduceFloat32(buf); err != nil {
			return nil, err
		}
		if err := r.cfg.Comm.AllReduceInt64(ints); err != nil {
			return nil, err
		}
	}
	count, mb.work[0], *padded, r.stopAll = ints[0], int(ints[1]), float64(ints[2]), ints[3] > 0
	given := map[string]runtime.Tensor{countName: runtime.Int64Tensor([]int64{}, []int64{count})}
	for _, g := range grads {
		given[g.name] = runtime.FloatTensor(g.shape, buf[g.off:g.off+g.len])
	}
	feeds, err := r.feeds(s.optimIO, given, lr, step)
	if err != nil {
		return nil, fmt.Errorf("optimizer graph: %w", err)
	}
	out, err := s.optim.Run(feeds, outputNames(s.optimIO))
	if err != nil {
		return nil, fmt.Errorf("optimizer graph: %w", err)
	}
	out[splitLoss] = runtime.FloatTensor(nil, []float32{buf[total] / float32(max(count, 1))})
	return out, nil
}

// shareStart starts every rank where rank 0 starts: after checking that
// the ranks train on the same data with the same settings, rank 0's
// progress, params and optimizer state (a checkpoint's, when resuming)
// replace the others'. failed is rank 0's error in getting them, which
// stops every rank.
func (r *runner) shareStart(failed error) error {
	c := r.cfg.Comm
	status := []byte{0}
	if failed != nil {
		status[0] = 1
	}
	if err := c.Broadcast(status); err != nil {
		if failed != nil {
			return failed
		}
		return err
	}
	if status[0] != 0 {
		if failed != nil {
			return failed
		}
		return fmt.Errorf("rank 0 could not start the run (its output says why)")
	}
	if err := c.Agree("data and settings", []byte(r.settings())); err != nil {
		return fmt.Errorf("%w (every rank must train on the same data, seed, batch size and steps)", err)
	}
	prog := make([]byte, 24)
	binary.LittleEndian.PutUint64(prog, uint64(r.prog.Step))
	binary.LittleEndian.PutUint64(prog[8:], uint64(r.prog.Epoch))
	binary.LittleEndian.PutUint64(prog[16:], uint64(r.prog.Position))
	if err := c.Broadcast(prog); err != nil {
		return err
	}
	r.prog.Step = int(binary.LittleEndian.Uint64(prog))
	r.prog.Epoch = int(binary.LittleEndian.Uint64(prog[8:]))
	r.prog.Position = int(binary.LittleEndian.Uint64(prog[16:]))
	for _, m := range []map[string]runtime.Tensor{r.params, r.state} {
		for _, name := range sortedKeys(m) {
			t := m[name]
			t.Data = append([]byte(nil), t.Data...)
			if err := c.Broadcast(t.Data); err != nil {
				return fmt.Errorf("starting %q from rank 0's: %w", name, err)
			}
			m[name] = t
		}
	}
	return nil
}

// settings is what every rank must agree on before training: the data
// and the step's shape.
func (r *runner) settings() string {
	c := r.cfg
	return fmt.Sprintf("seed %d; %d examples, %s; batch %d × grad accum %d × %d ranks; %d steps; schedule %+v",
		c.Seed, c.Data.Len(), c.Data.Fingerprint(), c.BatchSize, c.GradAccum, r.world(), r.total, c.Schedule)
}

// agreeState checks, before a checkpoint, that every rank holds the same
// params and optimizer state (the updates are meant to be identical; a
// difference would be a bug or a nondeterministic kernel).
func (r *runner) agreeState() error {
	h := sha256.New()
	for _, m := range []map[string]runtime.Tensor{r.params, r.state} {
		for _, name := range sortedKeys(m) {
			h.Write([]byte(name))
			h.Write(m[name].Data)
		}
	}
	if err := r.cfg.Comm.Agree(fmt.Sprintf("adapter and optimizer state at step %d", r.prog.Step), h.Sum(nil)); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	return nil
}

// sumEval sums the ranks' parts of an evaluation.
func (r *runner) sumEval(sum, weight float64) (float64, float64, error) {
	s, w := []float32{float32(sum)}, []int64{int64(weight)}
	if err := r.cfg.Comm.AllReduceFloat32(s); err != nil {
		return 0, 0, fmt.Errorf("eval: %w", err)
	}
	if err := r.cfg.Comm.AllReduceInt64(w); err != nil {
		return 0, 0, fmt.Errorf("eval: %w", err)
	}
	return float64(s[0]), float64(w[0]), nil
}
