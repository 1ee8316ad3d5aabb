package dataset

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/loracc/loracc/trainio"
)

// entries decodes train.json inputs, so shapes are what Load gets in real
// use: float64 sizes and string names.
func entries(t testing.TB, js string) []trainio.Entry {
	t.Helper()
	var es []trainio.Entry
	if err := json.Unmarshal([]byte(js), &es); err != nil {
		t.Fatal(err)
	}
	return es
}

func lmSpec(t testing.TB) Spec {
	return Spec{
		Inputs: entries(t, `[
			{"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"], "role": "batch"},
			{"name": "attention_mask", "dtype": "int64", "shape": ["batch", "seq"], "role": "batch"},
			{"name": "labels", "dtype": "int64", "shape": ["batch", "seq"], "role": "label"}]`),
		Loss: "lm", Labels: "labels", PadID: 7, IgnoreIndex: -100, MaskInput: "attention_mask",
	}
}

func ceSpec(t testing.TB) Spec {
	return Spec{
		Inputs: entries(t, `[
			{"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"], "role": "batch"},
			{"name": "token_type_ids", "dtype": "int32", "shape": ["batch", "seq"], "role": "batch"},
			{"name": "attention_mask", "dtype": "bool", "shape": ["batch", "seq"], "role": "batch"},
			{"name": "y", "dtype": "int64", "shape": ["batch"], "role": "label"},
			{"name": "W.lora_A", "dtype": "float16", "shape": [4, 8], "role": "param"}]`),
		Loss: "ce", IgnoreIndex: -100, MaskInput: "attention_mask",
	}
}

func mseSpec(t testing.TB) Spec {
	return Spec{
		Inputs: entries(t, `[
			{"name": "x", "dtype": "float32", "shape": ["batch", 3], "role": "batch"},
			{"name": "grid", "dtype": "float32", "shape": ["batch", "h", 2], "role": "batch"},
			{"name": "labels", "dtype": "float32", "shape": ["batch", 2], "role": "label"}]`),
		Loss: "mse", Labels: "labels",
	}
}

// load writes content to dir/train.jsonl and loads it; errors come back
// with the folder stripped, so messages read "train.jsonl:N: ...".
func load(t *testing.T, spec Spec, content string) (*Set, error) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "train.jsonl")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := Load(path, spec)
	if err != nil {
		return nil, &strippedErr{strings.ReplaceAll(err.Error(), dir+string(filepath.Separator), "")}
	}
	return s, nil
}

type strippedErr struct{ s string }

func (e *strippedErr) Error() string { return e.s }

func ints64(t *testing.T, tn Tensor) []int64 {
	t.Helper()
	if tn.DType != "int64" || len(tn.Data)%8 != 0 {
		t.Fatalf("not int64 data: %s, %d bytes", tn.DType, len(tn.Data))
	}
	out := make([]int64, len(tn.Data)/8)
	for i := range out {
		out[i] = int64(binary.LittleEndian.Uint64(tn.Data[8*i:]))
	}
	return out
}

func checkTensor(t *testing.T, batch map[string]Tensor, name string, shape []int64, want []int64) {
	t.Helper()
	tn, ok := batch[name]
	if !ok {
		t.Fatalf("no tensor %q", name)
	}
	if !slices.Equal(tn.Shape, shape) {
		t.Errorf("%s: shape %v, want %v", name, tn.Shape, shape)
	}
	if got := ints64(t, tn); !slices.Equal(got, want) {
		t.Errorf("%s: %v, want %v", name, got, want)
	}
}

func TestLMPadsAndBuildsMask(t *testing.T) {
	s, err := load(t, lmSpec(t), `{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}

{"labels": [-100, 5], "input_ids": [4, 5]}
{"input_ids": [6, 8, 9, 10], "labels": [6, 8, 9, 10], "attention_mask": [1, 1, 1, 0]}
`)
	if err != nil {
		t.Fatal(err)
	}
	if s.Len() != 3 {
		t.Fatalf("Len = %d, want 3", s.Len())
	}
	for i, want := range []int{2, 1, 3} {
		if got := s.Tokens(i); got != want {
			t.Errorf("Tokens(%d) = %d, want %d", i, got, want)
		}
	}
	b, err := s.Batch([]int{1, 0})
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 3 {
		t.Errorf("batch has %d tensors, want 3", len(b))
	}
	if got := s.names(); got != "input_ids, attention_mask, labels" {
		t.Errorf("fields %s", got)
	}
	checkTensor(t, b, "input_ids", []int64{2, 3}, []int64{4, 5, 7, 1, 2, 3})
	checkTensor(t, b, "labels", []int64{2, 3}, []int64{-100, 5, -100, 1, 2, 3})
	checkTensor(t, b, "attention_mask", []int64{2, 3}, []int64{1, 1, 0, 1, 1, 1})

	b, err = s.Batch([]int{2, 1, 2})
	if err != nil {
		t.Fatal(err)
	}
	checkTensor(t, b, "input_ids", []int64{3, 4}, []int64{6, 8, 9, 10, 4, 5, 7, 7, 6, 8, 9, 10})
	checkTensor(t, b, "attention_mask", []int64{3, 4}, []int64{1, 1, 1, 0, 1, 1, 0, 0, 1, 1, 1, 0})
}

func TestCE(t *testing.T) {
	s, err := load(t, ceSpec(t), `{"input_ids": [1, 2], "token_type_ids": [0, 1], "y": 3}
{"input_ids": [3, 4], "token_type_ids": [1, 1], "y": -100, "attention_mask": [true, 0]}
{"input_ids": [5, 6, 7], "token_type_ids": [0, 0, 0], "y": 1}
`)
	if err != nil {
		t.Fatal(err)
	}
	if got := []int{s.Tokens(0), s.Tokens(1), s.Tokens(2)}; !slices.Equal(got, []int{1, 0, 1}) {
		t.Errorf("Tokens = %v, want [1 0 1]", got)
	}
	b, err := s.Batch([]int{0, 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 4 {
		t.Errorf("batch has %d tensors, want 4 (the param is not data)", len(b))
	}
	checkTensor(t, b, "y", []int64{2}, []int64{3, -100})
	checkTensor(t, b, "input_ids", []int64{2, 2}, []int64{1, 2, 3, 4})
	if tt := b["token_type_ids"]; tt.DType != "int32" || !slices.Equal(tt.Shape, []int64{2, 2}) ||
		!bytes.Equal(tt.Data, []byte{0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0}) {
		t.Errorf("token_type_ids = %+v", tt)
	}
	if m := b["attention_mask"]; m.DType != "bool" || !slices.Equal(m.Shape, []int64{2, 2}) || !bytes.Equal(m.Data, []byte{1, 1, 1, 0}) {
		t.Errorf("attention_mask = %+v", m)
	}
	_, err = s.Batch([]int{0, 2})
	want := `dataset: batch: field "input_ids": example 2 (line 3) has shape [3] but example 0 (line 1) has [2]; examples in a batch must agree in shape`
	if err == nil || err.Error() != want {
		t.Errorf("mixed lengths: got %v\nwant %s", err, want)
	}
}

func TestMSEFloats(t *testing.T) {
	s, err := load(t, mseSpec(t), `{"x": [0.5, -1e-3, 3], "grid": [[1, 2], [3, 4]], "labels": [1.25, -2]}
{"x": [1, 2, 1e-50], "grid": [[0, 0], [0, 0.125]], "labels": [0, 3.5e2]}
`)
	if err != nil {
		t.Fatal(err)
	}
	if s.Tokens(0) != 2 {
		t.Errorf("Tokens(0) = %d, want 2", s.Tokens(0))
	}
	b, err := s.Batch([]int{0, 1})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]float32{
		"x":      {0.5, -1e-3, 3, 1, 2, 0},
		"grid":   {1, 2, 3, 4, 0, 0, 0, 0.125},
		"labels": {1.25, -2, 0, 350},
	}
	shapes := map[string][]int64{"x": {2, 3}, "grid": {2, 2, 2}, "labels": {2, 2}}
	for name, w := range want {
		tn := b[name]
		var got []float32
		for i := 0; i+4 <= len(tn.Data); i += 4 {
			got = append(got, math.Float32frombits(binary.LittleEndian.Uint32(tn.Data[i:])))
		}
		if tn.DType != "float32" || !slices.Equal(tn.Shape, shapes[name]) || !slices.Equal(got, w) {
			t.Errorf("%s: %s %v %v, want float32 %v %v", name, tn.DType, tn.Shape, got, shapes[name], w)
		}
	}
}

func TestBadLines(t *testing.T) {
	const good = `{"input_ids": [1, 2], "labels": [1, 2]}` + "\n"
	lm, ce, mse := lmSpec(t), ceSpec(t), mseSpec(t)
	for _, c := range []struct {
		name, content string
		spec          Spec
		want          string
	}{
		{"not JSON", good + `{"input_ids": [1, 2], "labels": [1, 2]` + "\n", lm,
			`train.jsonl:2: not JSON: unexpected end of line`},
		{"not JSON in a value", `{"input_ids": [NaN], "labels": [1]}`, lm,
			`train.jsonl:1: field "input_ids": not JSON: unexpected 'N' at column 16`},
		{"not an object", `[1, 2]`, lm, `train.jsonl:1: expected a JSON object, got an array`},
		{"trailing data", `{"input_ids": [1], "labels": [1]} x`, lm,
			`train.jsonl:1: not JSON: data after the object at column 35`},
		{"missing field", good + good + `{"input_ids": [1, 2]}`, lm, `train.jsonl:3: field "labels": missing`},
		{"unknown field", `{"input_ids": [1], "labels": [1], "lables": [1]}`, lm,
			`train.jsonl:1: field "lables": unknown; the graph takes input_ids, attention_mask, labels`},
		{"duplicate field", `{"input_ids": [1], "labels": [1], "labels": [1]}`, lm,
			`train.jsonl:1: field "labels": appears twice`},
		{"wrong rank", `{"input_ids": [[1, 2]], "labels": [1, 2]}`, lm,
			`train.jsonl:1: field "input_ids": expected int64 of rank 1 (shape [seq]), got a rank-2 array`},
		{"number for an array", `{"input_ids": 5, "labels": [1]}`, lm,
			`train.jsonl:1: field "input_ids": expected int64 of rank 1 (shape [seq]), got a number`},
		{"array for a number", `{"input_ids": [1], "token_type_ids": [0], "y": [1]}`, ce,
			`train.jsonl:1: field "y": expected int64 of rank 0 (a single number), got a rank-1 array`},
		{"ragged", `{"x": [1, 2, 3], "grid": [[1, 2], [3]], "labels": [1, 2]}`, mse,
			`train.jsonl:1: field "grid": ragged array: [1] has 1 elements but [0] has 2`},
		{"ragged depth", `{"x": [1, 2, 3], "grid": [[1, 2], 3], "labels": [1, 2]}`, mse,
			`train.jsonl:1: field "grid": ragged array: [1] is a number where an array belongs`},
		{"ragged deeper", `{"x": [1, 2, 3], "grid": [[1, 2], [3, [4]]], "labels": [1, 2]}`, mse,
			`train.jsonl:1: field "grid": ragged array: [1][1] is an array where numbers belong`},
		{"empty array", `{"input_ids": [], "labels": []}`, lm,
			`train.jsonl:1: field "input_ids": expected int64 of rank 1 (shape [seq]), got an empty array`},
		{"float in an int field", `{"input_ids": [1, 2.5], "labels": [1, 2]}`, lm,
			`train.jsonl:1: field "input_ids": expected int64 of rank 1 (shape [seq]), got 2.5 at [1], which is not an integer`},
		{"exponent in an int field", `{"input_ids": [1e3], "labels": [1]}`, lm,
			`train.jsonl:1: field "input_ids": expected int64 of rank 1 (shape [seq]), got 1e3 at [0], which is not an integer`},
		{"string value", `{"input_ids": "hello world", "labels": [1]}`, lm,
			`train.jsonl:1: field "input_ids": expected int64 of rank 1 (shape [seq]), got a string`},
		{"string element", `{"input_ids": [1, "2"], "labels": [1, 2]}`, lm,
			`train.jsonl:1: field "input_ids": expected int64 of rank 1 (shape [seq]), got a string at [1]`},
		{"null", `{"input_ids": null, "labels": [1]}`, lm,
			`train.jsonl:1: field "input_ids": expected int64 of rank 1 (shape [seq]), got null`},
		{"out of int64 range", `{"input_ids": [1, 99999999999999999999], "labels": [1, 2]}`, lm,
			`train.jsonl:1: field "input_ids": 99999999999999999999 at [1] is out of int64 range`},
		{"out of int32 range", `{"input_ids": [1], "token_type_ids": [2147483648], "y": 0}`, ce,
			`train.jsonl:1: field "token_type_ids": 2147483648 at [0] is out of int32 range`},
		{"bool not 0 or 1", `{"input_ids": [1], "token_type_ids": [0], "attention_mask": [2], "y": 0}`, ce,
			`train.jsonl:1: field "attention_mask": expected bool of rank 1 (shape [seq]), got 2 at [0]; bool takes 0, 1, true or false`},
		{"float32 overflow", `{"x": [1, 1e400, 3], "grid": [[1, 2]], "labels": [1, 2]}`, mse,
			`train.jsonl:1: field "x": 1e400 at [1] overflows float32`},
		{"float32 overflow, in float64 range", `{"x": [1, 2, -1e39], "grid": [[1, 2]], "labels": [1, 2]}`, mse,
			`train.jsonl:1: field "x": -1e39 at [2] overflows float32`},
		{"wrong fixed dim", `{"x": [1, 2], "grid": [[1, 2]], "labels": [1, 2]}`, mse,
			`train.jsonl:1: field "x": expected float32 of rank 1 (shape [3]), got shape [2]`},
		{"wrong inner fixed dim", `{"x": [1, 2, 3], "grid": [[1, 2, 3]], "labels": [1, 2]}`, mse,
			`train.jsonl:1: field "grid": expected float32 of rank 2 (shape [h, 2]), got shape [1, 3]`},
		{"lm lengths differ", `{"input_ids": [1, 2, 3], "labels": [1, 2]}`, lm,
			`train.jsonl:1: field "labels": sequence length 2 differs from field "input_ids"'s 3`},
		{"mask shape differs", `{"input_ids": [1, 2], "labels": [1, 2], "attention_mask": [1]}`, lm,
			`train.jsonl:1: field "attention_mask": sequence length 1 differs from field "input_ids"'s 2`},
		{"named dims differ", `{"input_ids": [1, 2], "token_type_ids": [0], "y": 1}`, ce,
			`train.jsonl:1: field "token_type_ids": dim "seq" is 1 here but 2 in field "input_ids"`},
		{"empty file", ``, lm, `train.jsonl: no examples (the file is empty)`},
		{"blank lines only", "\n  \n\r\n", lm, `train.jsonl: no examples (3 lines, all blank)`},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := load(t, c.spec, c.content)
			if err == nil || err.Error() != c.want {
				t.Errorf("got  %v\nwant %s", err, c.want)
			}
		})
	}
}

func TestLongLine(t *testing.T) {
	s, err := compile(lmSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	in := `{"input_ids": [1], "labels": [1]}` + "\n" + `{"input_ids": [` + strings.Repeat("1, ", 100) + `1], "labels": [1]}`
	err = s.read(strings.NewReader(in), "train.jsonl", 128)
	if err == nil || !strings.HasPrefix(err.Error(), "train.jsonl:2: line longer than 128 bytes") {
		t.Errorf("got %v", err)
	}
}

func TestBadSpec(t *testing.T) {
	path := filepath.Join(t.TempDir(), "train.jsonl")
	if err := os.WriteFile(path, []byte(`{"a": [1]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		spec Spec
		want string
	}{
		{"dtype", Spec{Loss: "lm", Inputs: entries(t, `[{"name": "a", "dtype": "complex64", "shape": ["b", "s"]}]`)},
			`input "a": dtype "complex64" is not supported in data (int64, int32, bool, float32, float16, bfloat16, float64)`},
		{"loss", Spec{Loss: "ctc"}, `unknown loss "ctc" (want lm, ce or mse)`},
		{"labels", Spec{Loss: "lm", Labels: "labels", Inputs: entries(t, `[{"name": "a", "dtype": "int64", "shape": ["b", "s"]}]`)},
			`labels "labels" are not among the graph's inputs`},
		{"float labels for ce", Spec{Loss: "ce", Labels: "a", Inputs: entries(t, `[{"name": "a", "dtype": "float32", "shape": ["b"]}]`)},
			`labels "a": ce loss needs integer labels, the graph takes float32`},
		{"mask", Spec{Loss: "lm", MaskInput: "m", Inputs: entries(t, `[{"name": "a", "dtype": "int64", "shape": ["b", "s"], "role": "label"}]`)},
			`mask input "m" is not among the graph's inputs`},
		{"no shape", Spec{Loss: "lm", Inputs: entries(t, `[{"name": "a", "dtype": "int64", "role": "label"}]`)},
			`input "a" has no declared shape; the data needs its rank`},
		{"pad id", Spec{Loss: "lm", PadID: 1 << 40, Inputs: entries(t, `[{"name": "a", "dtype": "int32", "shape": ["b", "s"]}, {"name": "l", "dtype": "int64", "shape": ["b", "s"], "role": "label"}]`)},
			`input "a": pad id 1099511627776 does not fit int32`},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Load(path, c.spec)
			if err == nil || err.Error() != path+": "+c.want {
				t.Errorf("got  %v\nwant %s: %s", err, path, c.want)
			}
		})
	}
}

func TestBatchErrors(t *testing.T) {
	spec := lmSpec(t)
	spec.Inputs[0].Shape = []trainio.Dim{{Size: 2}, {Name: "seq"}}
	s, err := load(t, spec, `{"input_ids": [1], "labels": [1]}`)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		idx  []int
		want string
	}{
		{nil, "dataset: batch: no examples"},
		{[]int{1}, "dataset: batch: example 1 out of range [0, 1)"},
		{[]int{0}, `dataset: batch: field "input_ids": the graph takes batch size 2, got 1 examples`},
	} {
		if _, err := s.Batch(c.idx); err == nil || err.Error() != c.want {
			t.Errorf("Batch(%v): got %v, want %s", c.idx, err, c.want)
		}
	}
	if _, err := s.Batch([]int{0, 0}); err != nil {
		t.Errorf("Batch([0 0]): %v", err)
	}
}

func TestOrder(t *testing.T) {
	a := Order(100, 42, 3)
	if !slices.Equal(a, Order(100, 42, 3)) {
		t.Fatal("Order is not deterministic")
	}
	sorted := slices.Sorted(slices.Values(a))
	for i, v := range sorted {
		if v != i {
			t.Fatalf("Order(100, 42, 3) is not a permutation: %v", a)
		}
	}
	if slices.Equal(a, Order(100, 42, 4)) || slices.Equal(a, Order(100, 43, 3)) {
		t.Error("epoch or seed does not change the order")
	}
	// A fixed order: a change here breaks resuming runs started before it.
	if got, want := Order(10, 1, 0), []int{6, 8, 9, 3, 2, 5, 1, 7, 0, 4}; !slices.Equal(got, want) {
		t.Errorf("Order(10, 1, 0) = %v, want %v", got, want)
	}
	if len(Order(0, 1, 0)) != 0 || len(Order(-1, 1, 0)) != 0 || !slices.Equal(Order(1, 1, 0), []int{0}) {
		t.Error("Order of 0, -1 or 1 examples")
	}
}
