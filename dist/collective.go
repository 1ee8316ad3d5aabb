package dist

// Collectives over the rendezvous connections, a star through rank 0:
// every rank sends its contribution to rank 0, which combines them in
// rank order and sends the one result back. Rank 0 therefore moves
// 2·(world−1) buffers per all-reduce where a ring moves about 2; for
// LoRA gradients (megabytes) on a few CPU processes that is cheap, and
// the star gives every rank bit-identical sums, so their optimizer
// updates stay identical without a broadcast. GPU runs use NCCL for the
// gradients and keep this group for the small agreements.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"net"
	"time"
)

// op codes of the collectives, checked on every frame: ranks that call
// different collectives at the same point fail instead of mixing data.
const (
	opAllReduceF32 byte = 1 + iota
	opAllReduceI64
	opBroadcast
	opAgree
)

func opName(op byte) string {
	switch op {
	case opAllReduceF32:
		return "all-reduce (float32)"
	case opAllReduceI64:
		return "all-reduce (int64)"
	case opBroadcast:
		return "broadcast"
	case opAgree:
		return "agreement"
	}
	return fmt.Sprintf("collective %d", op)
}

// AllReduceFloat32 replaces buf on every rank by its sum over the ranks.
// The sums are float32 additions in rank order, made once on rank 0.
func (g *Group) AllReduceFloat32(buf []float32) error {
	mine := make([]byte, 4*len(buf))
	for i, v := range buf {
		binary.LittleEndian.PutUint32(mine[4*i:], math.Float32bits(v))
	}
	sum, err := g.collective(opAllReduceF32, mine, len(mine), func(acc, theirs []byte, rank int) ([]byte, error) {
		if len(theirs) != len(acc) {
			return nil, fmt.Errorf("rank %d sent %d values, rank 0 has %d", rank, len(theirs)/4, len(acc)/4)
		}
		for i := 0; i < len(acc); i += 4 {
			v := math.Float32frombits(binary.LittleEndian.Uint32(acc[i:])) + math.Float32frombits(binary.LittleEndian.Uint32(theirs[i:]))
			binary.LittleEndian.PutUint32(acc[i:], math.Float32bits(v))
		}
		return acc, nil
	})
	if err != nil {
		return err
	}
	if len(sum) != len(mine) {
		return g.fail(fmt.Errorf("dist: rank %d: all-reduce: rank 0 sent %d values, this rank has %d", g.rank, len(sum)/4, len(buf)), fmt.Sprintf("rank %d got a result of the wrong size", g.rank))
	}
	for i := range buf {
		buf[i] = math.Float32frombits(binary.LittleEndian.Uint32(sum[4*i:]))
	}
	return nil
}

// AllReduceInt64 replaces buf on every rank by its sum over the ranks.
func (g *Group) AllReduceInt64(buf []int64) error {
	mine := make([]byte, 8*len(buf))
	for i, v := range buf {
		binary.LittleEndian.PutUint64(mine[8*i:], uint64(v))
	}
	sum, err := g.collective(opAllReduceI64, mine, len(mine), func(acc, theirs []byte, rank int) ([]byte, error) {
		if len(theirs) != len(acc) {
			return nil, fmt.Errorf("rank %d sent %d counts, rank 0 has %d", rank, len(theirs)/8, len(acc)/8)
		}
		for i := 0; i < len(acc); i += 8 {
			binary.LittleEndian.PutUint64(acc[i:], binary.LittleEndian.Uint64(acc[i:])+binary.LittleEndian.Uint64(theirs[i:]))
		}
		return acc, nil
	})
	if err != nil {
		return err
	}
	if len(sum) != len(mine) {
		return g.fail(fmt.Errorf("dist: rank %d: all-reduce: rank 0 sent %d counts, this rank has %d", g.rank, len(sum)/8, len(buf)), fmt.Sprintf("rank %d got a result of the wrong size", g.rank))
	}
	for i := range buf {
		buf[i] = int64(binary.LittleEndian.Uint64(sum[8*i:]))
	}
	return nil
}

// Broadcast replaces buf on every rank by rank 0's (the NCCL unique id,
// the state a resumed run starts from); the lengths must agree.
func (g *Group) Broadcast(buf []byte) error {
	var mine []byte
	if g.rank == 0 {
		mine = buf
	}
	got, err := g.collective(opBroadcast, mine, len(buf), func(acc, theirs []byte, rank int) ([]byte, error) {
		if len(theirs) != 0 {
			return nil, fmt.Errorf("rank %d sent %d bytes to a broadcast", rank, len(theirs))
		}
		return acc, nil
	})
	if err != nil {
		return err
	}
	if len(got) != len(buf) {
		return g.fail(fmt.Errorf("dist: rank %d: broadcast: rank 0 sent %d bytes, this rank expects %d", g.rank, len(got), len(buf)), fmt.Sprintf("rank %d expected a broadcast of %d bytes", g.rank, len(buf)))
	}
	copy(buf, got)
	return nil
}

// Agree checks that every rank holds the same value of what (a settings
// fingerprint, a checksum of the adapter). On a difference every rank
// fails, with a message naming the first rank that differs from rank 0.
func (g *Group) Agree(what string, value []byte) error {
	verdict, err := g.collective(opAgree, value, len(value)+1<<16, func(acc, theirs []byte, rank int) ([]byte, error) {
		if !bytes.Equal(acc, theirs) {
			return nil, fmt.Errorf("rank %d's %s differs from rank 0's", rank, what)
		}
		return acc, nil
	})
	if err != nil {
		return err
	}
	if !bytes.Equal(verdict, value) {
		// Rank 0 sends its own value back: this rank differs. (Rank 0
		// names the rank it found first; this may be another.)
		return g.fail(fmt.Errorf("dist: rank %d: this rank's %s differs from rank 0's", g.rank, what), fmt.Sprintf("rank %d's %s differs from rank 0's", g.rank, what))
	}
	return nil
}

// Barrier returns when every rank has reached it.
func (g *Group) Barrier() error { return g.Agree("barrier", nil) }

// reportGrace is how much longer than the timeout a rank waits for rank
// 0's answer, so that rank 0 can name the rank that did not arrive.
const reportGrace = 5 * time.Second

// collective runs one collective: every rank contributes mine; rank 0
// folds the others' into its own with combine, in rank order, and sends
// the result to all. limit bounds a frame's body. On a failure every
// rank's call returns an error naming the rank at fault.
func (g *Group) collective(op byte, mine []byte, limit int, combine func(acc, theirs []byte, rank int) ([]byte, error)) ([]byte, error) {
	if err := g.broken(); err != nil {
		return nil, err
	}
	if g.world == 1 {
		return mine, nil
	}
	g.seq++
	seq, name := g.seq, fmt.Sprintf("%s #%d", opName(op), g.seq)
	if g.rank != 0 {
		c := g.conn(0)
		if c == nil {
			return nil, g.broken()
		}
		// Rank 0 waits up to the timeout for the slowest rank, then tells
		// this one who it was: wait a little longer than that for it.
		c.SetDeadline(time.Now().Add(g.timeout + reportGrace))
		if err := writeFrame(c, kindData, op, seq, mine); err != nil {
			return nil, g.fail(fmt.Errorf("dist: rank %d: %s: sending to rank 0: %w", g.rank, name, describe(err)), fmt.Sprintf("rank %d could not send its part of %s", g.rank, name))
		}
		kind, rop, rseq, body, err := readFrame(c, limit)
		switch {
		case err != nil:
			return nil, g.fail(fmt.Errorf("dist: rank %d: %s: lost rank 0: %w", g.rank, name, err), fmt.Sprintf("rank %d lost rank 0 in %s", g.rank, name))
		case kind == kindAbort:
			return nil, g.fail(fmt.Errorf("dist: rank %d: %s: %s", g.rank, name, body), string(body))
		case kind != kindData || rop != op || rseq != seq:
			return nil, g.fail(fmt.Errorf("dist: rank %d: %s: rank 0 is in %s #%d; the ranks do not run the same steps", g.rank, name, opName(rop), rseq),
				fmt.Sprintf("rank %d is in %s, rank 0 in %s #%d", g.rank, name, opName(rop), rseq))
		}
		return body, nil
	}
	acc := mine
	deadline := time.Now().Add(g.timeout) // for every rank to arrive
	for r := 1; r < g.world; r++ {
		c := g.conn(r)
		if c == nil {
			return nil, g.broken()
		}
		c.SetDeadline(deadline)
		kind, rop, rseq, body, err := readFrame(c, limit)
		var why string
		switch {
		case err != nil:
			why = fmt.Sprintf("rank %d failed in %s: %v", r, name, err)
		case kind == kindAbort:
			why = string(body)
		case kind != kindData || rop != op || rseq != seq:
			why = fmt.Sprintf("rank %d is in %s #%d, rank 0 in %s; the ranks do not run the same steps", r, opName(rop), rseq, name)
		default:
			if acc, err = combine(acc, body, r); err != nil {
				why = fmt.Sprintf("%s: %v", name, err)
			}
		}
		if why != "" {
			return nil, g.fail(fmt.Errorf("dist: rank 0: %s", why), why)
		}
	}
	for r := 1; r < g.world; r++ {
		c := g.conn(r)
		if c == nil {
			return nil, g.broken()
		}
		c.SetDeadline(time.Now().Add(g.timeout))
		if err := writeFrame(c, kindData, op, seq, acc); err != nil {
			why := fmt.Sprintf("rank 0 could not send the result of %s to rank %d: %v", name, r, describe(err))
			return nil, g.fail(fmt.Errorf("dist: %s", why), why)
		}
	}
	return acc, nil
}

// conn is the connection to rank r (rank 0's for another rank), nil once
// the group is closed.
func (g *Group) conn(r int) net.Conn {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err != nil {
		return nil
	}
	return g.peers[r]
}
