package graph

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
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

// Save writes m to path atomically: the model and any new data file are
// written to temporary files and renamed into place only when complete.
// Tensors still backed by an unmodified external file keep pointing at it;
// when the output is in another folder, that file is hard-linked (or
// copied) next to the output so the location stays inside the folder.
func Save(m *Model, path string, opts SaveOptions) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	outDir := filepath.Dir(abs)
	if opts.DataFile == "" {
		opts.DataFile = filepath.Base(path) + ".data"
	}
	if opts.MinExternal <= 0 {
		opts.MinExternal = 1024
	}
	if err := checkLocation(opts.DataFile); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	s := &saver{opts: opts, outDir: outDir, linked: map[string]bool{}}
	pm, err := s.model(m)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	for loc := range s.linked {
		if loc == opts.DataFile && len(s.pending) > 0 {
			return fmt.Errorf("%s: new data file %q would overwrite the base model's data file; choose another output name", path, loc)
		}
	}
	if len(s.pending) > 0 {
		if err := s.writeData(filepath.Join(outDir, filepath.FromSlash(opts.DataFile))); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(pm)
	if err != nil {
		return fmt.Errorf("%s: serializing: %w (models over 2 GiB need external data)", path, err)
	}
	return WriteFileAtomic(path, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
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

type saver struct {
	opts             SaveOptions
	outDir           string
	linked           map[string]bool // external files already placed beside the output
	pending          []pendingTensor
	offset           int64
	noExternalWrites bool
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
		loc, err := s.placeExternal(t.ext)
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", t.Name, err)
		}
		pt.DataLocation = onnxpb.TensorProto_EXTERNAL.Enum()
		pt.ExternalData = append(pt.ExternalData,
			&onnxpb.StringStringEntryProto{Key: proto.String("location"), Value: proto.String(loc)},
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
			pt.ExternalData = []*onnxpb.StringStringEntryProto{
				{Key: proto.String("location"), Value: proto.String(s.opts.DataFile)},
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

// placeExternal returns the location to write for an unmodified external
// tensor, making its file reachable from the output's folder.
func (s *saver) placeExternal(e *External) (string, error) {
	if s.noExternalWrites || s.linked[e.Location] {
		return e.Location, nil
	}
	if filepath.Clean(e.Dir) == filepath.Clean(s.outDir) {
		s.linked[e.Location] = true
		return e.Location, nil
	}
	src := e.Path()
	dst := filepath.Join(s.outDir, filepath.FromSlash(e.Location))
	if err := linkOrCopy(e, dst); err != nil {
		return "", err
	}
	s.linked[e.Location] = true
	if s.opts.Notef != nil {
		s.opts.Notef("external data %s placed beside the output as %s (outputs may only reference files in their own folder)", src, dst)
	}
	return e.Location, nil
}

// linkOrCopy makes dst hold src's bytes: nothing if it already is the same
// file, else a hard link, else an atomic copy. The source is opened through
// os.Root so a symlink cannot smuggle in a file from outside.
func linkOrCopy(e *External, dst string) error {
	in, err := e.open()
	if err != nil {
		return err
	}
	defer in.Close()
	inSt, err := in.Stat()
	if err != nil {
		return err
	}
	if st, err := os.Stat(dst); err == nil && os.SameFile(st, inSt) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	tmp := dst + ".tmp-link"
	os.Remove(tmp)
	if err := os.Link(e.Path(), tmp); err == nil {
		if lst, err := os.Stat(tmp); err == nil && os.SameFile(lst, inSt) {
			return os.Rename(tmp, dst)
		}
		os.Remove(tmp)
	}
	return WriteFileAtomic(dst, func(w io.Writer) error {
		_, err := io.Copy(w, in)
		return err
	})
}

// writeData writes every pending tensor into one data file, streaming one
// tensor at a time so memory stays at the largest tensor.
func (s *saver) writeData(path string) error {
	sort.SliceStable(s.pending, func(i, j int) bool { return s.pending[i].offset < s.pending[j].offset })
	return WriteFileAtomic(path, func(w io.Writer) error {
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
	})
}

// WriteFileAtomic writes a file through a temporary file in the same
// folder, synced and renamed over path only after write succeeded, so a
// crash or a full disk never leaves a partial file under the final name.
func WriteFileAtomic(path string, write func(io.Writer) error) (err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("write %s: %w", path, err)
		}
	}()
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	bw := bufio.NewWriterSize(f, 1<<20)
	if err = write(bw); err != nil {
		return err
	}
	if err = bw.Flush(); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Chmod(tmp, 0o644); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	if d, derr := os.Open(dir); derr == nil {
		d.Sync()
		d.Close()
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
