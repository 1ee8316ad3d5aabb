package testmodels

import (
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/loracc/loracc/graph"
)

// modelsDir is where the committed models live, relative to this package.
var modelsDir = filepath.Join("..", "..", "testdata", "models")

func names() []string {
	var ns []string
	for n := range All() {
		ns = append(ns, n)
	}
	sort.Strings(ns)
	return ns
}

func build(t *testing.T, name string) *graph.Model {
	t.Helper()
	m, err := All()[name]()
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return m
}

func encode(t *testing.T, m *graph.Model) []byte {
	t.Helper()
	data, err := graph.Encode(m)
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	return data
}

// TestTestdataUpToDate keeps testdata/models/<name>.onnx equal to what the
// builders produce, and the printed form in testdata/<name>.txt (beside this
// file) equal to graph.Format of it. UPDATE_SNAPSHOTS=1 rewrites both.
func TestTestdataUpToDate(t *testing.T) {
	update := os.Getenv("UPDATE_SNAPSHOTS") == "1"
	for _, name := range names() {
		t.Run(name, func(t *testing.T) {
			m := build(t, name)
			path := filepath.Join(modelsDir, name+".onnx")
			txtPath := filepath.Join("testdata", name+".txt")
			text := graph.Format(m)
			if update {
				if err := graph.Save(m, path, graph.SaveOptions{}); err != nil {
					t.Fatal(err)
				}
				if err := os.MkdirAll("testdata", 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(txtPath, []byte(text), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want := encode(t, m)
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run UPDATE_SNAPSHOTS=1 go test ./internal/testmodels)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from %s() (%d vs %d bytes); run UPDATE_SNAPSHOTS=1 go test ./internal/testmodels", path, name, len(got), len(want))
			}
			gotText, err := os.ReadFile(txtPath)
			if err != nil {
				t.Fatalf("%v (run UPDATE_SNAPSHOTS=1 go test ./internal/testmodels)", err)
			}
			if string(gotText) != text {
				t.Errorf("%s differs from graph.Format(%s()):\n%s", txtPath, name, text)
			}
		})
	}
}

// TestDeterministic builds every model twice and compares the bytes.
func TestDeterministic(t *testing.T) {
	builders := All()
	builders["external_mlp"] = func() (*graph.Model, error) { return ExternalMLP(3, 64) }
	for name, fn := range builders {
		a, err := fn()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		b, err := fn()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(encode(t, a), encode(t, b)) {
			t.Errorf("%s: two builds differ", name)
		}
	}
}

// TestWellFormed checks the IR invariants and what the package promises of
// every model: opset 17, typed inputs and outputs with no unknown dims, and
// a load → save round trip that changes nothing.
func TestWellFormed(t *testing.T) {
	builders := All()
	builders["external_mlp"] = func() (*graph.Model, error) { return ExternalMLP(2, 16) }
	for name, fn := range builders {
		m, err := fn()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := m.Graph.Verify(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if m.OpsetVersion("") != opset || m.IRVersion < 8 {
			t.Errorf("%s: opset %d, IR %d", name, m.OpsetVersion(""), m.IRVersion)
		}
		var check func(g *graph.Graph)
		check = func(g *graph.Graph) {
			for _, v := range append(append([]*graph.Value(nil), g.Inputs...), g.Outputs...) {
				if v.Type == nil || v.Type.Shape == nil || v.Type.DType == graph.Undefined {
					t.Errorf("%s: graph %q: %s has no full type", name, g.Name, v.Name)
					continue
				}
				for _, d := range v.Type.Shape {
					if d.Param == "" && d.Value < 0 {
						t.Errorf("%s: graph %q: %s has an unknown dim", name, g.Name, v.Name)
					}
				}
			}
			for _, n := range g.Nodes {
				if n.Name == "" {
					t.Errorf("%s: graph %q: unnamed %s node", name, g.Name, n.Op)
				}
			}
		}
		check(m.Graph)
		m.Graph.Walk(func(n *graph.Node) {
			for _, sg := range n.Subgraphs() {
				check(sg)
			}
		})
		data := encode(t, m)
		back, err := graph.Decode(data, t.TempDir())
		if err != nil {
			t.Fatalf("%s: decode: %v", name, err)
		}
		if !bytes.Equal(encode(t, back), data) {
			t.Errorf("%s: decode → encode changes the bytes", name)
		}
	}
}

// TestSeedWeight pins the seed example's weight, which docs and other
// tests quote by value.
func TestSeedWeight(t *testing.T) {
	m := build(t, "seed")
	w := m.Graph.Lookup("seed.weight")
	if w == nil || w.Const == nil {
		t.Fatal("no initializer seed.weight")
	}
	vals, err := w.Const.Floats()
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range vals {
		if v != float32(i+1) {
			t.Fatalf("seed.weight = %v, want 1..20", vals)
		}
	}
	if len(vals) != 20 || len(w.Const.Dims) != 2 || w.Const.Dims[0] != 5 || w.Const.Dims[1] != 4 {
		t.Fatalf("seed.weight dims %v, %d values", w.Const.Dims, len(vals))
	}
}

// TestExternalMLPSaves saves ExternalMLP with Externalize and checks the
// weights land in the data file and load back lazily with the same bytes.
func TestExternalMLPSaves(t *testing.T) {
	const hidden = 32 // 4 KiB weights: over the 1 KiB default threshold
	m, err := ExternalMLP(3, hidden)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "mlp.onnx")
	if err := graph.Save(m, path, graph.SaveOptions{Externalize: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path + ".data"); err != nil {
		t.Fatal(err)
	}
	back, err := graph.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range back.Graph.Initializers {
		orig := m.Graph.Initializers[i]
		big := v.Const.Dims[0] == hidden && len(v.Const.Dims) == 2
		if v.Const.IsExternal() != big {
			t.Errorf("%s: external=%v, want %v", v.Name, v.Const.IsExternal(), big)
		}
		got, err := v.Const.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		want, _ := orig.Const.Bytes()
		if v.Name != orig.Name || !bytes.Equal(got, want) {
			t.Errorf("%s: data changed through external save", v.Name)
		}
	}
	if _, err := ExternalMLP(0, 8); err == nil {
		t.Error("ExternalMLP(0, 8): no error")
	}
}
