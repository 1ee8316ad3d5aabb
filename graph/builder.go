package graph

import "strconv"

// Builder creates nodes in one graph with deterministic names. Passes,
// gradient rules and tests all build through it, so names follow one
// scheme: a node is named Prefix + "/" + op + "_" + counter, and its output
// takes the name the caller gives (made unique model-wide).
type Builder struct {
	G *Graph
	// Prefix names the nodes this builder makes, e.g. "lora/q_proj".
	Prefix string
	// Metadata is attached to every node built, e.g. the module path the
	// new nodes belong to.
	Metadata []KV
	// Domain is the op domain of nodes built ("" = ai.onnx).
	Domain string

	count int
}

// Op adds a single-output node and returns its output value, named out.
func (b *Builder) Op(op, out string, inputs []*Value, attrs ...*Attr) *Value {
	return b.OpN(op, []string{out}, inputs, attrs...)[0]
}

// OpN adds a node with one output per name in outs.
func (b *Builder) OpN(op string, outs []string, inputs []*Value, attrs ...*Attr) []*Value {
	b.count++
	name := op + "_" + strconv.Itoa(b.count)
	if b.Prefix != "" {
		name = b.Prefix + "/" + name
	}
	n := b.G.NewNode(op, name, inputs, 0, "")
	n.Domain = b.Domain
	n.Metadata = append([]KV(nil), b.Metadata...)
	n.Attrs = append(n.Attrs, attrs...)
	for i, o := range outs {
		v := b.G.newValue(o)
		v.producer, v.outIndex = n, i
		n.outputs = append(n.outputs, v)
	}
	return n.outputs
}

// Const adds an initializer holding t.
func (b *Builder) Const(t *Tensor) *Value { return b.G.AddInitializer(t) }

// Scalar adds a rank-0 constant of dt (a float type) with value x.
func (b *Builder) Scalar(name string, dt DataType, x float32) (*Value, error) {
	t, err := NewFloatTensor(name, dt, nil, []float32{x})
	if err != nil {
		return nil, err
	}
	return b.Const(t), nil
}

// Int64s adds a 1-D int64 constant, as shape, axes and index inputs need.
func (b *Builder) Int64s(name string, xs []int64) *Value {
	raw := make([]byte, 8*len(xs))
	for i, x := range xs {
		le.PutUint64(raw[8*i:], uint64(x))
	}
	return b.Const(NewTensor(name, Int64, []int64{int64(len(xs))}, raw))
}

// AttrI makes an int attribute.
func AttrI(name string, v int64) *Attr { return &Attr{Name: name, Type: AttrInt, I: v} }

// AttrF makes a float attribute.
func AttrF(name string, v float32) *Attr { return &Attr{Name: name, Type: AttrFloat, F: v} }

// AttrIs makes an ints attribute.
func AttrIs(name string, v ...int64) *Attr { return &Attr{Name: name, Type: AttrInts, Ints: v} }

// AttrS makes a string attribute.
func AttrS(name, v string) *Attr { return &Attr{Name: name, Type: AttrString, S: []byte(v)} }

// AttrT makes a tensor attribute.
func AttrT(name string, t *Tensor) *Attr { return &Attr{Name: name, Type: AttrTensor, T: t} }
