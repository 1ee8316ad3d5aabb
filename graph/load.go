package graph

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/loracc/loracc/graph/onnxpb"
	"google.golang.org/protobuf/proto"
)

var le = binary.LittleEndian

// maxModelFile bounds the protobuf part of a model: protobuf itself cannot
// exceed 2 GiB, and anything bigger is not an ONNX file we can read.
const maxModelFile = 2<<30 - 1

// Load reads an ONNX model file. External data is resolved relative to the
// file's folder but not read until a tensor's bytes are asked for.
func Load(path string) (*Model, error) {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		return nil, fmt.Errorf("%s: is a folder, not an ONNX file", path)
	}
	data, err := ReadRegular(path, maxModelFile, "an ONNX model (protobuf's own)")
	if err != nil {
		return nil, err
	}
	if len(data) == 0 {
		return nil, fmt.Errorf("%s: empty file, not an ONNX model", path)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	m, err := Decode(data, filepath.Dir(abs))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	m.Path = path
	return m, nil
}

// Decode parses a serialized ModelProto. dir is the folder external data
// locations are relative to.
func Decode(data []byte, dir string) (*Model, error) {
	if err := checkBudget(data); err != nil {
		return nil, err
	}
	var pm onnxpb.ModelProto
	if err := proto.Unmarshal(data, &pm); err != nil {
		return nil, fmt.Errorf("not an ONNX model (protobuf: %w)", err)
	}
	if pm.Graph == nil || pm.IrVersion == nil {
		return nil, errors.New("not an ONNX model (no graph or no ir_version)")
	}
	if pm.GetIrVersion() <= 0 || pm.GetIrVersion() > 100 {
		return nil, fmt.Errorf("not an ONNX model (ir_version %d)", pm.GetIrVersion())
	}
	l := loader{dir: dir}
	m := &Model{
		IRVersion:       pm.GetIrVersion(),
		ProducerName:    pm.GetProducerName(),
		ProducerVersion: pm.GetProducerVersion(),
		Domain:          pm.GetDomain(),
		ModelVersion:    pm.GetModelVersion(),
		DocString:       pm.GetDocString(),
		Metadata:        kvsFromProto(pm.MetadataProps),
	}
	for _, o := range pm.OpsetImport {
		m.Opsets = append(m.Opsets, Opset{Domain: o.GetDomain(), Version: o.GetVersion()})
	}
	names := newNameSet()
	g, err := l.graph(pm.Graph, nil, nil, m, names)
	if err != nil {
		return nil, err
	}
	m.Graph = g
	pm.IrVersion, pm.OpsetImport, pm.ProducerName, pm.ProducerVersion = nil, nil, nil, nil
	pm.Domain, pm.ModelVersion, pm.DocString, pm.MetadataProps, pm.Graph = nil, nil, nil, nil, nil
	if m.rest, err = marshalRest(&pm); err != nil {
		return nil, err
	}
	return m, nil
}

type loader struct {
	dir string
	// sparse names the sparse initializers of every graph read so far,
	// which loracc keeps as bytes but does not read: a node reading one
	// is refused with that said, not as reading an undefined value.
	sparse map[string]bool
}

func marshalRest(m proto.Message) ([]byte, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, err
	}
	if len(b) == 0 {
		return nil, nil
	}
	return b, nil
}

func kvsFromProto(ps []*onnxpb.StringStringEntryProto) []KV {
	var kvs []KV
	for _, p := range ps {
		kvs = append(kvs, KV{Key: p.GetKey(), Value: p.GetValue()})
	}
	return kvs
}

// graph converts a GraphProto. Values are created in three sweeps so that
// the node list need not be topological and subgraphs can see every value
// of their enclosing graphs.
func (l *loader) graph(pg *onnxpb.GraphProto, parent *Graph, owner *Node, m *Model, names *nameSet) (*Graph, error) {
	g := &Graph{
		Name: pg.GetName(), DocString: pg.GetDocString(), Metadata: kvsFromProto(pg.MetadataProps),
		Parent: parent, Owner: owner, Model: m, values: map[string]*Value{}, names: names,
	}
	where := func() string {
		if g.Name != "" {
			return fmt.Sprintf("graph %q", g.Name)
		}
		return "graph"
	}
	// aliases are values of this subgraph named like an output of its
	// owner: Optimum's merged decoder names each branch's outputs like the
	// If's own, which nothing in the branch can read (they exist only once
	// the If has run), so ONNX Runtime accepts it. Names are unique across
	// a model here, so such a value gets a fresh name, and the original
	// name resolves to it while this graph loads.
	aliases := map[string]*Value{}
	define := func(name string) (*Value, error) {
		if name == "" {
			return nil, errors.New("a value without a name")
		}
		if v := g.values[name]; v != nil {
			return v, nil
		}
		if names.used[name] && g.Lookup(name) != nil {
			if owner == nil || !slices.ContainsFunc(owner.outputs, func(o *Value) bool { return o != nil && o.Name == name }) {
				return nil, fmt.Errorf("value %q is defined twice", name)
			}
			v := &Value{Name: fresh(names.used, names.next, name+"."+g.Name), graph: g}
			g.values[name] = v
			aliases[name] = v
			return v, nil
		}
		names.used[name] = true
		v := &Value{Name: name, graph: g}
		g.values[name] = v
		return v, nil
	}
	for _, st := range pg.SparseInitializer {
		if l.sparse == nil {
			l.sparse = map[string]bool{}
		}
		l.sparse[st.GetValues().GetName()] = true
	}
	for _, pt := range pg.Initializer {
		t, err := l.tensor(pt)
		if err != nil {
			return nil, fmt.Errorf("%s: initializer: %w", where(), err)
		}
		v, err := define(t.Name)
		if err != nil {
			return nil, fmt.Errorf("%s: initializer: %w", where(), err)
		}
		if v.Const != nil {
			return nil, fmt.Errorf("%s: initializer %q appears twice", where(), t.Name)
		}
		v.Const = t
		g.Initializers = append(g.Initializers, v)
	}
	isInput := map[*Value]bool{}
	for _, pvi := range pg.Input {
		v, err := define(pvi.GetName())
		if err != nil {
			return nil, fmt.Errorf("%s: input: %w", where(), err)
		}
		if isInput[v] {
			return nil, fmt.Errorf("%s: input %q is listed twice", where(), v.Name)
		}
		isInput[v] = true
		if err := fillValueInfo(v, pvi); err != nil {
			return nil, fmt.Errorf("%s: input %q: %w", where(), v.Name, err)
		}
		g.Inputs = append(g.Inputs, v)
	}
	for i, pn := range pg.Node {
		if pn.GetOpType() == "" {
			return nil, fmt.Errorf("%s: node %q (number %d) has an empty op_type", where(), pn.GetName(), i)
		}
		n := &Node{graph: g}
		for j, out := range pn.Output {
			if out == "" {
				n.outputs = append(n.outputs, nil)
				continue
			}
			if g.values[out] != nil {
				return nil, fmt.Errorf("%s: node %q (%s): output %q is already defined", where(), pn.GetName(), pn.GetOpType(), out)
			}
			v, err := define(out)
			if err != nil {
				return nil, fmt.Errorf("%s: node %q (%s): %w", where(), pn.GetName(), pn.GetOpType(), err)
			}
			v.producer, v.outIndex = n, j
			n.outputs = append(n.outputs, v)
		}
		g.Nodes = append(g.Nodes, n)
	}
	for i, pn := range pg.Node {
		if err := l.node(g.Nodes[i], pn, m, names); err != nil {
			return nil, fmt.Errorf("%s: %w", where(), err)
		}
	}
	// A cycle (a node reading its own output included) has no order ONNX
	// Runtime could run; it is refused here so no command writes it back.
	if _, err := g.topoOrder(); err != nil {
		return nil, err
	}
	for _, pvi := range pg.Output {
		v := g.Lookup(pvi.GetName())
		if v == nil {
			return nil, fmt.Errorf("%s: output %q is not computed by any node, input or initializer", where(), pvi.GetName())
		}
		if err := fillValueInfo(v, pvi); err != nil {
			return nil, fmt.Errorf("%s: output %q: %w", where(), v.Name, err)
		}
		g.Outputs = append(g.Outputs, v)
	}
	for _, pvi := range pg.ValueInfo {
		v := g.Lookup(pvi.GetName())
		if v == nil {
			// value_info for a name nothing defines: keep it as a
			// detached value so it is written back.
			var err error
			if v, err = define(pvi.GetName()); err != nil {
				return nil, fmt.Errorf("%s: value_info: %w", where(), err)
			}
		}
		if err := fillValueInfo(v, pvi); err != nil {
			return nil, fmt.Errorf("%s: value_info %q: %w", where(), v.Name, err)
		}
		g.ValueInfo = append(g.ValueInfo, v)
	}
	for name, v := range aliases { // from here on the value answers to its own name only
		delete(g.values, name)
		g.values[v.Name] = v
	}
	pg.Node, pg.Name, pg.Initializer, pg.DocString, pg.Input, pg.Output, pg.ValueInfo, pg.MetadataProps = nil, nil, nil, nil, nil, nil, nil, nil
	var err error
	if g.rest, err = marshalRest(pg); err != nil {
		return nil, err
	}
	return g, nil
}

// tensorTypeFromProto is the IR form of a tensor type: Shape nil when the proto has
// no shape (unknown rank); a dim without value or param has Value -1.
func tensorTypeFromProto(tt *onnxpb.TypeProto_Tensor) *TensorType {
	t := &TensorType{DType: DataType(tt.GetElemType())}
	if tt.Shape != nil {
		t.Shape = []Dim{}
		for _, d := range tt.Shape.Dim {
			dim := Dim{Value: -1, Denotation: d.GetDenotation()}
			switch x := d.Value.(type) {
			case *onnxpb.TensorShapeProto_Dimension_DimValue:
				dim.Value = x.DimValue
			case *onnxpb.TensorShapeProto_Dimension_DimParam:
				dim.Param = x.DimParam
			}
			t.Shape = append(t.Shape, dim)
		}
	}
	return t
}

func fillValueInfo(v *Value, p *onnxpb.ValueInfoProto) error {
	if p.Type != nil {
		tt := p.Type.GetTensorType()
		if tt != nil {
			v.Type = tensorTypeFromProto(tt)
			tt.ElemType, tt.Shape = nil, nil
		}
		rest, err := marshalRest(p.Type)
		if err != nil {
			return err
		}
		v.typeRest = rest
		if v.Type == nil && rest == nil {
			v.typeRest = []byte{} // an empty but present TypeProto
		}
	}
	v.DocString = p.GetDocString()
	v.Metadata = kvsFromProto(p.MetadataProps)
	p.Name, p.Type, p.DocString, p.MetadataProps = nil, nil, nil, nil
	rest, err := marshalRest(p)
	v.viRest = rest
	return err
}

func (l *loader) node(n *Node, pn *onnxpb.NodeProto, m *Model, names *nameSet) error {
	n.Name, n.Op, n.Domain, n.Overload = pn.GetName(), pn.GetOpType(), pn.GetDomain(), pn.GetOverload()
	names.nodes[n.Name] = true
	n.DocString = pn.GetDocString()
	n.Metadata = kvsFromProto(pn.MetadataProps)
	g := n.graph
	for i, in := range pn.Input {
		if in == "" {
			n.inputs = append(n.inputs, nil)
			continue
		}
		v := g.Lookup(in)
		if v == nil && l.sparse[in] {
			return fmt.Errorf("node %q (%s): input %q is a sparse initializer, which loracc does not read; store it dense (e.g. onnx.numpy_helper.to_array, then from_array)", n.Name, n.Op, in)
		}
		if v == nil {
			return fmt.Errorf("node %q (%s): input %q is not defined", n.Name, n.Op, in)
		}
		n.inputs = append(n.inputs, v)
		v.uses = append(v.uses, Use{Node: n, Index: i})
	}
	for _, pa := range pn.Attribute {
		a, err := l.attr(pa, n, m, names)
		if err != nil {
			return fmt.Errorf("node %q (%s): attribute %q: %w", n.Name, n.Op, pa.GetName(), err)
		}
		n.Attrs = append(n.Attrs, a)
	}
	pn.Input, pn.Output, pn.Name, pn.OpType, pn.Domain, pn.Overload = nil, nil, nil, nil, nil, nil
	pn.Attribute, pn.DocString, pn.MetadataProps = nil, nil, nil
	var err error
	n.rest, err = marshalRest(pn)
	return err
}

func (l *loader) attr(pa *onnxpb.AttributeProto, n *Node, m *Model, names *nameSet) (*Attr, error) {
	a := &Attr{
		Name: pa.GetName(), Type: AttrType(pa.GetType()), RefAttrName: pa.GetRefAttrName(), DocString: pa.GetDocString(),
		F: pa.GetF(), I: pa.GetI(), S: pa.S, Floats: pa.Floats, Ints: pa.Ints, Strings: pa.Strings,
	}
	var err error
	if pa.T != nil {
		if a.T, err = l.tensor(pa.T); err != nil {
			return nil, err
		}
	}
	for _, pt := range pa.Tensors {
		t, err := l.tensor(pt)
		if err != nil {
			return nil, err
		}
		a.Tensors = append(a.Tensors, t)
	}
	if pa.G != nil {
		if a.G, err = l.graph(pa.G, n.graph, n, m, names); err != nil {
			return nil, err
		}
	}
	for _, pg := range pa.Graphs {
		sg, err := l.graph(pg, n.graph, n, m, names)
		if err != nil {
			return nil, err
		}
		a.Graphs = append(a.Graphs, sg)
	}
	pa.Name, pa.Type, pa.RefAttrName, pa.DocString, pa.F, pa.I, pa.S = nil, nil, nil, nil, nil, nil, nil
	pa.Floats, pa.Ints, pa.Strings, pa.T, pa.Tensors, pa.G, pa.Graphs = nil, nil, nil, nil, nil, nil, nil
	a.rest, err = marshalRest(pa)
	return a, err
}

// tensor converts a TensorProto and checks that its claimed size agrees
// with the bytes that back it, so a hostile header cannot make later code
// allocate or read beyond what the file holds.
func (l *loader) tensor(pt *onnxpb.TensorProto) (*Tensor, error) {
	t := &Tensor{
		Name: pt.GetName(), DType: DataType(pt.GetDataType()), Dims: pt.Dims,
		DocString: pt.GetDocString(), Metadata: kvsFromProto(pt.MetadataProps),
	}
	n, err := t.NumElements()
	if err != nil {
		return nil, fmt.Errorf("tensor %q: %w", t.Name, err)
	}
	switch {
	case pt.GetDataLocation() == onnxpb.TensorProto_EXTERNAL:
		e := External{Dir: l.dir, Offset: 0, Length: -1}
		for _, kv := range pt.ExternalData {
			switch kv.GetKey() {
			case "location":
				e.Location = kv.GetValue()
			case "offset":
				if e.Offset, err = strconv.ParseInt(kv.GetValue(), 10, 64); err != nil || e.Offset < 0 {
					return nil, fmt.Errorf("tensor %q: bad external data offset %q", t.Name, kv.GetValue())
				}
			case "length":
				if e.Length, err = strconv.ParseInt(kv.GetValue(), 10, 64); err != nil || e.Length < 0 {
					return nil, fmt.Errorf("tensor %q: bad external data length %q", t.Name, kv.GetValue())
				}
			case "checksum":
				e.Checksum = kv.GetValue()
			default:
				e.extra = append(e.extra, KV{Key: kv.GetKey(), Value: kv.GetValue()})
			}
		}
		if err := checkLocation(e.Location); err != nil {
			return nil, fmt.Errorf("tensor %q: %w", t.Name, err)
		}
		size := t.DType.ByteSize(n)
		if size < 0 {
			return nil, fmt.Errorf("tensor %q: %s data cannot be external", t.Name, t.DType)
		}
		if e.Length >= 0 && e.Length != size {
			return nil, fmt.Errorf("tensor %q: external length %d, but %s%v needs %d bytes", t.Name, e.Length, t.DType, t.Dims, size)
		}
		st, err := e.stat()
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", t.Name, err)
		}
		if e.Offset > st.Size() || size > st.Size()-e.Offset {
			return nil, fmt.Errorf("tensor %q: claims bytes %d..%d of %s, which holds %d", t.Name, e.Offset, e.Offset+size, e.Location, st.Size())
		}
		t.ext = &e
		pt.ExternalData, pt.DataLocation = nil, nil
	case pt.RawData != nil:
		if t.DType != String {
			size := t.DType.ByteSize(n)
			if size < 0 {
				return nil, fmt.Errorf("tensor %q: unsupported data type %d", t.Name, int32(t.DType))
			}
			if int64(len(pt.RawData)) != size {
				return nil, fmt.Errorf("tensor %q: raw_data has %d bytes, but %s%v needs %d", t.Name, len(pt.RawData), t.DType, t.Dims, size)
			}
		}
		t.raw = pt.RawData
		pt.RawData = nil
	default:
		raw, typed, err := decodeTyped(pt, t.DType, n)
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", t.Name, err)
		}
		t.raw, t.typed = raw, typed
	}
	pt.Name, pt.DataType, pt.Dims, pt.DocString, pt.MetadataProps = nil, nil, nil, nil, nil
	t.rest, err = marshalRest(pt)
	return t, err
}

// decodeTyped turns the typed data fields into little-endian raw bytes. The
// fields themselves stay in the proto (and so in Tensor.rest).
func decodeTyped(pt *onnxpb.TensorProto, dt DataType, n int64) ([]byte, bool, error) {
	if dt == String {
		if int64(len(pt.StringData)) != n {
			return nil, true, fmt.Errorf("string_data has %d entries, dims need %d", len(pt.StringData), n)
		}
		return nil, true, nil
	}
	size := dt.ByteSize(n)
	if size < 0 {
		return nil, false, fmt.Errorf("unsupported data type %d", int32(dt))
	}
	count := func(have int, want int64) error {
		if int64(have) != want {
			return fmt.Errorf("%s data has %d entries, dims need %d", dt, have, want)
		}
		return nil
	}
	raw := make([]byte, 0)
	switch dt {
	case Float, Complex64:
		want := n
		if dt == Complex64 {
			want = 2 * n
		}
		if err := count(len(pt.FloatData), want); err != nil {
			return nil, true, err
		}
		raw = make([]byte, 4*len(pt.FloatData))
		for i, f := range pt.FloatData {
			le.PutUint32(raw[4*i:], math.Float32bits(f))
		}
	case Double, Complex128:
		want := n
		if dt == Complex128 {
			want = 2 * n
		}
		if err := count(len(pt.DoubleData), want); err != nil {
			return nil, true, err
		}
		raw = make([]byte, 8*len(pt.DoubleData))
		for i, f := range pt.DoubleData {
			le.PutUint64(raw[8*i:], math.Float64bits(f))
		}
	case Int64:
		if err := count(len(pt.Int64Data), n); err != nil {
			return nil, true, err
		}
		raw = make([]byte, 8*n)
		for i, x := range pt.Int64Data {
			le.PutUint64(raw[8*i:], uint64(x))
		}
	case Uint32, Uint64:
		if err := count(len(pt.Uint64Data), n); err != nil {
			return nil, true, err
		}
		w := dt.BitSize() / 8
		raw = make([]byte, int64(w)*n)
		for i, x := range pt.Uint64Data {
			if w == 4 {
				le.PutUint32(raw[4*i:], uint32(x))
			} else {
				le.PutUint64(raw[8*i:], x)
			}
		}
	default:
		// int32_data carries every type of 32 bits or fewer; sub-byte
		// types pack two (or four) elements per entry.
		bitsz := dt.BitSize()
		want := n
		if bitsz < 8 {
			per := int64(8 / bitsz)
			want = (n + per - 1) / per
		}
		if err := count(len(pt.Int32Data), want); err != nil {
			return nil, true, err
		}
		w := max(bitsz/8, 1)
		raw = make([]byte, size)
		for i, x := range pt.Int32Data {
			switch w {
			case 1:
				raw[i] = byte(x)
			case 2:
				le.PutUint16(raw[2*i:], uint16(x))
			case 4:
				le.PutUint32(raw[4*i:], uint32(x))
			}
		}
	}
	return raw, true, nil
}
