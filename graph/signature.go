package graph

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/loracc/loracc/graph/onnxpb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// ReadSignature exists for the runtime: onnxruntime_go only reports
// input/output types through a second, temporary ORT session (loading a
// large model twice), and never reports dim_param names. Both are cheap to
// get from the protobuf: the graph's inputs and outputs are small messages,
// and the large parts (initializers, nodes) are skipped by offset without
// being read. The file is read with ReadAt, so a model with embedded
// weights is not loaded into memory; the value infos found are decoded like
// Load decodes them.

// ONNX protobuf field numbers used below (onnx.proto).
const (
	modelGraph = 7 // ModelProto.graph

	graphInitializer       = 5  // GraphProto.initializer
	graphInput             = 11 // GraphProto.input
	graphOutput            = 12 // GraphProto.output
	graphSparseInitializer = 15 // GraphProto.sparse_initializer

	tensorName         = 8 // TensorProto.name
	sparseTensorValues = 1 // SparseTensorProto.values
)

// maxSmallField bounds the value infos and names we read into memory, so a
// corrupt length cannot make us allocate gigabytes.
const maxSmallField = 1 << 20

// Signature is what ReadSignature finds: the graph inputs a runtime asks
// for (declared inputs that are not initializers) and the graph outputs.
type Signature struct {
	Inputs, Outputs []Port
}

// Port is one graph input or output: its name and tensor type (Shape nil
// when the model gives no shape at all, empty for a scalar).
type Port struct {
	Name string
	Type *TensorType
}

// ReadSignature reads the graph inputs and outputs of the ONNX model in
// r[0:size], skipping everything else by offset.
func ReadSignature(r io.ReaderAt, size int64) (Signature, error) {
	var (
		res       Signature
		inputs    []Port
		initNames = map[string]bool{}
		sawGraph  bool
	)
	top := &scanner{r: r, end: size}
	for !top.done() {
		num, typ, err := top.tag()
		if err != nil {
			return res, err
		}
		if num != modelGraph || typ != protowire.BytesType {
			if err := top.skip(typ); err != nil {
				return res, err
			}
			continue
		}
		sawGraph = true
		g, err := top.message()
		if err != nil {
			return res, err
		}
		for !g.done() {
			num, typ, err := g.tag()
			if err != nil {
				return res, err
			}
			if typ != protowire.BytesType {
				if err := g.skip(typ); err != nil {
					return res, err
				}
				continue
			}
			m, err := g.message()
			if err != nil {
				return res, err
			}
			switch num {
			case graphInput, graphOutput:
				if m.end-m.pos > maxSmallField {
					return res, fmt.Errorf("graph %s is %d bytes, too large for a value info", fieldName(num), m.end-m.pos)
				}
				b, err := m.readAll()
				if err != nil {
					return res, err
				}
				info, err := decodeValueInfo(b)
				if err != nil {
					return res, fmt.Errorf("graph %s %q: %w", fieldName(num), info.Name, err)
				}
				if num == graphInput {
					inputs = append(inputs, info)
				} else {
					res.Outputs = append(res.Outputs, info)
				}
			case graphInitializer:
				name, err := m.stringField(tensorName)
				if err != nil {
					return res, fmt.Errorf("graph initializer: %w", err)
				}
				initNames[name] = true
			case graphSparseInitializer:
				v, err := m.messageField(sparseTensorValues)
				if err != nil {
					return res, fmt.Errorf("graph sparse initializer: %w", err)
				}
				if v != nil {
					name, err := v.stringField(tensorName)
					if err != nil {
						return res, fmt.Errorf("graph sparse initializer: %w", err)
					}
					initNames[name] = true
				}
			}
		}
	}
	if !sawGraph {
		return res, errors.New("no graph")
	}
	// Inputs that have an initializer are optional overrides; ORT does not
	// list them among the inputs it requires, and neither do we.
	for _, in := range inputs {
		if !initNames[in.Name] {
			res.Inputs = append(res.Inputs, in)
		}
	}
	return res, nil
}

func fieldName(num protowire.Number) string {
	if num == graphInput {
		return "input"
	}
	return "output"
}

// decodeValueInfo decodes a ValueInfoProto as Load does. Non-tensor
// types are an error naming the kind, since runtimes feed only tensors.
func decodeValueInfo(b []byte) (Port, error) {
	var p onnxpb.ValueInfoProto
	if err := proto.Unmarshal(b, &p); err != nil {
		return Port{}, err
	}
	port := Port{Name: p.GetName()}
	if p.Type == nil {
		return port, errors.New("has no type")
	}
	kind := ""
	switch p.Type.Value.(type) {
	case *onnxpb.TypeProto_TensorType:
	case *onnxpb.TypeProto_SequenceType:
		kind = "a sequence"
	case *onnxpb.TypeProto_MapType:
		kind = "a map"
	case *onnxpb.TypeProto_OpaqueType:
		kind = "opaque"
	case *onnxpb.TypeProto_SparseTensorType:
		kind = "a sparse tensor"
	case *onnxpb.TypeProto_OptionalType:
		kind = "an optional"
	default:
		return port, errors.New("has no tensor type")
	}
	if kind != "" {
		return port, fmt.Errorf("is %s; only dense tensors are supported", kind)
	}
	port.Type = tensorTypeFromProto(p.Type.GetTensorType())
	return port, nil
}

// scanner walks the fields of one message in r[pos:end] without reading
// the contents of the fields it skips.
type scanner struct {
	r        io.ReaderAt
	pos, end int64
}

var errTruncated = errors.New("truncated protobuf")

func (s *scanner) done() bool { return s.pos >= s.end }

func (s *scanner) varint() (uint64, error) {
	var buf [binary.MaxVarintLen64]byte
	n, err := s.r.ReadAt(buf[:min(int64(len(buf)), s.end-s.pos)], s.pos)
	if n == 0 {
		if err == nil || err == io.EOF {
			err = errTruncated
		}
		return 0, err
	}
	v, m := protowire.ConsumeVarint(buf[:n])
	if m < 0 {
		return 0, protowire.ParseError(m)
	}
	s.pos += int64(m)
	return v, nil
}

func (s *scanner) tag() (protowire.Number, protowire.Type, error) {
	v, err := s.varint()
	if err != nil {
		return 0, 0, err
	}
	num, typ := protowire.DecodeTag(v)
	if !num.IsValid() {
		return 0, 0, fmt.Errorf("invalid protobuf field number %d", num)
	}
	return num, typ, nil
}

// message consumes a length-delimited field and returns a scanner over it.
func (s *scanner) message() (*scanner, error) {
	n, err := s.varint()
	if err != nil {
		return nil, err
	}
	if n > uint64(s.end-s.pos) {
		return nil, errTruncated
	}
	m := &scanner{r: s.r, pos: s.pos, end: s.pos + int64(n)}
	s.pos = m.end
	return m, nil
}

func (s *scanner) skip(typ protowire.Type) error {
	switch typ {
	case protowire.VarintType:
		_, err := s.varint()
		return err
	case protowire.Fixed32Type:
		s.pos += 4
	case protowire.Fixed64Type:
		s.pos += 8
	case protowire.BytesType:
		_, err := s.message()
		return err
	case protowire.StartGroupType:
		for {
			if s.done() {
				return errTruncated
			}
			_, t, err := s.tag()
			if err != nil {
				return err
			}
			if t == protowire.EndGroupType {
				return nil
			}
			if err := s.skip(t); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("unexpected protobuf wire type %d", typ)
	}
	if s.pos > s.end {
		return errTruncated
	}
	return nil
}

func (s *scanner) readAll() ([]byte, error) {
	b := make([]byte, s.end-s.pos)
	if n, err := s.r.ReadAt(b, s.pos); n < len(b) {
		if err == nil || err == io.EOF {
			err = errTruncated
		}
		return nil, err
	}
	s.pos = s.end
	return b, nil
}

// messageField returns a scanner over the last occurrence of the
// length-delimited field num, or nil if there is none.
func (s *scanner) messageField(num protowire.Number) (*scanner, error) {
	var found *scanner
	for !s.done() {
		n, typ, err := s.tag()
		if err != nil {
			return nil, err
		}
		if n == num && typ == protowire.BytesType {
			if found, err = s.message(); err != nil {
				return nil, err
			}
			continue
		}
		if err := s.skip(typ); err != nil {
			return nil, err
		}
	}
	return found, nil
}

// stringField returns the last value of the string field num, "" if absent.
func (s *scanner) stringField(num protowire.Number) (string, error) {
	m, err := s.messageField(num)
	if err != nil || m == nil {
		return "", err
	}
	if m.end-m.pos > maxSmallField {
		return "", fmt.Errorf("string field is %d bytes", m.end-m.pos)
	}
	b, err := m.readAll()
	return string(b), err
}
