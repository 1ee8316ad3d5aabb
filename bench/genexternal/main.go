// Command genexternal writes the external-data benchmark model: a chain of
// MatMul layers whose [hidden, hidden] fp32 weights live in MODEL.data.
//
//	go run ./bench/genexternal -layers 2 -hidden 16384 -o /tmp/big/model.onnx
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/testmodels"
)

func main() {
	layers := flag.Int("layers", 2, "number of MatMul layers")
	hidden := flag.Int("hidden", 16384, "hidden size (each weight is 4·hidden² bytes)")
	out := flag.String("o", "model.onnx", "output model; weights go to OUT.data")
	flag.Parse()
	m, err := testmodels.ExternalMLP(*layers, *hidden)
	if err == nil {
		err = graph.Save(m, *out, graph.SaveOptions{Externalize: true})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "genexternal:", err)
		os.Exit(1)
	}
}
