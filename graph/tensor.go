package graph

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"math/bits"
	"os"
	"path/filepath"
	"strings"
)

// Tensor is constant tensor data: an initializer, a Constant node's value or
// a tensor attribute. Its bytes live in memory or in an external data file
// that is read only when asked for, so loading a multi-gigabyte model costs
// no more than its protobuf.
type Tensor struct {
	Name      string
	DType     DataType
	Dims      []int64
	DocString string
	Metadata  []KV

	raw []byte    // little-endian element data when in memory
	ext *External // set while the data lives in an external file
	// typed marks data that came in a typed field (float_data, int32_data,
	// ...): the field stays in rest and is written back as it came unless
	// the data is replaced.
	typed bool
	// spilled marks tensors whose data should go to the output's external
	// data file when saved (they were external when loaded).
	spilled bool
	// stream, when set, produces the data at save time, so a tensor
	// computed from a big external one never has to sit in memory.
	stream func(io.Writer) error
	rest   []byte
}

// External locates a tensor's bytes in a file beside the model.
type External struct {
	Location string // relative path, as written in the model
	Offset   int64
	Length   int64
	Checksum string
	Dir      string // absolute folder the location is relative to
	extra    []KV   // other external_data keys, kept in order
}

// NewTensor makes an in-memory tensor from little-endian bytes.
func NewTensor(name string, dt DataType, dims []int64, raw []byte) *Tensor {
	return &Tensor{Name: name, DType: dt, Dims: append([]int64(nil), dims...), raw: raw}
}

// NewFloatTensor makes a tensor of dt (fp32, fp16, bf16 or fp64) from
// float32 values, rounding once.
func NewFloatTensor(name string, dt DataType, dims []int64, vals []float32) (*Tensor, error) {
	raw, err := EncodeFloats(dt, vals)
	if err != nil {
		return nil, err
	}
	return NewTensor(name, dt, dims, raw), nil
}

// NumElements is the product of the dims, with an error on negative dims or
// int64 overflow.
func (t *Tensor) NumElements() (int64, error) {
	return NumElements(t.Dims)
}

// NumElements is the product of dims (1 for a scalar), or an error on a
// negative dim or int64 overflow. Every element count of a shape that came
// from a file or a user goes through it.
func NumElements(dims []int64) (int64, error) {
	n := int64(1)
	for _, d := range dims {
		if d < 0 {
			return 0, fmt.Errorf("negative dimension %d in %v", d, dims)
		}
		hi, lo := bits.Mul64(uint64(n), uint64(d))
		if hi != 0 || lo > math.MaxInt64 {
			return 0, fmt.Errorf("dimensions %v overflow int64", dims)
		}
		n = int64(lo)
	}
	return n, nil
}

// ByteSize is the size of the data in bytes, or an error when the type has
// no fixed size or the size overflows.
func (t *Tensor) ByteSize() (int64, error) {
	b, err := ByteSize(t.DType, t.Dims)
	if err != nil {
		return 0, fmt.Errorf("tensor %q: %w", t.Name, err)
	}
	return b, nil
}

// ByteSize is the size in bytes of a dense tensor of dt and dims, or an
// error when the dims are invalid or dt has no fixed size.
func ByteSize(dt DataType, dims []int64) (int64, error) {
	n, err := NumElements(dims)
	if err != nil {
		return 0, err
	}
	b := dt.ByteSize(n)
	if b < 0 {
		return 0, fmt.Errorf("no fixed byte size for %d elements of %s", n, dt)
	}
	return b, nil
}

// External returns where the data lives on disk, nil when in memory.
func (t *Tensor) External() *External { return t.ext }

// InMemory reports whether the data is held in memory (neither in an
// external file nor produced at save time).
func (t *Tensor) InMemory() bool { return t.ext == nil && t.stream == nil }

// IsExternal reports whether the data is in an external file.
func (t *Tensor) IsExternal() bool { return t.ext != nil }

// Bytes returns the little-endian element data, reading the external file
// on first use. The result must not be modified: it may be shared.
func (t *Tensor) Bytes() ([]byte, error) {
	if t.stream != nil {
		var buf bytes.Buffer
		if err := t.stream(&buf); err != nil {
			return nil, fmt.Errorf("tensor %q: %w", t.Name, err)
		}
		return buf.Bytes(), nil
	}
	if t.ext == nil {
		if t.DType == String {
			return nil, fmt.Errorf("tensor %q: string tensors have no raw bytes", t.Name)
		}
		return t.raw, nil
	}
	size, err := t.ByteSize()
	if err != nil {
		return nil, err
	}
	if t.ext.Length >= 0 && t.ext.Length != size {
		return nil, fmt.Errorf("tensor %q: external length %d, want %d bytes for %s%v", t.Name, t.ext.Length, size, t.DType, t.Dims)
	}
	f, st, err := t.ext.open()
	if err != nil {
		return nil, fmt.Errorf("tensor %q: %w", t.Name, err)
	}
	defer f.Close()
	if t.ext.Offset+size > st.Size() {
		return nil, fmt.Errorf("tensor %q: needs bytes %d..%d of %s, which has %d", t.Name, t.ext.Offset, t.ext.Offset+size, t.ext.Location, st.Size())
	}
	buf := make([]byte, size)
	if _, err := f.ReadAt(buf, t.ext.Offset); err != nil && !(errors.Is(err, io.EOF) && size == 0) {
		return nil, fmt.Errorf("tensor %q: reading %s: %w", t.Name, t.ext.Location, err)
	}
	return buf, nil
}

// Floats decodes fp32, fp16, bf16 or fp64 data into float32.
func (t *Tensor) Floats() ([]float32, error) {
	raw, err := t.Bytes()
	if err != nil {
		return nil, err
	}
	vals, err := DecodeFloats(t.DType, raw)
	if err != nil {
		return nil, fmt.Errorf("tensor %q: %w", t.Name, err)
	}
	return vals, nil
}

// Int64s decodes int64 or int32 data.
func (t *Tensor) Int64s() ([]int64, error) {
	raw, err := t.Bytes()
	if err != nil {
		return nil, err
	}
	switch t.DType {
	case Int64:
		out := make([]int64, len(raw)/8)
		for i := range out {
			out[i] = int64(le.Uint64(raw[8*i:]))
		}
		return out, nil
	case Int32:
		out := make([]int64, len(raw)/4)
		for i := range out {
			out[i] = int64(int32(le.Uint32(raw[4*i:])))
		}
		return out, nil
	}
	return nil, fmt.Errorf("tensor %q: %s is not an integer type", t.Name, t.DType)
}

// SetBytes replaces the data in memory. A tensor that lived in an external
// file is marked to be written to the output's external data file on save,
// so big weights stay external.
func (t *Tensor) SetBytes(raw []byte) {
	if t.ext != nil {
		t.spilled = true
	}
	t.ext = nil
	t.raw = raw
	t.typed = false
	t.stream = nil
}

// SetStream replaces the data with a producer that writes exactly
// ByteSize bytes when the model is saved. The tensor is saved to the
// output's external data file, streaming, so memory stays flat however
// big it is.
func (t *Tensor) SetStream(write func(io.Writer) error) {
	t.spilled = true
	t.ext = nil
	t.raw = nil
	t.typed = false
	t.stream = write
}

// SetExternal points the tensor at bytes in a file, replacing in-memory
// data. The location must be relative to dir and stay inside it.
func (t *Tensor) SetExternal(e External) error {
	if err := checkLocation(e.Location); err != nil {
		return fmt.Errorf("tensor %q: %w", t.Name, err)
	}
	t.ext = &e
	t.raw = nil
	t.typed = false
	t.stream = nil
	return nil
}

// Clone copies the tensor's description; data is shared (read-only).
func (t *Tensor) Clone() *Tensor {
	c := *t
	c.Dims = append([]int64(nil), t.Dims...)
	c.Metadata = append([]KV(nil), t.Metadata...)
	if t.ext != nil {
		e := *t.ext
		c.ext = &e
	}
	return &c
}

// Reinterpreted is a tensor named name holding t's bytes as dt with dims,
// which must take exactly as many bytes: a packed 4-bit weight read as
// the uint8 bytes it is, or the other way round. Lazy external data stays
// in its file (the same location and offset); bytes in memory are shared.
func (t *Tensor) Reinterpreted(name string, dt DataType, dims []int64) (*Tensor, error) {
	have, err := t.ByteSize()
	if err != nil {
		return nil, err
	}
	want, err := ByteSize(dt, dims)
	if err != nil {
		return nil, fmt.Errorf("tensor %q as %s%v: %w", t.Name, dt, dims, err)
	}
	if have != want {
		return nil, fmt.Errorf("tensor %q: %d bytes of %s%v cannot be read as %s%v (%d bytes)", t.Name, have, t.DType, t.Dims, dt, dims, want)
	}
	if t.ext != nil {
		c := t.Clone()
		c.Name, c.DType, c.Dims = name, dt, append([]int64(nil), dims...)
		return c, nil
	}
	raw, err := t.Bytes()
	if err != nil {
		return nil, err
	}
	return NewTensor(name, dt, dims, raw), nil
}

// checkLocation rejects external-data locations that could leave the
// model's folder: absolute paths and any ".." element. Symlinks are caught
// when the file is opened (os.Root).
func checkLocation(loc string) error {
	if loc == "" {
		return errors.New("external data without a location")
	}
	if filepath.IsAbs(loc) || strings.HasPrefix(loc, "/") || strings.HasPrefix(loc, `\`) || filepath.VolumeName(loc) != "" {
		return fmt.Errorf("external data location %q is an absolute path", loc)
	}
	for _, part := range strings.FieldsFunc(loc, func(r rune) bool { return r == '/' || r == '\\' }) {
		if part == ".." {
			return fmt.Errorf("external data location %q leaves the model's folder", loc)
		}
	}
	return nil
}

// open opens the external file through an os.Root on its folder, so a
// symlink that points outside the folder is refused by the OS layer, and
// only if it is a regular file (OpenRegular's rule). It returns the
// file's fstat, which that check already made.
func (e *External) open() (*os.File, fs.FileInfo, error) {
	if err := checkLocation(e.Location); err != nil {
		return nil, nil, err
	}
	root, err := os.OpenRoot(e.Dir)
	if err != nil {
		return nil, nil, fmt.Errorf("external data %q: %w", e.Location, err)
	}
	defer root.Close()
	f, err := root.OpenFile(filepath.FromSlash(e.Location), openFlags, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("external data %q: %w", e.Location, err)
	}
	f, st, err := checkRegular(f, fmt.Sprintf("%q", e.Location))
	if err != nil {
		return nil, nil, fmt.Errorf("external data %w", err)
	}
	return f, st, nil
}

// Path returns the absolute path of the external file.
func (e *External) Path() string { return filepath.Join(e.Dir, filepath.FromSlash(e.Location)) }

// Open returns a reader over exactly the tensor's external bytes, for
// streaming work on tensors too big to hold twice. The caller closes it.
func (t *Tensor) Open() (io.ReaderAt, io.Closer, int64, error) {
	if t.ext == nil {
		return nil, nil, 0, fmt.Errorf("tensor %q is not external", t.Name)
	}
	size, err := t.ByteSize()
	if err != nil {
		return nil, nil, 0, err
	}
	f, _, err := t.ext.open()
	if err != nil {
		return nil, nil, 0, fmt.Errorf("tensor %q: %w", t.Name, err)
	}
	return io.NewSectionReader(f, t.ext.Offset, size), f, size, nil
}
