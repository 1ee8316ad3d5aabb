// Package golden is the snapshot check of the tests: printed graphs and
// inference dumps are compared with files under the package's testdata/,
// and UPDATE_SNAPSHOTS=1 rewrites them (as esbuild's snapshot tests do).
package golden

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Check compares got with testdata/<name>, rewriting the file when
// UPDATE_SNAPSHOTS is set; a difference is reported at its first line.
func Check(t testing.TB, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if os.Getenv("UPDATE_SNAPSHOTS") != "" {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with UPDATE_SNAPSHOTS=1 to create it)", err)
	}
	if string(want) != got {
		t.Errorf("%s changed (UPDATE_SNAPSHOTS=1 refreshes it):\n%s", path, FirstDiff(string(want), got))
	}
}

// FirstDiff shows the first line where got and want part.
func FirstDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := range max(len(w), len(g)) {
		var a, b string
		if i < len(w) {
			a = w[i]
		}
		if i < len(g) {
			b = g[i]
		}
		if a != b {
			return fmt.Sprintf("line %d:\n  want %s\n  got  %s", i+1, a, b)
		}
	}
	return "(no line differs)"
}
