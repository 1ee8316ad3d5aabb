package graph

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loracc/loracc/graph/onnxpb"
	"google.golang.org/protobuf/proto"
)

// FuzzDecode: any bytes either fail to decode or give a model that
// verifies, encodes and decodes again; nothing panics and nothing
// allocates beyond what the input justifies (sizes are checked against
// the data before use).
func FuzzDecode(f *testing.F) {
	dir := f.TempDir()
	paths, _ := filepath.Glob("../testdata/models/*.onnx")
	for _, p := range paths {
		if data, err := os.ReadFile(p); err == nil && len(data) < 64<<10 {
			f.Add(data)
		}
	}
	f.Add([]byte{})
	f.Add([]byte("not a model"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Decode(data, dir)
		if err != nil {
			return
		}
		if err := m.Graph.Verify(); err != nil {
			t.Fatalf("decoded model fails Verify: %v", err)
		}
		out, err := Encode(m)
		if err != nil {
			return // e.g. external data that cannot be read
		}
		if _, err := Decode(out, dir); err != nil {
			t.Fatalf("re-decoding our own encoding: %v", err)
		}
	})
}

// FuzzExternalData: whatever location, offset and length a model claims,
// Load either refuses it or resolves a file inside the model's folder and
// reads exactly the claimed bytes.
func FuzzExternalData(f *testing.F) {
	f.Add("w.bin", int64(0), int64(16))
	f.Add("../outside.bin", int64(0), int64(16))
	f.Add("/etc/passwd", int64(0), int64(16))
	f.Add("link.bin", int64(0), int64(16))
	f.Add("sub/../w.bin", int64(8), int64(16))
	f.Add("w.bin", int64(1<<62), int64(16))
	f.Add("w.bin", int64(0), int64(-1))
	f.Add(`..\w.bin`, int64(0), int64(16))
	f.Fuzz(func(t *testing.T, loc string, offset, length int64) {
		root := t.TempDir()
		dir := filepath.Join(root, "model")
		if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, "w.bin"), make([]byte, 64), 0o644)
		os.WriteFile(filepath.Join(root, "outside.bin"), make([]byte, 64), 0o644)
		os.Symlink(filepath.Join(root, "outside.bin"), filepath.Join(dir, "link.bin"))
		tp := &onnxpb.TensorProto{Name: proto.String("w"), DataType: proto.Int32(1), Dims: []int64{4},
			DataLocation: onnxpb.TensorProto_EXTERNAL.Enum(),
			ExternalData: []*onnxpb.StringStringEntryProto{
				{Key: proto.String("location"), Value: proto.String(loc)},
				{Key: proto.String("offset"), Value: proto.String(itoa64(offset))},
				{Key: proto.String("length"), Value: proto.String(itoa64(length))},
			}}
		pm := &onnxpb.ModelProto{IrVersion: proto.Int64(10), Graph: &onnxpb.GraphProto{Name: proto.String("g"), Initializer: []*onnxpb.TensorProto{tp}}}
		data, err := proto.Marshal(pm)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "m.onnx")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		m, err := Load(path)
		if err != nil {
			return
		}
		w := m.Graph.Lookup("w").Const
		got, err := w.Bytes()
		if err != nil {
			return
		}
		if len(got) != 16 {
			t.Fatalf("read %d bytes for a 16-byte tensor", len(got))
		}
		resolved, err := filepath.EvalSymlinks(w.External().Path())
		if err != nil {
			t.Fatalf("read through an unresolvable path %q", w.External().Path())
		}
		if !strings.HasPrefix(resolved, dir+string(filepath.Separator)) {
			t.Fatalf("location %q read %s, outside %s", loc, resolved, dir)
		}
	})
}

func itoa64(v int64) string {
	neg := v < 0
	u := uint64(v)
	if neg {
		u = uint64(-v)
	}
	var b [24]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + u%10)
		u /= 10
		if u == 0 {
			break
		}
	}
	if neg {
		i--
		b[i] = '-'
	}
	return string(b[i:])
}
