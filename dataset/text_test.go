package dataset

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/loracc/loracc/chat"
)

// realTokenizer loads one of scripts/fetch-tokenizers.sh's tokenizers,
// skipping without them unless LORACC_REQUIRE_REAL=1.
func realTokenizer(t *testing.T, name string) *Tokenizer {
	t.Helper()
	dir := os.Getenv("LORACC_TOKENIZERS_DIR")
	if dir == "" {
		if os.Getenv("LORACC_REQUIRE_REAL") == "1" {
			t.Fatal("LORACC_TOKENIZERS_DIR is not set (scripts/fetch-tokenizers.sh prints it)")
		}
		t.Skip("LORACC_TOKENIZERS_DIR is not set; run scripts/fetch-tokenizers.sh")
	}
	tk, err := LoadTokenizer(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

// testConversations reads chat's test conversations as chat messages and
// render options.
func testConversations(t *testing.T) map[string]struct {
	msgs []chat.Message
	opts chat.Options
} {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "chat", "testdata", "conversations.json"))
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Conversations []struct {
			Name                string                     `json:"name"`
			AddGenerationPrompt bool                       `json:"add_generation_prompt"`
			Messages            json.RawMessage            `json:"messages"`
			Extra               map[string]json.RawMessage `json:"extra"`
		} `json:"conversations"`
	}
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	out := map[string]struct {
		msgs []chat.Message
		opts chat.Options
	}{}
	for _, c := range f.Conversations {
		msgs, err := parseMessages(c.Messages)
		if err != nil {
			t.Fatalf("%s: %v", c.Name, err)
		}
		extra := map[string]any{"date_string": "26 Jul 2024"}
		for k, v := range c.Extra {
			extra[k] = v
		}
		out[c.Name] = struct {
			msgs []chat.Message
			opts chat.Options
		}{msgs, chat.Options{AddGenerationPrompt: c.AddGenerationPrompt, Extra: extra}}
	}
	return out
}

// TestSpansPiecesEqualWhole: encoding a rendered conversation in pieces
// cut at the assistant spans gives the ids of encoding it whole, for the
// real Llama-3, Llama-3.2, Qwen3 and Gemma-3 templates and every test
// conversation they render, so the assistant mask costs no change of ids.
func TestSpansPiecesEqualWhole(t *testing.T) {
	convs := testConversations(t)
	for _, name := range []string{"llama3", "llama3_2", "qwen3", "gemma3"} {
		t.Run(name, func(t *testing.T) {
			tk := realTokenizer(t, name)
			tmpl, err := tk.Chat()
			if err != nil {
				t.Fatal(err)
			}
			rendered, spans := 0, 0
			for cname, c := range convs {
				r, err := tmpl.Render(c.msgs, c.opts)
				if err != nil {
					continue // the template refuses it (roles not alternating, ...)
				}
				rendered++
				spans += len(r.Assistant)
				d, err := tk.encodeSpans(r.Text, r.Assistant)
				if err != nil {
					t.Fatalf("%s: %v", cname, err)
				}
				whole, err := tk.Tok.Encode(r.Text, false)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(d.ids, whole) {
					t.Errorf("%s: pieces give %v\nwhole text gives %v", cname, d.ids, whole)
				}
				// The counted tokens decode to the spans' text.
				var got, want string
				for _, sp := range r.Assistant {
					want += r.Text[sp.Start:sp.End]
				}
				var ids []int
				for j, id := range d.ids {
					if d.counted[j] {
						ids = append(ids, id)
					}
				}
				got = tk.Tok.Decode(ids, false)
				if got != want {
					t.Errorf("%s: counted tokens decode to %q, spans hold %q", cname, got, want)
				}
			}
			if rendered < 10 || spans < 10 {
				t.Errorf("only %d conversations rendered with %d spans", rendered, spans)
			}
		})
	}
}
