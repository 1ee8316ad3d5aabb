package lora

// Pass "fuse".
//
// Pre:  no LoRA branches (run strip first); c.Adapter set, every layer
//       naming a target of matching [in, out].
// Post: each layer's weight W holds W + s·ΔW rounded once to W's dtype,
//       with ΔW = lora_Aᵀ·lora_Bᵀ oriented like W (for Gemm with transB,
//       the transpose) and s = scale, divided by Gemm's alpha so that
//       alpha·x·W' adds exactly scale·x·A·B. Sums are formed in float64.
//       Weights that lived in external files are recomputed in chunks at
//       save time and written to the output's data file; the base's file
//       is only read. A weight shared with nodes outside the target is
//       copied first, so the other readers keep the base weight.

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	goruntime "runtime"
	"sync"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/graph"
)

// fuseChunk bounds the bytes of W processed at once when streaming.
const fuseChunk = 8 << 20

// Fuse is pass "fuse".
func Fuse(m *graph.Model, c *Options) error {
	if c.Adapter == nil {
		return fmt.Errorf("fuse needs an adapter")
	}
	all, _ := FindTargets(m)
	matches, err := MatchAdapter(all, c.Adapter)
	if err != nil {
		return err
	}
	reportMatches(c, all, matches)
	for i, mt := range matches {
		l, t := &c.Adapter.Layers[i], mt.Target
		scale := c.Adapter.Config.Scale(l.Name)
		if c.Scale != nil {
			scale = *c.Scale
		}
		if t.Node.Op == "Gemm" {
			alpha := t.Node.AttrFloat("alpha", 1)
			if alpha == 0 {
				return fmt.Errorf("node %q (Gemm): alpha is 0, so no weight change can express the adapter", t.Node.Name)
			}
			scale /= float64(alpha)
		}
		if t.NBits != nil {
			if err := fuseNBits(t, newLowRank(t, l, scale), c.QuantizedToFloat, c.Logf); err != nil {
				return fmt.Errorf("node %q (MatMulNBits): %w", t.Node.Name, err)
			}
			continue
		}
		if t.Quant != nil {
			if err := fuseQuantized(t, newLowRank(t, l, scale), c.QuantizedToFloat, c.Logf); err != nil {
				return fmt.Errorf("node %q (%s), quantized weight %q: %w", t.Node.Name, t.Node.Op, t.Quant.DQ.Input(0).Name, err)
			}
			continue
		}
		if err := fuseWeight(t, l, scale); err != nil {
			return fmt.Errorf("node %q (%s), weight %q: %w", t.Node.Name, t.Node.Op, t.Weight.Name, err)
		}
	}
	return nil
}

// lowRank is ΔW = s·P·Q in W's storage orientation: P [rows, r], Q [r, cols].
type lowRank struct {
	rows, cols, r int
	p, q          []float64
	s             float64
}

func newLowRank(t *Target, l *adapter.Layer, s float64) lowRank {
	r := l.Rank
	conv := func(x []float32) []float64 {
		out := make([]float64, len(x))
		for i, v := range x {
			out[i] = float64(v)
		}
		return out
	}
	if t.TransB {
		// W is [out, in]: ΔW = lora_B [out, r] · lora_A [r, in].
		return lowRank{rows: l.Out, cols: l.In, r: r, p: conv(l.B), q: conv(l.A), s: s}
	}
	// W is [in, out]: ΔW = lora_Aᵀ [in, r] · lora_Bᵀ [r, out].
	return lowRank{rows: l.In, cols: l.Out, r: r, p: conv(adapter.Transpose(l.A, r, l.In)), q: conv(adapter.Transpose(l.B, l.Out, r)), s: s}
}

// addRows adds ΔW rows [row0, row0+len(w)/cols) to w in place.
func (d lowRank) addRows(w []float64, row0 int) {
	for i := 0; i*d.cols < len(w); i++ {
		prow := d.p[(row0+i)*d.r : (row0+i+1)*d.r]
		wrow := w[i*d.cols : (i+1)*d.cols]
		for k, pk := range prow {
			if pk == 0 {
				continue
			}
			c := d.s * pk
			qrow := d.q[k*d.cols : (k+1)*d.cols]
			for j, qv := range qrow {
				wrow[j] += c * qv
			}
		}
	}
}

// fuseChunkBytes converts one chunk of W's bytes, adds ΔW and rounds back.
func (d lowRank) fuseChunkBytes(dt graph.DataType, raw []byte, row0 int) ([]byte, error) {
	if dt == graph.Float {
		return d.fuseFloat32(raw, row0)
	}
	vals, err := graph.DecodeFloats(dt, raw)
	if err != nil {
		return nil, err
	}
	w := make([]float64, len(vals))
	for i, v := range vals {
		w[i] = float64(v)
	}
	d.addRows(w, row0)
	if i := overflowAt(dt, w); i >= 0 {
		return nil, overflowError(dt, w[i], row0+i/d.cols, i%d.cols)
	}
	return encode64(dt, w)
}

// overflowAt is the index of the first finite value of w that rounds to
// ±Inf in dt, or -1: a fused weight that overflows would be written as
// Inf silently (values already Inf or NaN in W are kept as they are).
func overflowAt(dt graph.DataType, w []float64) int {
	limit := math.Inf(1)
	switch dt {
	case graph.Float16:
		limit = 65520 // halfway between fp16's largest finite 65504 and 2^16
	case graph.BFloat16:
		limit = 0x1.ffp127 // halfway between bf16's largest finite and 2^128
	case graph.Float:
		limit = 0x1.ffffffp127 // likewise for fp32
	}
	for i, v := range w {
		if math.Abs(v) >= limit && !math.IsInf(v, 0) {
			return i
		}
	}
	return -1
}

func overflowError(dt graph.DataType, fused float64, row, col int) error {
	return fmt.Errorf("fused value at row %d, column %d is %g, beyond %s's range; the adapter or --scale is too large for this weight", row, col, fused, dt)
}

// fuseFloat32 is fuseChunkBytes for fp32 in one pass per row, the hot
// path of big fuses: ΔW's row is summed in float64, added to W's row and
// rounded once, without materialising the chunk in float64.
func (d lowRank) fuseFloat32(raw []byte, row0 int) ([]byte, error) {
	out := make([]byte, len(raw))
	delta := make([]float64, d.cols)
	rows := len(raw) / (4 * d.cols)
	for i := 0; i < rows; i++ {
		clear(delta)
		d.addRows(delta, row0+i)
		base := 4 * i * d.cols
		for j, dv := range delta {
			w := math.Float32frombits(binary.LittleEndian.Uint32(raw[base+4*j:]))
			f := float32(float64(w) + dv)
			if math.IsInf(float64(f), 0) && !math.IsInf(float64(w), 0) && !math.IsNaN(dv) {
				return nil, overflowError(graph.Float, float64(w)+dv, row0+i, j)
			}
			binary.LittleEndian.PutUint32(out[base+4*j:], math.Float32bits(f))
		}
	}
	return out, nil
}

// encode64 rounds float64 sums once to dt. For fp16 and bf16 it goes
// through float32 with round-to-odd, which (float32 having more than two
// extra mantissa bits) makes the final round-to-nearest-even exact, so
// no value is rounded twice.
func encode64(dt graph.DataType, w []float64) ([]byte, error) {
	f := make([]float32, len(w))
	for i, v := range w {
		if dt == graph.Float {
			f[i] = float32(v)
		} else {
			f[i] = roundToOdd32(v)
		}
	}
	return graph.EncodeFloats(dt, f)
}

func roundToOdd32(x float64) float32 {
	f := float32(x)
	if float64(f) == x || math.IsInf(float64(f), 0) || math.IsNaN(x) {
		return f
	}
	if math.Abs(float64(f)) > math.Abs(x) {
		f = math.Nextafter32(f, 0) // truncate toward zero
	}
	return math.Float32frombits(math.Float32bits(f) | 1)
}

func fuseWeight(t *Target, l *adapter.Layer, s float64) error {
	tensor := t.Tensor
	if sharedWeight(t) {
		// Other nodes read this weight: give the target its own copy.
		clone := tensor.Clone()
		clone.Name = t.Weight.Name + ".fused"
		v := t.Node.Graph().Root().AddInitializer(clone)
		t.Node.SetInput(1, v)
		tensor = clone
	}
	d := newLowRank(t, l, s)
	dt := tensor.DType
	rowBytes := dt.ByteSize(int64(d.cols))
	if rowBytes <= 0 {
		return fmt.Errorf("cannot fuse into %s", dt)
	}
	rowsPerChunk := max(1, int(fuseChunk/rowBytes))
	if !tensor.IsExternal() {
		raw, err := tensor.Bytes()
		if err != nil {
			return err
		}
		out, err := d.fuseChunkBytes(dt, raw, 0)
		if err != nil {
			return err
		}
		tensor.SetBytes(out)
		return nil
	}
	src := tensor.Clone() // still points at the base's file
	tensor.SetStream(func(w io.Writer) error {
		if err := streamFused(src, w, d, dt, rowsPerChunk, rowBytes); err != nil {
			return fmt.Errorf("fusing node %q (%s), weight %q: %w", t.Node.Name, t.Node.Op, t.Weight.Name, err)
		}
		return nil
	})
	return nil
}

// streamFused reads W in chunks of rows, adds ΔW on every core and writes
// the chunks in order. At most two chunks per core are in memory.
func streamFused(src *graph.Tensor, w io.Writer, d lowRank, dt graph.DataType, rowsPerChunk int, rowBytes int64) error {
	r, closer, _, err := src.Open()
	if err != nil {
		return err
	}
	defer closer.Close()
	type result struct {
		out []byte
		err error
	}
	workers := max(1, goruntime.GOMAXPROCS(0))
	order := make(chan chan result, 2*workers)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(order)
		for row := 0; row < d.rows; row += rowsPerChunk {
			n := min(rowsPerChunk, d.rows-row)
			res := make(chan result, 1)
			select {
			case order <- res:
			case <-done:
				return
			}
			chunk := make([]byte, int64(n)*rowBytes)
			if _, err := r.ReadAt(chunk, int64(row)*rowBytes); err != nil {
				res <- result{err: fmt.Errorf("reading rows %d..%d: %w", row, row+n, err)}
				return
			}
			wg.Add(1)
			go func(row int) {
				defer wg.Done()
				out, err := d.fuseChunkBytes(dt, chunk, row)
				res <- result{out, err}
			}(row)
		}
	}()
	defer wg.Wait() // no reader outlives the file
	defer close(done)
	for res := range order {
		x := <-res
		if x.err != nil {
			return x.err
		}
		if _, err := w.Write(x.out); err != nil {
			return err
		}
	}
	return nil
}

// sharedWeight reports whether the weight is read by anything besides the
// target node.
func sharedWeight(t *Target) bool {
	w := t.Weight
	if w.IsGraphOutput() {
		return true
	}
	for _, u := range w.Uses() {
		if u.Node != t.Node {
			return true
		}
	}
	return false
}
