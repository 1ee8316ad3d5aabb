package quant

// Package quant reads and writes the quantized weight layouts loracc meets:
// DequantizeLinear of constants and com.microsoft MatMulNBits.
//
// Quantized bases: a MatMul whose weight is DequantizeLinear(q, scale,
// zero_point) of constants is a target like any other. The LoRA branch
// runs beside it in float (QLoRA-style: the base stays quantized, only
// the adapter trains, and nothing flows back through the dequantization).
// Fusing such a target either re-quantizes W + s·ΔW with the weight's own
// scales and zero points, keeping the graph, or replaces the dequantized
// weight by a float initializer; both report the error they cause.

import (
	"fmt"
	"math"

	"github.com/loracc/loracc/graph"
)

// Quantized describes a DequantizeLinear weight.
type Quantized struct {
	DQ        *graph.Node
	Data      *graph.Tensor // int8, uint8, int4 or uint4 values, [rows, cols]
	Scale     *graph.Tensor
	ZeroPoint *graph.Tensor // nil: zero
	Axis      int           // the axis per-axis and blocked scales run along
	BlockSize int64         // > 0 for blocked scales (opset 21)
}

// FromDequantize recognizes DequantizeLinear of constants producing a
// 2-D weight; reason says why not when it is close.
func FromDequantize(w *graph.Value) (*Quantized, string) {
	p, _ := w.Producer()
	if p == nil || p.Op != "DequantizeLinear" || p.Domain != "" {
		return nil, ""
	}
	q := &Quantized{DQ: p, Data: graph.ConstTensor(p.Input(0)), Scale: graph.ConstTensor(p.Input(1))}
	if q.Data == nil || q.Scale == nil {
		return nil, "dequantized weight is not made of constants"
	}
	if p.NumInputs() > 2 && p.Input(2) != nil {
		if q.ZeroPoint = graph.ConstTensor(p.Input(2)); q.ZeroPoint == nil {
			return nil, "dequantized weight has a computed zero point"
		}
	}
	if len(q.Data.Dims) != 2 {
		return nil, fmt.Sprintf("dequantized weight %q is %d-D, not 2-D", p.Input(0).Name, len(q.Data.Dims))
	}
	switch q.Data.DType {
	case graph.Int8, graph.Uint8, graph.Int4, graph.Uint4:
	default:
		return nil, fmt.Sprintf("quantized type %s is not supported (int8, uint8, int4, uint4)", q.Data.DType)
	}
	if !q.Scale.DType.IsFloat() {
		return nil, "scale is not float"
	}
	q.Axis = int(p.AttrInt("axis", 1))
	if q.Axis < 0 {
		q.Axis += 2
	}
	q.BlockSize = p.AttrInt("block_size", 0)
	if _, err := q.scaleIndex(0, 0); err != nil {
		return nil, err.Error()
	}
	return q, ""
}

// scaleIndex is the scale (and zero point) element for weight (i, j).
func (q *Quantized) scaleIndex(i, j int64) (int64, error) {
	n, err := q.Scale.NumElements()
	if err != nil {
		return 0, err
	}
	rows, cols := q.Data.Dims[0], q.Data.Dims[1]
	coord := [2]int64{i, j}
	switch {
	case len(q.Scale.Dims) == 0 || n == 1:
		return 0, nil
	case q.BlockSize > 0:
		if len(q.Scale.Dims) != 2 {
			return 0, fmt.Errorf("blocked scale of rank %d", len(q.Scale.Dims))
		}
		c := coord
		c[q.Axis] /= q.BlockSize
		return c[0]*q.Scale.Dims[1] + c[1], nil
	case len(q.Scale.Dims) == 1:
		size := [2]int64{rows, cols}[q.Axis]
		if q.Scale.Dims[0] != size {
			return 0, fmt.Errorf("per-axis scale of %d values for axis %d of size %d", q.Scale.Dims[0], q.Axis, size)
		}
		return coord[q.Axis], nil
	}
	return 0, fmt.Errorf("scale of shape %v is not supported", q.Scale.Dims)
}

// element reads quantized element k as an integer.
func quantElement(t *graph.Tensor, raw []byte, k int64) int64 {
	switch t.DType {
	case graph.Int8:
		return int64(int8(raw[k]))
	case graph.Uint8:
		return int64(raw[k])
	case graph.Uint4, graph.Int4:
		b := raw[k/2]
		v := int64(b & 0x0f)
		if k%2 == 1 {
			v = int64(b >> 4)
		}
		if t.DType == graph.Int4 && v >= 8 {
			v -= 16
		}
		return v
	}
	return 0
}

func quantRange(dt graph.DataType) (int64, int64) {
	switch dt {
	case graph.Int8:
		return -128, 127
	case graph.Uint8:
		return 0, 255
	case graph.Int4:
		return -8, 7
	case graph.Uint4:
		return 0, 15
	}
	return 0, 0
}

// dequantize returns the weight as float64, row-major [rows, cols].
func (q *Quantized) Dequantize() ([]float64, error) {
	raw, err := q.Data.Bytes()
	if err != nil {
		return nil, err
	}
	scales, err := q.Scale.Floats()
	if err != nil {
		return nil, err
	}
	var zp []byte
	if q.ZeroPoint != nil {
		if zp, err = q.ZeroPoint.Bytes(); err != nil {
			return nil, err
		}
	}
	rows, cols := q.Data.Dims[0], q.Data.Dims[1]
	out := make([]float64, rows*cols)
	for i := int64(0); i < rows; i++ {
		for j := int64(0); j < cols; j++ {
			s, err := q.scaleIndex(i, j)
			if err != nil {
				return nil, err
			}
			z := int64(0)
			if zp != nil {
				z = quantElement(q.ZeroPoint, zp, s)
			}
			out[i*cols+j] = float64(quantElement(q.Data, raw, i*cols+j)-z) * float64(scales[s])
		}
	}
	return out, nil
}

// requantize rounds w (row-major) to the weight's grid, half to even and
// saturating as QuantizeLinear does, and returns the packed bytes and the
// largest absolute error it causes.
func (q *Quantized) Requantize(w []float64) ([]byte, float64, error) {
	scales, err := q.Scale.Floats()
	if err != nil {
		return nil, 0, err
	}
	var zp []byte
	if q.ZeroPoint != nil {
		if zp, err = q.ZeroPoint.Bytes(); err != nil {
			return nil, 0, err
		}
	}
	size := q.Data.DType.ByteSize(int64(len(w)))
	out := make([]byte, size)
	lo, hi := quantRange(q.Data.DType)
	rows, cols := q.Data.Dims[0], q.Data.Dims[1]
	worst := 0.0
	for i := int64(0); i < rows; i++ {
		for j := int64(0); j < cols; j++ {
			s, _ := q.scaleIndex(i, j)
			z := int64(0)
			if zp != nil {
				z = quantElement(q.ZeroPoint, zp, s)
			}
			k := i*cols + j
			v := int64(math.RoundToEven(w[k]/float64(scales[s]))) + z
			v = max(lo, min(hi, v))
			worst = math.Max(worst, math.Abs(float64(v-z)*float64(scales[s])-w[k]))
			switch q.Data.DType {
			case graph.Int8, graph.Uint8:
				out[k] = byte(v)
			default:
				nib := byte(v) & 0x0f
				if k%2 == 0 {
					out[k/2] |= nib
				} else {
					out[k/2] |= nib << 4
				}
			}
		}
	}
	return out, worst, nil
}
