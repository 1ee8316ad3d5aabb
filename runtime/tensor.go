package runtime

import (
	"encoding/binary"
	"fmt"

	"github.com/loracc/loracc/graph"
)

// Tensor is a host tensor as Run takes and returns it. Data holds the
// elements in row-major order as little-endian bytes, the layout of ONNX
// raw_data, so float16/bfloat16 need no Go float type and tensors move
// between files, the graph package and ORT without conversion.
//
// A rank-0 (scalar) tensor has a nil or empty Shape and one element.
type Tensor struct {
	DType graph.DataType
	Shape []int64
	Data  []byte
}

// FloatTensor makes a float32 tensor. It does not check that len(vals)
// matches shape; Run does, naming the input.
func FloatTensor(shape []int64, vals []float32) Tensor {
	return Tensor{DType: graph.Float, Shape: shape, Data: encode(vals)}
}

// Int64Tensor makes an int64 tensor; like FloatTensor it leaves the size
// check to Run.
func Int64Tensor(shape []int64, vals []int64) Tensor {
	return Tensor{DType: graph.Int64, Shape: shape, Data: encode(vals)}
}

// Floats returns the elements of a float32 tensor.
func (t Tensor) Floats() ([]float32, error) {
	return decode[float32](t, graph.Float)
}

// Int64s returns the elements of an int64 tensor.
func (t Tensor) Int64s() ([]int64, error) {
	return decode[int64](t, graph.Int64)
}

// NumElements is the product of the shape (1 for a scalar), or an error for
// a negative dimension or overflow.
func (t Tensor) NumElements() (int64, error) {
	return graph.NumElements(t.Shape)
}

// Validate checks that Data has exactly the bytes DType and Shape call for.
func (t Tensor) Validate() error {
	if t.DType == graph.String || t.DType.BitSize() < 8 {
		return fmt.Errorf("element type %s is not supported", t.DType)
	}
	n, err := t.NumElements()
	if err != nil {
		return err
	}
	if want := t.DType.ByteSize(n); int64(len(t.Data)) != want {
		return fmt.Errorf("%s%v needs %d bytes of data, got %d", t.DType, t.Shape, want, len(t.Data))
	}
	return nil
}

func encode[T float32 | int64](vals []T) []byte {
	b, err := binary.Append(make([]byte, 0, 8*len(vals)), binary.LittleEndian, vals)
	if err != nil {
		panic(err) // unreachable: fixed-size element types
	}
	return b
}

func decode[T float32 | int64](t Tensor, want graph.DataType) ([]T, error) {
	if t.DType != want {
		return nil, fmt.Errorf("tensor is %s, not %s", t.DType, want)
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	vals := make([]T, len(t.Data)/(want.BitSize()/8))
	if _, err := binary.Decode(t.Data, binary.LittleEndian, vals); err != nil {
		return nil, err
	}
	return vals, nil
}
