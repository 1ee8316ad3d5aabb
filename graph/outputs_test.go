package graph

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// snapshot maps every file under dir (hidden ones included) to its bytes.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		out[rel] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func names(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func writeString(s string) func(io.Writer) error {
	return func(w io.Writer) error {
		_, err := io.WriteString(w, s)
		return err
	}
}

func mustWrite(t *testing.T, path, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// stageReplacement makes a folder holding a.onnx ("old a") and stages, as
// inject does, a new a.onnx and an adapter folder at adapter (relative).
func stageReplacement(t *testing.T, adapter string) (string, *Outputs) {
	t.Helper()
	dir := t.TempDir()
	a := filepath.Join(dir, "a.onnx")
	mustWrite(t, a, "old a")
	o := NewOutputs(context.Background())
	if err := o.Create(a, writeString("new a")); err != nil {
		t.Fatal(err)
	}
	if err := o.CreateDir(filepath.Join(dir, adapter), func(tmp string) error {
		return os.WriteFile(filepath.Join(tmp, "w.safetensors"), []byte("w"), 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	return dir, o
}

// TestOutputsCommitRestoresOnError makes the second rename of a commit
// fail: the first output, already replaced, gets its previous bytes back
// and nothing staged is left.
func TestOutputsCommitRestoresOnError(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.onnx"), filepath.Join(dir, "b.data")
	mustWrite(t, a, "old a")
	o := NewOutputs(context.Background())
	defer o.Abort()
	if err := o.Create(a, writeString("new a")); err != nil {
		t.Fatal(err)
	}
	if err := o.Create(b, writeString("new b")); err != nil {
		t.Fatal(err)
	}
	// A folder with a file in it cannot be renamed over.
	mustWrite(t, filepath.Join(b, "x"), "in the way")
	before := snapshot(t, dir)
	if err := o.Commit(); err == nil || !strings.Contains(err.Error(), "b.data") {
		t.Fatalf("commit: got %v, want an error naming b.data", err)
	}
	after := snapshot(t, dir)
	if strings.Join(names(after), ",") != "a.onnx,b.data/x" || after["a.onnx"] != "old a" {
		t.Errorf("after a failed commit: %q, want only the previous files (before: %q)", after, names(before))
	}
}

// TestOutputsAbort: staged files vanish, previous files and folders stay,
// and folders made for the outputs go.
func TestOutputsAbort(t *testing.T) {
	dir, o := stageReplacement(t, filepath.Join("new", "x.adapter"))
	o.Abort()
	o.Abort()
	if got := snapshot(t, dir); len(got) != 1 || got["a.onnx"] != "old a" {
		t.Errorf("after abort: %q", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "new")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("folder made for the adapter survived the abort: %v", err)
	}
	if err := o.Commit(); err == nil {
		t.Error("commit after abort succeeded")
	}
}

// TestOutputsCommitReplaces: a committed set replaces previous files and
// leaves no backup or temporary file.
func TestOutputsCommitReplaces(t *testing.T) {
	dir, o := stageReplacement(t, "x.adapter")
	if err := o.Commit(); err != nil {
		t.Fatal(err)
	}
	o.Abort()
	got := snapshot(t, dir)
	if strings.Join(names(got), ",") != "a.onnx,x.adapter/w.safetensors" || got["a.onnx"] != "new a" {
		t.Errorf("after commit: %q", got)
	}
}

// TestOutputsRefuseInputs: an output that is an input, by its own name,
// through a symlink, a hard link or a symlinked folder, is refused naming
// both paths, and the input keeps its bytes.
func TestOutputsRefuseInputs(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "models", "base.onnx.data")
	mustWrite(t, in, "weights")
	other := filepath.Join(dir, "other")
	if err := os.Mkdir(other, 0o755); err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Symlink(in, filepath.Join(other, "sym.data")))
	must(os.Link(in, filepath.Join(other, "hard.data")))
	must(os.Symlink(filepath.Join(dir, "models"), filepath.Join(dir, "linked")))
	for _, out := range []string{
		in,
		filepath.Join(other, "sym.data"),
		filepath.Join(other, "hard.data"),
		filepath.Join(dir, "linked", "base.onnx.data"),
		filepath.Join(dir, "models", ".", "base.onnx.data"),
	} {
		o := NewOutputs(context.Background())
		must(o.AddInput(in, "input external data file"))
		err := o.Create(out, writeString("model bytes"))
		var oe *OverlapError
		if !errors.As(err, &oe) || !strings.Contains(err.Error(), out) || !strings.Contains(err.Error(), in) {
			t.Errorf("output %s: got %v, want an overlap error naming both paths", out, err)
		}
		o.Abort()
		if b, _ := os.ReadFile(in); string(b) != "weights" {
			t.Fatalf("output %s changed the input", out)
		}
	}
}

// TestOutputsCancel: a cancelled context stops the write, and nothing is
// left behind.
func TestOutputsCancel(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	o := NewOutputs(ctx)
	defer o.Abort()
	err := o.Create(filepath.Join(dir, "big.data"), func(w io.Writer) error {
		chunk := make([]byte, 1<<20)
		for i := 0; ; i++ {
			if i == 3 {
				cancel()
			}
			if _, err := w.Write(chunk); err != nil {
				return err
			}
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	o.Abort()
	if got := snapshot(t, dir); len(got) != 0 {
		t.Errorf("left %q", names(got))
	}
}

// externalModel writes data at dir/loc and returns a model whose one
// initializer reads it.
func externalModel(t *testing.T, dir, loc string, data []byte) *Model {
	t.Helper()
	mustWrite(t, filepath.Join(dir, filepath.FromSlash(loc)), string(data))
	m := NewModel(17)
	w := NewTensor("w", Float, []int64{int64(len(data) / 4)}, nil)
	if err := w.SetExternal(External{Location: loc, Dir: dir, Length: -1}); err != nil {
		t.Fatal(err)
	}
	m.Graph.AddInitializer(w)
	return m
}

// TestSaveNamesLinksAfterTheOutput: whatever location the model chose, an
// output in another folder gets the base's file as OUT.base-1.data and
// nothing else; in the base's own folder nothing is written but the model.
func TestSaveNamesLinksAfterTheOutput(t *testing.T) {
	data := bytes.Repeat([]byte{1, 2, 3, 4}, 20)
	for _, loc := range []string{".bashrc", ".ssh/authorized_keys", "out.onnx", "sub/dir/w.bin", "out.onnx.data"} {
		t.Run(loc, func(t *testing.T) {
			in, out := t.TempDir(), t.TempDir()
			m := externalModel(t, in, loc, data)
			if err := Save(m, filepath.Join(out, "out.onnx"), SaveOptions{}); err != nil {
				t.Fatal(err)
			}
			got := snapshot(t, out)
			if strings.Join(names(got), ",") != "out.onnx,out.onnx.base-1.data" || got["out.onnx.base-1.data"] != string(data) {
				t.Fatalf("output folder holds %q", names(got))
			}
			lm, err := Load(filepath.Join(out, "out.onnx"))
			if err != nil {
				t.Fatal(err)
			}
			if b, err := lm.Graph.Lookup("w").Const.Bytes(); err != nil || !bytes.Equal(b, data) {
				t.Fatalf("saved weight %v, %v", b, err)
			}
			// Saving again replaces its own derived file.
			if err := Save(m, filepath.Join(out, "out.onnx"), SaveOptions{}); err != nil {
				t.Fatal(err)
			}
			inBefore := snapshot(t, in)
			if err := Save(m, filepath.Join(in, "same.onnx"), SaveOptions{}); err != nil {
				t.Fatal(err)
			}
			inAfter := snapshot(t, in)
			delete(inAfter, "same.onnx")
			if strings.Join(names(inAfter), ",") != strings.Join(names(inBefore), ",") {
				t.Errorf("saving beside the base wrote %q", names(inAfter))
			}
		})
	}
}

// TestSaveKeepsForeignDerivedFiles: an existing OUT.data that no previous
// OUT references is not loracc's, so Save refuses to replace it.
func TestSaveKeepsForeignDerivedFiles(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out.onnx")
	mustWrite(t, out+".data", "the user's")
	m := NewModel(17)
	m.Graph.AddInitializer(NewTensor("w", Float, []int64{512}, make([]byte, 2048)))
	err := Save(m, out, SaveOptions{Externalize: true})
	if err == nil || !strings.Contains(err.Error(), "out.onnx.data exists") {
		t.Fatalf("got %v, want a refusal naming out.onnx.data", err)
	}
	if got := snapshot(t, dir); len(got) != 1 || got["out.onnx.data"] != "the user's" {
		t.Fatalf("folder: %q", got)
	}
	// The same bytes (a rerun after a crash left the data file but not
	// the model) are loracc's; so is the data a previous out.onnx reads.
	os.Remove(out + ".data")
	if err := Save(m, out, SaveOptions{Externalize: true}); err != nil {
		t.Fatal(err)
	}
	os.Remove(out)
	for range 2 {
		if err := Save(m, out, SaveOptions{Externalize: true}); err != nil {
			t.Fatal(err)
		}
	}
}
