package adapter

// ONNX Runtime's LoRA adapter file (.onnx_adapter): a FlatBuffers buffer
// with file identifier "TORT" whose root table Adapter holds
// format_version, adapter_version, model_version and a vector of
// Parameter tables {name, dims: [int64], data_type, raw_data: [uint8]
// aligned to 8}. ORT feeds each parameter to the model input of the same
// name when the adapter is active (RunOptions.add_active_adapter), so one
// loaded model serves many adapters.
//
// We write the buffer front to back: every unsigned offset points forward,
// as FlatBuffers requires, and every table's vtable sits just before it.

import (
	"encoding/binary"
	"fmt"

	"github.com/loracc/loracc/graph"
)

// ORTAdapterFormatVersion is the format_version ONNX Runtime accepts.
const ORTAdapterFormatVersion = 1

// ortFileID is the FlatBuffers file identifier of .onnx_adapter files.
const ortFileID = "TORT"

type fbWriter struct{ b []byte }

func (w *fbWriter) pad(align int) {
	for len(w.b)%align != 0 {
		w.b = append(w.b, 0)
	}
}

// padFor pads so that after writing n more bytes the position is aligned.
func (w *fbWriter) padFor(n, align int) {
	for (len(w.b)+n)%align != 0 {
		w.b = append(w.b, 0)
	}
}

func (w *fbWriter) u16(v uint16) { w.b = binary.LittleEndian.AppendUint16(w.b, v) }
func (w *fbWriter) u32(v uint32) { w.b = binary.LittleEndian.AppendUint32(w.b, v) }

// patch writes at pos the forward offset from pos to target.
func (w *fbWriter) patch(pos, target int) {
	binary.LittleEndian.PutUint32(w.b[pos:], uint32(target-pos))
}

// table writes a vtable and a table whose fields are 4-byte slots (ints or
// offsets, patched later); it returns the table's position and the
// positions of its field slots.
func (w *fbWriter) table(fields int) (int, []int) {
	w.pad(4)
	// vtable: size, table size, one u16 per field; keep the table after it
	// 4-aligned.
	vsize := 4 + 2*fields
	w.padFor(vsize, 4)
	vpos := len(w.b)
	w.u16(uint16(vsize))
	w.u16(uint16(4 + 4*fields))
	for i := 0; i < fields; i++ {
		w.u16(uint16(4 + 4*i))
	}
	tpos := len(w.b)
	w.u32(uint32(int32(tpos - vpos))) // soffset to the vtable
	slots := make([]int, fields)
	for i := range slots {
		slots[i] = len(w.b)
		w.u32(0)
	}
	return tpos, slots
}

// vector writes a length-prefixed vector whose elements start aligned to
// align, and returns the position of the length.
func (w *fbWriter) vector(count int, elems []byte, align int) int {
	w.padFor(4, max(align, 4))
	pos := len(w.b)
	w.u32(uint32(count))
	w.b = append(w.b, elems...)
	return pos
}

// EncodeORTAdapter builds an .onnx_adapter buffer from named tensors.
func EncodeORTAdapter(params []NamedTensor, adapterVersion, modelVersion int) ([]byte, error) {
	w := &fbWriter{}
	w.u32(0) // root offset, patched below
	w.b = append(w.b, ortFileID...)
	root, rslots := w.table(4)
	w.patch(0, root)
	binary.LittleEndian.PutUint32(w.b[rslots[0]:], ORTAdapterFormatVersion)
	binary.LittleEndian.PutUint32(w.b[rslots[1]:], uint32(adapterVersion))
	binary.LittleEndian.PutUint32(w.b[rslots[2]:], uint32(modelVersion))
	// The parameters vector holds offsets, patched as tables are written.
	w.pad(4)
	vec := len(w.b)
	w.u32(uint32(len(params)))
	entries := make([]int, len(params))
	for i := range params {
		entries[i] = len(w.b)
		w.u32(0)
	}
	w.patch(rslots[3], vec)
	for i, p := range params {
		size, err := graph.ByteSize(p.DType, p.Shape)
		if err != nil || int64(len(p.Data)) != size {
			return nil, fmt.Errorf("parameter %q: %d bytes for %s%v", p.Name, len(p.Data), p.DType, p.Shape)
		}
		tpos, slots := w.table(4)
		w.patch(entries[i], tpos)
		binary.LittleEndian.PutUint32(w.b[slots[2]:], uint32(p.DType))
		name := w.vector(len(p.Name), append([]byte(p.Name), 0), 4)
		w.patch(slots[0], name)
		dims := make([]byte, 0, 8*len(p.Shape))
		for _, d := range p.Shape {
			dims = binary.LittleEndian.AppendUint64(dims, uint64(d))
		}
		dpos := w.vector(len(p.Shape), dims, 8)
		w.patch(slots[1], dpos)
		rpos := w.vector(len(p.Data), p.Data, 8)
		w.patch(slots[3], rpos)
	}
	w.pad(8)
	return w.b, nil
}

// DecodeORTAdapter reads an .onnx_adapter buffer, checking every offset
// against the buffer (for tests and for `loracc inspect` of adapters).
func DecodeORTAdapter(b []byte) (formatVersion int, params []NamedTensor, err error) {
	r := fbReader{b: b}
	if len(b) < 8 || string(b[4:8]) != ortFileID {
		return 0, nil, fmt.Errorf("not an .onnx_adapter file (no %q identifier)", ortFileID)
	}
	root, err := r.deref(0)
	if err != nil {
		return 0, nil, err
	}
	fv, _ := r.scalar32(root, 0)
	vec, ok, err := r.field(root, 3)
	if err != nil || !ok {
		return int(fv), nil, fmt.Errorf("no parameters vector: %v", err)
	}
	n, err := r.u32(vec)
	if err != nil {
		return 0, nil, err
	}
	for i := 0; i < int(n); i++ {
		t, err := r.deref(vec + 4 + 4*i)
		if err != nil {
			return 0, nil, err
		}
		var p NamedTensor
		if v, ok, err := r.field(t, 0); err != nil {
			return 0, nil, err
		} else if ok {
			l, err := r.u32(v)
			if err != nil {
				return 0, nil, err
			}
			s, err := r.slice(v+4, int(l))
			if err != nil {
				return 0, nil, err
			}
			p.Name = string(s)
		}
		dt, _ := r.scalar32(t, 2)
		p.DType = graph.DataType(dt)
		if v, ok, err := r.field(t, 1); err != nil {
			return 0, nil, err
		} else if ok {
			l, err := r.u32(v)
			if err != nil {
				return 0, nil, err
			}
			s, err := r.slice(v+4, 8*int(l))
			if err != nil {
				return 0, nil, err
			}
			for k := 0; k < int(l); k++ {
				p.Shape = append(p.Shape, int64(binary.LittleEndian.Uint64(s[8*k:])))
			}
		}
		if v, ok, err := r.field(t, 3); err != nil {
			return 0, nil, err
		} else if ok {
			l, err := r.u32(v)
			if err != nil {
				return 0, nil, err
			}
			if p.Data, err = r.slice(v+4, int(l)); err != nil {
				return 0, nil, err
			}
		}
		params = append(params, p)
	}
	return int(fv), params, nil
}

type fbReader struct{ b []byte }

func (r fbReader) slice(pos, n int) ([]byte, error) {
	if pos < 0 || n < 0 || pos+n > len(r.b) {
		return nil, fmt.Errorf("offset %d+%d outside the %d-byte buffer", pos, n, len(r.b))
	}
	return r.b[pos : pos+n], nil
}

func (r fbReader) u32(pos int) (uint32, error) {
	s, err := r.slice(pos, 4)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(s), nil
}

func (r fbReader) deref(pos int) (int, error) {
	off, err := r.u32(pos)
	if err != nil {
		return 0, err
	}
	return pos + int(off), nil
}

// field returns the position a table's field points to (for offsets).
func (r fbReader) field(table, id int) (int, bool, error) {
	slot, ok, err := r.slot(table, id)
	if err != nil || !ok {
		return 0, ok, err
	}
	p, err := r.deref(slot)
	return p, true, err
}

func (r fbReader) scalar32(table, id int) (int32, error) {
	slot, ok, err := r.slot(table, id)
	if err != nil || !ok {
		return 0, err
	}
	v, err := r.u32(slot)
	return int32(v), err
}

func (r fbReader) slot(table, id int) (int, bool, error) {
	so, err := r.u32(table)
	if err != nil {
		return 0, false, err
	}
	vt := table - int(int32(so))
	vs, err := r.slice(vt, 4)
	if err != nil {
		return 0, false, err
	}
	vsize := int(binary.LittleEndian.Uint16(vs))
	if 4+2*id+2 > vsize {
		return 0, false, nil
	}
	fo, err := r.slice(vt+4+2*id, 2)
	if err != nil {
		return 0, false, err
	}
	off := int(binary.LittleEndian.Uint16(fo))
	if off == 0 {
		return 0, false, nil
	}
	return table + off, true, nil
}
