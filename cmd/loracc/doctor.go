package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/runtime"
	"github.com/urfave/cli/v2"
)

func doctorCommand() *cli.Command {
	return &cli.Command{
		Name:      "doctor",
		Usage:     "report the ONNX Runtime library, the execution providers it can use and the GPU; with a compiled step, whether CUDA can record it as a graph",
		UsageText: "doctor [TRAIN.onnx]",
		Action: func(c *cli.Context) error {
			if c.Args().Len() > 1 {
				return fmt.Errorf("doctor: at most one model, got %q", strings.Join(c.Args().Slice(), " "))
			}
			w := c.App.Writer
			lib, err := runtime.FindLibrary(c.String("ort-lib"))
			if err != nil {
				fmt.Fprintf(w, "onnxruntime: not found (%v)\n", err)
				return err
			}
			env, err := runtime.Open(lib)
			if err != nil {
				fmt.Fprintf(w, "onnxruntime: %s cannot be loaded: %v\n", lib, err)
				return err
			}
			defer env.Close()
			fmt.Fprintf(w, "onnxruntime: %s (version %s)\n", lib, env.Version())
			model, err := probeModel()
			if err != nil {
				return err
			}
			fmt.Fprintln(w, "providers:")
			fmt.Fprintln(w, "  cpu:  ok")
			cuda := providerStatus(env, model, "cuda", filepath.Dir(lib))
			fmt.Fprintf(w, "  cuda: %s\n", cuda)
			fmt.Fprintf(w, "gpu: %s\n", gpuName())
			if n, err := runtime.OpenNCCL(os.Getenv("LORACC_NCCL_LIB")); err != nil {
				fmt.Fprintf(w, "nccl: not found (%v); train --comm tcp sums gradients without it\n", err)
			} else if v, err := n.Version(); err != nil {
				fmt.Fprintf(w, "nccl: loaded, but ncclGetVersion failed: %v\n", err)
			} else {
				fmt.Fprintf(w, "nccl: %s\n", v)
			}
			if model := c.Args().First(); model != "" {
				switch {
				case cuda != "ok":
					fmt.Fprintf(w, "cuda graph for %s: cannot be checked without the CUDA provider\n", model)
				default:
					if err := env.CanCapture(model, runtime.SessionOptions{}); err != nil {
						fmt.Fprintf(w, "cuda graph for %s: cannot be recorded (%s); train runs it unrecorded\n", model, firstLine(err.Error()))
					} else {
						fmt.Fprintf(w, "cuda graph for %s: can be recorded\n", model)
					}
				}
			}
			return nil
		},
	}
}

// probeModel is a one-node model for trying providers.
func probeModel() ([]byte, error) {
	m := graph.NewModel(17)
	x := m.Graph.AddInput("x", &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Value: 1}}})
	b := &graph.Builder{G: m.Graph}
	y := b.Op("Relu", "y", []*graph.Value{x})
	y.Type = x.Type
	m.Graph.AddOutput(y)
	return graph.Encode(m)
}

func providerStatus(env *runtime.Env, model []byte, device, libDir string) string {
	s, err := env.NewSessionFromBytes(model, runtime.SessionOptions{Device: device})
	if err != nil {
		msg := firstLine(err.Error())
		if strings.Contains(msg, "providers_shared") || strings.Contains(msg, "providers_cuda") {
			return fmt.Sprintf("unavailable: the CUDA provider libraries are not beside the core in %s (%s); see README \"GPU\"", libDir, msg)
		}
		return "unavailable: " + msg
	}
	defer s.Close()
	if _, err := s.Run(map[string]runtime.Tensor{"x": runtime.FloatTensor([]int64{1}, []float32{-1})}, nil); err != nil {
		return "loads but fails to run: " + firstLine(err.Error())
	}
	return "ok"
}

// gpuName asks nvidia-smi, which comes with the driver.
func gpuName() string {
	out, err := exec.Command("nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader").Output()
	if err != nil {
		return "none found (no nvidia-smi)"
	}
	return strings.TrimSpace(string(out))
}
