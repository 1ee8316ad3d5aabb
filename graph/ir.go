// Package graph is loracc's in-memory ONNX IR: models, graphs, nodes, values
// and tensors with def-use chains, plus exact load and save.
//
// The IR models the fields loracc's passes read or write. Everything else a
// file holds — fields this version does not model, fields newer than this
// schema, model-local functions, training info — is kept as opaque protobuf
// bytes next to the object it belongs to and written back unchanged, so a
// load → save round trip keeps every field.
//
// Invariants (checked by Verify):
//   - every node input is nil (an omitted optional input) or a Value that is
//     visible from the node's graph: defined in it or in an enclosing graph;
//   - Value.Uses lists exactly the (node, input index) pairs that read it,
//     subgraph nodes included;
//   - every Value has at most one producer: a node output, a graph input or
//     an initializer (Value.Const);
//   - value names are unique across a model, subgraphs included.
//
// Nodes are edited only through methods (SetInput, ReplaceAllUsesWith,
// NewNode, RemoveNode) that keep the chains true. The node list is not
// assumed topological; SortTopo orders it stably.
package graph

import "strconv"

// KV is one metadata_props entry; order is kept.
type KV struct {
	Key, Value string
}

// Opset is one operator-set import.
type Opset struct {
	Domain  string
	Version int64
}

// Model is an ONNX model.
type Model struct {
	IRVersion       int64
	Opsets          []Opset
	ProducerName    string
	ProducerVersion string
	Domain          string
	ModelVersion    int64
	DocString       string
	Metadata        []KV
	Graph           *Graph

	// Path is the file the model was loaded from, "" when built in memory.
	Path string

	rest []byte // unmodelled ModelProto fields: functions, training_info, ...
}

// OpsetVersion returns the imported version of domain ("" and "ai.onnx" are
// the same domain), or 0 when it is not imported.
func (m *Model) OpsetVersion(domain string) int64 {
	for _, o := range m.Opsets {
		if sameDomain(o.Domain, domain) {
			return o.Version
		}
	}
	return 0
}

func sameDomain(a, b string) bool {
	if a == "ai.onnx" {
		a = ""
	}
	if b == "ai.onnx" {
		b = ""
	}
	return a == b
}

// Graph is a graph or subgraph. Subgraphs hang off node attributes and see
// the values of their enclosing graphs (Parent chain).
type Graph struct {
	Name      string
	DocString string
	Metadata  []KV

	Inputs       []*Value
	Outputs      []*Value
	Nodes        []*Node
	Initializers []*Value // values with Const set, in file order
	ValueInfo    []*Value // values that had a value_info entry, in file order

	Parent *Graph // enclosing graph; nil for the main graph
	Owner  *Node  // node whose attribute holds this graph; nil for the main graph
	Model  *Model

	values map[string]*Value // values defined in this scope
	names  *nameSet          // shared by every graph of a model
	rest   []byte            // sparse_initializer, quantization_annotation, ...
}

// Node is one operator application.
type Node struct {
	Name      string
	Op        string
	Domain    string
	Overload  string
	DocString string
	Metadata  []KV
	Attrs     []*Attr

	inputs  []*Value
	outputs []*Value
	graph   *Graph
	rest    []byte // device_configurations and unknown fields
}

// Use is one reading of a value: input Index of Node.
type Use struct {
	Node  *Node
	Index int
}

// Value is an SSA value: a graph input, an initializer or a node output.
type Value struct {
	Name      string
	Type      *TensorType // nil when unknown or not a tensor
	DocString string
	Metadata  []KV

	// Const holds the value's data when it is an initializer.
	Const *Tensor

	producer *Node
	outIndex int
	uses     []Use
	graph    *Graph
	typeRest []byte // TypeProto fields other than a tensor's elem type and shape
	viRest   []byte // unknown ValueInfoProto fields
}

// TensorType is a tensor's element type and shape. Shape is nil when the
// rank is unknown.
type TensorType struct {
	DType DataType
	Shape []Dim
}

// Dim is one dimension: a known size (Value ≥ 0), a symbol (Param) or
// unknown (Value < 0 and no Param).
type Dim struct {
	Value      int64
	Param      string
	Denotation string
}

// Known reports whether the dimension has a fixed size.
func (d Dim) Known() bool { return d.Param == "" && d.Value >= 0 }

// AttrType is an attribute's kind, numbered as AttributeProto.AttributeType.
type AttrType int32

// Attribute kinds.
const (
	AttrUndefined AttrType = 0
	AttrFloat     AttrType = 1
	AttrInt       AttrType = 2
	AttrString    AttrType = 3
	AttrTensor    AttrType = 4
	AttrGraph     AttrType = 5
	AttrFloats    AttrType = 6
	AttrInts      AttrType = 7
	AttrStrings   AttrType = 8
	AttrTensors   AttrType = 9
	AttrGraphs    AttrType = 10
	// Sparse tensors and type protos are kept opaque in Attr.rest.
	AttrSparseTensor  AttrType = 11
	AttrSparseTensors AttrType = 12
	AttrTypeProto     AttrType = 13
	AttrTypeProtos    AttrType = 14
)

// Attr is a node attribute.
type Attr struct {
	Name        string
	Type        AttrType
	RefAttrName string
	DocString   string
	F           float32
	I           int64
	S           []byte
	T           *Tensor
	G           *Graph
	Floats      []float32
	Ints        []int64
	Strings     [][]byte
	Tensors     []*Tensor
	Graphs      []*Graph

	rest []byte
}

// nameSet hands out value names, and node names, unique across a model
// (ONNX Runtime rejects two nodes of one name).
type nameSet struct {
	used  map[string]bool
	nodes map[string]bool
	// next remembers, per taken base name, the suffix to try first, so
	// that n values made from one base ("grad", "lora/q/MatMul") cost
	// O(n), not the O(n²) of scanning "_1", "_2", ... every time.
	next, nextNode map[string]int
}

func newNameSet() *nameSet {
	return &nameSet{used: map[string]bool{}, nodes: map[string]bool{}, next: map[string]int{}, nextNode: map[string]int{}}
}

// fresh returns base, or base_N for the smallest N from next[base] on
// that taken lacks, and marks it taken.
func fresh(taken map[string]bool, next map[string]int, base string) string {
	name := base
	if taken[name] {
		i := max(next[base], 1)
		for taken[base+"_"+strconv.Itoa(i)] {
			i++
		}
		name = base + "_" + strconv.Itoa(i)
		next[base] = i + 1
	}
	taken[name] = true
	return name
}

// Graph accessors.

// Lookup finds a value by name in g or an enclosing graph.
func (g *Graph) Lookup(name string) *Value {
	for s := g; s != nil; s = s.Parent {
		if v, ok := s.values[name]; ok {
			return v
		}
	}
	return nil
}

// Root returns the main graph of g's model.
func (g *Graph) Root() *Graph {
	for g.Parent != nil {
		g = g.Parent
	}
	return g
}

// Node accessors.

// Inputs returns the node's inputs; nil entries are omitted optional inputs.
// The slice is a copy: change inputs with SetInput.
func (n *Node) Inputs() []*Value { return append([]*Value(nil), n.inputs...) }

// Input returns input i or nil when absent.
func (n *Node) Input(i int) *Value {
	if i < 0 || i >= len(n.inputs) {
		return nil
	}
	return n.inputs[i]
}

// NumInputs is the number of input slots, omitted ones included.
func (n *Node) NumInputs() int { return len(n.inputs) }

// Outputs returns the node's outputs (a copy); nil entries are omitted
// optional outputs.
func (n *Node) Outputs() []*Value { return append([]*Value(nil), n.outputs...) }

// Output returns output i or nil.
func (n *Node) Output(i int) *Value {
	if i < 0 || i >= len(n.outputs) {
		return nil
	}
	return n.outputs[i]
}

// Graph returns the graph that holds n.
func (n *Node) Graph() *Graph { return n.graph }

// Attr returns the attribute called name, or nil.
func (n *Node) Attr(name string) *Attr {
	for _, a := range n.Attrs {
		if a.Name == name {
			return a
		}
	}
	return nil
}

// AttrInt returns an int attribute or def when it is absent.
func (n *Node) AttrInt(name string, def int64) int64 {
	if a := n.Attr(name); a != nil && a.Type == AttrInt {
		return a.I
	}
	return def
}

// AttrFloat returns a float attribute or def when it is absent.
func (n *Node) AttrFloat(name string, def float32) float32 {
	if a := n.Attr(name); a != nil && a.Type == AttrFloat {
		return a.F
	}
	return def
}

// AttrInts returns an ints attribute, nil when absent.
func (n *Node) AttrInts(name string) []int64 {
	if a := n.Attr(name); a != nil && a.Type == AttrInts {
		return a.Ints
	}
	return nil
}

// MetadataValue returns the value of a metadata_props key, "" if absent.
func (n *Node) MetadataValue(key string) string {
	for _, kv := range n.Metadata {
		if kv.Key == key {
			return kv.Value
		}
	}
	return ""
}

// Subgraphs returns the graphs held by n's attributes.
func (n *Node) Subgraphs() []*Graph {
	var gs []*Graph
	for _, a := range n.Attrs {
		if a.G != nil {
			gs = append(gs, a.G)
		}
		gs = append(gs, a.Graphs...)
	}
	return gs
}

// Value accessors.

// Producer returns the node computing v and its output index; nil for
// graph inputs and initializers.
func (v *Value) Producer() (*Node, int) { return v.producer, v.outIndex }

// Uses returns a copy of v's uses.
func (v *Value) Uses() []Use { return append([]Use(nil), v.uses...) }

// NumUses counts the node inputs reading v.
func (v *Value) NumUses() int { return len(v.uses) }

// Graph returns the graph that defines v.
func (v *Value) Graph() *Graph { return v.graph }

// IsGraphInput reports whether v is an input of its graph.
func (v *Value) IsGraphInput() bool {
	for _, in := range v.graph.Inputs {
		if in == v {
			return true
		}
	}
	return false
}

// IsGraphOutput reports whether v is an output of its graph.
func (v *Value) IsGraphOutput() bool {
	for _, o := range v.graph.Outputs {
		if o == v {
			return true
		}
	}
	return false
}

// DType returns v's element type, Undefined when unknown.
func (v *Value) DType() DataType {
	if v.Const != nil {
		return v.Const.DType
	}
	if v.Type != nil {
		return v.Type.DType
	}
	return Undefined
}
