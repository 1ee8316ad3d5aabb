package graph

import (
	"fmt"
	"strconv"
	"strings"
)

// Format prints a model as deterministic text, one line per node, with
// dtypes and shapes where known and big tensors summarised. It is the
// single printer behind --dump and the golden tests.
func Format(m *Model) string {
	var b strings.Builder
	fmt.Fprintf(&b, "model ir=%d", m.IRVersion)
	for _, o := range m.Opsets {
		d := o.Domain
		if d == "" {
			d = "ai.onnx"
		}
		fmt.Fprintf(&b, " %s=%d", d, o.Version)
	}
	b.WriteString("\n")
	formatGraph(&b, m.Graph, "")
	return b.String()
}

// FormatGraph prints one graph (and its subgraphs) as Format does.
func FormatGraph(g *Graph) string {
	var b strings.Builder
	formatGraph(&b, g, "")
	return b.String()
}

func formatGraph(b *strings.Builder, g *Graph, indent string) {
	fmt.Fprintf(b, "%sgraph %q {\n", indent, g.Name)
	in := indent + "  "
	for _, v := range g.Inputs {
		fmt.Fprintf(b, "%sinput %s: %s\n", in, v.Name, typeString(v))
	}
	for _, v := range g.Initializers {
		fmt.Fprintf(b, "%sinit %s: %s\n", in, v.Name, TensorSummary(v.Const))
	}
	for _, n := range g.Nodes {
		var outs []string
		for _, o := range n.outputs {
			if o == nil {
				outs = append(outs, "_")
				continue
			}
			outs = append(outs, fmt.Sprintf("%s: %s", o.Name, typeString(o)))
		}
		var ins []string
		for _, v := range n.inputs {
			if v == nil {
				ins = append(ins, "_")
			} else {
				ins = append(ins, v.Name)
			}
		}
		op := n.Op
		if n.Domain != "" {
			op = n.Domain + "::" + op
		}
		var attrs []string
		var subs []*Attr
		for _, a := range n.Attrs {
			if a.G != nil || len(a.Graphs) > 0 {
				subs = append(subs, a)
				continue
			}
			attrs = append(attrs, a.Name+"="+attrString(a))
		}
		attr := ""
		if len(attrs) > 0 {
			attr = "<" + strings.Join(attrs, ", ") + ">"
		}
		name := ""
		if n.Name != "" {
			name = fmt.Sprintf("  # %s", n.Name)
		}
		fmt.Fprintf(b, "%s%s = %s%s(%s)%s\n", in, strings.Join(outs, ", "), op, attr, strings.Join(ins, ", "), name)
		for _, a := range subs {
			fmt.Fprintf(b, "%s  %s:\n", in, a.Name)
			if a.G != nil {
				formatGraph(b, a.G, in+"    ")
			}
			for _, sg := range a.Graphs {
				formatGraph(b, sg, in+"    ")
			}
		}
	}
	var outs []string
	for _, v := range g.Outputs {
		outs = append(outs, v.Name)
	}
	fmt.Fprintf(b, "%sreturn %s\n%s}\n", in, strings.Join(outs, ", "), indent)
}

func typeString(v *Value) string {
	if v.Const != nil {
		return v.Const.DType.String() + dimsString(v.Const.Dims)
	}
	if v.Type == nil {
		return "?"
	}
	if v.Type.Shape == nil {
		return v.Type.DType.String() + "[...]"
	}
	parts := make([]string, len(v.Type.Shape))
	for i, d := range v.Type.Shape {
		switch {
		case d.Param != "":
			parts[i] = d.Param
		case d.Value >= 0:
			parts[i] = strconv.FormatInt(d.Value, 10)
		default:
			parts[i] = "?"
		}
	}
	return v.Type.DType.String() + "[" + strings.Join(parts, ",") + "]"
}

func dimsString(dims []int64) string {
	parts := make([]string, len(dims))
	for i, d := range dims {
		parts[i] = strconv.FormatInt(d, 10)
	}
	return "[" + strings.Join(parts, ",") + "]"
}

// TensorSummary prints dtype, dims and, for small in-memory tensors, the
// values; big or external tensors print where their data is instead.
func TensorSummary(t *Tensor) string {
	s := t.DType.String() + dimsString(t.Dims)
	if t.ext != nil {
		return fmt.Sprintf("%s @%s+%d", s, t.ext.Location, t.ext.Offset)
	}
	n, err := t.NumElements()
	if err != nil || n > 8 {
		return s
	}
	if vals, err := t.Floats(); err == nil {
		parts := make([]string, len(vals))
		for i, f := range vals {
			parts[i] = strconv.FormatFloat(float64(f), 'g', 6, 32)
		}
		return s + " {" + strings.Join(parts, " ") + "}"
	}
	if vals, err := t.Int64s(); err == nil {
		parts := make([]string, len(vals))
		for i, x := range vals {
			parts[i] = strconv.FormatInt(x, 10)
		}
		return s + " {" + strings.Join(parts, " ") + "}"
	}
	return s
}

func attrString(a *Attr) string {
	switch a.Type {
	case AttrFloat:
		return strconv.FormatFloat(float64(a.F), 'g', -1, 32)
	case AttrInt:
		return strconv.FormatInt(a.I, 10)
	case AttrString:
		return strconv.Quote(string(a.S))
	case AttrTensor:
		if a.T != nil {
			return TensorSummary(a.T)
		}
	case AttrFloats:
		parts := make([]string, len(a.Floats))
		for i, f := range a.Floats {
			parts[i] = strconv.FormatFloat(float64(f), 'g', -1, 32)
		}
		return "[" + strings.Join(parts, ",") + "]"
	case AttrInts:
		return dimsString(a.Ints)
	case AttrStrings:
		parts := make([]string, len(a.Strings))
		for i, s := range a.Strings {
			parts[i] = strconv.Quote(string(s))
		}
		return "[" + strings.Join(parts, ",") + "]"
	case AttrTensors:
		return fmt.Sprintf("<%d tensors>", len(a.Tensors))
	}
	if a.RefAttrName != "" {
		return "@" + a.RefAttrName
	}
	return fmt.Sprintf("<type %d>", a.Type)
}
