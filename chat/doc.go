// Package chat renders Hugging Face chat templates — the Jinja source in
// the chat_template of a tokenizer_config.json — byte for byte as
// transformers' apply_chat_template(messages, tokenize=False) does, and
// says which bytes of the result are assistant output, so that training can
// put its loss on those alone.
//
// # The engine, and why this one
//
// Templates run on github.com/ardanlabs/jinja v1.8.0, the only Go Jinja
// engine among the modules this project may use, and one written for
// exactly this job (it renders the templates of the current Llama, Qwen,
// Gemma, Mistral and GPT-OSS models). It is pure Go with no dependencies of
// its own, so chat adds one module and no cgo. It is the package's only new
// dependency.
//
// Measured against Jinja2 as transformers configures it
// (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols,
// its own tojson, raise_exception, strftime_now), the engine has what real
// templates need: {%- -%} control, namespace(), the loop variables,
// break/continue, macros, slicing, the tests and filters they use, and the
// str methods strip/lstrip/rstrip/split/startswith/endswith/replace/upper.
// It falls short in these ways, each seen by rendering a small template
// with the engine alone (testdata/snippets.json keeps such probes, and the
// tests run them through chat); "(remains)" marks the few chat leaves:
//
//   - trim_blocks/lstrip_blocks are approximated: "-" strips the nearest
//     text even across an intervening {{ }}, indentation before a block tag
//     after an expression on the same line is stripped, keep_trailing_newline
//     is not honoured, \r\n is not normalised.
//   - string literals know only \n \t \\ \' \" (no \u, \x, octal).
//   - a "}}" closing a nested dict literal ends the {{ }} tag.
//   - {% generation %} is accepted but ignored.
//   - tojson with indent sorts keys and escapes < > &; without indent
//     floats print as Go's %g (1.0 as 1) and U+2028/U+2029 are escaped.
//   - printing None gives "" (Python: None), floats print as %g.
//   - trim and .strip() use Go's whitespace, not Python's; .lstrip() and
//     .rstrip() strip only space, tab, CR and LF (remains, for the
//     methods).
//   - selectattr/rejectattr with one argument panic; join and string
//     print items the engine's way, and join does not iterate a string.
//   - nothing bounds loops, recursion (a recursive macro overflows the Go
//     stack, which kills the process) or range().
//   - undefined values are lenient (x.y of undefined is undefined, not an
//     error) and some Python errors are not errors (1/0 is 0) (remains).
//   - ~ prints none and floats its own way, ** on ints gives a float,
//     upper/lower use Go's case mapping (remains).
//
// The engine's API offers one extension point: variables, which may be
// callables, and which are also where it looks up a filter it does not
// know. chat does not fork the engine. It fills the gaps from the outside:
//
//   - lex.go is our own Jinja front end. It reads the source as Jinja2's
//     lexer does under transformers' settings (newline normalisation, one
//     trailing newline dropped, "-" and "+" markers, trim_blocks,
//     lstrip_blocks, raw blocks, comments, string literals with Python's
//     escapes, tags closed only at bracket depth zero) and writes an
//     equivalent template in which every piece of literal text is a string
//     expression. The engine then sees no text to trim, so its whitespace
//     rules cannot act, and its narrow literal syntax is all we use.
//   - the same pass renames the filters whose built-in versions are wrong
//     (tojson, trim, selectattr, rejectattr, join, string) to our
//     functions, passed in as variables (funcs.go, python.go); sends every
//     {{ }} through a printer that writes values as Python's str() does;
//     replaces the generation tags (below);
//     and puts a budget call at the top of every loop body and around every
//     macro body: at most 2^18 loop iterations, macros 200 deep, 10 s per
//     render, range() of at most 100000 items (Jinja2's sandbox limit).
//     Templates themselves are bounded to 1 MiB and 64 levels of block or
//     bracket nesting, so the engine's recursive parser stays shallow.
//   - a panic inside the engine is recovered and returned as an error.
//
// What remains different is listed in README.md; it is confined to
// error cases and to operations real chat templates do not apply to odd
// values. A template can still exhaust memory in one expression ('a' times
// a huge count) before any budget check runs.
//
// # Assistant spans
//
// transformers marks assistant output with {% generation %} ...
// {% endgeneration %}, its AssistantTracker extension. chat rewrites those
// tags to print two private-use code points (U+10FFFC, U+10FFFD; U+10FFFA
// and U+10FFFB are the prefix rule's marks, below) around a one-pass loop,
// which gives the body its own scope as Jinja2's call block does; after the render it cuts the sentinels out and records the spans.
// Input containing any of these code points is refused, so every sentinel
// in the output came from a tag. For flat generation blocks in the template's main
// flow (how real templates use them) the spans equal transformers'
// generation indices; for blocks inside macros or nested blocks,
// transformers reports positions relative to the output streamed so far,
// chat where the text lands.
//
// Templates without generation tags get spans by the prefix rule of
// spans.go: render the messages before each assistant turn with the
// generation prompt, render up to and including it without, and take the
// difference — the assistant's content as the template prints it plus its
// end-of-turn token, trailing whitespace dropped. Where a template prints a
// turn differently once later turns follow (Qwen3 drops earlier reasoning
// and wraps only the last turn in a think block), the end is found in the
// full render instead, from marks placed after the content and before the
// next message's, and the span runs on (over a tool call, say) through the
// first eos_token between them. Where neither works Render returns an
// error rather than a wrong mask.
package chat
