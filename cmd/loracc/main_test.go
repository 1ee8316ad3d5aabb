package main

import (
	"os"
	"testing"
)

// TestMain makes the test binary loracc itself when LORACC_TEST_AS_MAIN
// is 1: `train --nproc-per-node` starts copies of os.Executable(), which
// under `go test` is this binary, so the data-parallel tests launch real
// rank processes without building the command first.
func TestMain(m *testing.M) {
	if os.Getenv("LORACC_TEST_AS_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}
