package main

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loracc/loracc/graph/onnxpb"
	"google.golang.org/protobuf/proto"
)

// editedSeed writes a variant of the seed model changed by edit.
func editedSeed(t *testing.T, dir, name string, edit func(m *onnxpb.ModelProto)) string {
	t.Helper()
	data, err := os.ReadFile("../../testdata/models/seed.onnx")
	if err != nil {
		t.Fatal(err)
	}
	var m onnxpb.ModelProto
	if err := proto.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	edit(&m)
	out, err := proto.Marshal(&m)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, out, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func externalize(m *onnxpb.ModelProto, loc string, offset, length string) {
	w := m.Graph.Initializer[0]
	w.RawData = nil
	w.DataLocation = onnxpb.TensorProto_EXTERNAL.Enum()
	w.ExternalData = []*onnxpb.StringStringEntryProto{
		{Key: proto.String("location"), Value: proto.String(loc)},
		{Key: proto.String("offset"), Value: proto.String(offset)},
		{Key: proto.String("length"), Value: proto.String(length)},
	}
}

// TestBadInputs: every hostile file ends in one error naming the file and
// the problem, with no output written.
func TestBadInputs(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	seed, _ := os.ReadFile("../../testdata/models/seed.onnx")
	if err := os.WriteFile(filepath.Join(outside, "secret.bin"), make([]byte, 80), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "secret.bin"), filepath.Join(dir, "link.bin")); err != nil {
		t.Fatal(err)
	}
	write("short.bin", make([]byte, 40))

	// A good adapter for the seed model, and broken ones.
	good := filepath.Join(dir, "good.adapter")
	if err := seedAdapter().Save(good); err != nil {
		t.Fatal(err)
	}
	badAdapter := func(name string, edit func(st []byte) []byte) string {
		d := filepath.Join(dir, name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		cfg, _ := os.ReadFile(filepath.Join(good, "adapter_config.json"))
		st, _ := os.ReadFile(filepath.Join(good, "adapter_model.safetensors"))
		os.WriteFile(filepath.Join(d, "adapter_config.json"), cfg, 0o644)
		os.WriteFile(filepath.Join(d, "adapter_model.safetensors"), edit(st), 0o644)
		return d
	}
	hugeHeader := badAdapter("huge-header.adapter", func(st []byte) []byte {
		binary.LittleEndian.PutUint64(st, 1<<40)
		return st
	})
	truncatedST := badAdapter("truncated.adapter", func(st []byte) []byte { return st[:len(st)-7] })
	renamed := seedAdapter()
	renamed.Layers[0].Name = "not_there"
	renamed.Config.TargetModules = []string{"not_there"}
	wrongName := filepath.Join(dir, "wrong-name.adapter")
	if err := renamed.Save(wrongName); err != nil {
		t.Fatal(err)
	}
	reshaped := seedAdapter()
	reshaped.Layers[0].In = 6
	reshaped.Layers[0].A = append(reshaped.Layers[0].A, 0, 0)
	wrongShape := filepath.Join(dir, "wrong-shape.adapter")
	if err := reshaped.Save(wrongShape); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name string
		args []string
		want string // in the error, besides the file name
		file string // the file the error must name
	}{
		{"not onnx", []string{"inspect", write("text.onnx", []byte("hello, this is not a model\n"))}, "not an ONNX model", "text.onnx"},
		{"empty", []string{"inspect", write("empty.onnx", nil)}, "empty", "empty.onnx"},
		{"truncated", []string{"inspect", write("trunc.onnx", seed[:len(seed)/2])}, "not an ONNX model", "trunc.onnx"},
		{"dims overflow", []string{"inspect", editedSeed(t, dir, "overflow.onnx", func(m *onnxpb.ModelProto) {
			m.Graph.Initializer[0].Dims = []int64{1 << 40, 1 << 40}
		})}, "overflow", "overflow.onnx"},
		{"raw data short", []string{"inspect", editedSeed(t, dir, "short.onnx", func(m *onnxpb.ModelProto) {
			m.Graph.Initializer[0].Dims = []int64{500, 4}
		})}, "raw_data has 80 bytes", "short.onnx"},
		{"tensor past its file", []string{"inspect", editedSeed(t, dir, "past.onnx", func(m *onnxpb.ModelProto) {
			externalize(m, "short.bin", "0", "80")
		})}, "holds 40", "past.onnx"},
		{"gigabyte claim", []string{"inspect", editedSeed(t, dir, "giga.onnx", func(m *onnxpb.ModelProto) {
			externalize(m, "short.bin", "0", "4000000000")
			m.Graph.Initializer[0].Dims = []int64{1000000000}
		})}, "holds 40", "giga.onnx"},
		{"external ..", []string{"inspect", editedSeed(t, dir, "dotdot.onnx", func(m *onnxpb.ModelProto) {
			externalize(m, "../"+filepath.Base(outside)+"/secret.bin", "0", "80")
		})}, "leaves the model's folder", "dotdot.onnx"},
		{"external data location is a folder", []string{"inspect", editedSeed(t, dir, "dirdata.onnx", func(m *onnxpb.ModelProto) {
			if err := os.MkdirAll(filepath.Join(dir, "adir"), 0o755); err != nil {
				t.Fatal(err)
			}
			externalize(m, "adir", "0", "80")
		})}, "is a folder, not a file", "dirdata.onnx"},
		{"external absolute", []string{"inspect", editedSeed(t, dir, "abs.onnx", func(m *onnxpb.ModelProto) {
			externalize(m, filepath.Join(outside, "secret.bin"), "0", "80")
		})}, "absolute path", "abs.onnx"},
		{"external symlink out", []string{"inspect", editedSeed(t, dir, "symlink.onnx", func(m *onnxpb.ModelProto) {
			externalize(m, "link.bin", "0", "80")
		})}, "link.bin", "symlink.onnx"},
		{"no target matched", []string{"inject", "../../testdata/models/seed.onnx", "--target", "nothing-like-this", "-o", filepath.Join(dir, "x.onnx")}, "no target matched", "seed.onnx"},
		{"safetensors header past file", []string{"fuse", "../../testdata/models/seed.onnx", "--adapter", hugeHeader, "-o", filepath.Join(dir, "y.onnx")}, "header", "huge-header.adapter"},
		{"safetensors tensor past file", []string{"fuse", "../../testdata/models/seed.onnx", "--adapter", truncatedST, "-o", filepath.Join(dir, "y.onnx")}, "", "truncated.adapter"},
		{"adapter name mismatch", []string{"fuse", "../../testdata/models/seed.onnx", "--adapter", wrongName, "-o", filepath.Join(dir, "y.onnx")}, `seed.onnx: adapter`, "wrong-name.adapter"},
		{"adapter shape mismatch", []string{"fuse", "../../testdata/models/seed.onnx", "--adapter", wrongShape, "-o", filepath.Join(dir, "y.onnx")}, "in=6", "wrong-shape.adapter"},
		{"node reads its own output", []string{"inspect", editedSeed(t, dir, "self.onnx", func(m *onnxpb.ModelProto) {
			n := m.Graph.Node[len(m.Graph.Node)-1]
			n.Input[0] = n.Output[0]
		})}, "has a cycle", "self.onnx"},
		{"two-node cycle", []string{"inject", editedSeed(t, dir, "cycle.onnx", func(m *onnxpb.ModelProto) {
			m.Graph.Node = append(m.Graph.Node,
				&onnxpb.NodeProto{OpType: proto.String("Relu"), Input: []string{"zz_b"}, Output: []string{"zz_a"}, Name: proto.String("ra")},
				&onnxpb.NodeProto{OpType: proto.String("Relu"), Input: []string{"zz_a"}, Output: []string{"zz_b"}, Name: proto.String("rb")})
		}), "-o", filepath.Join(dir, "z.onnx")}, "has a cycle", "cycle.onnx"},
		{"input listed twice", []string{"inspect", editedSeed(t, dir, "dupin.onnx", func(m *onnxpb.ModelProto) {
			m.Graph.Input = append(m.Graph.Input, m.Graph.Input[0])
		})}, "is listed twice", "dupin.onnx"},
		{"empty op_type", []string{"inspect", editedSeed(t, dir, "noop.onnx", func(m *onnxpb.ModelProto) {
			m.Graph.Node[0].OpType = proto.String("")
		})}, "empty op_type", "noop.onnx"},
		{"weight stored as a sparse initializer", []string{"inspect", editedSeed(t, dir, "sparse.onnx", func(m *onnxpb.ModelProto) {
			w := m.Graph.Initializer[0]
			m.Graph.Initializer = m.Graph.Initializer[1:]
			m.Graph.SparseInitializer = append(m.Graph.SparseInitializer, &onnxpb.SparseTensorProto{
				Values:  &onnxpb.TensorProto{Name: w.Name, DataType: w.DataType, Dims: []int64{1}, FloatData: []float32{1}},
				Indices: &onnxpb.TensorProto{Name: proto.String(w.GetName() + ".idx"), DataType: proto.Int32(int32(onnxpb.TensorProto_INT64)), Dims: []int64{1}, Int64Data: []int64{0}},
				Dims:    w.Dims,
			})
		})}, "is a sparse initializer, which loracc does not read", "sparse.onnx"},
		{"missing model", []string{"inspect", filepath.Join(dir, "nope.onnx")}, "no such file", "nope.onnx"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := listDir(t, dir)
			_, err := loracc(t, tc.args...)
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Errorf("error spans lines: %q", msg)
			}
			if !strings.Contains(msg, tc.file) || !strings.Contains(msg, tc.want) {
				t.Errorf("error %q should name %q and say %q", msg, tc.file, tc.want)
			}
			if after := listDir(t, dir); after != before {
				t.Errorf("files changed: before %s after %s", before, after)
			}
		})
	}
}

func listDir(t *testing.T, dir string) string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return strings.Join(names, ",")
}
