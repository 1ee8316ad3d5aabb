package train

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// FuzzResumeProgress: whatever a checkpoint's progress.json holds (a
// hostile or stale file, a position past the data, negative counts,
// other data's fingerprint), resuming either refuses it with an error or
// runs to the end; it never panics. The checkpoint comes from a real fake
// run; only its progress.json is replaced.
func FuzzResumeProgress(f *testing.F) {
	base := fakeConfig(f, 6, 2, 7)
	ctx, cancel := context.WithCancel(context.Background())
	base.OnStep = func(step int) {
		if step == 3 {
			cancel()
		}
	}
	if fr := runFakeCtx(f, ctx, base, nil); fr.err != nil {
		f.Fatal(fr.err)
	}
	ck, err := LoadLatest(base.Run)
	if err != nil || ck == nil {
		f.Fatalf("no checkpoint: %v", err)
	}
	good, _ := json.Marshal(ck.Progress)
	f.Add(good)
	for _, p := range []Progress{
		{Step: 3, Epoch: 1, Position: 99, Seed: 7, Examples: 6, Data: ck.Progress.Data},
		{Step: -1, Epoch: -5, Position: -2, Seed: 7},
		{Step: 1 << 40, Epoch: 1 << 40, Position: 5, Seed: 7, Examples: 6, Data: ck.Progress.Data},
		{Step: 3, Position: 1, Seed: 8, Examples: 600, Data: "other"},
	} {
		b, _ := json.Marshal(p)
		f.Add(b)
	}
	f.Add([]byte(`{"step": 1e309}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg := base
		cfg.Run, cfg.OnStep, cfg.Resume, cfg.MaxSteps = t.TempDir(), nil, true, 9
		if err := os.CopyFS(cfg.Run, os.DirFS(base.Run)); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(cfg.Run, ck.Dir[len(base.Run)+1:], "progress.json")
		if err := os.Chmod(path, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		fr := runFake(t, cfg, nil)
		if fr.err == nil && (fr.res == nil || fr.res.Steps < 0) {
			t.Fatalf("resumed without an error but with result %+v", fr.res)
		}
	})
}
