package trainio

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// TestDimJSON: sizes stay JSON numbers and symbolic dims strings, so
// train.json reads and writes back byte for byte; an unknown rank (null)
// stays null and a scalar's [] stays [].
func TestDimJSON(t *testing.T) {
	const js = `{
  "train": {
    "inputs": [
      {
        "name": "input_ids",
        "dtype": "int64",
        "shape": [
          "batch",
          128,
          "?"
        ],
        "role": "batch"
      },
      {
        "name": "lr",
        "dtype": "float32",
        "shape": [],
        "role": "lr"
      }
    ],
    "outputs": [
      {
        "name": "x.new",
        "dtype": "float32",
        "shape": null,
        "role": "updated_param",
        "replaces": "x"
      }
    ]
  },
  "eval": {
    "inputs": null,
    "outputs": null
  }
}`
	var f File
	if err := json.Unmarshal([]byte(js), &f); err != nil {
		t.Fatal(err)
	}
	want := []Dim{{Name: "batch"}, {Size: 128}, {Name: "?"}}
	if got := f.Train.Inputs[0].Shape; !reflect.DeepEqual(got, want) || !got[0].Symbolic() || got[1].Symbolic() {
		t.Errorf("shape %v, want %v", got, want)
	}
	if s := f.Train.Inputs[1].Shape; s == nil || len(s) != 0 || f.Train.Outputs[0].Shape != nil {
		t.Errorf("scalar shape %#v, unknown shape %#v", s, f.Train.Outputs[0].Shape)
	}
	out, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != js {
		t.Errorf("written back differently:\n%s", out)
	}
	if s := (Dim{Size: 7}).String() + (Dim{Name: "seq"}).String(); s != "7seq" {
		t.Errorf("String: %q", s)
	}
}

// TestDimJSONErrors: what is neither a size nor a name is refused when
// train.json is read.
func TestDimJSONErrors(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{`2.5`, "trainio: dim 2.5 is neither a size nor a name"},
		{`-1`, "trainio: dim -1 is neither a size nor a name"},
		{`true`, "trainio: dim true is neither a size nor a name"},
		{`[1]`, "trainio: dim [1] is neither a size nor a name"},
		{`""`, "trainio: a dim name is empty"},
	} {
		var e Entry
		err := json.Unmarshal([]byte(`{"shape": [`+c.in+`]}`), &e)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %q", c.in, err, c.want)
		}
	}
}
