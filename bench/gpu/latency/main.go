// Command latency times Session.Run of one ONNX model with package runtime:
// it loads the model once, feeds the same seeded inputs every run and
// prints one JSON line with the median (and min, max, first) of N timed
// runs after W untimed warm-ups.
//
// Inputs are made from the model's declared inputs: integer inputs get
// random token ids in [0, -vocab) shaped [-batch, -seq] (symbolic dims in
// that order); float32 inputs of static shape get zeros, except scalars:
// an input named "step" gets 1 and other float scalars get 1e-4 (the
// learning rate of a train.onnx). So the same tool times a plain model, an
// injected one, a fused one, and train.onnx / eval.onnx from export-train.
//
//	latency -model m.onnx -device cuda -batch 8 -seq 512 -n 20
package main

import (
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	goruntime "runtime"
	"slices"
	"strings"
	"time"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/runtime"
)

func main() {
	model := flag.String("model", "", "ONNX model to run")
	device := flag.String("device", "cpu", "cpu or cuda")
	batch := flag.Int64("batch", 1, "size of the first symbolic dim")
	seq := flag.Int64("seq", 128, "size of the second symbolic dim")
	vocab := flag.Int64("vocab", 50257, "token ids are drawn from [0, vocab)")
	n := flag.Int("n", 20, "timed runs")
	warmup := flag.Int("warmup", 3, "untimed runs first")
	outputs := flag.String("outputs", "", "comma-separated outputs to fetch (default: all)")
	threads := flag.Int("threads", 0, "intra-op threads (0: ORT's default)")
	label := flag.String("label", "", "free text copied into the result")
	lib := flag.String("ort-lib", "", "libonnxruntime.so (default: LORACC_ORT_LIB, then loracc's cache)")
	profile := flag.String("profile", "", "write ONNX Runtime's per-node profile to PREFIX_<date>.json")
	optimized := flag.String("optimized", "", "save the model ONNX Runtime runs, after its graph optimizations, to PATH")
	flag.Parse()
	// ONNX Runtime's CUDA provider keeps its handles per OS thread: time
	// every run on one, as loracc train runs its steps.
	goruntime.LockOSThread()
	if err := run(*model, *device, *batch, *seq, *vocab, *n, *warmup, *outputs, *threads, *label, *lib, *profile, *optimized); err != nil {
		fmt.Fprintln(os.Stderr, "latency:", err)
		os.Exit(1)
	}
}

type result struct {
	Label    string  `json:"label,omitempty"`
	Model    string  `json:"model"`
	Device   string  `json:"device"`
	Batch    int64   `json:"batch"`
	Seq      int64   `json:"seq"`
	Runs     int     `json:"runs"`
	Warmup   int     `json:"warmup"`
	Outputs  string  `json:"outputs"`
	SessionS float64 `json:"session_s"`
	FirstMS  float64 `json:"first_ms"`
	MedianMS float64 `json:"median_ms"`
	MinMS    float64 `json:"min_ms"`
	MaxMS    float64 `json:"max_ms"`
	InBytes  int64   `json:"input_bytes"`
	OutBytes int64   `json:"output_bytes"`
	ORT      string  `json:"ort_version"`
	Threads  int     `json:"threads"`
}

func run(model, device string, batch, seq, vocab int64, n, warmup int, outs string, threads int, label, lib, profile, optimized string) error {
	if model == "" {
		return fmt.Errorf("give -model")
	}
	if n < 1 {
		return fmt.Errorf("-n %d: want at least 1", n)
	}
	path, err := runtime.FindLibrary(lib)
	if err != nil {
		return err
	}
	env, err := runtime.Open(path)
	if err != nil {
		return err
	}
	defer env.Close()
	t0 := time.Now()
	s, err := env.NewSession(model, runtime.SessionOptions{Device: device, IntraOpThreads: threads, ProfilePrefix: profile, OptimizedModelPath: optimized})
	if err != nil {
		return err
	}
	defer s.Close()
	res := result{Label: label, Model: model, Device: device, Batch: batch, Seq: seq, Runs: n, Warmup: warmup,
		SessionS: time.Since(t0).Seconds(), ORT: env.Version(), Threads: threads}
	rng := rand.New(rand.NewPCG(1, 2))
	feeds := map[string]runtime.Tensor{}
	for _, in := range s.Inputs() {
		t, err := makeInput(in, batch, seq, vocab, rng)
		if err != nil {
			return err
		}
		feeds[in.Name] = t
		res.InBytes += int64(len(t.Data))
	}
	var want []string
	if outs != "" {
		want = strings.Split(outs, ",")
		res.Outputs = outs
	} else {
		res.Outputs = "all"
	}
	times := make([]float64, 0, n)
	for i := 0; i < warmup+n; i++ {
		start := time.Now()
		got, err := s.Run(feeds, want)
		if err != nil {
			return err
		}
		ms := float64(time.Since(start).Microseconds()) / 1000
		if i == 0 {
			res.FirstMS = ms
			for _, t := range got {
				res.OutBytes += int64(len(t.Data))
			}
		}
		if i >= warmup {
			times = append(times, ms)
		}
	}
	slices.Sort(times)
	res.MinMS, res.MaxMS = times[0], times[len(times)-1]
	if len(times)%2 == 1 {
		res.MedianMS = times[len(times)/2]
	} else {
		res.MedianMS = (times[len(times)/2-1] + times[len(times)/2]) / 2
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// makeInput builds the feed for one declared input (see the package doc).
func makeInput(in runtime.IOInfo, batch, seq, vocab int64, rng *rand.Rand) (runtime.Tensor, error) {
	if in.Shape == nil {
		return runtime.Tensor{}, fmt.Errorf("input %q has no declared shape", in.Name)
	}
	shape := make([]int64, len(in.Shape))
	sym := 0
	count := int64(1)
	for i, d := range in.Shape {
		if d < 0 {
			switch sym {
			case 0:
				d = batch
			case 1:
				d = seq
			default:
				return runtime.Tensor{}, fmt.Errorf("input %q: more than two symbolic dims", in.Name)
			}
			sym++
		}
		shape[i] = d
		count *= d
	}
	switch in.DType {
	case graph.Int64, graph.Int32:
		size := 8
		if in.DType == graph.Int32 {
			size = 4
		}
		data := make([]byte, count*int64(size))
		for i := int64(0); i < count; i++ {
			v := rng.Int64N(vocab)
			if size == 8 {
				binary.LittleEndian.PutUint64(data[8*i:], uint64(v))
			} else {
				binary.LittleEndian.PutUint32(data[4*i:], uint32(v))
			}
		}
		return runtime.Tensor{DType: in.DType, Shape: shape, Data: data}, nil
	case graph.Float:
		if len(shape) == 0 {
			v := float32(1e-4)
			if in.Name == "step" {
				v = 1
			}
			return runtime.Tensor{DType: graph.Float, Shape: shape, Data: binary.LittleEndian.AppendUint32(nil, math.Float32bits(v))}, nil
		}
		return runtime.Tensor{DType: graph.Float, Shape: shape, Data: make([]byte, 4*count)}, nil
	}
	return runtime.Tensor{}, fmt.Errorf("input %q: dtype %s not handled", in.Name, in.DType)
}
