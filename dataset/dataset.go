// Package dataset reads training data for `loracc train`: JSONL, one
// example per line, an object mapping the train graph's data inputs (and
// the labels) to nested arrays of numbers for that one example, without the
// batch dimension. Load checks every line against the graph's dtypes and
// shapes, so a bad example fails before the first step, naming its line;
// Batch stacks examples into the tensors a step feeds, padding lm sequences
// and building the attention mask.
//
// For the lm loss a file may instead hold text records — {"text": ...},
// {"prompt": ..., "completion": ...} or {"messages": [...]} — which Load
// tokenises with the model's tokenizer (and chat template) into token-id
// examples whose labels hide what the loss must not count; text.go and
// textload.go say how.
package dataset

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/loracc/loracc/graph"
)

// maxLine bounds one line, so a file without newlines cannot make Load
// buffer all of it before failing.
const maxLine = 64 << 20

// Set is a loaded data file. It is not changed after Load, so Batch and
// Tokens may be called from several goroutines.
type Set struct {
	spec       Spec
	fields     []*field // in the order of Spec.Inputs
	byName     map[string]*field
	ids        *field // nil if the graph takes no integer input besides labels and mask
	labels     *field
	mask       *field // nil without Spec.MaskInput
	batchNames []string
	lines      []int // per example: its line in the file
	n          int
	sum        hash.Hash // over the examples' lines, for Fingerprint
	stats      Stats
}

// Load reads and checks a JSONL file against spec. The first bad line
// fails it, with an error starting "path:line:". A file whose first
// record is text (Format) is tokenised first, with spec.Text.
func Load(path string, spec Spec) (*Set, error) {
	s, err := compile(spec)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	format, err := s.sniff(path)
	if err != nil {
		return nil, err
	}
	if format != FormatIDs {
		if err := s.loadText(path, format); err != nil {
			return nil, err
		}
		return s, nil
	}
	f, _, err := graph.OpenRegular(path)
	if err != nil {
		return nil, fmt.Errorf("dataset: %w", err)
	}
	defer f.Close()
	if err := s.read(f, path, maxLine); err != nil {
		return nil, err
	}
	s.stats = Stats{Format: FormatIDs, Records: s.n, Examples: s.n}
	return s, nil
}

// Stats says how the file's records became examples: its format and, for
// text records, how many were truncated or skipped and where the tokens
// are cached.
func (s *Set) Stats() Stats { return s.stats }

// read fills s from r; name is the file name for errors.
func (s *Set) read(r io.Reader, name string, limit int) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, min(64<<10, limit)), limit)
	var p parser
	seen := make([]bool, len(s.fields))
	lineNo := 0
	for sc.Scan() {
		lineNo++
		line := sc.Bytes()
		if lineNo == 1 {
			line = bytes.TrimPrefix(line, []byte("\xef\xbb\xbf"))
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if err := s.addLine(&p, line, seen); err != nil {
			return fmt.Errorf("%s:%d: %w", name, lineNo, err)
		}
		s.sum.Write(line)
		s.sum.Write([]byte{'\n'})
		s.lines = append(s.lines, lineNo)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("%s:%d: line longer than %d bytes: %w", name, lineNo+1, limit, err)
		}
		return fmt.Errorf("%s:%d: %w", name, lineNo+1, err)
	}
	switch {
	case s.n == 0 && lineNo > 0:
		return fmt.Errorf("%s: no examples (%d lines, all blank)", name, lineNo)
	case s.n == 0:
		return fmt.Errorf("%s: no examples (the file is empty)", name)
	}
	return nil
}

// names lists the fields a line may have, for the unknown-field message.
func (s *Set) names() string {
	var out []string
	for _, f := range s.fields {
		out = append(out, f.name)
	}
	return strings.Join(out, ", ")
}

// shorten cuts an unknown key for a message: it may be megabytes long.
func shorten(key string) string {
	if len(key) <= 64 {
		return key
	}
	cut := 64
	for cut > 0 && !utf8.RuneStart(key[cut]) {
		cut--
	}
	return key[:cut] + "…"
}

// addLine parses one example and appends it to the fields' stores.
func (s *Set) addLine(p *parser, line []byte, seen []bool) error {
	p.b, p.pos = line, 0
	clear(seen)
	p.ws()
	if c := p.peek(); c != '{' {
		if w := what(c); w != "" {
			return fmt.Errorf("expected a JSON object, got %s", w)
		}
		return p.unexpected()
	}
	p.pos++
	p.ws()
	if p.peek() == '}' {
		p.pos++
	} else {
		for {
			p.ws()
			key, err := p.str()
			if err != nil {
				return err
			}
			p.ws()
			if p.peek() != ':' {
				return p.unexpected()
			}
			p.pos++
			f := s.byName[key]
			if f == nil {
				return fmt.Errorf("field %q: unknown; the graph takes %s", shorten(key), s.names())
			}
			if seen[f.i] {
				return fmt.Errorf("field %q: appears twice", key)
			}
			seen[f.i] = true
			if err := s.addValue(p, f); err != nil {
				return fmt.Errorf("field %q: %w", key, err)
			}
			p.ws()
			if p.peek() == ',' {
				p.pos++
				continue
			}
			if p.peek() != '}' {
				return p.unexpected()
			}
			p.pos++
			break
		}
	}
	p.ws()
	if p.pos < len(p.b) {
		return p.syntax("data after the object at column %d", p.pos+1)
	}
	for i, f := range s.fields {
		if !seen[i] {
			if f.role != roleMask {
				return fmt.Errorf("field %q: missing", f.name)
			}
			f.start = append(f.start, -1)
			f.shapes = append(f.shapes, make([]int64, len(f.dims))...)
		}
	}
	s.n++
	return s.checkExample(s.n - 1)
}

// addValue reads one field's value and records its offset and shape.
func (s *Set) addValue(p *parser, f *field) error {
	start := len(f.ints)
	if f.kind == kFloat32 {
		start = len(f.floats)
	}
	if err := p.value(f); err != nil {
		return err
	}
	if err := s.checkRange(f, start); err != nil {
		return err
	}
	for j, d := range f.dims {
		if d.size >= 0 && p.dims[j] != d.size {
			return fmt.Errorf("expected %s, got shape %s", f.describe(), intList(p.dims))
		}
	}
	f.start = append(f.start, start)
	f.shapes = append(f.shapes, p.dims...)
	return nil
}

// shape is example i's shape in field f; a mask the data lacks has the
// input ids' shape.
func (s *Set) shape(f *field, i int) []int64 {
	if f.start[i] < 0 {
		f = s.ids
	}
	r := len(f.dims)
	return f.shapes[i*r : (i+1)*r]
}

// count is the element count of a shape the loader has validated.
func count(shape []int64) int {
	n, _ := graph.NumElements(shape)
	return int(n)
}

// checkExample checks what one field cannot check alone: lm sequences of
// one example have one length, a mask has the ids' shape, and dims the
// graph gives the same name have the same size.
func (s *Set) checkExample(i int) error {
	if s.ids != nil && s.ids.seq && s.spec.MaxLength > 0 {
		if n := s.shape(s.ids, i)[0]; n > int64(s.spec.MaxLength) {
			return fmt.Errorf("field %q: %d tokens, more than the maximum length %d; token data is not truncated", s.ids.name, n, s.spec.MaxLength)
		}
	}
	var first *field
	for _, f := range s.fields {
		if !f.seq || f.start[i] < 0 {
			continue
		}
		if first == nil {
			first = f
		} else if a, b := s.shape(f, i)[0], s.shape(first, i)[0]; a != b {
			return fmt.Errorf("field %q: sequence length %d differs from field %q's %d", f.name, a, first.name, b)
		}
	}
	if m := s.mask; m != nil {
		got, want := s.shape(m, i), s.shape(s.ids, i)
		if m.start[i] >= 0 && intList(got) != intList(want) {
			return fmt.Errorf("field %q: shape %s differs from field %q's %s", m.name, intList(got), s.ids.name, intList(want))
		}
		for j, d := range m.dims {
			if d.size >= 0 && got[j] != d.size {
				return fmt.Errorf("field %q: built from field %q's shape %s, but the graph takes %s", m.name, s.ids.name, intList(got), dimList(m.dims))
			}
		}
	}
	type named struct {
		size  int64
		field string
	}
	var sizes map[string]named
	for _, f := range s.fields {
		if f.start[i] < 0 {
			continue
		}
		sh := s.shape(f, i)
		for j, d := range f.dims {
			if d.size >= 0 || d.name == "" || d.name == "?" || s.isBatchName(d.name) {
				continue
			}
			if sizes == nil {
				sizes = map[string]named{}
			}
			if prev, ok := sizes[d.name]; !ok {
				sizes[d.name] = named{sh[j], f.name}
			} else if prev.size != sh[j] {
				return fmt.Errorf("field %q: dim %q is %d here but %d in field %q", f.name, d.name, sh[j], prev.size, prev.field)
			}
		}
	}
	return nil
}

func (s *Set) isBatchName(name string) bool {
	for _, b := range s.batchNames {
		if b == name {
			return true
		}
	}
	return false
}

// Fingerprint identifies the examples: a SHA-256 over their lines, so
// blank lines and line endings do not count but any change to an example
// does. A checkpoint records it to refuse a resume on other data.
func (s *Set) Fingerprint() string {
	return fmt.Sprintf("sha256:%x", s.sum.Sum(nil))
}

// Len is the number of examples.
func (s *Set) Len() int { return s.n }

// DimNames are the graph's names for the batch dim and, for lm data, the
// sequence dim ("" where the graph fixes the size), read from the first
// sequence field (the first field when none is).
func (s *Set) DimNames() (batch, seq string) {
	for _, f := range s.fields {
		if f.seq {
			return f.batch.name, f.dims[0].name
		}
	}
	if len(s.fields) > 0 && s.fields[0].batch.size < 0 {
		return s.fields[0].batch.name, ""
	}
	return "", ""
}

// SeqLen is example i's sequence length for lm data (its input ids'
// length), 0 for other losses. i must be in [0, Len()).
func (s *Set) SeqLen(i int) int {
	for _, f := range s.fields {
		if f.seq && f.start[i] >= 0 {
			return int(s.shape(f, i)[0])
		}
	}
	return 0
}

// Unit names what throughput counts for this data: "tokens" for the lm
// loss, "examples" for ce and mse, whose examples are not token streams.
func (s *Set) Unit() string {
	if s.spec.Loss == "lm" {
		return "tokens"
	}
	return "examples"
}

// Work is example i's count in Unit: its counted tokens (Tokens) for lm,
// else 1.
func (s *Set) Work(i int) int {
	if s.spec.Loss == "lm" {
		return s.Tokens(i)
	}
	return 1
}

// Tokens is example i's weight in the mean loss: for lm and ce the
// labels the loss counts (not equal to IgnoreIndex; for lm from the second
// position on, since the loss predicts labels[1:]), for mse the number of
// label elements. i must be in [0, Len()).
func (s *Set) Tokens(i int) int {
	f := s.labels
	n := count(s.shape(f, i))
	if s.spec.Loss == "mse" {
		return n
	}
	lo := f.start[i]
	vals := f.ints[lo : lo+n]
	if s.spec.Loss == "lm" && len(f.dims) == 1 && len(vals) > 0 {
		vals = vals[1:]
	}
	t := 0
	for _, v := range vals {
		if v != s.spec.IgnoreIndex {
			t++
		}
	}
	return t
}
