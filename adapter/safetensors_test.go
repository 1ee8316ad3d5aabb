package adapter

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/loracc/loracc/graph"
)

// rawST assembles a safetensors file from a header string and data bytes,
// with the true header length.
func rawST(header string, data []byte) []byte {
	return rawSTLen(uint64(len(header)), header, data)
}

// rawSTLen is rawST with a chosen (possibly lying) header length.
func rawSTLen(n uint64, header string, data []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, n)
	b = append(b, header...)
	return append(b, data...)
}

type hostileCase struct {
	name string
	file []byte
	want string // substring the error must contain besides the path
}

func hostileCases() []hostileCase {
	f32 := `{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`
	eight := make([]byte, 8)
	return []hostileCase{
		{"empty file", nil, "too short"},
		{"short file", []byte{1, 2, 3}, "too short"},
		{"header length 2^60", rawSTLen(1<<60, f32, eight), "limit"},
		{"header length 2^64-1", rawSTLen(^uint64(0), f32, eight), "limit"},
		{"header just over cap", rawSTLen(maxHeaderSize+1, f32, eight), "limit"},
		{"header past EOF", rawSTLen(uint64(len(f32)+100), f32, eight), "past the end"},
		{"empty header", rawST("", nil), "invalid JSON"},
		{"bad JSON", rawST(`{"t":{"dtype":`, nil), `"t"`},
		{"bad JSON key", rawST(`{1:2}`, nil), "invalid JSON"},
		{"truncated after key", rawST(`{"t"`, nil), `"t"`},
		{"not an object", rawST(`[1,2]`, nil), "not an object"},
		{"trailing garbage", rawST(`{} x`, nil), "trailing"},
		{"two objects", rawST(`{}{}`, nil), "trailing"},
		{"offsets past end", rawST(`{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, make([]byte, 4)), `"t"`},
		{"negative offsets", rawST(`{"t":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}}`, eight), `"t"`},
		{"begin after end", rawST(`{"t":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}`, eight), `"t"`},
		{"offsets overflow int64", rawST(`{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551615]}}`, eight), `"t"`},
		{"three offsets", rawST(`{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}}`, eight), `"t"`},
		{"overlapping tensors", rawST(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, eight), "overlap"},
		{"same span twice", rawST(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, eight), "overlap"},
		{"gap", rawST(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, eight), "gap"},
		{"trailing data", rawST(f32, make([]byte, 12)), "cover 8 bytes"},
		{"shape byte mismatch", rawST(`{"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, eight), `"t"`},
		{"dtype byte mismatch", rawST(`{"t":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}}`, eight), `"t"`},
		{"shape overflow", rawST(`{"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}`, eight), "overflow"},
		{"byte size overflow", rawST(`{"t":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,8]}}`, eight), "overflow"},
		{"overflow hidden by zero", rawST(`{"t":{"dtype":"F32","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}}`, nil), "overflow"},
		{"dim beyond int64", rawST(`{"t":{"dtype":"F32","shape":[1e30],"data_offsets":[0,8]}}`, eight), `"t"`},
		{"negative dim", rawST(`{"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}`, eight), "negative"},
		{"unknown dtype", rawST(`{"t":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}}`, eight), `"Q7"`},
		{"sub-byte dtype", rawST(`{"t":{"dtype":"F4","shape":[16],"data_offsets":[0,8]}}`, eight), `"F4"`},
		{"missing dtype", rawST(`{"t":{"shape":[2],"data_offsets":[0,8]}}`, eight), `"t"`},
		{"null shape", rawST(`{"t":{"dtype":"F32","shape":null,"data_offsets":[0,8]}}`, eight), `"t"`},
		{"entry not an object", rawST(`{"t":7}`, nil), `"t"`},
		{"empty tensor name", rawST(`{"":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, eight), "empty"},
		{"duplicate tensor", rawST(`{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, eight), "twice"},
		{"metadata not strings", rawST(`{"__metadata__":{"a":1}}`, nil), "__metadata__"},
		{"deep array", rawST(strings.Repeat("[", 20000), nil), "not an object"},
		{"deep nesting", rawST(`{"t":`+strings.Repeat(`{"a":`, 20000), nil), `"t"`},
	}
}

func TestReadSafetensorsHostile(t *testing.T) {
	dir := t.TempDir()
	for i, tc := range hostileCases() {
		path := filepath.Join(dir, tc.name+".safetensors")
		if err := os.WriteFile(path, tc.file, 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := ReadSafetensors(path)
		if err == nil {
			t.Errorf("%d %s: no error, got %d tensors", i, tc.name, len(f.Tensors))
			continue
		}
		if !strings.Contains(err.Error(), path) {
			t.Errorf("%s: error does not name the file: %v", tc.name, err)
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %q does not mention %q", tc.name, err, tc.want)
		}
	}
}

func TestReadSafetensorsMissing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.safetensors")
	if _, err := ReadSafetensors(path); err == nil || !strings.Contains(err.Error(), path) || !os.IsNotExist(unwrapAll(err)) {
		t.Errorf("missing file: %v", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok || u.Unwrap() == nil {
			return err
		}
		err = u.Unwrap()
	}
}

func sampleTensors() []NamedTensor {
	f16, _ := graph.EncodeFloats(graph.Float16, []float32{1, 2, 3})
	return []NamedTensor{
		FloatTensor("z.weight", []int64{2, 3}, []float32{1, 2, 3, 4, 5, 6}),
		{Name: "a.half", DType: graph.Float16, Shape: []int64{3}, Data: f16},
		{Name: "m.ids", DType: graph.Int64, Shape: []int64{2}, Data: make([]byte, 16)},
		{Name: "empty", DType: graph.Float, Shape: []int64{0, 5}, Data: []byte{}},
		{Name: "scalar", DType: graph.Double, Shape: []int64{}, Data: make([]byte, 8)},
		{Name: "flag", DType: graph.Bool, Shape: []int64{1}, Data: []byte{1}},
		{Name: `odd "name" <&> ü`, DType: graph.BFloat16, Shape: []int64{1}, Data: []byte{0x80, 0x3f}},
	}
}

func TestSafetensorsRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "x.safetensors")
	in := sampleTensors()
	meta := map[string]string{"format": "pt", "note": "a<b"}
	if err := WriteSafetensors(path, in, meta); err != nil {
		t.Fatal(err)
	}
	f, err := ReadSafetensors(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(f.Metadata, meta) {
		t.Errorf("metadata %v, want %v", f.Metadata, meta)
	}
	if len(f.Tensors) != len(in) {
		t.Fatalf("%d tensors, want %d", len(f.Tensors), len(in))
	}
	for _, want := range in {
		got := f.Tensor(want.Name)
		if got == nil {
			t.Fatalf("tensor %q missing", want.Name)
		}
		if got.DType != want.DType || !reflect.DeepEqual(got.Shape, want.Shape) || !bytes.Equal(got.Data, want.Data) {
			t.Errorf("tensor %q: got %v %v % x, want %v %v % x", want.Name, got.DType, got.Shape, got.Data, want.DType, want.Shape, want.Data)
		}
	}
	for i := 1; i < len(f.Tensors); i++ {
		if f.Tensors[i-1].Name >= f.Tensors[i].Name {
			t.Errorf("tensors not sorted: %q before %q", f.Tensors[i-1].Name, f.Tensors[i].Name)
		}
	}
	v, err := f.Tensor("a.half").Floats()
	if err != nil || !reflect.DeepEqual(v, []float32{1, 2, 3}) {
		t.Errorf("fp16 floats: %v %v", v, err)
	}
	// Appending to one tensor's data must not clobber its neighbours.
	saved := make([][]byte, len(f.Tensors))
	for i := range f.Tensors {
		saved[i] = append([]byte(nil), f.Tensors[i].Data...)
	}
	for i := range f.Tensors {
		_ = append(f.Tensors[i].Data, 9, 9, 9, 9, 9, 9, 9, 9)
	}
	for i := range f.Tensors {
		if !bytes.Equal(f.Tensors[i].Data, saved[i]) {
			t.Errorf("tensor %q changed by an append to another", f.Tensors[i].Name)
		}
	}
	// No temp files left behind.
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("directory holds %d entries, want 1", len(ents))
	}
}

func TestSafetensorsDeterministic(t *testing.T) {
	dir := t.TempDir()
	in := sampleTensors()
	p1, p2 := filepath.Join(dir, "1.safetensors"), filepath.Join(dir, "2.safetensors")
	meta := map[string]string{"b": "2", "a": "1", "format": "pt"}
	if err := WriteSafetensors(p1, in, meta); err != nil {
		t.Fatal(err)
	}
	// Same content, other input order, a fresh map.
	rev := append([]NamedTensor(nil), in...)
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}
	if err := WriteSafetensors(p2, rev, map[string]string{"format": "pt", "a": "1", "b": "2"}); err != nil {
		t.Fatal(err)
	}
	b1, _ := os.ReadFile(p1)
	b2, _ := os.ReadFile(p2)
	if !bytes.Equal(b1, b2) {
		t.Fatal("same tensors gave different bytes")
	}
	// Overwriting in place gives the same bytes again.
	if err := WriteSafetensors(p1, in, meta); err != nil {
		t.Fatal(err)
	}
	if b3, _ := os.ReadFile(p1); !bytes.Equal(b1, b3) {
		t.Fatal("rewrite gave different bytes")
	}
	n := binary.LittleEndian.Uint64(b1)
	if n%8 != 0 {
		t.Errorf("header length %d is not a multiple of 8", n)
	}
	// Data is laid out largest element first, so every tensor is aligned
	// to its element size (the buffer itself starts 8-aligned).
	var header map[string]struct {
		DType   string  `json:"dtype"`
		Offsets []int64 `json:"data_offsets"`
	}
	if err := json.Unmarshal(b1[8:8+n], &header); err != nil {
		t.Fatal(err)
	}
	for name, e := range header {
		if name == metadataKey {
			continue
		}
		dt, _ := stDType(e.DType)
		if size := int64(dt.BitSize() / 8); e.Offsets[0]%size != 0 {
			t.Errorf("tensor %q (%s) at offset %d, not aligned", name, e.DType, e.Offsets[0])
		}
	}
}

// TestSafetensorsExactBytes pins the layout against the reference writer's
// output for a tiny file: sorted keys, __metadata__ first, no spaces, padding
// with spaces.
func TestSafetensorsExactBytes(t *testing.T) {
	got, err := EncodeSafetensors([]NamedTensor{FloatTensor("a", []int64{1}, []float32{1})}, map[string]string{"format": "pt"})
	if err != nil {
		t.Fatal(err)
	}
	header := `{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`
	header += strings.Repeat(" ", (8-len(header)%8)%8)
	want := rawST(header, []byte{0, 0, 0x80, 0x3f})
	if !bytes.Equal(got, want) {
		t.Errorf("got\n%q\nwant\n%q", got, want)
	}
}

// TestSafetensorsMatchesReference re-encodes files written by Python's
// safetensors (testdata/, made by testdata/torch/make_refs.py) and expects
// the very same bytes.
func TestSafetensorsMatchesReference(t *testing.T) {
	files, _ := filepath.Glob("../testdata/ref/*.safetensors")
	more, _ := filepath.Glob("../testdata/ref/*/adapter_model.safetensors")
	files = append(files, more...)
	if len(files) == 0 {
		t.Skip("no reference safetensors files in ../testdata/ref")
	}
	for _, path := range files {
		f, err := ReadSafetensors(path)
		if err != nil {
			t.Fatal(err)
		}
		got, err := EncodeSafetensors(f.Tensors, f.Metadata)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := os.ReadFile(path)
		if !bytes.Equal(got, want) {
			t.Errorf("%s: re-encoding differs from the reference writer's bytes", path)
		}
	}
}

func TestWriteSafetensorsRejects(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		tensors []NamedTensor
		meta    map[string]string
	}{
		{"short data", []NamedTensor{{Name: "t", DType: graph.Float, Shape: []int64{2}, Data: make([]byte, 4)}}, nil},
		{"duplicate", []NamedTensor{FloatTensor("t", []int64{1}, []float32{1}), FloatTensor("t", []int64{1}, []float32{1})}, nil},
		{"empty name", []NamedTensor{FloatTensor("", []int64{1}, []float32{1})}, nil},
		{"reserved name", []NamedTensor{FloatTensor(metadataKey, []int64{1}, []float32{1})}, nil},
		{"bad utf-8", []NamedTensor{FloatTensor("\xff", []int64{1}, []float32{1})}, nil},
		{"string dtype", []NamedTensor{{Name: "s", DType: graph.String, Shape: []int64{0}}}, nil},
		{"negative dim", []NamedTensor{{Name: "t", DType: graph.Float, Shape: []int64{-1}}}, nil},
		{"bad metadata", nil, map[string]string{"k": "\xff"}},
	} {
		path := filepath.Join(dir, "out.safetensors")
		err := WriteSafetensors(path, tc.tensors, tc.meta)
		if err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: error %v, want one naming %s", tc.name, err, path)
		}
		if _, serr := os.Stat(path); serr == nil {
			t.Errorf("%s: file written despite the error", tc.name)
		}
	}
}

// FuzzReadSafetensors checks that no input panics, and that whatever is
// accepted is self-consistent and survives a write/read round trip.
func FuzzReadSafetensors(f *testing.F) {
	for _, tc := range hostileCases() {
		f.Add(tc.file)
	}
	good, err := EncodeSafetensors(sampleTensors(), map[string]string{"format": "pt"})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(rawST(`{}`, nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, "f.safetensors")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		st, err := ReadSafetensors(path)
		if err != nil {
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		var total int64
		for i, tn := range st.Tensors {
			if i > 0 && st.Tensors[i-1].Name >= tn.Name {
				t.Fatalf("tensors not sorted or duplicated: %q, %q", st.Tensors[i-1].Name, tn.Name)
			}
			n, err := byteLen(tn.DType, tn.Shape)
			if err != nil || n != int64(len(tn.Data)) {
				t.Fatalf("tensor %q: %d bytes for %v %v (%v)", tn.Name, len(tn.Data), tn.DType, tn.Shape, err)
			}
			total += n
		}
		if total > int64(len(data)) {
			t.Fatalf("tensors hold %d bytes, file has %d", total, len(data))
		}
		// Names decoded from JSON may not survive re-encoding (e.g. they
		// were escaped invalid UTF-8, now U+FFFD, still valid); anything
		// we accepted must re-encode and read back the same.
		out, err := EncodeSafetensors(st.Tensors, st.Metadata)
		if err != nil {
			t.Fatalf("accepted file does not re-encode: %v", err)
		}
		back, err := ParseSafetensors("re-encoded", out)
		if err != nil {
			t.Fatalf("re-encoded file does not parse: %v", err)
		}
		if len(back.Tensors) != len(st.Tensors) {
			t.Fatalf("round trip: %d tensors, want %d", len(back.Tensors), len(st.Tensors))
		}
		for i := range back.Tensors {
			a, b := st.Tensors[i], back.Tensors[i]
			if a.Name != b.Name || a.DType != b.DType || !reflect.DeepEqual(a.Shape, b.Shape) || !bytes.Equal(a.Data, b.Data) {
				t.Fatalf("round trip changed tensor %q", a.Name)
			}
		}
	})
}
