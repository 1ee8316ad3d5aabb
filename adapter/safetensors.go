package adapter

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"sort"
	"unicode/utf8"

	"github.com/loracc/loracc/graph"
)

// The safetensors format (https://github.com/huggingface/safetensors):
//
//	u64 little-endian N | N bytes of JSON header | data buffer
//
// The header maps each tensor name to {"dtype", "shape", "data_offsets":
// [begin, end]}, offsets relative to the start of the data buffer, plus an
// optional "__metadata__" map of strings. The reader below applies the
// reference implementation's checks, because adapters are downloaded files
// and must not be able to crash or exhaust the compiler: the header is
// capped, every size is computed with overflow checks before anything is
// allocated, and the tensors must tile the data buffer exactly (no gaps, no
// overlaps, nothing left over), which also rules out aliasing.

// maxHeaderSize is the reference implementation's cap on the JSON header.
const maxHeaderSize = 100_000_000

// metadataKey is the reserved header key holding free-form string metadata.
const metadataKey = "__metadata__"

// NamedTensor is one tensor of a safetensors file: its element type, its
// shape, and its little-endian bytes.
type NamedTensor struct {
	Name  string
	DType graph.DataType
	Shape []int64
	Data  []byte
}

// File is a parsed safetensors file; tensors are sorted by name.
type File struct {
	Path     string
	Metadata map[string]string
	Tensors  []NamedTensor
}

// Tensor returns the tensor called name, or nil.
func (f *File) Tensor(name string) *NamedTensor {
	i := sort.Search(len(f.Tensors), func(i int) bool { return f.Tensors[i].Name >= name })
	if i < len(f.Tensors) && f.Tensors[i].Name == name {
		return &f.Tensors[i]
	}
	return nil
}

// Floats decodes an F32, F16, BF16 or F64 tensor to float32.
func (t NamedTensor) Floats() ([]float32, error) {
	v, err := graph.DecodeFloats(t.DType, t.Data)
	if err != nil {
		return nil, fmt.Errorf("tensor %q: %w", t.Name, err)
	}
	return v, nil
}

// FloatTensor builds an F32 tensor from values in row-major order.
func FloatTensor(name string, shape []int64, vals []float32) NamedTensor {
	raw, _ := graph.EncodeFloats(graph.Float, vals) // cannot fail for Float
	return NamedTensor{Name: name, DType: graph.Float, Shape: append([]int64(nil), shape...), Data: raw}
}

// stDType maps a safetensors dtype name to ours. Only whole-byte types are
// listed: sub-byte ones (F4, ...) have no per-element byte size to check
// data_offsets against, and no adapter uses them.
func stDType(s string) (graph.DataType, bool) {
	switch s {
	case "BOOL":
		return graph.Bool, true
	case "U8":
		return graph.Uint8, true
	case "I8":
		return graph.Int8, true
	case "F8_E5M2":
		return graph.Float8E5M2, true
	case "F8_E4M3":
		return graph.Float8E4M3FN, true
	case "F8_E8M0":
		return graph.Float8E8M0, true
	case "I16":
		return graph.Int16, true
	case "U16":
		return graph.Uint16, true
	case "F16":
		return graph.Float16, true
	case "BF16":
		return graph.BFloat16, true
	case "I32":
		return graph.Int32, true
	case "U32":
		return graph.Uint32, true
	case "F32":
		return graph.Float, true
	case "I64":
		return graph.Int64, true
	case "U64":
		return graph.Uint64, true
	case "F64":
		return graph.Double, true
	}
	return graph.Undefined, false
}

// stDTypeName is the inverse of stDType.
func stDTypeName(dt graph.DataType) (string, bool) {
	switch dt {
	case graph.Bool:
		return "BOOL", true
	case graph.Uint8:
		return "U8", true
	case graph.Int8:
		return "I8", true
	case graph.Float8E5M2:
		return "F8_E5M2", true
	case graph.Float8E4M3FN:
		return "F8_E4M3", true
	case graph.Float8E8M0:
		return "F8_E8M0", true
	case graph.Int16:
		return "I16", true
	case graph.Uint16:
		return "U16", true
	case graph.Float16:
		return "F16", true
	case graph.BFloat16:
		return "BF16", true
	case graph.Int32:
		return "I32", true
	case graph.Uint32:
		return "U32", true
	case graph.Float:
		return "F32", true
	case graph.Int64:
		return "I64", true
	case graph.Uint64:
		return "U64", true
	case graph.Double:
		return "F64", true
	}
	return "", false
}

// byteLen is the number of bytes of a tensor of dt and shape, with an error
// for negative dimensions or int64 overflow of the element or byte count.
func byteLen(dt graph.DataType, shape []int64) (int64, error) {
	n := int64(1)
	for _, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("negative dimension in shape %v", shape)
		}
		hi, lo := bits.Mul64(uint64(n), uint64(d))
		if hi != 0 || lo > math.MaxInt64 {
			return 0, fmt.Errorf("shape %v overflows int64", shape)
		}
		n = int64(lo)
	}
	size := int64(dt.BitSize() / 8)
	hi, lo := bits.Mul64(uint64(n), uint64(size))
	if hi != 0 || lo > math.MaxInt64 {
		return 0, fmt.Errorf("shape %v of %s overflows int64 bytes", shape, dt)
	}
	return int64(lo), nil
}

// headerEntry is one tensor's header record. Pointers tell a missing field
// from a zero one; unknown fields are ignored, as the reference does.
type headerEntry struct {
	DType       *string  `json:"dtype"`
	Shape       *[]int64 `json:"shape"`
	DataOffsets *[]int64 `json:"data_offsets"`
}

// ReadSafetensors reads and checks a whole safetensors file. Every error
// names the file, and the tensor where one is at fault. Memory use is
// bounded by the file size: the header length is checked against the file
// and the cap before it is read, and tensor sizes against the data buffer
// before the buffer is read.
func ReadSafetensors(path string) (*File, error) {
	f, st, err := graph.OpenRegular(path)
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	defer f.Close()
	out, err := parseSafetensors(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("safetensors %s: %w", path, err)
	}
	out.Path = path
	return out, nil
}

// ParseSafetensors is ReadSafetensors for bytes already in memory; name is
// used in errors and as File.Path.
func ParseSafetensors(name string, data []byte) (*File, error) {
	out, err := parseSafetensors(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return nil, fmt.Errorf("safetensors %s: %w", name, err)
	}
	out.Path = name
	return out, nil
}

func parseSafetensors(r io.ReaderAt, size int64) (*File, error) {
	var lenBuf [8]byte
	if size < 8 {
		return nil, fmt.Errorf("file has %d bytes, too short for the 8-byte header length", size)
	}
	if _, err := r.ReadAt(lenBuf[:], 0); err != nil {
		return nil, fmt.Errorf("reading header length: %w", err)
	}
	n := binary.LittleEndian.Uint64(lenBuf[:])
	if n > maxHeaderSize {
		return nil, fmt.Errorf("header length %d exceeds the %d-byte limit", n, maxHeaderSize)
	}
	if n > uint64(size-8) {
		return nil, fmt.Errorf("header length %d runs past the end of the %d-byte file", n, size)
	}
	header := make([]byte, n)
	if _, err := r.ReadAt(header, 8); err != nil {
		return nil, fmt.Errorf("reading header: %w", err)
	}
	bufStart := 8 + int64(n)
	bufLen := size - bufStart

	out, spans, err := parseHeader(header, bufLen)
	if err != nil {
		return nil, err
	}
	// Tensors must tile [0, bufLen) exactly, as the reference requires.
	sort.Slice(spans, func(i, j int) bool {
		if spans[i].begin != spans[j].begin {
			return spans[i].begin < spans[j].begin
		}
		return spans[i].end < spans[j].end
	})
	var pos int64
	for i, s := range spans {
		if s.begin < pos {
			return nil, fmt.Errorf("tensor %q: data_offsets [%d, %d] overlap tensor %q", s.name, s.begin, s.end, spans[i-1].name)
		}
		if s.begin > pos {
			return nil, fmt.Errorf("tensor %q: data_offsets [%d, %d] leave a gap after byte %d", s.name, s.begin, s.end, pos)
		}
		pos = s.end
	}
	if pos != bufLen {
		return nil, fmt.Errorf("tensors cover %d bytes but the data buffer has %d", pos, bufLen)
	}
	// All sizes are now known to fit in the file: read the buffer once.
	buf := make([]byte, bufLen)
	if _, err := r.ReadAt(buf, bufStart); err != nil && !(errors.Is(err, io.EOF) && bufLen == 0) {
		return nil, fmt.Errorf("reading data: %w", err)
	}
	for _, s := range spans {
		t := &out.Tensors[s.index]
		// Full slice expression: appending to one tensor's data must not
		// overwrite the next one's.
		t.Data = buf[s.begin:s.end:s.end]
	}
	return out, nil
}

// span is where one tensor's bytes lie in the data buffer.
type span struct {
	name       string
	index      int // into File.Tensors
	begin, end int64
}

// parseHeader decodes and checks the JSON header against a data buffer of
// bufLen bytes. It returns the tensors sorted by name, without data, and
// their spans. Keys are read one at a time so that a duplicated tensor name
// is an error rather than a silent overwrite.
func parseHeader(header []byte, bufLen int64) (*File, []span, error) {
	dec := json.NewDecoder(bytes.NewReader(header))
	if tok, err := dec.Token(); err != nil {
		return nil, nil, fmt.Errorf("header: invalid JSON: %w", err)
	} else if tok != json.Delim('{') {
		return nil, nil, fmt.Errorf("header: JSON is not an object")
	}
	out := &File{}
	var spans []span
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, fmt.Errorf("header: invalid JSON: %w", err)
		}
		name, ok := tok.(string)
		if !ok {
			return nil, nil, fmt.Errorf("header: invalid JSON: key %v is not a string", tok)
		}
		if name == "" {
			return nil, nil, fmt.Errorf("header: empty tensor name")
		}
		if seen[name] {
			return nil, nil, fmt.Errorf("header: key %q appears twice", name)
		}
		seen[name] = true
		if name == metadataKey {
			if err := dec.Decode(&out.Metadata); err != nil {
				return nil, nil, fmt.Errorf("header: %s: %w", metadataKey, err)
			}
			continue
		}
		var e headerEntry
		if err := dec.Decode(&e); err != nil {
			return nil, nil, fmt.Errorf("tensor %q: invalid header entry: %w", name, err)
		}
		t, s, err := checkEntry(name, e, bufLen)
		if err != nil {
			return nil, nil, fmt.Errorf("tensor %q: %w", name, err)
		}
		out.Tensors = append(out.Tensors, t)
		spans = append(spans, s)
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, nil, fmt.Errorf("header: invalid JSON: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, nil, fmt.Errorf("header: trailing data after the JSON object")
	}
	// Sort tensors and spans together by name, then point spans at the
	// sorted positions.
	order := make([]int, len(out.Tensors))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return out.Tensors[order[a]].Name < out.Tensors[order[b]].Name })
	sorted := make([]NamedTensor, len(order))
	for i, j := range order {
		sorted[i] = out.Tensors[j]
		spans[j].index = i
	}
	out.Tensors = sorted
	return out, spans, nil
}

// checkEntry validates one header record: known dtype, non-negative shape
// whose byte size does not overflow, and offsets 0 <= begin <= end <= bufLen
// that span exactly that many bytes.
func checkEntry(name string, e headerEntry, bufLen int64) (NamedTensor, span, error) {
	var t NamedTensor
	var s span
	if e.DType == nil || e.Shape == nil || e.DataOffsets == nil {
		return t, s, fmt.Errorf("header entry needs dtype, shape and data_offsets")
	}
	dt, ok := stDType(*e.DType)
	if !ok {
		return t, s, fmt.Errorf("unknown or unsupported dtype %q", *e.DType)
	}
	shape := *e.Shape
	n, err := byteLen(dt, shape)
	if err != nil {
		return t, s, err
	}
	offs := *e.DataOffsets
	if len(offs) != 2 {
		return t, s, fmt.Errorf("data_offsets has %d entries, want 2", len(offs))
	}
	begin, end := offs[0], offs[1]
	switch {
	case begin < 0 || end < 0:
		return t, s, fmt.Errorf("negative data_offsets [%d, %d]", begin, end)
	case begin > end:
		return t, s, fmt.Errorf("data_offsets [%d, %d]: begin after end", begin, end)
	case end > bufLen:
		return t, s, fmt.Errorf("data_offsets [%d, %d] past the end of the %d-byte data buffer", begin, end, bufLen)
	case end-begin != n:
		return t, s, fmt.Errorf("%s%v needs %d bytes but data_offsets [%d, %d] hold %d", *e.DType, shape, n, begin, end, end-begin)
	}
	t = NamedTensor{Name: name, DType: dt, Shape: shape}
	return t, span{name: name, begin: begin, end: end}, nil
}

// WriteSafetensors writes tensors and metadata to path atomically. The
// output depends only on the arguments: header keys are sorted ("__metadata__"
// first, as the reference writes it), and the header is padded with spaces
// so the data buffer starts 8-byte aligned. Data is laid out by element
// size, largest first, then by name, as the reference does, so every tensor
// is aligned to its own element size. Metadata may be nil.
func WriteSafetensors(path string, tensors []NamedTensor, metadata map[string]string) error {
	data, err := EncodeSafetensors(tensors, metadata)
	if err != nil {
		return fmt.Errorf("safetensors %s: %w", path, err)
	}
	return writeFileAtomic(path, data)
}

// EncodeSafetensors is WriteSafetensors without the file: it returns the
// bytes of the safetensors file.
func EncodeSafetensors(tensors []NamedTensor, metadata map[string]string) ([]byte, error) {
	type entry struct {
		t     *NamedTensor
		dtype string
		begin int64
	}
	entries := make([]entry, len(tensors))
	seen := make(map[string]bool, len(tensors))
	for i := range tensors {
		t := &tensors[i]
		switch {
		case t.Name == "":
			return nil, fmt.Errorf("tensor %d has an empty name", i)
		case t.Name == metadataKey:
			return nil, fmt.Errorf("tensor name %q is reserved", t.Name)
		case !utf8.ValidString(t.Name):
			return nil, fmt.Errorf("tensor name %q is not valid UTF-8", t.Name)
		case seen[t.Name]:
			return nil, fmt.Errorf("tensor %q appears twice", t.Name)
		}
		seen[t.Name] = true
		name, ok := stDTypeName(t.DType)
		if !ok {
			return nil, fmt.Errorf("tensor %q: dtype %s has no safetensors name", t.Name, t.DType)
		}
		n, err := byteLen(t.DType, t.Shape)
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", t.Name, err)
		}
		if int64(len(t.Data)) != n {
			return nil, fmt.Errorf("tensor %q: %s%v needs %d bytes, has %d", t.Name, name, t.Shape, n, len(t.Data))
		}
		entries[i] = entry{t: t, dtype: name}
	}
	for k, v := range metadata {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return nil, fmt.Errorf("metadata %q: not valid UTF-8", k)
		}
	}

	// Data layout: element size descending, then name.
	layout := make([]*entry, len(entries))
	for i := range entries {
		layout[i] = &entries[i]
	}
	sort.Slice(layout, func(i, j int) bool {
		a, b := layout[i], layout[j]
		if sa, sb := a.t.DType.BitSize(), b.t.DType.BitSize(); sa != sb {
			return sa > sb
		}
		return a.t.Name < b.t.Name
	})
	var total int64
	for _, e := range layout {
		e.begin = total
		total += int64(len(e.t.Data))
	}

	// Header, by hand so that key order is fixed. Strings go through
	// encoding/json for escaping, with HTML escaping off as in serde.
	byName := make([]*entry, len(entries))
	copy(byName, layout)
	sort.Slice(byName, func(i, j int) bool { return byName[i].t.Name < byName[j].t.Name })
	var h bytes.Buffer
	h.WriteByte('{')
	if len(metadata) > 0 {
		keys := make([]string, 0, len(metadata))
		for k := range metadata {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		writeJSONString(&h, metadataKey)
		h.WriteString(":{")
		for i, k := range keys {
			if i > 0 {
				h.WriteByte(',')
			}
			writeJSONString(&h, k)
			h.WriteByte(':')
			writeJSONString(&h, metadata[k])
		}
		h.WriteByte('}')
	}
	for i, e := range byName {
		if i > 0 || len(metadata) > 0 {
			h.WriteByte(',')
		}
		writeJSONString(&h, e.t.Name)
		fmt.Fprintf(&h, `:{"dtype":%q,"shape":[`, e.dtype)
		for j, d := range e.t.Shape {
			if j > 0 {
				h.WriteByte(',')
			}
			fmt.Fprintf(&h, "%d", d)
		}
		fmt.Fprintf(&h, `],"data_offsets":[%d,%d]}`, e.begin, e.begin+int64(len(e.t.Data)))
	}
	h.WriteByte('}')
	for h.Len()%8 != 0 {
		h.WriteByte(' ')
	}

	out := make([]byte, 8, 8+int64(h.Len())+total)
	binary.LittleEndian.PutUint64(out, uint64(h.Len()))
	out = append(out, h.Bytes()...)
	for _, e := range layout {
		out = append(out, e.t.Data...)
	}
	return out, nil
}

// writeJSONString appends s as a JSON string literal.
func writeJSONString(b *bytes.Buffer, s string) {
	enc := json.NewEncoder(b)
	enc.SetEscapeHTML(false)
	enc.Encode(s)           // cannot fail for a string
	b.Truncate(b.Len() - 1) // Encode appends a newline
}
