package main

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/runtime/train"
)

func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "loracc")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// killAfter starts bin with args and SIGKILLs it after d (if still running).
func killAfter(t *testing.T, bin string, args []string, d time.Duration) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(d):
		cmd.Process.Signal(syscall.SIGKILL)
		<-done
	}
}

// TestCrashTrainKeepsCheckpoint kills `loracc train` with SIGKILL at random
// moments, many times: after every kill the latest checkpoint loads
// completely, and --resume finishes the run.
func TestCrashTrainKeepsCheckpoint(t *testing.T) {
	env(t)
	if testing.Short() {
		t.Skip("builds the binary and kills it many times")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	injected, data := seedRun(t, dir)
	run := filepath.Join(dir, "run")
	args := seedTrainArgs(injected, data, run, "200000")
	args = append(args, "--save-every", "25")
	rng := rand.New(rand.NewPCG(7, 7))
	last := 0
	for i := range 25 {
		a := args
		if _, err := os.Stat(filepath.Join(run, "checkpoints", "latest")); err == nil {
			a = append(append([]string(nil), args...), "--resume")
		}
		killAfter(t, bin, a, time.Duration(50+rng.IntN(400))*time.Millisecond)
		ck, err := train.LoadLatest(run)
		if err != nil {
			t.Fatalf("kill %d: the latest checkpoint does not load: %v", i, err)
		}
		if ck == nil {
			continue
		}
		if ck.Progress.Step < last {
			t.Fatalf("kill %d: checkpoint went back from step %d to %d", i, last, ck.Progress.Step)
		}
		last = ck.Progress.Step
		if len(ck.Adapter.Layers) != 1 || len(ck.State) != 2 { // the adapter, and AdamW's two moment vectors
			t.Fatalf("kill %d: checkpoint incomplete: %d layers, %d state tensors", i, len(ck.Adapter.Layers), len(ck.State))
		}
	}
	if last == 0 {
		t.Fatal("no checkpoint was ever written")
	}
	// Finish from wherever the kills left it.
	fin := seedTrainArgs(injected, data, run, itoa(last+50))
	mustLoracc(t, append(fin, "--resume")...)
	ck, err := train.LoadLatest(run)
	if err != nil || ck == nil || ck.Progress.Step != last+50 {
		t.Fatalf("resume after kills: %+v %v", ck, err)
	}
}

// TestCrashFuseAtomic kills `loracc fuse` of an external-data model at
// random moments: the output is either absent or the complete file.
func TestCrashFuseAtomic(t *testing.T) {
	env(t)
	if testing.Short() {
		t.Skip("builds the binary and kills it many times")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	base := externalMLP(t, dir, 2048)
	injected := filepath.Join(dir, "big.lora.onnx")
	mustLoracc(t, "inject", base, "--rank", "8", "-o", injected)
	ad := filepath.Join(dir, "big.lora.adapter")
	randomizeAdapter(t, ad, 1)
	ref := filepath.Join(dir, "ref.onnx")
	mustLoracc(t, "fuse", injected, "--adapter", ad, "-o", ref)
	refData, _ := os.ReadFile(ref + ".data")
	rng := rand.New(rand.NewPCG(3, 3))
	complete := 0
	for i := range 20 {
		out := filepath.Join(dir, "out.onnx")
		os.Remove(out)
		os.Remove(out + ".data")
		killAfter(t, bin, []string{"fuse", injected, "--adapter", ad, "-o", out}, time.Duration(10+rng.IntN(300))*time.Millisecond)
		if _, err := os.Stat(out); os.IsNotExist(err) {
			continue
		}
		fm, err := graph.Load(out)
		if err != nil {
			t.Fatalf("kill %d: %s exists but does not load: %v", i, out, err)
		}
		if w := fm.Graph.Lookup("fc1.weight"); w == nil || w.Const.External() == nil || w.Const.External().Location != "out.onnx.data" {
			t.Fatalf("kill %d: %s is not the fused model", i, out)
		}
		data, err := os.ReadFile(out + ".data")
		if err != nil || !bytes.Equal(data, refData) {
			t.Fatalf("kill %d: the model was renamed into place before its data file was complete", i)
		}
		complete++
	}
	t.Logf("%d of 20 fuses finished before the kill", complete)
}

// TestDiskFull runs loracc under a file-size limit (prlimit), the way a
// full disk fails writes: the command fails with one line naming the file,
// and neither an output nor a temporary file is left.
func TestDiskFull(t *testing.T) {
	if _, err := exec.LookPath("prlimit"); err != nil {
		t.Skip("prlimit (util-linux) not installed")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	base := copyModel(t, "../../testdata/models/gpt2_tiny.onnx")
	for _, args := range [][]string{
		{"inject", base, "--rank", "4", "-o", filepath.Join(dir, "full.onnx")},
		{"fuse", base, "--adapter", "../../testdata/ref/gpt2_tiny_lora_init", "-o", filepath.Join(dir, "full.onnx")},
	} {
		cmd := exec.Command("prlimit", append([]string{"--fsize=100000", bin}, args...)...)
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Fatalf("%s succeeded under a 100 kB file limit", args[0])
		}
		lines := bytes.Split(bytes.TrimSpace(out), []byte("\n"))
		last := string(lines[len(lines)-1])
		if bytes.Count(out, []byte("loracc: ")) != 1 || !bytes.HasPrefix([]byte(last), []byte("loracc: ")) || !bytes.Contains([]byte(last), []byte("full.onnx")) {
			t.Errorf("%s: want one error line naming the file, got %q", args[0], out)
		}
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			t.Errorf("%s left %s behind", args[0], e.Name())
		}
	}
}
