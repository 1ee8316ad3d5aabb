package adapter

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzReadConfig: any adapter_config.json either fails with an error or
// gives a config that validates, encodes and reads back the same.
func FuzzReadConfig(f *testing.F) {
	if data, err := os.ReadFile("../testdata/ref/gpt2_tiny_lora_init/adapter_config.json"); err == nil {
		f.Add(data)
	}
	f.Add([]byte(`{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"], "rank_pattern": {"q": 4}}`))
	f.Add([]byte(`{"peft_type": "LORA", "r": -1}`))
	f.Add([]byte(`{"peft_type": "LORA", "target_modules": "(q|v)_proj", "init_lora_weights": "gaussian"}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "adapter_config.json")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		cfg, err := ReadConfig(path)
		if err != nil {
			return
		}
		out, err := EncodeConfig(cfg)
		if err != nil {
			t.Fatalf("valid config does not encode: %v", err)
		}
		if err := os.WriteFile(path, out, 0o644); err != nil {
			t.Fatal(err)
		}
		again, err := ReadConfig(path)
		if err != nil {
			t.Fatalf("our own encoding does not read back: %v\n%s", err, out)
		}
		for _, name := range []string{"model.layers.0.q_proj", "x"} {
			if cfg.Rank(name) != again.Rank(name) || cfg.Scale(name) != again.Scale(name) {
				t.Fatalf("rank/scale of %q changed after a round trip", name)
			}
		}
	})
}
