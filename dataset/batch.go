package dataset

import (
	"encoding/binary"
	"fmt"
	"github.com/loracc/loracc/graph"
	"math"
)

// Tensor is one input of a step, ready to copy into an ORT tensor: Data is
// the row-major elements, little-endian, DType as in train.json ("int64",
// "int32", "float32", or "bool" as one byte 0 or 1 per element).
type Tensor struct {
	DType string
	Shape []int64
	Data  []byte
}

// Batch stacks the examples idx (duplicates allowed) along a new leading
// batch dim, one Tensor per graph input, the mask included. For lm,
// sequence-shaped fields are padded on the right to the longest in the
// batch: the input ids with PadID, the labels with IgnoreIndex, anything
// else with 0; the mask, read or built, is 1 on real tokens and 0 on
// padding. Otherwise the examples must agree in shape.
func (s *Set) Batch(idx []int) (map[string]Tensor, error) {
	return s.BatchTo(idx, 0)
}

// BatchTo is Batch with lm sequences padded to seqLen rather than to the
// longest in the batch (0: the longest), for graphs compiled for one
// sequence length. An example longer than seqLen is an error naming its
// line.
func (s *Set) BatchTo(idx []int, seqLen int64) (map[string]Tensor, error) {
	if len(idx) == 0 {
		return nil, fmt.Errorf("dataset: batch: no examples")
	}
	for _, i := range idx {
		if i < 0 || i >= s.n {
			return nil, fmt.Errorf("dataset: batch: example %d out of range [0, %d)", i, s.n)
		}
	}
	out := make(map[string]Tensor, len(s.fields))
	for _, f := range s.fields {
		t, err := s.stack(f, idx, seqLen)
		if err != nil {
			return nil, fmt.Errorf("dataset: batch: field %q: %w", f.name, err)
		}
		out[f.name] = t
	}
	return out, nil
}

// stack builds one field's batch tensor.
func (s *Set) stack(f *field, idx []int, seqLen int64) (Tensor, error) {
	if f.batch.size >= 0 && f.batch.size != int64(len(idx)) {
		return Tensor{}, fmt.Errorf("the graph takes batch size %d, got %d examples", f.batch.size, len(idx))
	}
	// The padded per-example shape: the first example's, with the longest
	// sequence for a seq field; every other dim must agree.
	first := s.shape(f, idx[0])
	ex := append([]int64(nil), first...)
	for _, i := range idx[1:] {
		sh := s.shape(f, i)
		for j := range sh {
			switch {
			case j == 0 && f.seq:
				ex[0] = max(ex[0], sh[0])
			case sh[j] != first[j]:
				why := ""
				if f.seq {
					why = " beyond the sequence dim"
				}
				return Tensor{}, fmt.Errorf("example %d (line %d) has shape %s but example %d (line %d) has %s; examples in a batch must agree in shape%s",
					i, s.lines[i], intList(sh), idx[0], s.lines[idx[0]], intList(first), why)
			}
		}
	}
	if f.seq && seqLen > 0 {
		for _, i := range idx {
			if l := s.shape(f, i)[0]; l > seqLen {
				return Tensor{}, fmt.Errorf("example %d (line %d) has %d tokens, more than the sequence length %d the graph was compiled for", i, s.lines[i], l, seqLen)
			}
		}
		ex[0] = seqLen
	}
	per := count(ex) // elements per example after padding
	shape := append([]int64{int64(len(idx))}, ex...)
	size := f.kind.size()
	data := make([]byte, len(idx)*per*size)
	for b, i := range idx {
		n := count(s.shape(f, i))
		row := data[b*per*size : (b+1)*per*size]
		switch {
		case f.kind == kFloat32:
			lo := f.start[i]
			for k, v := range f.floats[lo : lo+n] {
				binary.LittleEndian.PutUint32(row[4*k:], math.Float32bits(v))
			}
			// float padding is 0, already there
		case f.start[i] < 0: // a mask the data lacks: ones on the ids' elements
			putInts(row, f.kind, n, nil, 1)
		default:
			lo := f.start[i]
			putInts(row, f.kind, n, f.ints[lo:lo+n], 0)
			if f.pad != 0 {
				putInts(row[n*size:], f.kind, per-n, nil, f.pad)
			}
		}
	}
	if f.kind == kFloat32 && f.dtype != "float32" {
		// Values were laid out as float32: convert the whole batch once,
		// rounding once, to the input's float type.
		dt, err := graph.ParseDataType(f.dtype)
		if err != nil {
			return Tensor{}, err
		}
		vals := make([]float32, len(data)/4)
		for k := range vals {
			vals[k] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*k:]))
		}
		if data, err = graph.EncodeFloats(dt, vals); err != nil {
			return Tensor{}, err
		}
	}
	return Tensor{DType: f.dtype, Shape: shape, Data: data}, nil
}

// putInts writes n integers of kind k into row: vals, or fill when vals is
// nil.
func putInts(row []byte, k kind, n int, vals []int64, fill int64) {
	for j := range n {
		v := fill
		if vals != nil {
			v = vals[j]
		}
		switch k {
		case kInt64:
			binary.LittleEndian.PutUint64(row[8*j:], uint64(v))
		case kInt32:
			binary.LittleEndian.PutUint32(row[4*j:], uint32(int32(v)))
		case kBool:
			row[j] = byte(v)
		}
	}
}
