package main

// Inputs for fuse --check. Random data serves most models, but not those
// whose inputs must mean something (an audio model's sample rate must be
// 8000 or 16000, its window at least 512 samples): --check-input
// NAME=VALUES or NAME=DIMS and --check-data FILE.jsonl give real ones;
// the inputs they leave out are random as before.

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/runtime"
)

// checkSpec is what the user gave for --check: values by input, and dims
// for inputs to be filled with random data of that shape.
type checkSpec struct {
	values map[string]given
	dims   map[string][]int64
	from   string // where the values came from, for messages
}

// given is an input's values as numbers, with the shape they came in
// (nil: infer it from the model's declared shape).
type given struct {
	shape []int64
	vals  []float64
	src   string
}

var dimsRe = regexp.MustCompile(`^[0-9]+(x[0-9]+)+$|^[0-9]+x$`)

// parseCheckInputs reads --check-input NAME=V1,V2,... (values) or
// NAME=D1xD2x... (dims of random data) and --check-data FILE (its first
// non-blank line: a JSON object of input names to numbers or nested
// arrays, as train's data).
func parseCheckInputs(flags []string, dataFile string) (checkSpec, error) {
	s := checkSpec{values: map[string]given{}, dims: map[string][]int64{}}
	var from []string
	if dataFile != "" {
		data, err := graph.ReadRegular(dataFile, 1<<30, "check data")
		if err != nil {
			return s, fmt.Errorf("--check-data: %w", err)
		}
		line, n := firstExample(data)
		if line == nil {
			return s, fmt.Errorf("--check-data %s: no example (the file is blank)", dataFile)
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(line, &obj); err != nil {
			return s, fmt.Errorf("--check-data %s:%d: not a JSON object: %v", dataFile, n, err)
		}
		for name, raw := range obj {
			var v any
			if err := json.Unmarshal(raw, &v); err != nil {
				return s, fmt.Errorf("--check-data %s:%d: field %q: %v", dataFile, n, name, err)
			}
			g, err := nested(v)
			if err != nil {
				return s, fmt.Errorf("--check-data %s:%d: field %q: %w", dataFile, n, name, err)
			}
			g.src = fmt.Sprintf("%s:%d field %q", dataFile, n, name)
			s.values[name] = g
		}
		from = append(from, dataFile+":"+strconv.Itoa(n))
	}
	for _, f := range flags {
		name, val, ok := strings.Cut(f, "=")
		if !ok || name == "" || val == "" {
			return s, fmt.Errorf("--check-input %q: want NAME=V1,V2,... or NAME=D1xD2", f)
		}
		if dimsRe.MatchString(val) {
			var dims []int64
			for _, d := range strings.Split(strings.TrimSuffix(val, "x"), "x") {
				n, err := strconv.ParseInt(d, 10, 64)
				if err != nil || n <= 0 || n > 1<<31 {
					return s, fmt.Errorf("--check-input %q: dim %q must be in [1, 2^31]", f, d)
				}
				dims = append(dims, n)
			}
			if _, err := graph.NumElements(dims); err != nil {
				return s, fmt.Errorf("--check-input %q: %w", f, err)
			}
			s.dims[name] = dims
			continue
		}
		var vals []float64
		for _, x := range strings.Split(val, ",") {
			v, err := strconv.ParseFloat(strings.TrimSpace(x), 64)
			if err != nil {
				return s, fmt.Errorf("--check-input %q: %q is not a number (values are V1,V2,...; dims D1xD2)", f, x)
			}
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return s, fmt.Errorf("--check-input %q: %q is not a finite number", f, x)
			}
			vals = append(vals, v)
		}
		s.values[name] = given{vals: vals, src: "--check-input " + name}
	}
	if len(flags) > 0 {
		from = append(from, "--check-input")
	}
	s.from = strings.Join(from, " and ")
	return s, nil
}

// firstExample is data's first non-blank line and its 1-based number.
func firstExample(data []byte) ([]byte, int) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, len(data)+1)
	for n := 1; sc.Scan(); n++ {
		if l := bytes.TrimSpace(sc.Bytes()); len(l) > 0 {
			return l, n
		}
	}
	return nil, 0
}

// nested flattens a JSON number, bool or rectangular nested array. The
// first element at each level fixes the shape; every other array must
// match it and every number must sit as deep as the first one.
func nested(v any) (given, error) {
	g := given{shape: []int64{}}
	leaf := -1 // the depth of the numbers, once one is seen
	var walk func(x any, depth int) error
	walk = func(x any, depth int) error {
		switch x := x.(type) {
		case []any:
			switch {
			case leaf < 0 && depth == len(g.shape):
				g.shape = append(g.shape, int64(len(x)))
			case depth >= len(g.shape) || (leaf >= 0 && depth >= leaf):
				return fmt.Errorf("not a rectangular array (an array where a number was expected)")
			case g.shape[depth] != int64(len(x)):
				return fmt.Errorf("not a rectangular array (%d elements at depth %d, %d before)", len(x), depth, g.shape[depth])
			}
			for _, e := range x {
				if err := walk(e, depth+1); err != nil {
					return err
				}
			}
			return nil
		case float64, bool:
			if leaf < 0 {
				leaf = depth
			}
			if depth != leaf || depth != len(g.shape) {
				return fmt.Errorf("not a rectangular array (a number at depth %d, %d before)", depth, leaf)
			}
			if b, ok := x.(bool); ok {
				g.vals = append(g.vals, map[bool]float64{false: 0, true: 1}[b])
			} else {
				g.vals = append(g.vals, x.(float64))
			}
			return nil
		}
		return fmt.Errorf("want numbers or nested arrays of numbers, got %T", x)
	}
	if err := walk(v, 0); err != nil {
		return g, err
	}
	return g, nil
}

// checkInputs is --check's feed: the given values, random data of the
// given dims, random data elsewhere.
func checkInputs(infos []runtime.IOInfo, spec checkSpec, seed uint64) (map[string]runtime.Tensor, error) {
	known := map[string]bool{}
	for _, in := range infos {
		known[in.Name] = true
	}
	for name, g := range spec.values {
		if !known[name] {
			return nil, fmt.Errorf("%s: the model has no input %q", g.src, name)
		}
	}
	for name := range spec.dims {
		if !known[name] {
			return nil, fmt.Errorf("--check-input %s: the model has no input %q", name, name)
		}
	}
	var random []runtime.IOInfo
	for _, in := range infos {
		if d, ok := spec.dims[in.Name]; ok {
			if err := fits(in, d); err != nil {
				return nil, fmt.Errorf("--check-input %s: %w", in.Name, err)
			}
			in.Shape = d
		}
		if _, ok := spec.values[in.Name]; !ok {
			random = append(random, in)
		}
	}
	out, err := RandomInputs(random, seed)
	if err != nil {
		return nil, err
	}
	for _, in := range infos {
		g, ok := spec.values[in.Name]
		if !ok {
			continue
		}
		t, err := givenTensor(in, g)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", g.src, err)
		}
		out[in.Name] = t
	}
	return out, nil
}

// fits checks dims against an input's declared shape.
func fits(in runtime.IOInfo, dims []int64) error {
	if in.Shape == nil {
		return nil
	}
	if len(dims) != len(in.Shape) {
		return fmt.Errorf("%d dims given, input %q has rank %d", len(dims), in.Name, len(in.Shape))
	}
	for i, d := range in.Shape {
		if d >= 0 && d != dims[i] {
			return fmt.Errorf("dim %d is %d, input %q declares %d", i, dims[i], in.Name, d)
		}
	}
	return nil
}

// givenTensor encodes g as input in's type, shaped as given or, for flat
// --check-input values, as the declared shape when it is static and holds
// that many values (a scalar for one value and rank 0, else 1-D).
func givenTensor(in runtime.IOInfo, g given) (runtime.Tensor, error) {
	shape := g.shape
	if shape == nil {
		n := int64(len(g.vals))
		switch {
		case in.Shape != nil && len(in.Shape) == 0 && n == 1:
			shape = []int64{}
		case in.Shape != nil && declaredSize(in.Shape) == n:
			shape = in.Shape
		default:
			shape = []int64{n}
		}
	}
	if err := fits(in, shape); err != nil {
		return runtime.Tensor{}, err
	}
	raw, err := encodeValues(in.DType, g.vals)
	if err != nil {
		return runtime.Tensor{}, fmt.Errorf("input %q: %w", in.Name, err)
	}
	return runtime.Tensor{DType: in.DType, Shape: shape, Data: raw}, nil
}

// declaredSize is the element count of a declared shape, -1 when a dim
// is symbolic.
func declaredSize(dims []int64) int64 {
	n, err := graph.NumElements(dims)
	if err != nil {
		return -1
	}
	return n
}

// encodeValues writes vals as dt, refusing values the type cannot hold.
func encodeValues(dt graph.DataType, vals []float64) ([]byte, error) {
	switch {
	case dt == graph.Double:
		raw := make([]byte, 8*len(vals))
		for i, v := range vals {
			binary.LittleEndian.PutUint64(raw[8*i:], math.Float64bits(v))
		}
		return raw, nil
	case dt.IsFloat():
		f := make([]float32, len(vals))
		for i, v := range vals {
			f[i] = float32(v)
		}
		return graph.EncodeFloats(dt, f)
	case dt == graph.Int64 || dt == graph.Int32:
		w := dt.BitSize() / 8
		raw := make([]byte, w*len(vals))
		for i, v := range vals {
			lim := math.Ldexp(1, dt.BitSize()-1)
			if v != math.Trunc(v) || v < -lim || v >= lim {
				return nil, fmt.Errorf("value %v at element %d is not a %s", v, i, dt)
			}
			if w == 8 {
				binary.LittleEndian.PutUint64(raw[8*i:], uint64(int64(v)))
			} else {
				binary.LittleEndian.PutUint32(raw[4*i:], uint32(int32(v)))
			}
		}
		return raw, nil
	case dt == graph.Bool:
		raw := make([]byte, len(vals))
		for i, v := range vals {
			if v != 0 && v != 1 {
				return nil, fmt.Errorf("value %v at element %d is not a bool (0, 1, false or true)", v, i)
			}
			raw[i] = byte(v)
		}
		return raw, nil
	}
	return nil, fmt.Errorf("no way to write values as %s", dt)
}
