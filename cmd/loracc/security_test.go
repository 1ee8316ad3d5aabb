package main

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/hostile"
)

// tree records every entry under dir, hidden ones included: folders as
// "dir", symlinks by target, files by a hash of their bytes.
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case rel == ".":
		case info.IsDir():
			out[rel] = "dir"
		case info.Mode()&os.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			out[rel] = "-> " + target
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out[rel] = fmt.Sprintf("%x", sha256.Sum256(b))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// changed lists the entries created, changed or removed between two trees.
func changed(before, after map[string]string) []string {
	var out []string
	for k, v := range after {
		if before[k] != v {
			out = append(out, k)
		}
	}
	for k := range before {
		if _, ok := after[k]; !ok {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// writeDecoys puts files of the user's in an output folder, at names
// hostile models choose for their data.
func writeDecoys(t *testing.T, dir string) {
	t.Helper()
	for _, d := range []string{".bashrc", ".ssh/authorized_keys", "sub/dir/w.bin"} {
		p := filepath.Join(dir, filepath.FromSlash(d))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("the user's "+d), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// sameWeights checks that every initializer of base has the same values
// in got (a fused B=0 adapter changes no value).
func sameWeights(t *testing.T, base, got string) {
	t.Helper()
	bm, err := graph.Load(base)
	if err != nil {
		t.Fatal(err)
	}
	gm, err := graph.Load(got)
	if err != nil {
		t.Fatalf("the output does not load: %v", err)
	}
	for _, v := range bm.Graph.Initializers {
		want, err := v.Const.Floats()
		if err != nil {
			t.Fatal(err)
		}
		w := gm.Graph.Lookup(v.Name)
		if w == nil || w.Const == nil {
			t.Fatalf("output lost %s", v.Name)
		}
		vals, err := w.Const.Floats()
		if err != nil || !slices.Equal(vals, want) {
			t.Fatalf("output's %s = %v (%v), want the base's %v", v.Name, vals, err, want)
		}
	}
}

// outputLocations lists the external-data locations an output model reads.
func outputLocations(t *testing.T, path string) []string {
	t.Helper()
	m, err := graph.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, v := range m.Graph.Initializers {
		if e := v.Const.External(); e != nil && !slices.Contains(out, e.Location) {
			out = append(out, e.Location)
		}
	}
	return out
}

// TestSecurityModelChosenNames runs inject and fuse on hostile models
// whose weights live at .bashrc, .ssh/authorized_keys, sub/dir/w.bin, or
// names of the outputs, with the output in another folder (holding decoy
// files of those names) and in the model's own folder. The output folder
// gets only the files loracc names, the decoys and the input stay as they
// were, and the output's weights are the base's; where the model's data
// file is itself an output of the run, the run is refused naming both.
// A second identical run replaces loracc's own files.
func TestSecurityModelChosenNames(t *testing.T) {
	ad := hostileAdapter(t, 0)

	type command struct {
		name   string
		args   func(base, out string) []string
		writes []string // what the run writes beside out.onnx, base-1 aside
	}
	commands := []command{
		{"inject", func(base, out string) []string { return []string{"inject", base, "--rank", "2", "-o", out} },
			[]string{"out.onnx", "out.adapter", "out.adapter/adapter_config.json", "out.adapter/adapter_model.safetensors"}},
		{"fuse", func(base, out string) []string { return []string{"fuse", base, "--adapter", ad, "-o", out} },
			[]string{"out.onnx", "out.onnx.data"}},
		// --check runs scratch models beside the output: none may stay.
		{"fuse-check", func(base, out string) []string { return []string{"fuse", base, "--adapter", ad, "--check", "-o", out} },
			[]string{"out.onnx", "out.onnx.data"}},
	}
	for _, loc := range hostile.Locations() {
		for _, cmd := range commands {
			for _, same := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/%s/same-folder=%v", cmd.name, loc, same), func(t *testing.T) {
					if cmd.name == "fuse-check" {
						env(t)
					}
					in := t.TempDir()
					base, err := hostile.Model(in, "m.onnx", loc)
					if err != nil {
						t.Fatal(err)
					}
					dir := in
					allowed := slices.Clone(cmd.writes)
					if !same {
						dir = t.TempDir()
						writeDecoys(t, dir)
						allowed = append(allowed, "out.onnx.base-1.data")
					}
					out := filepath.Join(dir, "out.onnx")
					inBefore, before := tree(t, in), tree(t, dir)
					for run := range 2 {
						stdout, err := loracc(t, cmd.args(base, out)...)
						if same && slices.Contains(cmd.writes, loc) {
							// The model's data file is one of the outputs.
							victim := filepath.Join(in, filepath.FromSlash(loc))
							if err == nil || !strings.Contains(err.Error(), victim+" (same file)") || !strings.Contains(err.Error(), "output "+victim) {
								t.Fatalf("got %v, want a refusal naming %s as output and input", err, victim)
							}
							if c := changed(before, tree(t, dir)); len(c) > 0 {
								t.Fatalf("refused run changed %q", c)
							}
							return
						}
						if err != nil {
							t.Fatalf("run %d: %v", run+1, err)
						}
						if cmd.name == "fuse-check" && !strings.Contains(stdout, "check: ") {
							t.Fatalf("run %d: no check ran: %s", run+1, stdout)
						}
						for _, c := range changed(before, tree(t, dir)) {
							if !slices.Contains(allowed, filepath.ToSlash(c)) {
								t.Errorf("run %d created or changed %s (allowed: %q)", run+1, c, allowed)
							}
						}
						if !same {
							if c := changed(inBefore, tree(t, in)); len(c) > 0 {
								t.Errorf("run %d changed the input folder: %q", run+1, c)
							}
						}
						sameWeights(t, base, out)
						for _, l := range outputLocations(t, out) {
							if !same && !slices.Contains(allowed, l) {
								t.Errorf("output reads %q, a name the model chose", l)
							}
						}
					}
				})
			}
		}
	}
}
