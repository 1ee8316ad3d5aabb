package dataset

import (
	"strings"
	"testing"

	"github.com/loracc/loracc/graph"
)

// TestRanges: ids outside the embedding's rows, labels outside the
// logits' classes and negative labels other than the ignore index are
// refused at load with file:line and the field; in-range values, the
// ignore index and unbounded inputs load.
func TestRanges(t *testing.T) {
	lm := lmSpec(t)
	lm.PadID = 0
	lm.Ranges = map[string]Range{"input_ids": {Size: 50, Of: `the 50 rows of "wte"`}}
	lm.Classes = Range{Size: 50, Of: `the 50 classes of output "logits"`}
	ce := ceSpec(t) // no bounds known: only negative labels are refused
	for _, tc := range []struct {
		name, data string
		spec       Spec
		want       string // "" loads
	}{
		{"in range", `{"input_ids": [0, 49], "labels": [49, -100]}`, lm, ""},
		{"negative id", "\n" + `{"input_ids": [1, -1], "labels": [1, 2]}`, lm, `train.jsonl:2: field "input_ids": value -1 at element 1 is negative; it indexes the 50 rows of "wte"`},
		{"id past the table", `{"input_ids": [50], "labels": [1]}`, lm, `train.jsonl:1: field "input_ids": value 50 at element 0 is outside [0, 50), the 50 rows of "wte"`},
		{"label past the classes", `{"input_ids": [1, 2], "labels": [1, 50]}`, lm, `field "labels": value 50 at element 1 is outside [0, 50), the 50 classes of output "logits"`},
		{"negative label", `{"input_ids": [1, 2], "labels": [-1, 2]}`, lm, `field "labels": value -1 at element 0 is negative; labels are class indices or the ignore index -100`},
		{"ce negative label", `{"input_ids": [1], "token_type_ids": [0], "y": -3}`, ce, `field "y": value -3 at element 0 is negative`},
		{"ce unbounded", `{"input_ids": [123456], "token_type_ids": [-7], "y": 99}`, ce, ""},
	} {
		_, err := load(t, tc.spec, tc.data)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		}
	}
	bad := lm
	bad.PadID = 50
	if _, err := load(t, bad, `{"input_ids": [1], "labels": [1]}`); err == nil || !strings.Contains(err.Error(), `input "input_ids": pad id 50 is outside [0, 50)`) {
		t.Errorf("pad id past the table: %v", err)
	}
	if _, err := load(t, lm, "\n  \n\t\n"); err == nil || !strings.Contains(err.Error(), "no examples (3 lines, all blank)") {
		t.Errorf("blank file: %v", err)
	}
}

// TestModelRanges: on the tiny GPT-2 the token ids are bounded by the
// token embedding's rows, the position ids (if an input) by the position
// table, and labels by the logits' width, which equals the vocabulary.
func TestModelRanges(t *testing.T) {
	m, err := graph.Load("../testdata/models/gpt2_tiny.onnx")
	if err != nil {
		t.Fatal(err)
	}
	inputs, classes := ModelRanges(m.Graph, "logits")
	ids, ok := inputs["input_ids"]
	if !ok || ids.Size <= 0 || !strings.Contains(ids.Of, "rows of") {
		t.Fatalf("input_ids range %+v (all: %v)", ids, inputs)
	}
	if classes.Size != ids.Size {
		t.Errorf("logits classes %+v, want the vocabulary %d", classes, ids.Size)
	}
	if _, ok := inputs["attention_mask"]; ok {
		t.Errorf("attention_mask bounded: %v", inputs)
	}
	if _, c := ModelRanges(m.Graph, "no_such_output"); c.Size != 0 {
		t.Errorf("unknown logits gave classes %+v", c)
	}
}
