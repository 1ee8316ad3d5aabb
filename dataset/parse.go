package dataset

// A small JSON reader for one line of the data. encoding/json would decode
// every number into an interface tree (tens of bytes per token) and lose
// the line's structure for error messages; this one appends numbers
// straight into a field's store, checks the nesting against the graph's
// rank while it reads, and knows where it is ("[3][1]") when it fails.

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// parser reads one line. dims and idx are per-field scratch: the size seen
// at each depth (-1 until the first array there closes) and the index of
// the element being read at each depth.
type parser struct {
	b    []byte
	pos  int
	dims []int64
	idx  []int
}

// syntaxError is a line that is not JSON.
type syntaxError struct{ msg string }

func (e *syntaxError) Error() string { return "not JSON: " + e.msg }

func (p *parser) syntax(format string, args ...any) error {
	return &syntaxError{msg: fmt.Sprintf(format, args...)}
}

// unexpected describes the byte at pos for a syntax error.
func (p *parser) unexpected() error {
	if p.pos >= len(p.b) {
		return p.syntax("unexpected end of line")
	}
	r, _ := utf8.DecodeRune(p.b[p.pos:])
	return p.syntax("unexpected %q at column %d", r, p.pos+1)
}

func (p *parser) ws() {
	for p.pos < len(p.b) {
		switch p.b[p.pos] {
		case ' ', '\t', '\r', '\n':
			p.pos++
		default:
			return
		}
	}
}

func (p *parser) peek() byte {
	if p.pos < len(p.b) {
		return p.b[p.pos]
	}
	return 0
}

// what names the kind of JSON value starting with c, for "got ..." messages.
func what(c byte) string {
	switch {
	case c == '[':
		return "an array"
	case c == '{':
		return "an object"
	case c == '"':
		return "a string"
	case c == 't' || c == 'f':
		return "a boolean"
	case c == 'n':
		return "null"
	case c == '-' || (c >= '0' && c <= '9'):
		return "a number"
	}
	return ""
}

// str reads a JSON string and returns its value.
func (p *parser) str() (string, error) {
	if p.peek() != '"' {
		return "", p.unexpected()
	}
	start := p.pos
	p.pos++
	plain := true
	for {
		if p.pos >= len(p.b) {
			return "", p.syntax("unterminated string at column %d", start+1)
		}
		c := p.b[p.pos]
		switch {
		case c == '"':
			p.pos++
			if plain {
				return string(p.b[start+1 : p.pos-1]), nil
			}
			var s string
			if err := json.Unmarshal(p.b[start:p.pos], &s); err != nil {
				return "", p.syntax("bad string at column %d", start+1)
			}
			return s, nil
		case c == '\\':
			plain = false
			p.pos += 2
		case c < 0x20:
			return "", p.syntax("control character in string at column %d", p.pos+1)
		default:
			if c >= 0x80 {
				plain = false
			}
			p.pos++
		}
	}
}

// number scans a JSON number literal and returns its text.
func (p *parser) number() ([]byte, error) {
	start := p.pos
	digits := func() int {
		n := 0
		for p.pos < len(p.b) && p.b[p.pos] >= '0' && p.b[p.pos] <= '9' {
			p.pos++
			n++
		}
		return n
	}
	if p.peek() == '-' {
		p.pos++
	}
	switch c := p.peek(); {
	case c == '0':
		p.pos++
	case c >= '1' && c <= '9':
		digits()
	default:
		return nil, p.unexpected()
	}
	if p.peek() == '.' {
		p.pos++
		if digits() == 0 {
			return nil, p.unexpected()
		}
	}
	if c := p.peek(); c == 'e' || c == 'E' {
		p.pos++
		if c := p.peek(); c == '+' || c == '-' {
			p.pos++
		}
		if digits() == 0 {
			return nil, p.unexpected()
		}
	}
	return p.b[start:p.pos], nil
}

// literal consumes an exact word (true, false, null).
func (p *parser) literal(w string) error {
	if !strings.HasPrefix(string(p.b[p.pos:min(len(p.b), p.pos+len(w))]), w) {
		return p.unexpected()
	}
	p.pos += len(w)
	return nil
}

// skip consumes any JSON value, for values that are already known to be
// wrong but whose line must still be reported as JSON or not.
func (p *parser) skip(depth int) error {
	if depth > 10000 {
		return p.syntax("nesting deeper than 10000 at column %d", p.pos+1)
	}
	p.ws()
	switch c := p.peek(); {
	case c == '"':
		_, err := p.str()
		return err
	case c == 't':
		return p.literal("true")
	case c == 'f':
		return p.literal("false")
	case c == 'n':
		return p.literal("null")
	case c == '[' || c == '{':
		close := byte(']')
		if c == '{' {
			close = '}'
		}
		p.pos++
		p.ws()
		if p.peek() == close {
			p.pos++
			return nil
		}
		for {
			if c == '{' {
				p.ws()
				if _, err := p.str(); err != nil {
					return err
				}
				p.ws()
				if p.peek() != ':' {
					return p.unexpected()
				}
				p.pos++
			}
			if err := p.skip(depth + 1); err != nil {
				return err
			}
			p.ws()
			switch p.peek() {
			case ',':
				p.pos++
			case close:
				p.pos++
				return nil
			default:
				return p.unexpected()
			}
		}
	default:
		_, err := p.number()
		return err
	}
}

// at formats an element path like [3][1]; "" at the top.
func at(idx []int) string {
	var sb strings.Builder
	for _, i := range idx {
		fmt.Fprintf(&sb, "[%d]", i)
	}
	return sb.String()
}

// atSuffix is at() as " at [3][1]", or "" at the top.
func atSuffix(idx []int) string {
	if len(idx) == 0 {
		return ""
	}
	return " at " + at(idx)
}

// quoteNum shortens a number literal for a message.
func quoteNum(b []byte) string {
	if len(b) > 32 {
		return string(b[:32]) + "…"
	}
	return string(b)
}

// rankOf counts the leading brackets of the value at start: the rank the
// value claims, for a message when it does not match the graph.
func (p *parser) rankOf(start int) int {
	r := 0
	for i := start; i < len(p.b); i++ {
		switch p.b[i] {
		case '[':
			r++
		case ' ', '\t', '\r', '\n':
		default:
			return r
		}
	}
	return r
}

// value reads one field's value into its store and returns its shape in
// p.dims. Errors are *syntaxError when the line is not JSON, else they
// describe what the field expected.
func (p *parser) value(f *field) error {
	r := len(f.dims)
	if cap(p.dims) < r {
		p.dims, p.idx = make([]int64, r), make([]int, r)
	}
	p.dims, p.idx = p.dims[:r], p.idx[:r]
	for i := range p.dims {
		p.dims[i] = -1
	}
	p.ws()
	return p.nested(f, 0, p.pos)
}

func (p *parser) nested(f *field, d, start int) error {
	p.ws()
	c := p.peek()
	r := len(f.dims)
	if d < r {
		if c != '[' {
			return p.badShape(f, d, start)
		}
		p.pos++
		p.ws()
		if p.peek() == ']' {
			return fmt.Errorf("expected %s, got an empty array%s", f.describe(), atSuffix(p.idx[:d]))
		}
		n := 0
		for {
			p.idx[d] = n
			if err := p.nested(f, d+1, start); err != nil {
				return err
			}
			n++
			p.ws()
			if p.peek() == ',' {
				p.pos++
				continue
			}
			if p.peek() != ']' {
				return p.unexpected()
			}
			p.pos++
			break
		}
		switch {
		case p.dims[d] < 0:
			p.dims[d] = int64(n)
		case p.dims[d] != int64(n):
			first := make([]int, d)
			return fmt.Errorf("ragged array: %s has %d elements but %s has %d", at(p.idx[:d]), n, at(first), p.dims[d])
		}
		return nil
	}
	switch {
	case c == '[':
		return p.badShape(f, d, start)
	case c == '-' || (c >= '0' && c <= '9'):
		lit, err := p.number()
		if err != nil {
			return err
		}
		return p.store(f, lit)
	case (c == 't' || c == 'f') && f.kind == kBool:
		v, w := int64(0), "false"
		if c == 't' {
			v, w = 1, "true"
		}
		if err := p.literal(w); err != nil {
			return err
		}
		f.ints = append(f.ints, v)
		return nil
	case what(c) != "":
		got := what(c)
		if err := p.skip(0); err != nil {
			return err
		}
		return fmt.Errorf("expected %s, got %s%s", f.describe(), got, atSuffix(p.idx[:d]))
	}
	return p.unexpected()
}

// badShape reports an element at depth d that is an array where a number
// belongs or the other way round: a wrong rank when the whole value claims
// another rank, else a ragged nesting.
func (p *parser) badShape(f *field, d, start int) error {
	c := p.peek()
	if what(c) == "" {
		return p.unexpected()
	}
	if err := p.skip(0); err != nil {
		return err
	}
	r := len(f.dims)
	if got := p.rankOf(start); got != r {
		if got == 0 {
			return fmt.Errorf("expected %s, got %s", f.describe(), what(p.b[start]))
		}
		return fmt.Errorf("expected %s, got a rank-%d array", f.describe(), got)
	}
	if c == '[' {
		return fmt.Errorf("ragged array: %s is an array where numbers belong", at(p.idx[:d]))
	}
	return fmt.Errorf("ragged array: %s is %s where an array belongs", at(p.idx[:d]), what(c))
}

// store converts a number literal to the field's dtype and appends it.
func (p *parser) store(f *field, lit []byte) error {
	if f.kind == kFloat32 {
		v, err := strconv.ParseFloat(string(lit), 32)
		if err != nil && !(errors.Is(err, strconv.ErrRange) && !math.IsInf(v, 0)) {
			return fmt.Errorf("%s%s overflows float32", quoteNum(lit), atSuffix(p.idx))
		}
		f.floats = append(f.floats, float32(v))
		return nil
	}
	v, ok := parseInt(lit)
	if !ok {
		for _, c := range lit {
			if c == '.' || c == 'e' || c == 'E' {
				return fmt.Errorf("expected %s, got %s%s, which is not an integer", f.describe(), quoteNum(lit), atSuffix(p.idx))
			}
		}
		var err error
		if v, err = strconv.ParseInt(string(lit), 10, 64); err != nil {
			return fmt.Errorf("%s%s is out of %s range", quoteNum(lit), atSuffix(p.idx), f.dtype)
		}
	}
	if !f.kind.fits(v) {
		if f.kind == kBool {
			return fmt.Errorf("expected %s, got %s%s; bool takes 0, 1, true or false", f.describe(), quoteNum(lit), atSuffix(p.idx))
		}
		return fmt.Errorf("%s%s is out of %s range", quoteNum(lit), atSuffix(p.idx), f.dtype)
	}
	f.ints = append(f.ints, v)
	return nil
}

// parseInt is the fast path for the common literal, an optional minus and
// at most 18 digits (which cannot overflow); anything else goes to
// strconv for its exact checks.
func parseInt(lit []byte) (int64, bool) {
	neg := len(lit) > 0 && lit[0] == '-'
	d := lit
	if neg {
		d = lit[1:]
	}
	if len(d) == 0 || len(d) > 18 {
		return 0, false
	}
	var v int64
	for _, c := range d {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int64(c-'0')
	}
	if neg {
		v = -v
	}
	return v, true
}
