package chat

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/ardanlabs/jinja"
)

// cutSentinels removes the generation sentinels from a render and returns
// the text and the spans they enclosed. Like transformers' AssistantTracker
// it records every block, nested ones included, and drops none that are
// empty; spans come out ordered by start (then by end), not in the order
// the blocks closed.
func cutSentinels(s string) (string, []Span, error) {
	var b strings.Builder
	var spans []Span
	var open []int
	for len(s) > 0 {
		i := strings.IndexAny(s, genOpen+genClose)
		if i < 0 {
			b.WriteString(s)
			break
		}
		b.WriteString(s[:i])
		if strings.HasPrefix(s[i:], genOpen) {
			open = append(open, b.Len())
			s = s[i+len(genOpen):]
			continue
		}
		if len(open) == 0 {
			return "", nil, fmt.Errorf("generation block closed twice (a sentinel was moved by a filter?)")
		}
		spans = append(spans, Span{open[len(open)-1], b.Len()})
		open = open[:len(open)-1]
		s = s[i+len(genClose):]
	}
	if len(open) > 0 {
		return "", nil, fmt.Errorf("generation block never closed in the output (its end was captured or filtered away)")
	}
	sortSpans(spans)
	return b.String(), spans, nil
}

func sortSpans(spans []Span) {
	slices.SortFunc(spans, func(a, b Span) int {
		return cmp.Or(cmp.Compare(a.Start, b.Start), cmp.Compare(a.End, b.End))
	})
}

// prefixSpans finds the assistant spans of a template without generation
// tags by rendering prefixes of the conversation, the way training
// pipelines mask assistant turns without markers. For the assistant
// message i, with F the full render:
//
//   - start: the end of messages[:i] rendered with add_generation_prompt,
//     when that is a prefix of F. Some templates put more in the prompt
//     than in a finished turn (Qwen3 with enable_thinking=false adds an
//     empty think block); then, provided messages[:i] rendered without the
//     prompt is a prefix of F, the turn starts where the prompt and F part.
//   - end: the end of messages[:i+1] rendered without the prompt, less the
//     trailer some templates print whatever add_generation_prompt says (the
//     original Llama-3 template prints the assistant header after every
//     conversation). The trailer is the render of an empty conversation, if
//     that renders. What is left must be a prefix of F.
//   - then whitespace at the end of the span is dropped: it follows the
//     end-of-turn token (Qwen3's "<|im_end|>\n") and no model generates it.
//   - when messages[:i+1] does not render as a prefix of F because the
//     template prints a turn differently once later turns follow (Qwen3
//     wraps the last turn in a think block and drops the reasoning of
//     earlier ones), the end comes from F itself: endByMark renders the
//     conversation with marks after message i's content and before the
//     next message's, and ends the span after the first eos_token between.
//
// So a span is the assistant content as the template prints it plus the
// end-of-turn token, which is what a model learns to generate. Where
// neither way finds the turn this returns an error rather than a wrong
// mask: use a template with {% generation %} tags for such data.
func (t *Template) prefixSpans(ctx map[string]jinja.Value, msgs []jinja.Value, messages []Message, full string, agp bool) ([]Span, error) {
	var spans []Span
	trailer, err := t.text(ctx, nil, false)
	if err != nil {
		trailer = ""
	}
	for i, m := range messages {
		if role(m) != "assistant" {
			continue
		}
		prompt, err := t.text(ctx, msgs[:i], true)
		if err != nil {
			return nil, fmt.Errorf("assistant span of message %d: rendering the messages before it: %w", i, err)
		}
		start := len(prompt)
		if !strings.HasPrefix(full, prompt) {
			bare, err := t.text(ctx, msgs[:i], false)
			if err != nil || !strings.HasPrefix(full, bare) {
				return nil, fmt.Errorf("assistant span of message %d: the render of the messages before it is not a prefix of the whole render", i)
			}
			start = commonPrefix(prompt, full)
			for start > 0 && start < len(full) && !utf8.RuneStart(full[start]) {
				start--
			}
		}
		turn, err := t.text(ctx, msgs[:i+1], false)
		if err != nil {
			return nil, fmt.Errorf("assistant span of message %d: rendering up to it: %w", i, err)
		}
		if trailer != "" && len(turn)-len(trailer) >= start {
			turn = strings.TrimSuffix(turn, trailer)
		}
		end := len(strings.TrimRight(turn, " \t\n\r"))
		if !strings.HasPrefix(full, turn) {
			end, err = t.endByMark(ctx, msgs, i, full, agp, start)
			if err != nil {
				return nil, fmt.Errorf("assistant span of message %d: the render up to it is not a prefix of the whole render (the template prints this turn differently when more messages follow), and %w; use a template with {%% generation %%} tags", i, err)
			}
		}
		if end < start {
			end = start
		}
		spans = append(spans, Span{start, end})
	}
	return spans, nil
}

// endByMark finds where assistant message i ends in full (rendered with
// add_generation_prompt agp) when the prefix rule cannot. It renders the
// whole conversation again, as full was, with a mark after that message's
// content and another before the next message's content (each also tried
// with the content's whitespace on that side removed, for templates that
// trim), checks that the render less the marks is full, and ends the span
// after the first eos_token between the two marks: what the template
// prints there before it (a tool call) belongs to the assistant turn.
func (t *Template) endByMark(ctx map[string]jinja.Value, msgs []jinja.Value, i int, full string, agp bool, start int) (int, error) {
	eos, ok := ctx["eos_token"]
	if !ok || !eos.IsString() || eos.AsString() == "" {
		return 0, fmt.Errorf("no eos_token to end the turn with")
	}
	c, ok := stringContent(msgs[i])
	if !ok {
		return 0, fmt.Errorf("its content is not a string")
	}
	afters := []string{c + contentMark, strings.TrimRightFunc(c, pyIsSpace) + contentMark}
	if c == "" {
		// A mark would make the content true (Qwen3 then prints a
		// newline before the tool call); the turn starts at start.
		afters = []string{""}
	}
	befores := []string{""}
	if i+1 < len(msgs) {
		if n, ok := stringContent(msgs[i+1]); ok {
			befores = []string{nextMark + n, nextMark + strings.TrimLeftFunc(n, pyIsSpace)}
		}
	}
	for _, after := range afters {
		for _, before := range befores {
			alt := append([]jinja.Value(nil), msgs...)
			if after != "" {
				alt[i] = withContent(msgs[i], after)
			}
			if before != "" {
				alt[i+1] = withContent(msgs[i+1], before)
			}
			out, err := t.text(ctx, alt, agp)
			if err != nil {
				return 0, err
			}
			at, next := strings.Index(out, contentMark), strings.Index(out, nextMark)
			bare := strings.Replace(strings.Replace(out, contentMark, "", 1), nextMark, "", 1)
			marks := 1
			if after == "" {
				at, marks = start, 0
			}
			if strings.Count(out, contentMark) != marks || strings.Count(out, nextMark) > 1 || bare != full {
				continue
			}
			if next < 0 {
				next = len(full)
			} else if next -= len(contentMark) * marks; next < at {
				continue
			}
			k := strings.Index(full[at:next], eos.AsString())
			if k < 0 {
				return 0, fmt.Errorf("no eos_token %q follows its content before the next message", eos.AsString())
			}
			return at + k + len(eos.AsString()), nil
		}
	}
	return 0, fmt.Errorf("marks around its content do not come back in place")
}

func stringContent(m jinja.Value) (string, bool) {
	if !m.IsDict() {
		return "", false
	}
	c, ok := m.AsDict().Get("content")
	if !ok || !c.IsString() {
		return "", false
	}
	return c.AsString(), true
}

// withContent copies a message with another content.
func withContent(m jinja.Value, content string) jinja.Value {
	d := jinja.NewDict()
	for _, k := range m.AsDict().Keys {
		d.AsDict().Set(k, m.AsDict().Data[k])
	}
	d.AsDict().Set("content", jinja.NewString(content))
	return d
}

// prefixSpansOf runs the prefix rule for messages rendered as full.
func (t *Template) prefixSpansOf(messages []Message, opts Options, full string) ([]Span, error) {
	ctx, msgs, err := t.context(messages, opts)
	if err != nil {
		return nil, err
	}
	return t.prefixSpans(ctx, msgs, messages, full, opts.AddGenerationPrompt)
}

// text renders like exec, with any generation sentinels cut out.
func (t *Template) text(ctx map[string]jinja.Value, msgs []jinja.Value, agp bool) (string, error) {
	out, err := t.exec(ctx, msgs, agp)
	if err != nil || !t.generation {
		return out, err
	}
	out, _, err = cutSentinels(out)
	return out, err
}

func role(m Message) string {
	if r, ok := m.Fields["role"].(string); ok {
		return r
	}
	return m.Role
}

func commonPrefix(a, b string) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}
