package graph

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/loracc/loracc/graph/onnxpb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

func kv(k, v string) *onnxpb.StringStringEntryProto {
	return &onnxpb.StringStringEntryProto{Key: proto.String(k), Value: proto.String(v)}
}

func tensorType(dt int32, dims ...any) *onnxpb.TypeProto {
	sh := &onnxpb.TensorShapeProto{}
	for _, d := range dims {
		switch d := d.(type) {
		case int:
			sh.Dim = append(sh.Dim, &onnxpb.TensorShapeProto_Dimension{Value: &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: int64(d)}})
		case nil:
			sh.Dim = append(sh.Dim, &onnxpb.TensorShapeProto_Dimension{})
		case string:
			sh.Dim = append(sh.Dim, &onnxpb.TensorShapeProto_Dimension{Value: &onnxpb.TensorShapeProto_Dimension_DimParam{DimParam: d}, Denotation: proto.String("DATA_BATCH")})
		}
	}
	return &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{TensorType: &onnxpb.TypeProto_Tensor{ElemType: proto.Int32(dt), Shape: sh}}}
}

// withUnknown appends a field number no schema version uses, as a newer
// ONNX would, to check it survives.
func withUnknown(m proto.Message, num protowire.Number, payload string) {
	var b []byte
	b = protowire.AppendTag(b, num, protowire.BytesType)
	b = protowire.AppendString(b, payload)
	r := m.ProtoReflect()
	r.SetUnknown(append(r.GetUnknown(), b...))
}

// richModel exercises every part of the schema loracc reads or carries:
// metadata everywhere, typed and raw tensors, strings, sparse
// initializers, quantization annotations, subgraphs with outer-scope
// reads, functions, training info, device configuration and unknown fields.
func richModel(t *testing.T, dir string) *onnxpb.ModelProto {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "w.bin"), make([]byte, 64+24), 0o644); err != nil {
		t.Fatal(err)
	}
	w := &onnxpb.TensorProto{Name: proto.String("W"), DataType: proto.Int32(1), Dims: []int64{2, 3},
		FloatData: []float32{1, 2, 3, 4, 5, 6}, DocString: proto.String("typed floats"), MetadataProps: []*onnxpb.StringStringEntryProto{kv("a", "b")}}
	withUnknown(w, 99, "tensor-future")
	ext := &onnxpb.TensorProto{Name: proto.String("E"), DataType: proto.Int32(1), Dims: []int64{2, 3},
		DataLocation: onnxpb.TensorProto_EXTERNAL.Enum(),
		ExternalData: []*onnxpb.StringStringEntryProto{kv("location", "w.bin"), kv("offset", "64"), kv("length", "24"), kv("checksum", "abc"), kv("custom", "x")}}
	raw := &onnxpb.TensorProto{Name: proto.String("R"), DataType: proto.Int32(10), Dims: []int64{2}, RawData: []byte{0, 60, 0, 64}}
	str := &onnxpb.TensorProto{Name: proto.String("S"), DataType: proto.Int32(8), Dims: []int64{2}, StringData: [][]byte{[]byte("x"), []byte("y")}}
	i4 := &onnxpb.TensorProto{Name: proto.String("I4"), DataType: proto.Int32(22), Dims: []int64{3}, Int32Data: []int32{0x21, 0x03}}
	f8 := &onnxpb.TensorProto{Name: proto.String("F8"), DataType: proto.Int32(17), Dims: []int64{2}, RawData: []byte{1, 2}}
	then := &onnxpb.GraphProto{Name: proto.String("then"),
		Node:   []*onnxpb.NodeProto{{OpType: proto.String("MatMul"), Input: []string{"x", "W"}, Output: []string{"t_out"}, Name: proto.String("inner")}},
		Output: []*onnxpb.ValueInfoProto{{Name: proto.String("t_out"), Type: tensorType(1, "b", 3)}}}
	els := &onnxpb.GraphProto{Name: proto.String("else"),
		Node:   []*onnxpb.NodeProto{{OpType: proto.String("MatMul"), Input: []string{"x", "E"}, Output: []string{"e_out"}}},
		Output: []*onnxpb.ValueInfoProto{{Name: proto.String("e_out"), Type: tensorType(1, "b", 3)}}}
	node := &onnxpb.NodeProto{OpType: proto.String("If"), Input: []string{"c"}, Output: []string{"y"}, Name: proto.String("if0"),
		DocString: proto.String("branching"), MetadataProps: []*onnxpb.StringStringEntryProto{kv("pkg.torch.onnx.name_scopes", "['', 'm']")},
		Attribute: []*onnxpb.AttributeProto{
			{Name: proto.String("then_branch"), Type: onnxpb.AttributeProto_GRAPH.Enum(), G: then},
			{Name: proto.String("else_branch"), Type: onnxpb.AttributeProto_GRAPH.Enum(), G: els},
		},
		DeviceConfigurations: []*onnxpb.NodeDeviceConfigurationProto{{ConfigurationId: proto.String("cfg"), PipelineStage: proto.Int32(1)}}}
	withUnknown(node, 77, "node-future")
	cast := &onnxpb.NodeProto{OpType: proto.String("Custom"), Domain: proto.String("my.domain"), Overload: proto.String("v2"), Input: []string{"y", "", "R"}, Output: []string{"z", ""},
		Attribute: []*onnxpb.AttributeProto{
			{Name: proto.String("f"), Type: onnxpb.AttributeProto_FLOAT.Enum(), F: proto.Float32(0)},
			{Name: proto.String("s"), Type: onnxpb.AttributeProto_STRING.Enum(), S: []byte("")},
			{Name: proto.String("ints"), Type: onnxpb.AttributeProto_INTS.Enum(), Ints: []int64{1, -2}},
			{Name: proto.String("ref"), Type: onnxpb.AttributeProto_INT.Enum(), RefAttrName: proto.String("outer")},
			{Name: proto.String("tp"), Type: onnxpb.AttributeProto_TYPE_PROTO.Enum(), Tp: tensorType(1, 2)},
			{Name: proto.String("ts"), Type: onnxpb.AttributeProto_TENSORS.Enum(), Tensors: []*onnxpb.TensorProto{raw}},
		}}
	g := &onnxpb.GraphProto{
		Name:        proto.String("main"),
		DocString:   proto.String("doc"),
		Node:        []*onnxpb.NodeProto{cast, node}, // not topological on purpose
		Initializer: []*onnxpb.TensorProto{w, ext, raw, str, i4, f8},
		SparseInitializer: []*onnxpb.SparseTensorProto{{Dims: []int64{4},
			Values:  &onnxpb.TensorProto{Name: proto.String("sp"), DataType: proto.Int32(1), Dims: []int64{1}, FloatData: []float32{7}},
			Indices: &onnxpb.TensorProto{DataType: proto.Int32(7), Dims: []int64{1}, Int64Data: []int64{2}}}},
		Input: []*onnxpb.ValueInfoProto{
			{Name: proto.String("x"), Type: tensorType(1, "b", 2), MetadataProps: []*onnxpb.StringStringEntryProto{kv("k", "v")}},
			{Name: proto.String("c"), Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{TensorType: &onnxpb.TypeProto_Tensor{ElemType: proto.Int32(9)}}}},
			{Name: proto.String("seq"), Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_SequenceType{SequenceType: &onnxpb.TypeProto_Sequence{ElemType: tensorType(1)}}}},
		},
		Output:                 []*onnxpb.ValueInfoProto{{Name: proto.String("z"), Type: tensorType(1, "b", 3), DocString: proto.String("out")}},
		ValueInfo:              []*onnxpb.ValueInfoProto{{Name: proto.String("y"), Type: tensorType(1, "b", nil)}},
		QuantizationAnnotation: []*onnxpb.TensorAnnotation{{TensorName: proto.String("W"), QuantParameterTensorNames: []*onnxpb.StringStringEntryProto{kv("SCALE_TENSOR", "s")}}},
		MetadataProps:          []*onnxpb.StringStringEntryProto{kv("graph", "meta")},
	}
	withUnknown(g, 88, "graph-future")
	m := &onnxpb.ModelProto{
		IrVersion:       proto.Int64(11),
		OpsetImport:     []*onnxpb.OperatorSetIdProto{{Domain: proto.String(""), Version: proto.Int64(21)}, {Domain: proto.String("my.domain"), Version: proto.Int64(1)}},
		ProducerName:    proto.String("test"),
		ProducerVersion: proto.String("1"),
		Domain:          proto.String("org.test"),
		ModelVersion:    proto.Int64(3),
		DocString:       proto.String("model doc"),
		Graph:           g,
		MetadataProps:   []*onnxpb.StringStringEntryProto{kv("license", "mit")},
		TrainingInfo:    []*onnxpb.TrainingInfoProto{{UpdateBinding: []*onnxpb.StringStringEntryProto{kv("W", "W_new")}}},
		Functions: []*onnxpb.FunctionProto{{Name: proto.String("Custom"), Domain: proto.String("my.domain"), Overload: proto.String("v2"),
			Input: []string{"a"}, Output: []string{"b"}, Node: []*onnxpb.NodeProto{{OpType: proto.String("Identity"), Input: []string{"a"}, Output: []string{"b"}}},
			MetadataProps: []*onnxpb.StringStringEntryProto{kv("fn", "meta")}}},
		Configuration: []*onnxpb.DeviceConfigurationProto{{Name: proto.String("cfg"), NumDevices: proto.Int32(2), Device: []string{"a", "b"}}},
	}
	withUnknown(m, 1000, "model-future")
	return m
}

func TestRoundTripKeepsEveryField(t *testing.T) {
	dir := t.TempDir()
	orig := richModel(t, dir)
	data, err := proto.Marshal(orig)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Decode(data, dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Graph.Verify(); err != nil {
		t.Fatal(err)
	}
	out, err := Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	var back onnxpb.ModelProto
	if err := proto.Unmarshal(out, &back); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(orig, &back) {
		t.Fatalf("round trip changed the model:\nwant %v\n got %v", orig, &back)
	}
	// Encoding is deterministic.
	again, _ := Encode(m)
	if string(again) != string(out) {
		t.Fatal("two encodings differ")
	}
}

func TestTypedDataDecodes(t *testing.T) {
	dir := t.TempDir()
	data, _ := proto.Marshal(richModel(t, dir))
	m, err := Decode(data, dir)
	if err != nil {
		t.Fatal(err)
	}
	w := m.Graph.Lookup("W").Const
	vals, err := w.Floats()
	if err != nil || len(vals) != 6 || vals[5] != 6 {
		t.Fatalf("W floats = %v, %v", vals, err)
	}
	r, err := m.Graph.Lookup("R").Const.Floats()
	if err != nil || r[0] != 1 || r[1] != 2 {
		t.Fatalf("fp16 R = %v, %v", r, err)
	}
	e := m.Graph.Lookup("E").Const
	if !e.IsExternal() {
		t.Fatal("E should be external")
	}
	b, err := e.Bytes()
	if err != nil || len(b) != 24 {
		t.Fatalf("E bytes: %d, %v", len(b), err)
	}
	// Changing typed data writes raw_data and drops the stale typed field.
	w.SetBytes(make([]byte, 24))
	out, err := Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := Decode(out, dir)
	if err != nil {
		t.Fatal(err)
	}
	vals, _ = m2.Graph.Lookup("W").Const.Floats()
	if vals[5] != 0 {
		t.Fatalf("after SetBytes W = %v", vals)
	}
}

// TestRoundTripTestdata: every committed model survives Load → Encode with
// every field intact.
func TestRoundTripTestdata(t *testing.T) {
	paths, _ := filepath.Glob("../testdata/models/*.onnx")
	if len(paths) == 0 {
		t.Fatal("no testdata models")
	}
	for _, p := range paths {
		orig, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		m, err := Load(p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if err := m.Graph.Verify(); err != nil {
			t.Errorf("%s: %v", p, err)
		}
		out, err := Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		var a, b onnxpb.ModelProto
		if err := proto.Unmarshal(orig, &a); err != nil {
			t.Fatal(err)
		}
		if err := proto.Unmarshal(out, &b); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(&a, &b) {
			t.Errorf("%s: round trip changed the model", p)
		}
	}
}

// TestRoundTripExternal: an external-data model saved again in another
// folder keeps its tensors external, places the data file beside it and
// reads back the same bytes.
func TestRoundTripExternal(t *testing.T) {
	dir := t.TempDir()
	m := NewModel(17)
	raw := make([]byte, 4096)
	for i := range raw {
		raw[i] = byte(i * 7)
	}
	m.Graph.AddInitializer(NewTensor("w", Float, []int64{32, 32}, raw))
	m.Graph.AddOutput(m.Graph.Lookup("w"))
	p := filepath.Join(dir, "a.onnx")
	if err := Save(m, p, SaveOptions{Externalize: true}); err != nil {
		t.Fatal(err)
	}
	m2, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	var notes []string
	p2 := filepath.Join(other, "b.onnx")
	if err := Save(m2, p2, SaveOptions{Notef: func(f string, a ...any) { notes = append(notes, f) }}); err != nil {
		t.Fatal(err)
	}
	if len(notes) != 1 {
		t.Errorf("expected one note about placing the data file, got %v", notes)
	}
	m3, err := Load(p2)
	if err != nil {
		t.Fatal(err)
	}
	w := m3.Graph.Lookup("w").Const
	got, err := w.Bytes()
	if err != nil || !w.IsExternal() || string(got) != string(raw) {
		t.Fatalf("external round trip: external=%v err=%v equal=%v", w.IsExternal(), err, string(got) == string(raw))
	}
}
