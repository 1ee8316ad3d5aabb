package tokenizer

import "testing"

// BenchmarkEncode encodes the corpus repeated to about 4 MB, line by
// line, with each real tokenizer: MB/s from b.SetBytes, tokens/s as a
// metric.
func BenchmarkEncode(b *testing.B) {
	lines := readCorpus(b)
	var text []string
	size := 0
	for size < 4<<20 {
		for _, l := range lines {
			text = append(text, l)
			size += len(l)
		}
	}
	for _, name := range []string{"gpt2", "llama3", "qwen3", "llama2"} {
		b.Run(name, func(b *testing.B) {
			tk := loadReal(b, name)
			b.SetBytes(int64(size))
			b.ResetTimer()
			tokens := 0
			for i := 0; i < b.N; i++ {
				for _, l := range text {
					ids, err := tk.Encode(l, false)
					if err != nil {
						b.Fatal(err)
					}
					tokens += len(ids)
				}
			}
			b.ReportMetric(float64(tokens)/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}
