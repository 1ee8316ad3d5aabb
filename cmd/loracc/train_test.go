package main

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/testmodels"
	"github.com/loracc/loracc/runtime/train"
)

// seedRun prepares the seed model, its injected copy and data in dir.
func seedRun(t *testing.T, dir string) (injected, data string) {
	t.Helper()
	m, err := testmodels.Seed()
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, "seed.onnx")
	if err := graph.Save(m, base, graph.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	injected = filepath.Join(dir, "seed.lora.onnx")
	mustLoracc(t, "inject", base, "--rank", "2", "--seed", "1", "-o", injected)
	w, err := loadWeight(base)
	if err != nil {
		t.Fatal(err)
	}
	data = filepath.Join(dir, "train.jsonl")
	if err := writePairs(data, w, 64, 1); err != nil {
		t.Fatal(err)
	}
	return injected, data
}

// lossColumn reads metrics.csv's step and loss columns.
func lossColumn(t *testing.T, run string) []string {
	t.Helper()
	f, err := os.Open(filepath.Join(run, "metrics.csv"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range recs[1:] {
		out = append(out, r[0]+":"+r[2])
	}
	return out
}

// lossValues is metrics.csv's loss column as numbers.
func lossValues(t *testing.T, run string) []float64 {
	t.Helper()
	var out []float64
	for _, row := range lossColumn(t, run) {
		v, err := strconv.ParseFloat(row[strings.Index(row, ":")+1:], 64)
		if err != nil {
			t.Fatalf("metrics.csv: %v", err)
		}
		out = append(out, v)
	}
	return out
}

// seedTrainArgs trains the seed model for steps steps. It checkpoints only
// at the end (--save-every 0): checkpoint fsyncs would be most of these
// tests' time; tests of checkpoints pass their own --save-every.
func seedTrainArgs(injected, data, run string, steps string) []string {
	return []string{"train", injected, "--data", data, "--loss", "mse", "--logits", "y", "--labels", "labels",
		"--max-steps", steps, "--batch-size", "8", "--lr", "0.01", "--device", "cpu", "--save-every", "0", "--out", run}
}

// TestTrainCountsExamples: a regression task (the seed's mse) has no
// tokens: the progress lines and metrics.csv count examples per second; a
// language model's keep tokens per second.
func TestTrainCountsExamples(t *testing.T) {
	env(t)
	dir := t.TempDir()
	injected, data := seedRun(t, dir)
	rundir := filepath.Join(dir, "run")
	var stdout, stderr bytes.Buffer
	if err := run(append([]string{"loracc"}, seedTrainArgs(injected, data, rundir, "3")...), &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if out := stdout.String() + stderr.String(); !strings.Contains(out, " examples/s") || strings.Contains(out, "tokens/s") {
		t.Errorf("progress does not count examples:\n%s", out)
	}
	head, err := os.ReadFile(filepath.Join(rundir, "metrics.csv"))
	if err != nil || !strings.HasPrefix(string(head), "step,epoch,loss,lr,grad_norm,examples_per_s,eval_loss,padded_examples_per_s\n") {
		t.Errorf("metrics.csv header: %q (%v)", strings.SplitN(string(head), "\n", 2)[0], err)
	}
	lm := filepath.Join(dir, "lm")
	if _, err := loracc(t, tinyLMRun(t, dir, "--max-steps", "1", "--device", "cpu", "--save-every", "0")(lm)...); err != nil {
		t.Fatal(err)
	}
	head, err = os.ReadFile(filepath.Join(lm, "metrics.csv"))
	lines := strings.Split(strings.TrimSpace(string(head)), "\n")
	if err != nil || len(lines) != 2 || lines[0] != "step,epoch,loss,lr,grad_norm,tokens_per_s,eval_loss,padded_tokens_per_s" {
		t.Fatalf("lm metrics.csv: %q (%v)", lines, err)
	}
	// The variable-length data is padded to the batch's longest example:
	// more positions computed than tokens counted.
	f := strings.Split(lines[1], ",")
	real, _ := strconv.ParseFloat(f[5], 64)
	padded, _ := strconv.ParseFloat(f[7], 64)
	if !(padded > real && real > 0) {
		t.Errorf("padded %v tokens/s, real %v: want padded > real > 0", padded, real)
	}
}

// TestTrainDeterministic: the same seed and data give a bit-identical loss
// column, and the run leaves its files.
func TestTrainDeterministic(t *testing.T) {
	env(t)
	dir := t.TempDir()
	injected, data := seedRun(t, dir)
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	mustLoracc(t, seedTrainArgs(injected, data, a, "300")...)
	mustLoracc(t, seedTrainArgs(injected, data, b, "300")...)
	la, lb := lossColumn(t, a), lossColumn(t, b)
	if strings.Join(la, "\n") != strings.Join(lb, "\n") || len(la) != 300 {
		t.Errorf("two runs differ or are short: %d and %d rows", len(la), len(lb))
	}
	for _, f := range []string{"metrics.csv", "loss.png", "adapter/adapter_model.safetensors", "adapter/adapter_config.json", "checkpoints/latest"} {
		if _, err := os.Stat(filepath.Join(a, f)); err != nil {
			t.Errorf("run folder lacks %s", f)
		}
	}
	// A second run into the same folder needs --resume.
	if _, err := loracc(t, seedTrainArgs(injected, data, a, "300")...); err == nil || !strings.Contains(err.Error(), "--resume") {
		t.Errorf("reusing a run folder: %v", err)
	}
}

// TestTrainResumeEqualsUninterrupted: a run stopped at step 130 and
// resumed gives the same loss column as one that never stopped.
func TestTrainResumeEqualsUninterrupted(t *testing.T) {
	env(t)
	dir := t.TempDir()
	injected, data := seedRun(t, dir)
	full, cut := filepath.Join(dir, "full"), filepath.Join(dir, "cut")
	mustLoracc(t, seedTrainArgs(injected, data, full, "300")...)
	// Run to step 130 only, as if stopped, then continue to 300.
	mustLoracc(t, seedTrainArgs(injected, data, cut, "130")...)
	mustLoracc(t, append(seedTrainArgs(injected, data, cut, "300"), "--resume")...)
	if a, b := lossColumn(t, full), lossColumn(t, cut); strings.Join(a, "\n") != strings.Join(b, "\n") {
		t.Errorf("resumed loss column differs from the uninterrupted one (%d vs %d rows)", len(a), len(b))
	}
}

// TestTrainUpdatesNonFiniteStops: a step whose loss and gradient norm are
// finite but whose update overflows (AdamW's step size lr/(1 − β1) is
// +Inf in float32 for lr 1e38) is caught by the graph's own finite flag
// over the updated params and state, and stopped without being applied:
// no adapter with Inf or NaN is written.
func TestTrainUpdatesNonFiniteStops(t *testing.T) {
	env(t)
	dir := t.TempDir()
	injected, data := seedRun(t, dir)
	run := filepath.Join(dir, "run")
	_, err := loracc(t, append(seedTrainArgs(injected, data, run, "5"), "--lr", "1e38", "--clip-norm", "0")...)
	want := "step 1: the updated adapter or optimizer state is not finite (loss "
	if !errors.Is(err, train.ErrNonFinite) || err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("got %v, want ErrNonFinite with %q", err, want)
	}
	if _, serr := os.Stat(filepath.Join(run, "adapter")); serr == nil {
		t.Error("an adapter was written after a non-finite update")
	}
}

// TestTrainNaNStops: a diverging run stops with an error naming the step
// and the last good checkpoint, which it keeps, free of NaN and Inf. The
// run checkpoints every step so that there is one before it diverges.
func TestTrainNaNStops(t *testing.T) {
	env(t)
	dir := t.TempDir()
	injected, data := seedRun(t, dir)
	run := filepath.Join(dir, "run")
	args := seedTrainArgs(injected, data, run, "2000")
	args = append(args, "--lr", "1e30", "--optimizer", "sgd", "--clip-norm", "0", "--save-every", "1")
	_, err := loracc(t, args...)
	if !errors.Is(err, train.ErrNonFinite) || !strings.Contains(err.Error(), "step ") {
		t.Fatalf("want a non-finite loss error naming the step, got %v", err)
	}
	ck, lerr := train.LoadLatest(run)
	if lerr != nil || ck == nil {
		t.Fatalf("no checkpoint kept: %v", lerr)
	}
	if want := fmt.Sprintf("step %d: ", ck.Progress.Step+1); !strings.Contains(err.Error(), want) || !strings.HasSuffix(err.Error(), "last good checkpoint: "+ck.Dir) {
		t.Errorf("the error names neither step %d nor checkpoint %s: %v", ck.Progress.Step+1, ck.Dir, err)
	}
	checked := 0
	for _, l := range ck.Adapter.Layers {
		for _, v := range append(l.A, l.B...) {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				t.Fatalf("the kept checkpoint (step %d) holds %g", ck.Progress.Step, v)
			}
			checked++
		}
	}
	if checked == 0 {
		t.Fatal("the kept checkpoint holds no adapter values")
	}
}

// TestTrainCtrlC sends SIGINT to a real loracc process: it writes a
// checkpoint and exits 0 within seconds, and --resume finishes the run
// with the loss column of an uninterrupted one.
func TestTrainCtrlC(t *testing.T) {
	env(t)
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "loracc")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	injected, data := seedRun(t, dir)
	const steps = "30000"
	full, cut := filepath.Join(dir, "full"), filepath.Join(dir, "cut")
	mustLoracc(t, seedTrainArgs(injected, data, full, steps)...)

	// The interrupted run checkpoints every 50 steps: the test waits for
	// the first.
	cmd := exec.Command(bin, append(seedTrainArgs(injected, data, cut, steps), "--save-every", "50")...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait until training runs (a first checkpoint exists), then interrupt.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(cut, "checkpoints", "latest")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("no checkpoint after 30 s:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	sent := time.Now()
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	if took := time.Since(sent); took > 5*time.Second {
		t.Errorf("took %v to stop after Ctrl-C", took)
	}
	if err != nil {
		t.Fatalf("exit after Ctrl-C: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "interrupted") {
		t.Errorf("no interruption message:\n%s", out.String())
	}
	ck, err := train.LoadLatest(cut)
	if err != nil || ck == nil {
		t.Fatalf("no checkpoint after Ctrl-C: %v", err)
	}
	if ck.Progress.Step >= 30000 {
		t.Skip("the run finished before the signal arrived")
	}
	mustLoracc(t, append(seedTrainArgs(injected, data, cut, steps), "--resume")...)
	if a, b := lossColumn(t, full), lossColumn(t, cut); strings.Join(a, "\n") != strings.Join(b, "\n") {
		t.Errorf("loss column after Ctrl-C and --resume differs from the uninterrupted run (%d vs %d rows)", len(a), len(b))
	}
}

// TestStepsPerRunMatchesSingle: compiling 4 steps into one run gives the
// loss column of single steps, bit for bit (CPU), and resumes like it.
func TestStepsPerRunMatchesSingle(t *testing.T) {
	env(t)
	dir := t.TempDir()
	injected, data := seedRun(t, dir)
	single, multi := filepath.Join(dir, "single"), filepath.Join(dir, "multi")
	mustLoracc(t, seedTrainArgs(injected, data, single, "301")...)
	mustLoracc(t, append(seedTrainArgs(injected, data, multi, "301"), "--steps-per-run", "4")...)
	a, b := lossColumn(t, single), lossColumn(t, multi)
	if strings.Join(a, "\n") != strings.Join(b, "\n") {
		t.Errorf("4 steps per run give a different loss column (%d vs %d rows)", len(a), len(b))
	}
	var io TrainIO
	data2, err := os.ReadFile(filepath.Join(multi, "graphs", "train.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data2, &io); err != nil || io.StepsPerRun != 4 || io.Multi == nil {
		t.Fatalf("train.json has no 4-step graph: %v", err)
	}
}

// TestTrainRefusesOutputOnInput: a run whose final adapter or fused model
// would land on one of its inputs (the starting adapter, the model) is
// refused before it trains, naming both paths, and the input is unchanged.
func TestTrainRefusesOutputOnInput(t *testing.T) {
	env(t)
	dir := t.TempDir()
	injected, data := seedRun(t, dir)
	run := filepath.Join(dir, "run")
	mustLoracc(t, seedTrainArgs(injected, data, run, "5")...)
	ad := filepath.Join(run, "adapter")
	before := tree(t, ad)
	_, err := loracc(t, append(seedTrainArgs(injected, data, filepath.Join(dir, "run"), "5"), "--adapter", ad, "--resume")...)
	cfg := filepath.Join(ad, "adapter_config.json")
	if err == nil || !strings.Contains(err.Error(), cfg) || !strings.Contains(err.Error(), "input adapter file") {
		t.Errorf("adapter over --adapter: %v", err)
	}
	if !reflect.DeepEqual(tree(t, ad), before) {
		t.Error("the input adapter changed")
	}
	fused := filepath.Join(dir, "run2", "model.fused.onnx")
	if err := os.MkdirAll(filepath.Dir(fused), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(injected, fused); err != nil {
		t.Fatal(err)
	}
	_, err = loracc(t, append(seedTrainArgs(fused, data, filepath.Join(dir, "run2"), "5"), "--fuse")...)
	if err == nil || !strings.Contains(err.Error(), "input model") {
		t.Errorf("fused model over the model: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "run2", "metrics.csv")); err == nil {
		t.Error("the refused run trained anyway")
	}
}

// TestTrainDeviceState: with the state kept in the session's memory
// between steps (--device-state on, the default on CUDA; forced here on
// the CPU), and with captured static steps (--cuda-graph on: fixed
// buffers, two state sets; no capture on the CPU), training gives the same
// metrics and checkpoints as feeding the state from the host every step —
// bit for bit on the CPU — with evaluation and checkpoints (which copy the
// state out) inside the run.
func TestTrainDeviceState(t *testing.T) {
	env(t)
	dir := t.TempDir()
	injected, data := seedRun(t, dir)
	for _, extra := range [][]string{nil, {"--static", "--batch-size", "8"}, {"--static", "--batch-size", "8", "--cuda-graph", "on"}} {
		runs := map[string]string{}
		for _, mode := range []string{"off", "on"} {
			run := filepath.Join(dir, mode+strings.Join(extra, ""))
			args := append(seedTrainArgs(injected, data, run, "40"), "--device-state", mode, "--save-every", "15", "--eval", data, "--eval-every", "10")
			flags := extra
			if mode == "off" && len(flags) > 3 {
				flags = flags[:3] // the reference: a static run fed from the host
			}
			mustLoracc(t, append(args, flags...)...)
			runs[mode] = run
		}
		a, b := lossColumn(t, runs["off"]), lossColumn(t, runs["on"])
		if strings.Join(a, "\n") != strings.Join(b, "\n") || len(a) != 40 {
			t.Errorf("%v: loss columns differ (%d and %d rows)", extra, len(a), len(b))
		}
		for _, f := range []string{"adapter/adapter_model.safetensors", "checkpoints/step-00000030/optimizer.safetensors"} {
			x, err1 := os.ReadFile(filepath.Join(runs["off"], f))
			y, err2 := os.ReadFile(filepath.Join(runs["on"], f))
			if err1 != nil || err2 != nil || !bytes.Equal(x, y) {
				t.Errorf("%v: %s differs between host and device state (%v %v)", extra, f, err1, err2)
			}
		}
	}
}

// TestNumericFlagsChecked: a flag that would train or write NaN, Inf or a
// nonsense count is refused at parse time, naming the flag, and nothing is
// written.
func TestNumericFlagsChecked(t *testing.T) {
	env(t)
	dir := t.TempDir()
	injected, data := seedRun(t, dir)
	run := filepath.Join(dir, "run")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--beta1", "1"}, "--beta1 1: must be in [0, 1)"},
		{[]string{"--beta2", "2"}, "--beta2 2: must be in [0, 1)"},
		{[]string{"--eps", "0"}, "--eps 0: must be positive"},
		{[]string{"--weight-decay", "NaN"}, "--weight-decay NaN"},
		{[]string{"--momentum", "Inf"}, "--momentum +Inf"},
		{[]string{"--lr", "-1"}, "--lr -1: must be positive"},
		{[]string{"--grad-accum", "0"}, "--grad-accum 0: must be ≥ 1"},
		{[]string{"--max-steps", "-2"}, "--max-steps -2"},
		{[]string{"--steps-per-run", "0"}, "--steps-per-run 0"},
	} {
		_, err := loracc(t, append(seedTrainArgs(injected, data, run, "5"), tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err %v, want %q", tc.args, err, tc.want)
		}
		if _, err := os.Stat(run); err == nil {
			t.Fatalf("%v: the run folder was created", tc.args)
		}
	}
	base := filepath.Join(dir, "seed.onnx")
	if _, err := os.Stat(base); err != nil {
		t.Skip("seedRun names its base differently")
	}
	if _, err := loracc(t, "inject", base, "--rank", "2", "--alpha", "1e39", "-o", filepath.Join(dir, "x.onnx")); err == nil || !strings.Contains(err.Error(), "--alpha 1e+39") {
		t.Errorf("inject --alpha 1e39: %v", err)
	}
	if _, err := loracc(t, "fuse", injected, "--adapter", strings.TrimSuffix(injected, ".onnx")+".adapter", "--scale", "NaN", "-o", filepath.Join(dir, "f.onnx")); err == nil || !strings.Contains(err.Error(), "--scale NaN") {
		t.Errorf("fuse --scale NaN: %v", err)
	}
}

// TestTrainLocksRunFolder: a second train on a run folder in use is
// refused, naming the folder; the lock goes with its holder.
func TestTrainLocksRunFolder(t *testing.T) {
	env(t)
	dir := t.TempDir()
	injected, data := seedRun(t, dir)
	run := filepath.Join(dir, "run")
	unlock, err := train.Lock(run)
	if err != nil {
		t.Fatal(err)
	}
	_, err = loracc(t, seedTrainArgs(injected, data, run, "5")...)
	if err == nil || !strings.Contains(err.Error(), run+" is in use by another loracc train") {
		t.Errorf("second run: %v", err)
	}
	unlock()
	mustLoracc(t, seedTrainArgs(injected, data, run, "5")...)
}

// TestResumeChecksData: a checkpoint records its data's size and
// fingerprint, so resuming on shorter or edited data is refused naming
// both, while blank lines and CRLF endings do not count as a change; a
// checkpoint from before the fingerprint still has its position checked
// against the data, with the numbers, not a panic.
func TestResumeChecksData(t *testing.T) {
	env(t)
	dir := t.TempDir()
	injected, data := seedRun(t, dir)
	run := filepath.Join(dir, "run")
	args := func(data, steps string) []string {
		return append(seedTrainArgs(injected, data, run, steps), "--batch-size", "5", "--resume")
	}
	mustLoracc(t, append(seedTrainArgs(injected, data, run, "3"), "--batch-size", "5")...)
	raw, err := os.ReadFile(data)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(strings.TrimSuffix(string(raw), "\n"), "\n")
	n := len(lines)
	variant := func(name string, ls []string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(strings.Join(ls, "")), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	swapped := append([]string{lines[1], lines[0]}, lines[2:]...)
	for name, ls := range map[string][]string{"short.jsonl": lines[:4], "swapped.jsonl": swapped} {
		_, err = loracc(t, args(variant(name, ls), "6")...)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("made on other data (%d examples, sha256:", n)) {
			t.Errorf("resume on %s: %v", name, err)
		}
	}
	var crlf []string
	for _, l := range lines {
		crlf = append(crlf, strings.TrimSuffix(l, "\n")+"\r\n", "\n")
	}
	mustLoracc(t, args(variant("crlf.jsonl", crlf), "4")...)

	// A checkpoint without the fingerprint: only its position is checked.
	progs, _ := filepath.Glob(filepath.Join(run, "checkpoints", "step-*", "progress.json"))
	for _, p := range progs {
		if err := os.WriteFile(p, []byte(`{"step": 4, "epoch": 0, "position": 20, "seed": 0}`), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := loracc(t, args(variant("short.jsonl", lines[:4]), "6")...); err == nil || !strings.Contains(err.Error(), "do not fit data of 4 examples") {
		t.Errorf("resume of an old checkpoint on shorter data: %v", err)
	}
}
