package main

import (
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/testmodels"
)

func fileHash(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return string(h.Sum(nil))
}

// externalMLP saves testmodels.ExternalMLP(2, hidden) with its weights in
// an external file as dir/big.onnx and returns that path.
func externalMLP(t *testing.T, dir string, hidden int) string {
	t.Helper()
	m, err := testmodels.ExternalMLP(2, hidden)
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, "big.onnx")
	if err := graph.Save(m, base, graph.SaveOptions{Externalize: true}); err != nil {
		t.Fatal(err)
	}
	return base
}

// TestExternalData: weights in an external file load lazily, inject writes
// only the new tensors and references the base's file (hard-linking it when
// the output is elsewhere), and fuse writes its own data file without
// touching the base's. A data file placed beside an output elsewhere is
// named after the output (x.onnx.base-1.data), never after the model's
// location.
func TestExternalData(t *testing.T) {
	e := env(t)
	dir := t.TempDir()
	base := externalMLP(t, dir, 64)
	data := base + ".data"
	hash0 := fileHash(t, data)
	st0, err := os.Stat(data)
	if err != nil {
		t.Fatal(err)
	}

	loaded, err := graph.Load(base)
	if err != nil {
		t.Fatal(err)
	}
	if w := loaded.Graph.Lookup("fc1.weight"); w == nil || !w.Const.IsExternal() {
		t.Fatal("fc1.weight should stay in the external file after Load")
	}

	injected := filepath.Join(dir, "big.lora.onnx")
	mustLoracc(t, "inject", base, "--rank", "4", "-o", injected)
	im, err := graph.Load(injected)
	if err != nil {
		t.Fatal(err)
	}
	if ext := im.Graph.Lookup("fc1.weight").Const.External(); ext == nil || ext.Location != "big.onnx.data" {
		t.Fatalf("injected model should reference the base's data file, got %+v", ext)
	}
	if st, _ := os.Stat(injected); st.Size() > 16<<10 {
		t.Errorf("injected model is %d bytes: it copied weights", st.Size())
	}

	other := t.TempDir()
	out, err := loracc(t, "inject", base, "--rank", "4", "-o", filepath.Join(other, "x.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	_ = out
	st1, err := os.Stat(filepath.Join(other, "x.onnx.base-1.data"))
	if err != nil {
		t.Fatalf("data file not placed beside an output in another folder: %v", err)
	}
	if !os.SameFile(st0, st1) {
		t.Error("data file was copied, not hard-linked, on the same file system")
	}

	randomizeAdapter(t, filepath.Join(dir, "big.lora.adapter"), 9)
	fused := filepath.Join(dir, "big.fused.onnx")
	res := mustLoracc(t, "fuse", injected, "--adapter", filepath.Join(dir, "big.lora.adapter"), "-o", fused, "--check")
	if !strings.Contains(res, ": ok") {
		t.Errorf("check: %s", res)
	}
	fm, err := graph.Load(fused)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"fc1.weight", "fc2.weight"} {
		ext := fm.Graph.Lookup(name).Const.External()
		if ext == nil || ext.Location != "big.fused.onnx.data" {
			t.Errorf("fused %s should be external in big.fused.onnx.data, got %+v", name, ext)
		}
	}
	if fileHash(t, data) != hash0 {
		t.Error("fuse changed the base's data file")
	}
	ok, err := compareModels(e, base, fused, "cpu", 3)
	if err != nil {
		t.Fatal(err)
	}
	if ok.MaxAbs == 0 {
		t.Error("fused model equals the base: the adapter was not applied")
	}
}
