package tokenizer

import (
	"fmt"
	"strings"
	"time"

	"github.com/dlclark/regexp2/v2"
)

// pattern finds the [start, end) byte ranges a Split pre-tokenizer or a
// Replace normalizer acts on.
type pattern interface {
	findAll(s string, dst [][2]int) ([][2]int, error)
}

// literal is tokenizer.json's {"String": ...} pattern.
type literal string

func (l literal) findAll(s string, out [][2]int) ([][2]int, error) {
	if l == "" {
		return out, nil
	}
	for off := 0; ; {
		i := strings.Index(s[off:], string(l))
		if i < 0 {
			return out, nil
		}
		out = append(out, [2]int{off + i, off + i + len(l)})
		off += i + len(l)
	}
}

// matchTimeout bounds one regex match. The pre-tokenizer regexes of the
// supported families run in linear time, but a tokenizer.json may carry
// any pattern and regexp2 backtracks: a hostile pattern or input then
// fails Encode instead of hanging it.
const matchTimeout = 2 * time.Second

// regex is tokenizer.json's {"Regex": ...} pattern. HF runs these with
// Oniguruma; regexp2 (a .NET-style backtracking engine) is used because Go's
// RE2 engine has no look-ahead, which the GPT-2, Llama-3 and Qwen patterns
// need (`\s+(?!\S)`). For those known patterns a hand-written scanner
// (scan.go) gives the same splits much faster.
type regex struct {
	src  string
	re   *regexp2.Regexp
	fast func(s string, dst [][2]int) [][2]int
}

// compileRegex uses regexp2's default (.NET) options: there \s, \w, \d and
// \p{...} are Unicode classes and (?i) folds by Unicode (ſ matches s), as
// in Oniguruma; the ECMAScript option would narrow \w and \d to ASCII and
// RE2 mode changes other syntax. The backtracking stack is capped too.
func compileRegex(src string) (*regex, error) {
	re, err := regexp2.Compile(src, regexp2.RegexOptions(0), regexp2.OptionMaxBacktrackingStackSize(1<<20))
	if err != nil {
		return nil, fmt.Errorf("regex %q: %w", src, err)
	}
	re.MatchTimeout = matchTimeout
	return &regex{src: src, re: re, fast: fastScanner(src)}, nil
}

func (r *regex) findAll(s string, dst [][2]int) ([][2]int, error) {
	if r.fast != nil {
		return r.fast(s, dst), nil
	}
	return r.slowFindAll(s, dst)
}

func (r *regex) slowFindAll(s string, out [][2]int) ([][2]int, error) {
	idx, err := r.re.FindAllStringIndex(s, -1)
	if err != nil {
		return nil, fmt.Errorf("regex %q on a %d-byte piece: %w", r.src, len(s), err)
	}
	for _, m := range idx {
		out = append(out, [2]int{m[0], m[1]})
	}
	return out, nil
}
