// Package ortest opens ONNX Runtime for tests: it skips a test, saying
// why, where no library is installed, but fails it when
// LORACC_REQUIRE_ORT is set (the project's test command sets it), so CI
// cannot pass by skipping.
package ortest

import (
	"os"
	"testing"

	"github.com/loracc/loracc/runtime"
)

// Env opens the library runtime.FindLibrary finds and closes it when the
// test ends.
func Env(t testing.TB) *runtime.Env {
	t.Helper()
	lib, err := runtime.FindLibrary("")
	if err != nil {
		if os.Getenv("LORACC_REQUIRE_ORT") != "" {
			t.Fatal(err)
		}
		t.Skipf("no onnxruntime library (run scripts/fetch-ort.sh): %v", err)
	}
	e, err := runtime.Open(lib)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("closing onnxruntime: %v", err)
		}
	})
	return e
}
