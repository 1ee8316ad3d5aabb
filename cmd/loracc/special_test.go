package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/loracc/loracc/internal/hostile"
)

// TestSpecialFiles: every file loracc reads, put back as a FIFO, a symlink
// to /dev/zero or a folder, ends the command at once with an error naming
// the file and what it is, instead of hanging on the open or reading
// without end.
func TestSpecialFiles(t *testing.T) {
	env(t)
	dir := t.TempDir()
	injected, data := seedRun(t, dir)
	run := filepath.Join(dir, "run")
	mustLoracc(t, seedTrainArgs(injected, data, run, "2")...)
	ext, err := hostile.Model(dir, "ext.onnx", "ext.bin")
	if err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "good.adapter")
	if err := seedAdapter().Save(good); err != nil {
		t.Fatal(err)
	}
	seed := "../../testdata/models/seed.onnx"
	ckpt, err := filepath.Glob(filepath.Join(run, "checkpoints", "step-*", "progress.json"))
	if err != nil || len(ckpt) != 1 {
		t.Fatalf("checkpoint progress files %v (%v)", ckpt, err)
	}

	// Each case copies its files into a fresh folder, replaces one of them
	// and runs the command there.
	type input struct {
		name string
		file string                        // the file replaced, relative to the case folder
		copy []string                      // files and folders copied in first
		args func(d string) []string       // the command, given the case folder
		want func(d, kind string) []string // strings the error must hold
	}
	names := func(file string) func(d, kind string) []string {
		return func(d, kind string) []string { return []string{filepath.Base(file), kindWord(kind)} }
	}
	inputs := []input{
		{"model", "m.onnx", nil, func(d string) []string { return []string{"inspect", filepath.Join(d, "m.onnx")} }, names("m.onnx")},
		{"external data", "ext.bin", []string{ext, filepath.Join(dir, "ext.bin")}, func(d string) []string { return []string{"inspect", filepath.Join(d, "ext.onnx")} },
			// A link out of the model's folder is refused before it is opened.
			func(d, kind string) []string {
				if kind == "zero" {
					return []string{"ext.bin", "path escapes"}
				}
				return names("ext.bin")(d, kind)
			}},
		{"adapter config", "a/adapter_config.json", []string{good + "=a"},
			func(d string) []string {
				return []string{"fuse", seed, "--adapter", filepath.Join(d, "a"), "-o", filepath.Join(d, "out.onnx")}
			}, names("adapter_config.json")},
		{"adapter weights", "a/adapter_model.safetensors", []string{good + "=a"},
			func(d string) []string {
				return []string{"fuse", seed, "--adapter", filepath.Join(d, "a"), "-o", filepath.Join(d, "out.onnx")}
			}, names("adapter_model.safetensors")},
		{"train data", "data.jsonl", nil,
			func(d string) []string {
				return seedTrainArgs(injected, filepath.Join(d, "data.jsonl"), filepath.Join(d, "run"), "2")
			},
			names("data.jsonl")},
		{"checkpoint progress", filepath.Join("run", "checkpoints", filepath.Base(filepath.Dir(ckpt[0])), "progress.json"), []string{run},
			func(d string) []string {
				return append(seedTrainArgs(injected, data, filepath.Join(d, "run"), "4"), "--resume")
			}, names("progress.json")},
	}
	for _, in := range inputs {
		for _, kind := range hostile.Specials() {
			t.Run(in.name+"/"+kind, func(t *testing.T) {
				d := t.TempDir()
				for _, c := range in.copy {
					src, to, _ := strings.Cut(c, "=")
					if to == "" {
						to = filepath.Base(src)
					}
					copyPath(t, src, filepath.Join(d, to))
				}
				if err := hostile.Replace(filepath.Join(d, in.file), kind); err != nil {
					t.Fatal(err)
				}
				done := make(chan error, 1)
				go func() { _, err := loracc(t, in.args(d)...); done <- err }()
				var err error
				select {
				case err = <-done:
				case <-time.After(30 * time.Second):
					t.Fatalf("%s as a %s: still running after 30 s", in.file, kind)
				}
				if err == nil {
					t.Fatalf("%s as a %s: no error", in.file, kind)
				}
				t.Log(err)
				for _, w := range in.want(d, kind) {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("%s as a %s: error %q does not say %q", in.file, kind, err, w)
					}
				}
			})
		}
	}
}

// kindWord is what the error says for each kind of hostile.Specials.
func kindWord(kind string) string {
	switch kind {
	case "fifo":
		return "FIFO"
	case "zero":
		return "device"
	}
	return kind
}

// copyPath copies the file or folder src to dst.
func copyPath(t *testing.T, src, dst string) {
	t.Helper()
	st, err := os.Stat(src)
	if err != nil {
		t.Fatal(err)
	}
	if st.IsDir() {
		if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
			t.Fatal(err)
		}
		return
	}
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
