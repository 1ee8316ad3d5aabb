package dataset

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// BenchmarkLoad reads 2,000 lm examples of 512 tokens (about 8 MB).
func BenchmarkLoad(b *testing.B) {
	var sb strings.Builder
	for i := range 2000 {
		ids := make([]string, 512)
		for j := range ids {
			ids[j] = fmt.Sprint((i*512 + j) % 50257)
		}
		l := strings.Join(ids, ", ")
		fmt.Fprintf(&sb, "{\"input_ids\": [%s], \"labels\": [%s]}\n", l, l)
	}
	path := filepath.Join(b.TempDir(), "train.jsonl")
	if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(sb.Len()))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Load(path, lmSpec(b)); err != nil {
			b.Fatal(err)
		}
	}
}
