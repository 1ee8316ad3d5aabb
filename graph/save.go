package graph

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"

	"github.com/loracc/loracc/graph/onnxpb"
	"google.golang.org/protobuf/proto"
)

// SaveOptions controls where tensor data goes.
type SaveOptions struct {
	// DataFile names the external data file (relative to the output's
	// folder) that receives tensors marked for external storage: those
	// that were external when loaded and were then changed, and, with
	// Externalize, every tensor of at least MinExternal bytes. Default:
	// the output's file name plus ".data".
	DataFile string
	// Externalize moves every tensor of at least MinExternal bytes
	// (default 1024) to DataFile.
	Externalize bool
	MinExternal int64
	// Notef receives one line per side effect worth telling the user,
	// such as linking a base model's data file next to the output.
	Notef func(format string, args ...any)
}

// externalAlign aligns tensors in data files we write, so that runtimes can
// map them and use them in place.
const externalAlign = 64

// Save writes m to path and its data files, all or nothing (see Outputs).
// Tensors still backed by an unmodified external file keep pointing at it
// when it is in the output's folder; for an output in another folder the
// file is hard-linked (or copied) beside the output under a name derived
// from the output's, never under the name the model chose.
func Save(m *Model, path string, opts SaveOptions) error {
	o := NewOutputs(context.Background())
	defer o.Abort()
	if err := o.Save(m, path, opts); err != nil {
		return err
	}
	return o.Commit()
}

// Encode serializes a model whose tensors are all in memory or external
// files already in place (no data file is written).
func Encode(m *Model) ([]byte, error) {
	s := &saver{noExternalWrites: true}
	pm, err := s.model(m)
	if err != nil {
		return nil, err
	}
	return proto.MarshalOptions{Deterministic: true}.Marshal(pm)
}

// saver turns the IR into protobuf. It writes nothing: it lists the tensors
// for the new data file and the external files the model keeps reading,
// with the location entries to fill in once their output names are chosen.
type saver struct {
	opts             SaveOptions
	pending          []pendingTensor
	dataLocs         []*onnxpb.StringStringEntryProto // location entries of pending tensors
	offset           int64
	noExternalWrites bool
	sources          []*source // unmodified external files, in order of first use
	bySource         map[string]*source
	pm               *onnxpb.ModelProto
}

// build converts m, keeping the protobuf for encode.
func (s *saver) build(m *Model) (err error) {
	s.pm, err = s.model(m)
	return err
}

// encode serializes the built model with its locations as they are now.
func (s *saver) encode() ([]byte, error) {
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(s.pm)
	if err != nil {
		return nil, fmt.Errorf("serializing: %w (models over 2 GiB need external data)", err)
	}
	return data, nil
}

// pointData sets the location of every tensor in the new data file.
func (s *saver) pointData(loc string) { setLocations(s.dataLocs, loc) }

// point sets the location of every tensor read from src.
func (src *source) point(loc string) { setLocations(src.locs, loc) }

func setLocations(kvs []*onnxpb.StringStringEntryProto, loc string) {
	for _, kv := range kvs {
		kv.Value = proto.String(loc)
	}
}

// source is one external file of the input that the output still reads.
type source struct {
	ext  *External
	locs []*onnxpb.StringStringEntryProto
	st   os.FileInfo
}

type pendingTensor struct {
	t      *Tensor
	offset int64
}

func restInto(rest []byte, m proto.Message) error {
	if len(rest) == 0 {
		return nil
	}
	return proto.Unmarshal(rest, m)
}

func kvsToProto(kvs []KV) []*onnxpb.StringStringEntryProto {
	var out []*onnxpb.StringStringEntryProto
	for _, kv := range kvs {
		out = append(out, &onnxpb.StringStringEntryProto{Key: proto.String(kv.Key), Value: proto.String(kv.Value)})
	}
	return out
}

func optString(s string) *string {
	if s == "" {
		return nil
	}
	return proto.String(s)
}

func (s *saver) model(m *Model) (*onnxpb.ModelProto, error) {
	pm := &onnxpb.ModelProto{}
	if err := restInto(m.rest, pm); err != nil {
		return nil, err
	}
	pm.IrVersion = proto.Int64(m.IRVersion)
	for _, o := range m.Opsets {
		pm.OpsetImport = append(pm.OpsetImport, &onnxpb.OperatorSetIdProto{Domain: proto.String(o.Domain), Version: proto.Int64(o.Version)})
	}
	pm.ProducerName, pm.ProducerVersion = optString(m.ProducerName), optString(m.ProducerVersion)
	pm.Domain, pm.DocString = optString(m.Domain), optString(m.DocString)
	if m.ModelVersion != 0 {
		pm.ModelVersion = proto.Int64(m.ModelVersion)
	}
	pm.MetadataProps = kvsToProto(m.Metadata)
	g, err := s.graph(m.Graph)
	if err != nil {
		return nil, err
	}
	pm.Graph = g
	return pm, nil
}

func (s *saver) graph(g *Graph) (*onnxpb.GraphProto, error) {
	pg := &onnxpb.GraphProto{}
	if err := restInto(g.rest, pg); err != nil {
		return nil, err
	}
	pg.Name, pg.DocString = optString(g.Name), optString(g.DocString)
	pg.MetadataProps = kvsToProto(g.Metadata)
	for _, v := range g.Initializers {
		pt, err := s.tensor(v.Const)
		if err != nil {
			return nil, fmt.Errorf("initializer %q: %w", v.Name, err)
		}
		pt.Name = proto.String(v.Name)
		pg.Initializer = append(pg.Initializer, pt)
	}
	for _, n := range g.Nodes {
		pn, err := s.node(n)
		if err != nil {
			return nil, err
		}
		pg.Node = append(pg.Node, pn)
	}
	for _, v := range g.Inputs {
		pg.Input = append(pg.Input, valueInfo(v))
	}
	for _, v := range g.Outputs {
		pg.Output = append(pg.Output, valueInfo(v))
	}
	for _, v := range g.ValueInfo {
		pg.ValueInfo = append(pg.ValueInfo, valueInfo(v))
	}
	return pg, nil
}

func valueInfo(v *Value) *onnxpb.ValueInfoProto {
	p := &onnxpb.ValueInfoProto{}
	_ = restInto(v.viRest, p) // bytes we produced at load: cannot fail
	p.Name = proto.String(v.Name)
	p.DocString = optString(v.DocString)
	p.MetadataProps = kvsToProto(v.Metadata)
	if v.Type != nil || v.typeRest != nil {
		tp := &onnxpb.TypeProto{}
		_ = restInto(v.typeRest, tp)
		if v.Type != nil {
			tt := tp.GetTensorType()
			if tt == nil {
				tt = &onnxpb.TypeProto_Tensor{}
				tp.Value = &onnxpb.TypeProto_TensorType{TensorType: tt}
			}
			tt.ElemType = proto.Int32(int32(v.Type.DType))
			if v.Type.Shape != nil {
				sh := &onnxpb.TensorShapeProto{}
				for _, d := range v.Type.Shape {
					pd := &onnxpb.TensorShapeProto_Dimension{Denotation: optString(d.Denotation)}
					if d.Param != "" {
						pd.Value = &onnxpb.TensorShapeProto_Dimension_DimParam{DimParam: d.Param}
					} else if d.Value >= 0 {
						pd.Value = &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: d.Value}
					}
					sh.Dim = append(sh.Dim, pd)
				}
				tt.Shape = sh
			}
		}
		p.Type = tp
	}
	return p
}

func (s *saver) node(n *Node) (*onnxpb.NodeProto, error) {
	pn := &onnxpb.NodeProto{}
	if err := restInto(n.rest, pn); err != nil {
		return nil, err
	}
	for _, v := range n.inputs {
		if v == nil {
			pn.Input = append(pn.Input, "")
		} else {
			pn.Input = append(pn.Input, v.Name)
		}
	}
	for _, v := range n.outputs {
		if v == nil {
			pn.Output = append(pn.Output, "")
		} else {
			pn.Output = append(pn.Output, v.Name)
		}
	}
	pn.Name, pn.OpType = optString(n.Name), proto.String(n.Op)
	pn.Domain, pn.Overload, pn.DocString = optString(n.Domain), optString(n.Overload), optString(n.DocString)
	pn.MetadataProps = kvsToProto(n.Metadata)
	for _, a := range n.Attrs {
		pa, err := s.attr(a)
		if err != nil {
			return nil, fmt.Errorf("node %q (%s): attribute %q: %w", n.Name, n.Op, a.Name, err)
		}
		pn.Attribute = append(pn.Attribute, pa)
	}
	return pn, nil
}

func (s *saver) attr(a *Attr) (*onnxpb.AttributeProto, error) {
	pa := &onnxpb.AttributeProto{}
	if err := restInto(a.rest, pa); err != nil {
		return nil, err
	}
	pa.Name = proto.String(a.Name)
	if a.Type != AttrUndefined {
		pa.Type = onnxpb.AttributeProto_AttributeType(a.Type).Enum()
	}
	pa.RefAttrName, pa.DocString = optString(a.RefAttrName), optString(a.DocString)
	switch {
	case a.RefAttrName != "":
		// a reference to a function attribute carries no value
	case a.Type == AttrFloat:
		pa.F = proto.Float32(a.F)
	case a.Type == AttrInt:
		pa.I = proto.Int64(a.I)
	case a.Type == AttrString:
		pa.S = a.S
		if pa.S == nil {
			pa.S = []byte{}
		}
	}
	pa.Floats, pa.Ints, pa.Strings = a.Floats, a.Ints, a.Strings
	var err error
	if a.T != nil {
		if pa.T, err = s.tensor(a.T); err != nil {
			return nil, err
		}
	}
	for _, t := range a.Tensors {
		pt, err := s.tensor(t)
		if err != nil {
			return nil, err
		}
		pa.Tensors = append(pa.Tensors, pt)
	}
	if a.G != nil {
		if pa.G, err = s.graph(a.G); err != nil {
			return nil, err
		}
	}
	for _, g := range a.Graphs {
		pg, err := s.graph(g)
		if err != nil {
			return nil, err
		}
		pa.Graphs = append(pa.Graphs, pg)
	}
	return pa, nil
}

func (s *saver) tensor(t *Tensor) (*onnxpb.TensorProto, error) {
	pt := &onnxpb.TensorProto{}
	if err := restInto(t.rest, pt); err != nil {
		return nil, err
	}
	pt.Name = optString(t.Name)
	pt.DataType = proto.Int32(int32(t.DType))
	pt.Dims = t.Dims
	pt.DocString = optString(t.DocString)
	pt.MetadataProps = kvsToProto(t.Metadata)
	switch {
	case t.ext != nil:
		pt.DataLocation = onnxpb.TensorProto_EXTERNAL.Enum()
		pt.ExternalData = append(pt.ExternalData, s.refer(t.ext),
			&onnxpb.StringStringEntryProto{Key: proto.String("offset"), Value: proto.String(strconv.FormatInt(t.ext.Offset, 10))})
		size, err := t.ByteSize()
		if err != nil {
			return nil, err
		}
		pt.ExternalData = append(pt.ExternalData, &onnxpb.StringStringEntryProto{Key: proto.String("length"), Value: proto.String(strconv.FormatInt(size, 10))})
		if t.ext.Checksum != "" {
			pt.ExternalData = append(pt.ExternalData, &onnxpb.StringStringEntryProto{Key: proto.String("checksum"), Value: proto.String(t.ext.Checksum)})
		}
		pt.ExternalData = append(pt.ExternalData, kvsToProto(t.ext.extra)...)
	case t.typed:
		// data is still in the typed field carried by rest
	case t.stream != nil && s.noExternalWrites:
		raw, err := t.Bytes()
		if err != nil {
			return nil, err
		}
		pt.FloatData, pt.Int32Data, pt.Int64Data, pt.DoubleData, pt.Uint64Data = nil, nil, nil, nil, nil
		pt.RawData = raw
	default:
		size := int64(len(t.raw))
		if t.stream != nil {
			var err error
			if size, err = t.ByteSize(); err != nil {
				return nil, err
			}
		}
		if !s.noExternalWrites && t.DType != String && (t.spilled || (s.opts.Externalize && size >= s.opts.MinExternal)) {
			off := (s.offset + externalAlign - 1) / externalAlign * externalAlign
			s.pending = append(s.pending, pendingTensor{t: t, offset: off})
			s.offset = off + size
			pt.DataLocation = onnxpb.TensorProto_EXTERNAL.Enum()
			loc := &onnxpb.StringStringEntryProto{Key: proto.String("location"), Value: proto.String(s.opts.DataFile)}
			s.dataLocs = append(s.dataLocs, loc)
			pt.ExternalData = []*onnxpb.StringStringEntryProto{loc,
				{Key: proto.String("offset"), Value: proto.String(strconv.FormatInt(off, 10))},
				{Key: proto.String("length"), Value: proto.String(strconv.FormatInt(size, 10))},
			}
			break
		}
		// Typed fields left in rest by an earlier load are stale now.
		pt.FloatData, pt.Int32Data, pt.Int64Data, pt.DoubleData, pt.Uint64Data = nil, nil, nil, nil, nil
		if t.DType != String {
			pt.RawData = t.raw
			if pt.RawData == nil {
				pt.RawData = []byte{}
			}
		}
	}
	return pt, nil
}

// refer returns the location entry of an unmodified external tensor,
// recording its file so that the entry can be pointed at wherever the
// output will find it.
func (s *saver) refer(e *External) *onnxpb.StringStringEntryProto {
	kv := &onnxpb.StringStringEntryProto{Key: proto.String("location"), Value: proto.String(e.Location)}
	if s.noExternalWrites {
		return kv
	}
	if s.bySource == nil {
		s.bySource = map[string]*source{}
	}
	src := s.bySource[e.Path()]
	if src == nil {
		src = &source{ext: e}
		s.bySource[e.Path()] = src
		s.sources = append(s.sources, src)
	}
	src.locs = append(src.locs, kv)
	return kv
}

// writeData writes every pending tensor into one data file, streaming one
// tensor at a time so memory stays at the largest tensor.
func (s *saver) writeData(w io.Writer) error {
	sort.SliceStable(s.pending, func(i, j int) bool { return s.pending[i].offset < s.pending[j].offset })
	var pos int64
	for _, p := range s.pending {
		if pad := p.offset - pos; pad > 0 {
			if _, err := w.Write(make([]byte, pad)); err != nil {
				return err
			}
			pos += pad
		}
		if p.t.stream != nil {
			size, _ := p.t.ByteSize()
			cw := &countingWriter{w: w}
			if err := p.t.stream(cw); err != nil {
				return fmt.Errorf("tensor %q: %w", p.t.Name, err)
			}
			if cw.n != size {
				return fmt.Errorf("tensor %q: produced %d bytes, want %d", p.t.Name, cw.n, size)
			}
			pos += cw.n
			continue
		}
		n, err := w.Write(p.t.raw)
		if err != nil {
			return err
		}
		pos += int64(n)
	}
	return nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
