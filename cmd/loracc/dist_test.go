package main

import (
	"bytes"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/loracc/loracc/runtime"
	"github.com/loracc/loracc/runtime/train"
)

// Data-parallel training on the CPU: ranks are real processes (copies of
// the test binary acting as loracc, see TestMain) meeting on the
// loopback and summing their gradients over TCP.

// maxRelDiff is the largest relative difference of two loss columns.
func maxRelDiff(t *testing.T, a, b []float64) float64 {
	t.Helper()
	if len(a) != len(b) || len(a) == 0 {
		t.Fatalf("loss columns of %d and %d rows", len(a), len(b))
	}
	worst := 0.0
	for i := range a {
		worst = math.Max(worst, math.Abs(a[i]-b[i])/math.Max(math.Abs(b[i]), 1e-30))
	}
	return worst
}

// distTolerance bounds the relative difference of N ranks × batch b and
// one process × batch N·b: the same arithmetic but for the order of the
// float32 sums (per-rank sums then their sum, where one process sums
// once) and the division by the token count made on the gradients' sum
// rather than inside the backward pass. A step's loss differs by a few
// float32 ulps and the updates feed the differences into later steps
// (measured on this CPU: 9.2e-8 relative at most over 14 steps of the
// tiny GPT-2, 8.2e-7 over 30 steps of the seed model, 8.7e-8 for the
// split step against the fused one); 1e-5 leaves room for that drift
// and is far below what a real difference gives (a wrong shard, a mean
// of the ranks' means, a lost example: 1e-3 and more here).
const distTolerance = 1e-5

// asMain lets the test binary be loracc in the processes it starts.
func asMain(t *testing.T) {
	t.Setenv("LORACC_TEST_AS_MAIN", "1")
}

// TestDataParallelMatchesOneProcess: `train --nproc-per-node 2` with
// batch b gives the loss curve (and eval loss) of one process with batch
// 2b, within distTolerance, for the tiny GPT-2 (lm: ranks count different
// numbers of tokens, so a mean of the ranks' means would differ) over two
// epochs with an odd example count (one rank's shard of an epoch's last
// step is smaller), and for the seed model (mse). Rank 0 alone writes the
// run folder, and its adapter is a trained one.
func TestDataParallelMatchesOneProcess(t *testing.T) {
	env(t)
	asMain(t)
	dir := t.TempDir()
	lm := tinyLMRun(t, dir, "--device", "cpu", "--save-every", "0", "--eval", variableLengthData(t, t.TempDir()), "--eval-every", "4")
	one, two := filepath.Join(dir, "one"), filepath.Join(dir, "two")
	mustLoracc(t, lm(one, "--batch-size", "6", "--max-steps", "14")...) // 40 examples: 7 steps an epoch, the last of 4
	out := mustLoracc(t, lm(two, "--batch-size", "3", "--max-steps", "14", "--nproc-per-node", "2")...)
	if !strings.Contains(out, "2 ranks × batch 3") {
		t.Errorf("rank 0 does not say it trains with 2 ranks:\n%s", out)
	}
	if d := maxRelDiff(t, lossValues(t, two), lossValues(t, one)); d > distTolerance {
		t.Errorf("2 ranks × 3 vs 1 × 6: losses differ by %.3g relative, more than %g", d, distTolerance)
	} else {
		t.Logf("tiny GPT-2, 2 ranks × 3 vs 1 × 6, 14 steps: max relative loss difference %.3g", d)
	}
	evalOf := func(run string) float64 {
		var last float64
		for _, row := range metricsRowsOf(t, run) {
			if row[6] != "" {
				fmt.Sscan(row[6], &last)
			}
		}
		return last
	}
	if a, b := evalOf(two), evalOf(one); math.Abs(a-b) > distTolerance*b || a == 0 {
		t.Errorf("eval loss %v with 2 ranks, %v alone", a, b)
	}
	for _, f := range []string{"metrics.csv", "loss.png", "adapter/adapter_model.safetensors", "checkpoints/latest"} {
		if _, err := os.Stat(filepath.Join(two, f)); err != nil {
			t.Errorf("rank 0 did not write %s", f)
		}
	}

	injected, data := seedRun(t, dir)
	s1, s2 := filepath.Join(dir, "s1"), filepath.Join(dir, "s2")
	seed := func(run, batch string, extra ...string) []string {
		a := seedTrainArgs(injected, data, run, "30")
		for i := range a {
			if a[i] == "--batch-size" {
				a[i+1] = batch
			}
		}
		return append(a, extra...)
	}
	mustLoracc(t, seed(s1, "8")...)
	mustLoracc(t, seed(s2, "4", "--nproc-per-node", "2")...)
	if d := maxRelDiff(t, lossValues(t, s2), lossValues(t, s1)); d > distTolerance {
		t.Errorf("seed model, 2 ranks × 4 vs 1 × 8: losses differ by %.3g relative", d)
	} else {
		t.Logf("seed model, 2 ranks × 4 vs 1 × 8, 30 steps: max relative loss difference %.3g", d)
	}
}

// metricsRowsOf reads metrics.csv's rows after the header.
func metricsRowsOf(t *testing.T, run string) [][]string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(run, "metrics.csv"))
	if err != nil {
		t.Fatal(err)
	}
	var out [][]string
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n")[1:] {
		out = append(out, strings.Split(l, ","))
	}
	return out
}

// TestSplitStepMatchesFused: one process running the split step
// (--split-step: grad.onnx, then optim.onnx) trains as the fused
// train.onnx does, within distTolerance.
func TestSplitStepMatchesFused(t *testing.T) {
	env(t)
	dir := t.TempDir()
	lm := tinyLMRun(t, dir, "--device", "cpu", "--save-every", "0", "--max-steps", "10")
	fused, split := filepath.Join(dir, "fused"), filepath.Join(dir, "split")
	mustLoracc(t, lm(fused)...)
	mustLoracc(t, lm(split, "--split-step")...)
	if d := maxRelDiff(t, lossValues(t, split), lossValues(t, fused)); d > distTolerance {
		t.Errorf("split step vs fused: losses differ by %.3g relative", d)
	} else {
		t.Logf("split step vs fused, 10 steps: max relative loss difference %.3g", d)
	}
}

// TestDataParallelResume: two ranks resume their run and continue it as
// if uninterrupted (bit for bit: the same ranks compute the same sums);
// one process, or three, resuming it are refused, naming the world size.
func TestDataParallelResume(t *testing.T) {
	env(t)
	asMain(t)
	dir := t.TempDir()
	injected, data := seedRun(t, dir)
	full, cut := filepath.Join(dir, "full"), filepath.Join(dir, "cut")
	mustLoracc(t, append(seedTrainArgs(injected, data, full, "20"), "--nproc-per-node", "2")...)
	mustLoracc(t, append(seedTrainArgs(injected, data, cut, "9"), "--nproc-per-node", "2")...)
	mustLoracc(t, append(seedTrainArgs(injected, data, cut, "20"), "--nproc-per-node", "2", "--resume")...)
	if a, b := lossColumn(t, full), lossColumn(t, cut); strings.Join(a, "\n") != strings.Join(b, "\n") {
		t.Errorf("2 ranks resumed give another loss column than 2 ranks uninterrupted:\n%v\n%v", a, b)
	}
	_, err := loracc(t, append(seedTrainArgs(injected, data, cut, "30"), "--resume")...)
	if err == nil || !strings.Contains(err.Error(), "the checkpoint was made by 2 ranks, this run has 1") {
		t.Errorf("one process resuming 2 ranks' run: %v", err)
	}
	var stderr bytes.Buffer
	err = run(append([]string{"loracc"}, append(seedTrainArgs(injected, data, cut, "30"), "--resume", "--nproc-per-node", "3")...), &bytes.Buffer{}, &stderr)
	if err == nil || !strings.Contains(stderr.String(), "the checkpoint was made by 2 ranks, this run has 3") || !strings.Contains(err.Error(), "exited with status 1") {
		t.Errorf("3 ranks resuming 2 ranks' run: %v\n%s", err, stderr.String())
	}
}

// TestDataParallelRankDies: ranks launched as torchrun does (each
// process given RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT); when rank 1
// is killed in the middle of training, rank 0 fails within seconds with a
// message naming rank 1, instead of waiting.
func TestDataParallelRankDies(t *testing.T) {
	env(t)
	dir := t.TempDir()
	injected, data := seedRun(t, dir)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	args := seedTrainArgs(injected, data, filepath.Join(dir, "run"), "1000000")
	var outs [2]bytes.Buffer
	cmds := make([]*exec.Cmd, 2)
	for r := range cmds {
		cmds[r] = exec.Command(exe, args...)
		cmds[r].Env = append(os.Environ(), "LORACC_TEST_AS_MAIN=1", fmt.Sprintf("RANK=%d", r), "WORLD_SIZE=2",
			"MASTER_ADDR=127.0.0.1", fmt.Sprintf("MASTER_PORT=%d", port))
		cmds[r].Stdout, cmds[r].Stderr = &outs[r], &outs[r]
		if err := cmds[r].Start(); err != nil {
			t.Fatal(err)
		}
		defer cmds[r].Process.Kill()
	}
	// Let them train a while, then kill rank 1 outright.
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(dir, "run", "metrics.csv")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the ranks did not start training:\n%s\n%s", outs[0].String(), outs[1].String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	cmds[1].Process.Signal(syscall.SIGKILL)
	cmds[1].Wait()
	killed := time.Now()
	done := make(chan error, 1)
	go func() { done <- cmds[0].Wait() }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("rank 0 finished without rank 1:\n%s", outs[0].String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("rank 0 still runs 30 s after rank 1 died:\n%s", outs[0].String())
	}
	msg := outs[0].String()
	if !strings.Contains(msg, "rank 0 of 2:") || !strings.Contains(msg, "rank 1 failed in all-reduce") || !strings.Contains(msg, "the connection closed") {
		t.Errorf("rank 0's message does not name rank 1's end:\n%s", msg)
	}
	t.Logf("rank 0 stopped %v after rank 1 was killed: %s", time.Since(killed).Round(time.Millisecond), strings.TrimSpace(msg[strings.LastIndex(strings.TrimSpace(msg), "\n")+1:]))
}

// TestDataParallelLaunchErrors: a bad launch environment is refused
// before anything runs, naming the variable; --nproc-per-node under
// torchrun's variables is refused.
func TestDataParallelLaunchErrors(t *testing.T) {
	dir := t.TempDir()
	args := seedTrainArgs(filepath.Join(dir, "m.onnx"), filepath.Join(dir, "d.jsonl"), filepath.Join(dir, "run"), "1")
	t.Setenv("WORLD_SIZE", "2")
	t.Setenv("RANK", "two")
	if _, err := loracc(t, args...); err == nil || !strings.Contains(err.Error(), `RANK="two": want an integer`) {
		t.Errorf("RANK=two: %v", err)
	}
	t.Setenv("RANK", "1")
	if _, err := loracc(t, args...); err == nil || !strings.Contains(err.Error(), "WORLD_SIZE=2 needs MASTER_ADDR") {
		t.Errorf("no MASTER_ADDR: %v", err)
	}
	if _, err := loracc(t, append(args, "--nproc-per-node", "2")...); err == nil || !strings.Contains(err.Error(), "WORLD_SIZE=2 is already set") {
		t.Errorf("--nproc-per-node under WORLD_SIZE: %v", err)
	}
	t.Setenv("MASTER_ADDR", "127.0.0.1")
	t.Setenv("MASTER_PORT", "1")
	if _, err := loracc(t, append(args, "--static")...); err == nil || !strings.Contains(err.Error(), "does not combine with --static yet") {
		t.Errorf("--static on a rank: %v", err)
	}
}

// TestWithoutFlag: the launcher drops --nproc-per-node in every spelling
// and nothing else.
func TestWithoutFlag(t *testing.T) {
	got := strings.Join(withoutFlag([]string{"train", "m", "--nproc-per-node", "2", "--out", "r", "-nproc-per-node=3", "--nproc-per-nodes", "x", "--", "--nproc-per-node"}, "nproc-per-node"), " ")
	if want := "train m --out r --nproc-per-nodes x -- --nproc-per-node"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestDataParallelNCCLMissing: --comm nccl on a machine without NCCL
// fails on every rank, saying which library is missing and how to point
// at it; with --device cpu it is refused for what it is.
func TestDataParallelNCCLMissing(t *testing.T) {
	env(t)
	asMain(t)
	t.Setenv("LORACC_NCCL_LIB", "")
	dir := t.TempDir()
	injected, data := seedRun(t, dir)
	args := seedTrainArgs(injected, data, filepath.Join(dir, "run"), "3")
	var stderr bytes.Buffer
	err := run(append([]string{"loracc"}, append(args, "--nproc-per-node", "2", "--comm", "nccl")...), &bytes.Buffer{}, &stderr)
	if err == nil || !strings.Contains(stderr.String(), "--comm nccl sums on the GPUs; with --device cpu use --comm tcp") {
		t.Errorf("--comm nccl --device cpu: %v\n%s", err, stderr.String())
	}
	for i, a := range args {
		if a == "--device" {
			args[i+1] = "cuda"
		}
	}
	if _, e := runtime.OpenNCCL(""); e == nil {
		t.Skip("this machine has NCCL")
	}
	stderr.Reset()
	err = run(append([]string{"loracc"}, append(args, "--nproc-per-node", "2", "--comm", "nccl")...), &bytes.Buffer{}, &stderr)
	for r := range 2 {
		if want := fmt.Sprintf("rank %d of 2: nccl: cannot load libnccl.so.2", r); err == nil || !strings.Contains(stderr.String(), want) || !strings.Contains(stderr.String(), "LORACC_NCCL_LIB") {
			t.Errorf("--comm nccl without NCCL: %v; want %q in\n%s", err, want, stderr.String())
		}
	}
}

// TestDataParallelCtrlC: SIGINT to `train --nproc-per-node 2` reaches
// both ranks through the launcher; they stop after the same step, rank 0
// checkpoints there and everything exits 0; --resume then finishes with
// the loss column of an uninterrupted 2-rank run, bit for bit.
func TestDataParallelCtrlC(t *testing.T) {
	env(t)
	asMain(t)
	dir := t.TempDir()
	injected, data := seedRun(t, dir)
	const steps = "3000"
	full, cut := filepath.Join(dir, "full"), filepath.Join(dir, "cut")
	mustLoracc(t, append(seedTrainArgs(injected, data, full, steps), "--nproc-per-node", "2")...)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, append(seedTrainArgs(injected, data, cut, steps), "--save-every", "50", "--nproc-per-node", "2")...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(cut, "checkpoints", "latest")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("no checkpoint after 60 s:\n%s", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	sent := time.Now()
	cmd.Process.Signal(syscall.SIGINT)
	err = cmd.Wait()
	if took := time.Since(sent); took > 10*time.Second {
		t.Errorf("took %v to stop after Ctrl-C", took)
	}
	if err != nil || !strings.Contains(out.String(), "interrupted: checkpoint at step") {
		t.Fatalf("exit after Ctrl-C: %v\n%s", err, out.String())
	}
	ck, err := train.LoadLatest(cut)
	if err != nil || ck == nil || ck.Progress.World != 2 {
		t.Fatalf("checkpoint after Ctrl-C: %+v, %v", ck, err)
	}
	if ck.Progress.Step >= 3000 {
		t.Skip("the run finished before the signal arrived")
	}
	t.Logf("interrupted at step %d", ck.Progress.Step)
	mustLoracc(t, append(seedTrainArgs(injected, data, cut, steps), "--nproc-per-node", "2", "--resume")...)
	if a, b := lossColumn(t, full), lossColumn(t, cut); strings.Join(a, "\n") != strings.Join(b, "\n") {
		t.Errorf("loss column after Ctrl-C and --resume differs from the uninterrupted run (%d vs %d rows)", len(a), len(b))
	}
}
