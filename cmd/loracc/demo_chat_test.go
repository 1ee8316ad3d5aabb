package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestChatDemo runs loracc demo-chat as a user does: after training on
// the chat data (assistant-only loss), generation with the adapter gives
// the trained answers, which the random base model does not.
func TestChatDemo(t *testing.T) {
	env(t)
	out := mustLoracc(t, "demo-chat", "--dir", t.TempDir(), "--tokenizer", filepath.Join("../../testdata/tokenizer/expected/trained/unigram"), "--steps", "200")
	before, after, ok := strings.Cut(out, "after training")
	if !ok {
		t.Fatalf("no after-training section:\n%s", out)
	}
	for _, a := range []string{"The sky is blue.", "Cats say meow.", "Bees make honey."} {
		if !strings.Contains(after, "model: "+a) {
			t.Errorf("after training, no answer %q:\n%s", a, after)
		}
		if strings.Contains(before, a) {
			t.Errorf("the base model already answered %q", a)
		}
	}
}
