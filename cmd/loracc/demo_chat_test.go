package main

import (
	"strings"
	"testing"
)

// TestChatDemo runs loracc demo-chat as a user does, on the repository's
// pretrained model and on the tiny random one: after training on the chat
// data (assistant-only loss), generation with the adapter gives the
// trained answers, which the base model does not.
func TestChatDemo(t *testing.T) {
	env(t)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"pretrained", []string{"--model", "../../testdata/quality/model"}},
		{"random", []string{"--model", "random", "--tokenizer", "../../testdata/tokenizer/expected/trained/unigram", "--steps", "300"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := mustLoracc(t, append([]string{"demo-chat", "--dir", t.TempDir()}, tc.args...)...)
			before, after, ok := strings.Cut(out, "after training")
			if !ok {
				t.Fatalf("no after-training section:\n%s", out)
			}
			for _, a := range []string{"len() returns the number of items in an object.", "open() returns a file object.", "The math module provides mathematical functions."} {
				if !strings.Contains(after, "model: "+a) {
					t.Errorf("after training, no answer %q:\n%s", a, after)
				}
				if strings.Contains(before, a) {
					t.Errorf("the base model already answered %q", a)
				}
			}
			if !strings.Contains(after, "(not in the training chats)") {
				t.Errorf("no held-out question asked:\n%s", after)
			}
		})
	}
}

// TestChatDemoMissingModel: a --model folder without model.onnx (or the
// default, run outside the repository) is refused with the file and what
// --model takes.
func TestChatDemoMissingModel(t *testing.T) {
	out, err := loracc(t, "demo-chat", "--dir", t.TempDir(), "--model", t.TempDir())
	if err == nil || !strings.Contains(err.Error()+out, "model.onnx") || !strings.Contains(err.Error()+out, "--model random") {
		t.Errorf("want an error naming model.onnx and --model random, got %v\n%s", err, out)
	}
}
