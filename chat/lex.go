package chat

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// This file is our own Jinja front end. It reads a template the way Jinja2's
// lexer does under transformers' settings (trim_blocks, lstrip_blocks,
// keep_trailing_newline=False) and writes an equivalent template for the
// engine in which every piece of literal text has become a string
// expression. The engine then sees no text segments at all, so its own,
// looser whitespace rules have nothing to act on and the whitespace Jinja2
// would keep is exactly what we wrote into those strings. The same pass
// rewrites what the engine cannot be told through its API: string literals
// with Python escapes, filters whose built-in versions differ from
// transformers', the {% generation %} tags, and budget checks in loops and
// macros. See doc.go for why this lives here and not in a fork.

// Sentinels the rewritten {% generation %} and {% endgeneration %} tags
// print. They are private-use code points from plane 16; input that
// contains them is refused, so every one in a render came from a tag.
const (
	genOpen  = "\U0010FFFC"
	genClose = "\U0010FFFD"
	// contentMark and nextMark mark the end of a message's content and
	// the start of the next one's for the prefix rule's second way
	// (spans.go).
	contentMark = "\U0010FFFB"
	nextMark    = "\U0010FFFA"
)

// Names the rewritten template calls. The leading "__loracc_" keeps them
// out of the way of names real templates use.
const (
	fnTick  = "__loracc_tick"
	fnEnter = "__loracc_enter"
	fnLeave = "__loracc_leave"
	fnPrint = "__loracc_print"

	varOuterLoop = "__loracc_outer_loop"
	varGen       = "__loracc_gen"
)

// replacedFilters maps a built-in filter of the engine to our version,
// where the engine's disagrees with transformers' (see funcs.go).
var replacedFilters = map[string]string{
	"tojson":     "__loracc_tojson",
	"trim":       "__loracc_trim",
	"selectattr": "__loracc_selectattr",
	"rejectattr": "__loracc_rejectattr",
	"string":     "__loracc_string",
	"join":       "__loracc_join",
}

// Limits on the template itself, so a hostile template cannot drive the
// engine's recursive-descent parser into a stack overflow.
const (
	maxTemplateBytes = 1 << 20
	maxBracketDepth  = 64
	maxBlockDepth    = 64
)

// lexed is the result of reading a template.
type lexed struct {
	src           string // the template for the engine
	hasGeneration bool   // the template has {% generation %} tags
}

// lexer walks the source once; out collects the rewritten template.
type lexer struct {
	src string
	pos int
	out []byte
	// outLine is the line of out's end, seenPos and seenLine a position
	// of src and its line: sync keeps tags on the lines they came from,
	// so that the engine's errors give the template's line numbers.
	outLine, seenPos, seenLine int
	text                       strings.Builder // literal text not yet written to out
	// lineStart says the previous tag (or the start of the source) ended
	// a line, which is how Jinja2 decides lstrip_blocks for text that
	// holds no newline of its own.
	lineStart bool
	// blocks is the stack of open block keywords, for the depth limit and
	// for knowing which endmacro closes a macro.
	blocks []string
	gen    bool
}

func (l *lexer) errorf(format string, args ...any) error {
	line := 1 + strings.Count(l.src[:l.pos], "\n")
	return fmt.Errorf("line %d: %s", line, fmt.Sprintf(format, args...))
}

// lex rewrites src for the engine.
func lex(src string) (lexed, error) {
	if len(src) > maxTemplateBytes {
		return lexed{}, fmt.Errorf("template is %d bytes, more than the %d allowed", len(src), maxTemplateBytes)
	}
	if !utf8.ValidString(src) {
		return lexed{}, fmt.Errorf("template is not valid UTF-8")
	}
	if reserved(src) {
		return lexed{}, fmt.Errorf("template contains U+10FFFA to U+10FFFD, which chat reserves for its marks")
	}
	// Jinja2 turns \r\n and \r into \n and drops one trailing newline
	// before it lexes (keep_trailing_newline=False).
	src = strings.ReplaceAll(src, "\r\n", "\n")
	src = strings.ReplaceAll(src, "\r", "\n")
	src = strings.TrimSuffix(src, "\n")

	l := &lexer{src: src, lineStart: true, outLine: 1, seenLine: 1}
	if err := l.run(); err != nil {
		return lexed{}, err
	}
	if len(l.blocks) > 0 {
		return lexed{}, fmt.Errorf("unclosed {%% %s %%} at end of template", l.blocks[len(l.blocks)-1])
	}
	return lexed{src: string(l.out), hasGeneration: l.gen}, nil
}

func (l *lexer) run() error {
	for l.pos < len(l.src) {
		i := strings.IndexByte(l.src[l.pos:], '{')
		if i < 0 || l.pos+i+1 >= len(l.src) {
			l.text.WriteString(l.src[l.pos:])
			l.pos = len(l.src)
			break
		}
		at := l.pos + i
		kind := l.src[at+1]
		if kind != '{' && kind != '%' && kind != '#' {
			l.text.WriteString(l.src[l.pos : at+2])
			l.pos = at + 2
			continue
		}
		l.text.WriteString(l.src[l.pos:at])
		l.pos = at
		var err error
		switch kind {
		case '#':
			err = l.comment()
		case '{':
			err = l.tag(false)
		case '%':
			err = l.tag(true)
		}
		if err != nil {
			return err
		}
	}
	l.flushText()
	return nil
}

// beforeTag applies the left-hand whitespace rules to the pending text: a
// "-" strips all whitespace, otherwise lstrip_blocks strips the whitespace
// between the line start and a block or comment tag (Jinja2 3.1 tests it
// with \s, so a no-break space counts).
func (l *lexer) beforeTag(sign byte, block bool) {
	t := l.text.String()
	switch {
	case sign == '-':
		t = strings.TrimRightFunc(t, pyIsSpace)
	case sign == '+' || !block:
	default:
		ls := strings.LastIndexByte(t, '\n') + 1
		if (ls > 0 || l.lineStart) && strings.TrimFunc(t[ls:], pyIsSpace) == "" {
			t = t[:ls]
		}
	}
	l.text.Reset()
	l.text.WriteString(t)
	l.flushText()
}

// afterTag applies the right-hand rules: "-" strips all whitespace that
// follows, otherwise trim_blocks drops one newline after a block tag.
func (l *lexer) afterTag(sign byte, block bool) {
	l.lineStart = false
	switch {
	case sign == '-':
		rest := strings.TrimLeftFunc(l.src[l.pos:], pyIsSpace)
		l.lineStart = strings.HasSuffix(l.src[l.pos:len(l.src)-len(rest)], "\n")
		l.pos = len(l.src) - len(rest)
	case sign == '+' || !block:
	default:
		if strings.HasPrefix(l.src[l.pos:], "\n") {
			l.pos++
			l.lineStart = true
		}
	}
}

// flushText writes the pending text as one string expression.
func (l *lexer) flushText() {
	if l.text.Len() == 0 {
		return
	}
	l.emit("{{ " + engineString(l.text.String()) + " }}")
	l.text.Reset()
}

// emit appends rewritten tags to the output.
func (l *lexer) emit(s string) { l.out = append(l.out, s...) }

// sync moves the output to the source line of pos by putting newlines
// inside the last tag written (every piece of output is a tag, and inside
// one a newline is only space).
func (l *lexer) sync(pos int) {
	l.seenLine += strings.Count(l.src[l.seenPos:pos], "\n")
	l.seenPos = pos
	need := l.seenLine - l.outLine
	if need <= 0 {
		return
	}
	if len(l.out) == 0 {
		l.emit(`{{ ""  }}`)
	}
	closer := append([]byte(nil), l.out[len(l.out)-2:]...)
	l.out = append(l.out[:len(l.out)-2], strings.Repeat("\n", need)...)
	l.out = append(l.out, closer...)
	l.outLine += need
}

func (l *lexer) comment() error {
	start := l.pos
	l.sync(start)
	l.pos += 2
	sign := signAt(l.src, l.pos)
	if sign != 0 {
		l.pos++
	}
	end := strings.Index(l.src[l.pos:], "#}")
	if end < 0 {
		l.pos = start
		return l.errorf("unclosed comment")
	}
	closeSign := byte(0)
	if end > 0 {
		closeSign = signAt(l.src, l.pos+end-1)
	}
	l.beforeTag(sign, true)
	l.pos += end + 2
	l.afterTag(closeSign, true)
	return nil
}

// signAt returns the whitespace-control sign at s[i], or 0.
func signAt(s string, i int) byte {
	if i < len(s) && (s[i] == '-' || s[i] == '+') {
		return s[i]
	}
	return 0
}

// tag handles {{ ... }} (block false) and {% ... %} (block true).
func (l *lexer) tag(block bool) error {
	start := l.pos
	l.sync(start)
	l.pos += 2
	sign := signAt(l.src, l.pos)
	if sign != 0 {
		l.pos++
	}
	closer := "}}"
	if block {
		closer = "%}"
	}
	toks, closeSign, err := l.scanTag(closer)
	if err != nil {
		l.pos = start
		return err
	}
	keyword, args := "", 0
	for _, tk := range toks {
		if tk.kind == tkSpace {
			continue
		}
		if keyword == "" && args == 0 && block && tk.kind == tkName {
			keyword = tk.text
		} else {
			args++
		}
	}
	if keyword == "raw" {
		l.beforeTag(sign, true)
		l.afterTag(closeSign, true)
		return l.raw()
	}
	l.beforeTag(sign, block)
	body := rebuild(toks)
	switch {
	case !block:
		// Printing goes through our function, which writes values as
		// Python's str() does (None, 1.0, lists and dicts in repr).
		l.emit("{{ " + fnPrint + "(" + body + ") }}")
	case keyword == "generation" || keyword == "endgeneration":
		if args != 0 {
			return l.errorf("{%% %s %%} takes no arguments", keyword)
		}
		l.gen = true
		if err := l.nest(keyword); err != nil {
			return err
		}
		// Jinja2 runs a generation block's body as a call block, in a
		// scope of its own: what it sets stays inside. A loop of one
		// iteration gives the engine's equivalent, with the outer loop
		// variable passed through.
		if keyword == "generation" {
			l.emit("{{ " + engineString(genOpen) + " }}{% set " + varOuterLoop + " = loop %}" +
				"{% for " + varGen + " in [0] %}{% set loop = " + varOuterLoop + " %}")
		} else {
			l.emit("{% endfor %}{{ " + engineString(genClose) + " }}")
		}
	default:
		if err := l.nest(keyword); err != nil {
			return err
		}
		if keyword == "endmacro" {
			l.emit("{{ " + fnLeave + "() }}")
		}
		l.emit("{%" + body + "%}")
		switch keyword {
		case "for":
			l.emit("{{ " + fnTick + "() }}")
		case "macro":
			l.emit("{{ " + fnEnter + "() }}")
		}
	}
	l.afterTag(closeSign, block)
	return nil
}

// blockEnds pairs each block keyword with the one that closes it.
var blockEnds = map[string]string{
	"if": "endif", "for": "endfor", "macro": "endmacro", "call": "endcall",
	"filter": "endfilter", "generation": "endgeneration",
}

// nest keeps the stack of open blocks: it bounds nesting and checks that
// each end tag closes the innermost open block. {% set x %}...{% endset %}
// is the one block whose opener is also a one-line statement.
func (l *lexer) nest(keyword string) error {
	if _, ok := blockEnds[keyword]; ok {
		if len(l.blocks) >= maxBlockDepth {
			return l.errorf("blocks nest more than %d deep", maxBlockDepth)
		}
		l.blocks = append(l.blocks, keyword)
		return nil
	}
	if !strings.HasPrefix(keyword, "end") || keyword == "endset" {
		return nil
	}
	if len(l.blocks) == 0 || blockEnds[l.blocks[len(l.blocks)-1]] != keyword {
		return l.errorf("{%% %s %%} closes no open block", keyword)
	}
	l.blocks = l.blocks[:len(l.blocks)-1]
	return nil
}

// raw copies the text up to {% endraw %} verbatim.
func (l *lexer) raw() error {
	for i := l.pos; i < len(l.src); {
		j := strings.Index(l.src[i:], "{%")
		if j < 0 {
			break
		}
		j += i
		k := j + 2
		sign := signAt(l.src, k)
		if sign != 0 {
			k++
		}
		rest := strings.TrimLeft(l.src[k:], " \t\n")
		if !strings.HasPrefix(rest, "endraw") {
			i = j + 2
			continue
		}
		rest = strings.TrimLeft(rest[len("endraw"):], " \t\n")
		closeSign := signAt(rest, 0)
		if closeSign != 0 {
			rest = rest[1:]
		}
		if !strings.HasPrefix(rest, "%}") {
			i = j + 2
			continue
		}
		l.text.WriteString(l.src[l.pos:j])
		l.pos = len(l.src) - len(rest) + 2
		l.beforeTag(sign, true)
		l.afterTag(closeSign, true)
		return nil
	}
	return l.errorf("unclosed {%% raw %%}")
}

// Token kinds inside a tag.
const (
	tkName = iota
	tkString
	tkOther
	tkSpace
)

type token struct {
	kind int
	text string // the source text, or for strings the decoded value
}

// scanTag reads tokens up to the closer at bracket depth zero (as Jinja2
// does, so "}}" closing a dict literal inside {{ }} is not the end). It
// returns the tokens, without the closer and its sign, and the sign.
func (l *lexer) scanTag(closer string) ([]token, byte, error) {
	var toks []token
	depth := 0
	for l.pos < len(l.src) {
		c := l.src[l.pos]
		if depth == 0 {
			if c == '-' && strings.HasPrefix(l.src[l.pos+1:], closer) {
				l.pos += 3
				return toks, '-', nil
			}
			if c == '+' && closer == "%}" && strings.HasPrefix(l.src[l.pos+1:], closer) {
				l.pos += 3
				return toks, '+', nil
			}
			if strings.HasPrefix(l.src[l.pos:], closer) {
				l.pos += 2
				return toks, 0, nil
			}
		}
		switch {
		case c == '\'' || c == '"':
			s, n, err := pyString(l.src[l.pos:])
			if err != nil {
				return nil, 0, l.errorf("%v", err)
			}
			toks = append(toks, token{tkString, s})
			l.pos += n
		case c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
			n := 1
			for l.pos+n < len(l.src) && isNameByte(l.src[l.pos+n]) {
				n++
			}
			toks = append(toks, token{tkName, l.src[l.pos : l.pos+n]})
			l.pos += n
		case c == ' ' || c == '\t' || c == '\n':
			toks = append(toks, token{tkSpace, " "})
			l.pos++
		default:
			switch c {
			case '(', '[', '{':
				depth++
				if depth > maxBracketDepth {
					return nil, 0, l.errorf("brackets nest more than %d deep", maxBracketDepth)
				}
			case ')', ']', '}':
				if depth > 0 {
					depth--
				}
			}
			_, n := utf8.DecodeRuneInString(l.src[l.pos:])
			toks = append(toks, token{tkOther, l.src[l.pos : l.pos+n]})
			l.pos += n
		}
	}
	return nil, 0, l.errorf("unclosed tag, expected %q", closer)
}

func isNameByte(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// rebuild writes tag tokens back for the engine: strings re-quoted in the
// escapes it understands, replaced filters renamed.
func rebuild(toks []token) string {
	var b strings.Builder
	b.WriteByte(' ')
	for i, t := range toks {
		switch t.kind {
		case tkString:
			b.WriteString(engineString(t.text))
		case tkName:
			if to, ok := replacedFilters[t.text]; ok && afterPipe(toks, i) {
				b.WriteString(to)
			} else {
				b.WriteString(t.text)
			}
		default:
			// The engine finds the end of a tag by its closer alone, so
			// the braces closing nested dict literals must not touch.
			if t.text == "}" && strings.HasSuffix(b.String(), "}") {
				b.WriteByte(' ')
			}
			b.WriteString(t.text)
		}
	}
	b.WriteByte(' ')
	return b.String()
}

// afterPipe says toks[i] is a filter name: the token before it, spaces
// aside, is "|". ({% filter name %} blocks keep the engine's filters: the
// engine looks those up among its built-ins only.)
func afterPipe(toks []token, i int) bool {
	for j := i - 1; j >= 0; j-- {
		if toks[j].kind != tkSpace {
			return toks[j].text == "|"
		}
	}
	return false
}
