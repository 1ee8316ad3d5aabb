// Command genai-folder writes the tiny onnxruntime-genai-form Llama of
// package testmodels as the model builder lays out a folder (model.onnx,
// every weight in model.onnx.data, genai_config.json), for checks that run
// where Go does not (testdata/torch/make_interop.sh prepares them here,
// Python onnxruntime runs them on the GPU machine).
//
// Usage: go run ./internal/testmodels/cmd/genai-folder [-packed] [-int4] DIR
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/loracc/loracc/internal/testmodels"
)

func main() {
	packed := flag.Bool("packed", false, "one qkv_proj per layer, as the builder writes without LoRA")
	int4 := flag.Bool("int4", false, "MatMulNBits weights (block 32)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: genai-folder [-packed] [-int4] DIR")
		os.Exit(2)
	}
	if err := write(flag.Arg(0), *packed, *int4); err != nil {
		fmt.Fprintln(os.Stderr, "genai-folder:", err)
		os.Exit(1)
	}
}

func write(dir string, packed, int4 bool) error {
	o := testmodels.TinyGenai()
	o.Packed, o.Int4 = packed, int4
	return testmodels.WriteGenaiFolder(dir, o)
}
