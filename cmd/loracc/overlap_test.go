package main

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/hostile"
)

// hostileAdapter writes, in a folder of its own, an adapter that fits every
// hostile.Model (B=0 unless seed is non-zero) and returns its folder.
func hostileAdapter(t *testing.T, seed uint64) string {
	t.Helper()
	dir := t.TempDir()
	m, err := hostile.Model(dir, "a-base.onnx", "a-base.bin")
	if err != nil {
		t.Fatal(err)
	}
	mustLoracc(t, "inject", m, "--rank", "2", "-o", filepath.Join(dir, "a.onnx"))
	ad := filepath.Join(dir, "a.adapter")
	if seed != 0 {
		randomizeAdapter(t, ad, seed)
	}
	return ad
}

// trees snapshots several folders at once.
func trees(t *testing.T, dirs ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, d := range dirs {
		for k, v := range tree(t, d) {
			out[filepath.Join(d, k)] = v
		}
	}
	return out
}

// TestSecurityOutputOnInput: an output that is an input of the run (the
// model, its external data, the adapter's files), by its own name, as the
// data file derived from -o, through a symlinked folder, a symlink or a
// hard link, is refused with a message naming both paths, and no file of
// the run's folders changes.
func TestSecurityOutputOnInput(t *testing.T) {
	ad := hostileAdapter(t, 0)
	type tc struct {
		name       string
		args       []string
		output, in string // the paths the message must name
		dirs       []string
		inputRole  string
	}
	setup := func(t *testing.T, loc string) (in, base, other string) {
		in, other = t.TempDir(), t.TempDir()
		base, err := hostile.Model(in, "base.onnx", loc)
		if err != nil {
			t.Fatal(err)
		}
		return in, base, other
	}
	link := func(t *testing.T, oldname, newname string, symbolic bool) {
		t.Helper()
		f := os.Link
		if symbolic {
			f = os.Symlink
		}
		if err := f(oldname, newname); err != nil {
			t.Fatal(err)
		}
	}
	cases := []func(t *testing.T) tc{
		func(t *testing.T) tc {
			in, base, _ := setup(t, "base.onnx.data")
			out := filepath.Join(in, "base.onnx.data")
			return tc{"fuse onto the base's data", []string{"fuse", base, "--adapter", ad, "-o", out}, out, out, []string{in}, "input external data file"}
		},
		func(t *testing.T) tc {
			in, base, _ := setup(t, "fused.onnx.data")
			data := filepath.Join(in, "fused.onnx.data")
			return tc{"fuse whose data file is the base's", []string{"fuse", base, "--adapter", ad, "-o", filepath.Join(in, "fused.onnx")}, data, data, []string{in}, "input external data file"}
		},
		func(t *testing.T) tc {
			out := filepath.Join(ad, "adapter_model.safetensors")
			return tc{"export-adapter onto its safetensors", []string{"export-adapter", ad, "-o", out}, out, out, []string{ad}, "input adapter file"}
		},
		func(t *testing.T) tc {
			in, base, _ := setup(t, "w.bin")
			return tc{"inject onto its model", []string{"inject", base, "--rank", "2", "-o", base}, base, base, []string{in}, "input model"}
		},
		func(t *testing.T) tc {
			in, base, other := setup(t, "base.onnx.data")
			link(t, in, filepath.Join(other, "link"), true)
			out := filepath.Join(other, "link", "base.onnx.data")
			return tc{"symlinked output folder", []string{"fuse", base, "--adapter", ad, "-o", out}, out, filepath.Join(in, "base.onnx.data"), []string{in, other}, "input external data file"}
		},
		func(t *testing.T) tc {
			in, base, other := setup(t, "fused.onnx.data")
			link(t, in, filepath.Join(other, "link"), true)
			out := filepath.Join(other, "link", "fused.onnx")
			return tc{"symlinked folder, derived data file", []string{"fuse", base, "--adapter", ad, "-o", out}, out + ".data", filepath.Join(in, "fused.onnx.data"), []string{in, other}, "input external data file"}
		},
		func(t *testing.T) tc {
			in, base, other := setup(t, "base.onnx.data")
			link(t, filepath.Join(in, "base.onnx.data"), filepath.Join(other, "f.onnx.data"), false)
			out := filepath.Join(other, "f.onnx")
			return tc{"hard link to the base's data", []string{"fuse", base, "--adapter", ad, "-o", out}, out + ".data", filepath.Join(in, "base.onnx.data"), []string{in, other}, "input external data file"}
		},
		func(t *testing.T) tc {
			in, base, other := setup(t, "w.bin")
			out := filepath.Join(other, "m.onnx")
			link(t, base, out, false)
			return tc{"hard link to the model", []string{"inject", base, "--rank", "2", "-o", out}, out, base, []string{in, other}, "input model"}
		},
		func(t *testing.T) tc {
			in, base, other := setup(t, "w.bin")
			out := filepath.Join(other, "s.onnx")
			link(t, base, out, true)
			return tc{"symlink to the model", []string{"inject", base, "--rank", "2", "-o", out}, out, base, []string{in, other}, "input model"}
		},
		func(t *testing.T) tc {
			in, base, other := setup(t, "w.bin")
			cfg := filepath.Join(ad, "adapter_config.json")
			return tc{"inject's adapter over --from-adapter", []string{"inject", base, "--from-adapter", ad, "--adapter", ad, "-o", filepath.Join(other, "x.onnx")}, cfg, cfg, []string{in, other, ad}, "input adapter file"}
		},
		func(t *testing.T) tc {
			in, base, _ := setup(t, "w.bin")
			lora := filepath.Join(in, "train.onnx")
			mustLoracc(t, "inject", base, "--rank", "2", "-o", lora)
			return tc{"export-train onto its model", []string{"export-train", lora, "--loss", "mse", "--logits", "y", "-o", in}, lora, lora, []string{in}, "input model"}
		},
		func(t *testing.T) tc {
			in, base, _ := setup(t, "w.bin")
			out := filepath.Join(ad, "adapter_config.json")
			return tc{"fuse onto the adapter", []string{"fuse", base, "--adapter", ad, "-o", out}, out, out, []string{in, ad}, "input adapter file"}
		},
	}
	for _, mk := range cases {
		c := mk(t)
		t.Run(c.name, func(t *testing.T) {
			before := trees(t, c.dirs...)
			_, err := loracc(t, c.args...)
			want := "output " + c.output + " is the " + c.inputRole + " " + c.in + " (same file)"
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("got %v, want %q", err, want)
			}
			if ch := changed(before, trees(t, c.dirs...)); len(ch) > 0 {
				t.Errorf("refused run changed %q", ch)
			}
		})
	}
}

// TestSecurityAllOrNothing: a failure after part of an output set was
// written (the adapter of inject, fuse's --check) leaves the folders as
// they were, previous outputs included.
func TestSecurityAllOrNothing(t *testing.T) {
	in := t.TempDir()
	base, err := hostile.Model(in, "base.onnx", "base.onnx.data")
	if err != nil {
		t.Fatal(err)
	}
	blockAdapter := func(dir string) {
		// A folder where the weights go makes the adapter's commit fail
		// after the model was staged.
		if err := os.MkdirAll(filepath.Join(dir, "out.adapter", "adapter_model.safetensors", "x"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("inject, adapter fails, no previous output", func(t *testing.T) {
		dir := t.TempDir()
		blockAdapter(dir)
		before := trees(t, in, dir)
		if _, err := loracc(t, "inject", base, "--rank", "2", "-o", filepath.Join(dir, "out.onnx")); err == nil || !strings.Contains(err.Error(), "adapter_model.safetensors") {
			t.Fatalf("got %v, want an error naming the adapter's weights", err)
		}
		if ch := changed(before, trees(t, in, dir)); len(ch) > 0 {
			t.Errorf("failed inject changed %q", ch)
		}
	})
	t.Run("inject, adapter fails, previous output", func(t *testing.T) {
		dir := t.TempDir()
		mustLoracc(t, "inject", base, "--rank", "2", "-o", filepath.Join(dir, "out.onnx"))
		os.Remove(filepath.Join(dir, "out.adapter", "adapter_model.safetensors"))
		blockAdapter(dir)
		before := trees(t, in, dir)
		if _, err := loracc(t, "inject", base, "--rank", "3", "-o", filepath.Join(dir, "out.onnx")); err == nil {
			t.Fatal("inject succeeded")
		}
		if ch := changed(before, trees(t, in, dir)); len(ch) > 0 {
			t.Errorf("failed inject changed %q", ch)
		}
	})
	t.Run("fuse --check fails", func(t *testing.T) {
		dir := t.TempDir()
		out := filepath.Join(dir, "out.onnx")
		mustLoracc(t, "fuse", base, "--adapter", hostileAdapter(t, 1), "-o", out)
		before := trees(t, in, dir)
		// No ONNX Runtime: the check fails after the model was staged.
		_, err := loracc(t, "--ort-lib", filepath.Join(dir, "no-such-libonnxruntime.so"), "fuse", base, "--adapter", hostileAdapter(t, 2), "--check", "-o", out)
		if err == nil {
			t.Fatal("fuse --check without a runtime succeeded")
		}
		if ch := changed(before, trees(t, in, dir)); len(ch) > 0 {
			t.Errorf("failed fuse --check changed %q", ch)
		}
	})
}

// TestSecuritySignal interrupts `loracc fuse` of an external-data model
// with SIGINT at random moments: afterwards the output folder holds no
// temporary file, and the output is the previous one or the complete new
// one, never a mix.
func TestSecuritySignal(t *testing.T) {
	env(t)
	if testing.Short() {
		t.Skip("builds the binary and interrupts it many times")
	}
	bin := buildBinary(t)
	in, dir := t.TempDir(), t.TempDir()
	base := externalMLP(t, in, 1024)
	mustLoracc(t, "inject", base, "--rank", "4", "-o", filepath.Join(in, "a.onnx"))
	ad1, ad2 := filepath.Join(in, "a.adapter"), filepath.Join(t.TempDir(), "b.adapter")
	mustLoracc(t, "inject", base, "--rank", "4", "-o", filepath.Join(filepath.Dir(ad2), "b.onnx"))
	randomizeAdapter(t, ad1, 1)
	randomizeAdapter(t, ad2, 2)
	out := filepath.Join(dir, "out.onnx")
	mustLoracc(t, "fuse", base, "--adapter", ad2, "-o", out)
	newData, _ := os.ReadFile(out + ".data")
	mustLoracc(t, "fuse", base, "--adapter", ad1, "-o", out)
	oldData, _ := os.ReadFile(out + ".data")
	rng := rand.New(rand.NewPCG(5, 5))
	interrupted, whileWriting := 0, 0
	for i := range 12 {
		cmd := exec.Command(bin, "fuse", base, "--adapter", ad2, "-o", out)
		var log bytes.Buffer
		cmd.Stdout, cmd.Stderr = &log, &log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(rng.IntN(150)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGINT)
		if err := cmd.Wait(); err != nil {
			interrupted++
			if strings.Contains(log.String(), "interrupted") {
				whileWriting++
			}
		}
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".") {
				t.Errorf("interrupt %d left %s (%s)", i, e.Name(), log.String())
			}
		}
		data, err := os.ReadFile(out + ".data")
		if err != nil || (!bytes.Equal(data, oldData) && !bytes.Equal(data, newData)) {
			t.Fatalf("interrupt %d: the data file is neither the previous nor the new one (%v)", i, err)
		}
		if bytes.Equal(data, newData) {
			// Put the previous output back for the next round.
			mustLoracc(t, "fuse", base, "--adapter", ad1, "-o", out)
		}
		if _, err := graph.Load(out); err != nil {
			t.Fatalf("interrupt %d: the output does not load: %v", i, err)
		}
	}
	t.Logf("%d of 12 runs were interrupted, %d of them while writing", interrupted, whileWriting)
}
