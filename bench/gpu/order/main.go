// Command order prints, as a JSON list, the order in which `loracc train`
// visits n examples in one epoch (dataset.Order with the run's --seed), so
// the PyTorch side of bench/gpu can feed the same batches in the same order.
//
//	order -n 400 -seed 0 -epoch 0 > order.json
package main

import (
	"encoding/json"
	"flag"
	"os"

	"github.com/loracc/loracc/dataset"
)

func main() {
	n := flag.Int("n", 400, "number of examples")
	seed := flag.Uint64("seed", 0, "loracc train --seed")
	epoch := flag.Int("epoch", 0, "epoch (0-based)")
	flag.Parse()
	if err := json.NewEncoder(os.Stdout).Encode(dataset.Order(*n, *seed, *epoch)); err != nil {
		os.Exit(1)
	}
}
