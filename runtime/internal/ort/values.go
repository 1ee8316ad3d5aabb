package ort

import (
	"encoding/binary"
	"fmt"
	"unsafe"

	ortgo "github.com/yalue/onnxruntime_go"

	"github.com/loracc/loracc/graph"
)

// What onnxruntime_go v1.27.0 can and cannot express, which shapes the rest
// of this package:
//
//   - CustomDataTensor wraps a []byte with any element type, so every tensor
//     of rank >= 1 goes through it, zero-copy. It rejects rank 0 (its shape
//     validation requires a dimension) and empty buffers, so zero-element
//     tensors get a one-byte dummy buffer (ORT only checks "big enough").
//   - Rank-0 tensors exist only as Scalar[T], i.e. for element types with a
//     Go equivalent ("native" below). A float16/bfloat16 scalar cannot be
//     built at all.
//   - An output passed as nil is allocated by ORT and copied into a typed Go
//     tensor. That copy fails for rank 0 (same shape validation) and is wrong
//     for non-native types (it copies one byte per element). So scalar and
//     non-native outputs must be preallocated, which needs their shape before
//     the run.

// Tensor is a host tensor: ONNX element type, shape, little-endian bytes.
// It mirrors runtime.Tensor field for field so the two convert directly.
type Tensor struct {
	DType graph.DataType
	Shape []int64
	Data  []byte
}

// native is the per-element-type glue for types onnxruntime_go has a Go type
// for: building scalars and reading back typed values as bytes.
type native interface {
	scalar(b []byte) (ortgo.Value, error)
	emptyScalar() (ortgo.Value, error)
	bytesOf(v ortgo.Value) ([]byte, error)
}

type nativeOf[T ortgo.TensorData] struct{}

func (nativeOf[T]) scalar(b []byte) (ortgo.Value, error) {
	var v T
	if _, err := binary.Decode(b, binary.LittleEndian, &v); err != nil {
		return nil, err
	}
	return ortgo.NewScalar(v)
}

func (nativeOf[T]) emptyScalar() (ortgo.Value, error) {
	return ortgo.NewEmptyScalar[T]()
}

func (nativeOf[T]) bytesOf(v ortgo.Value) ([]byte, error) {
	switch t := v.(type) {
	case *ortgo.Tensor[T]:
		return binary.Append(nil, binary.LittleEndian, t.GetData())
	case *ortgo.Scalar[T]:
		return binary.Append(nil, binary.LittleEndian, t.GetData())
	}
	return nil, fmt.Errorf("onnxruntime returned a %T, not the expected element type", v)
}

// nativeFor returns the glue for dt, or nil when Go has no matching type
// (float16, bfloat16, float8, 4-bit, complex, string).
func nativeFor(dt graph.DataType) native {
	switch dt {
	case graph.Float:
		return nativeOf[float32]{}
	case graph.Double:
		return nativeOf[float64]{}
	case graph.Int8:
		return nativeOf[int8]{}
	case graph.Uint8:
		return nativeOf[uint8]{}
	case graph.Int16:
		return nativeOf[int16]{}
	case graph.Uint16:
		return nativeOf[uint16]{}
	case graph.Int32:
		return nativeOf[int32]{}
	case graph.Uint32:
		return nativeOf[uint32]{}
	case graph.Int64:
		return nativeOf[int64]{}
	case graph.Uint64:
		return nativeOf[uint64]{}
	case graph.Bool:
		return nativeOf[bool]{}
	}
	return nil
}

// supported reports whether dt can cross the boundary at all as raw bytes:
// a fixed whole number of bytes per element. Strings and packed sub-byte
// types are out.
func supported(dt graph.DataType) bool {
	return dt != graph.String && dt.BitSize() >= 8
}

// byteSize checks that dt and shape describe a tensor we can pass and
// returns its size in bytes.
func byteSize(dt graph.DataType, shape []int64) (int64, error) {
	if !supported(dt) {
		return 0, fmt.Errorf("element type %s is not supported", dt)
	}
	return graph.ByteSize(dt, shape)
}

// newInput wraps t for ORT. Rank >= 1 shares t.Data (ORT only reads inputs);
// rank 0 copies the one element into a Scalar.
func newInput(t Tensor) (ortgo.Value, error) {
	size, err := byteSize(t.DType, t.Shape)
	if err != nil {
		return nil, err
	}
	if int64(len(t.Data)) != size {
		return nil, fmt.Errorf("%s%v needs %d bytes, got %d", t.DType, t.Shape, size, len(t.Data))
	}
	if len(t.Shape) == 0 {
		nt := nativeFor(t.DType)
		if nt == nil {
			return nil, fmt.Errorf("onnxruntime_go cannot build a rank-0 %s tensor; use shape [1] in the model", t.DType)
		}
		return nt.scalar(t.Data)
	}
	data := t.Data
	if len(data) == 0 {
		data = []byte{0} // CustomDataTensor refuses empty buffers
	} else if uintptr(unsafe.Pointer(&data[0]))%uintptr(t.DType.BitSize()/8) != 0 {
		// A sub-slice of a byte buffer can be misaligned for the element
		// type; ORT kernels may assume natural alignment, so copy.
		data = append([]byte(nil), data...)
	}
	return ortgo.NewCustomDataTensor(ortgo.Shape(t.Shape), data, ortgo.TensorElementDataType(t.DType))
}

// output is one output buffer we allocated before the run.
type output struct {
	value ortgo.Value
	data  []byte // backing store for rank >= 1; nil for scalars
	size  int64
}

// newOutput preallocates an output of the given type and concrete shape.
func newOutput(dt graph.DataType, shape []int64) (*output, error) {
	size, err := byteSize(dt, shape)
	if err != nil {
		return nil, err
	}
	if len(shape) == 0 {
		nt := nativeFor(dt)
		if nt == nil {
			return nil, fmt.Errorf("onnxruntime_go cannot hold a rank-0 %s tensor", dt)
		}
		v, err := nt.emptyScalar()
		if err != nil {
			return nil, err
		}
		return &output{value: v, size: size}, nil
	}
	buf := make([]byte, max(size, 1)) // CustomDataTensor refuses empty buffers
	v, err := ortgo.NewCustomDataTensor(ortgo.Shape(shape), buf, ortgo.TensorElementDataType(dt))
	if err != nil {
		return nil, err
	}
	return &output{value: v, data: buf[:size], size: size}, nil
}

// result reads the output back after a run.
func (o *output) result(dt graph.DataType, shape []int64) (Tensor, error) {
	if o.data != nil {
		return Tensor{DType: dt, Shape: shape, Data: o.data}, nil
	}
	b, err := nativeFor(dt).bytesOf(o.value)
	if err != nil {
		return Tensor{}, err
	}
	return Tensor{DType: dt, Shape: []int64{}, Data: b}, nil
}

// fromAllocated converts an output ORT allocated (a typed Go tensor made by
// onnxruntime_go) to a Tensor. Only native types reach here.
func fromAllocated(dt graph.DataType, v ortgo.Value) (Tensor, error) {
	nt := nativeFor(dt)
	if nt == nil {
		return Tensor{}, fmt.Errorf("internal error: %s output was left to onnxruntime_go to allocate", dt)
	}
	b, err := nt.bytesOf(v)
	if err != nil {
		return Tensor{}, err
	}
	return Tensor{DType: dt, Shape: []int64(v.GetShape()), Data: b}, nil
}
