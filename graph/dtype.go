package graph

import "fmt"

// DataType is an ONNX tensor element type; the numbers are those of
// TensorProto.DataType so they convert to and from the wire without a table.
type DataType int32

// The ONNX element types, IR 10+ included.
const (
	Undefined      DataType = 0
	Float          DataType = 1
	Uint8          DataType = 2
	Int8           DataType = 3
	Uint16         DataType = 4
	Int16          DataType = 5
	Int32          DataType = 6
	Int64          DataType = 7
	String         DataType = 8
	Bool           DataType = 9
	Float16        DataType = 10
	Double         DataType = 11
	Uint32         DataType = 12
	Uint64         DataType = 13
	Complex64      DataType = 14
	Complex128     DataType = 15
	BFloat16       DataType = 16
	Float8E4M3FN   DataType = 17
	Float8E4M3FNUZ DataType = 18
	Float8E5M2     DataType = 19
	Float8E5M2FNUZ DataType = 20
	Uint4          DataType = 21
	Int4           DataType = 22
	Float4E2M1     DataType = 23
	Float8E8M0     DataType = 24
	Uint2          DataType = 25
	Int2           DataType = 26
)

var dtypeNames = [...]string{
	"undefined", "float32", "uint8", "int8", "uint16", "int16", "int32", "int64",
	"string", "bool", "float16", "float64", "uint32", "uint64", "complex64",
	"complex128", "bfloat16", "float8e4m3fn", "float8e4m3fnuz", "float8e5m2",
	"float8e5m2fnuz", "uint4", "int4", "float4e2m1", "float8e8m0", "uint2", "int2",
}

// String returns the short lowercase name used by the printer and errors.
func (d DataType) String() string {
	if d >= 0 && int(d) < len(dtypeNames) {
		return dtypeNames[d]
	}
	return fmt.Sprintf("dtype(%d)", int32(d))
}

// ParseDataType is the inverse of String.
func ParseDataType(s string) (DataType, error) {
	for i, n := range dtypeNames {
		if n == s {
			return DataType(i), nil
		}
	}
	return Undefined, fmt.Errorf("unknown dtype %q", s)
}

// BitSize is the storage size of one element in bits, 0 for strings and
// unknown types. Sub-byte types (int4, uint2, float4) are packed.
func (d DataType) BitSize() int {
	switch d {
	case Bool, Uint8, Int8, Float8E4M3FN, Float8E4M3FNUZ, Float8E5M2, Float8E5M2FNUZ, Float8E8M0:
		return 8
	case Uint16, Int16, Float16, BFloat16:
		return 16
	case Float, Int32, Uint32:
		return 32
	case Int64, Double, Uint64, Complex64:
		return 64
	case Complex128:
		return 128
	case Uint4, Int4, Float4E2M1:
		return 4
	case Uint2, Int2:
		return 2
	}
	return 0
}

// IsFloat reports whether d is a floating-point type LoRA can adapt and
// autodiff can differentiate (fp32, fp16, bf16, fp64).
func (d DataType) IsFloat() bool {
	return d == Float || d == Float16 || d == BFloat16 || d == Double
}

// ByteSize is the number of bytes n packed elements occupy, or -1 when the
// type has no fixed size or the count overflows.
func (d DataType) ByteSize(n int64) int64 {
	b := int64(d.BitSize())
	if b == 0 || n < 0 {
		return -1
	}
	if n > (1<<62)/b {
		return -1
	}
	return (n*b + 7) / 8
}
