package tokenizer

import (
	"math/rand/v2"
	"strings"
	"testing"
)

// BenchmarkEncode encodes the corpus repeated to about 4 MB, line by
// line, with each real tokenizer: MB/s from b.SetBytes, tokens/s as a
// metric. make_expected.py times HF on the same text. Repeated lines hit
// the word cache, whole lines too for Llama-2 (no pre-tokenizer), so
// BenchmarkEncodeFresh measures lines never seen before.
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
	benchEncode(b, text, size)
}

// BenchmarkEncodeFresh encodes 4 MB of distinct lines made of corpus
// words in random order (seeded), so whole-line caching cannot help.
func BenchmarkEncodeFresh(b *testing.B) {
	var words []string
	for _, l := range readCorpus(b) {
		words = append(words, strings.Fields(l)...)
	}
	r := rand.New(rand.NewPCG(7, 8))
	var text []string
	size := 0
	for size < 4<<20 {
		var sb strings.Builder
		for k := 3 + r.IntN(25); k > 0; k-- {
			if sb.Len() > 0 {
				sb.WriteByte(' ')
			}
			sb.WriteString(words[r.IntN(len(words))])
		}
		text = append(text, sb.String())
		size += sb.Len()
	}
	benchEncode(b, text, size)
}

func benchEncode(b *testing.B, text []string, size int) {
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
