package rewrite

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/graph"
)

// golden compares text with testdata/<name>, rewriting it when
// UPDATE_SNAPSHOTS=1.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if os.Getenv("UPDATE_SNAPSHOTS") != "" {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
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
		t.Errorf("%s changed (UPDATE_SNAPSHOTS=1 refreshes it):\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

func TestGoldenSeedInject(t *testing.T) {
	m := seedModel(t)
	c := &Context{Config: adapter.NewConfig(2, 4), Init: Init{Method: "kaiming", Seed: 1}, Verify: true}
	if err := Run(m, c, "inject"); err != nil {
		t.Fatal(err)
	}
	golden(t, "seed_inject.txt", graph.Format(m))
	adaptersAsInputs := seedModel(t)
	c = &Context{Config: adapter.NewConfig(2, 2), AdapterInputs: true, Verify: true}
	if err := Run(adaptersAsInputs, c, "inject"); err != nil {
		t.Fatal(err)
	}
	golden(t, "seed_inject_inputs.txt", graph.Format(adaptersAsInputs))
}
