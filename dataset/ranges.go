package dataset

import (
	"fmt"
	"sort"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
)

// ModelRanges reads the bounds a model puts on its integer inputs: an
// input whose values reach, through casts and reshapes only, the indices
// of a Gather over a table of known size (an embedding: token, position or
// token-type ids) must index its rows, and labels must be classes of the
// logits output, its last dim. Where several tables take one input, the
// smallest bounds it. Bounds that cannot be read statically are left out.
func ModelRanges(g *graph.Graph, logits string) (inputs map[string]Range, classes Range) {
	inf := infer.New()
	inputs = map[string]Range{}
	g.Walk(func(n *graph.Node) {
		if n.Op != "Gather" || n.Domain != "" || n.NumInputs() < 2 {
			return
		}
		v := n.Input(1)
		for v != nil {
			p, _ := v.Producer()
			if p == nil || !shapeOnly(p.Op) {
				break
			}
			v = p.Input(0)
		}
		if v == nil || !v.IsGraphInput() {
			return
		}
		data := n.Input(0)
		dims := inf.Info(data).Dims
		axis := n.AttrInt("axis", 0)
		if axis < 0 {
			axis += int64(len(dims))
		}
		if axis < 0 || axis >= int64(len(dims)) || !dims[axis].Known() || dims[axis].Value <= 0 {
			return
		}
		size := dims[axis].Value
		if r, ok := inputs[v.Name]; !ok || size < r.Size {
			inputs[v.Name] = Range{Size: size, Of: fmt.Sprintf("the %d rows of %q (Gather node %q)", size, data.Name, n.Name)}
		}
	})
	if v := g.Lookup(logits); v != nil {
		if dims := inf.Info(v).Dims; len(dims) > 0 && dims[len(dims)-1].Known() && dims[len(dims)-1].Value > 0 {
			c := dims[len(dims)-1].Value
			classes = Range{Size: c, Of: fmt.Sprintf("the %d classes of output %q", c, logits)}
		}
	}
	return inputs, classes
}

// shapeOnly reports whether op passes its first input's values through
// unchanged, only converted or reshaped.
func shapeOnly(op string) bool {
	switch op {
	case "Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity":
		return true
	}
	return false
}

// setLimits attaches Spec.Ranges and Spec.Classes to their fields and
// checks the padding id against its bound. Fields are visited in order,
// so the first error is always the same one.
func (s *Set) setLimits() error {
	names := make([]string, 0, len(s.spec.Ranges))
	for name := range s.spec.Ranges {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if f := s.byName[name]; f != nil && f.kind != kFloat32 && f != s.labels {
			f.limit = s.spec.Ranges[name]
		}
	}
	if s.spec.Loss != "mse" {
		s.labels.limit = s.spec.Classes
	}
	for _, f := range s.fields {
		if f.role == roleIDs && f.seq && f.limit.Size > 0 && (f.pad < 0 || f.pad >= f.limit.Size) {
			return fmt.Errorf("input %q: pad id %d is outside [0, %d), %s", f.name, f.pad, f.limit.Size, f.limit.Of)
		}
	}
	return nil
}

// checkRange checks the values f just read (from start on) against its
// bound; lm and ce labels may also be the ignore index, never another
// negative number.
func (s *Set) checkRange(f *field, start int) error {
	labels := f == s.labels && s.spec.Loss != "mse"
	if f.kind == kFloat32 || (f.limit.Size == 0 && !labels) {
		return nil
	}
	for j, v := range f.ints[start:] {
		switch {
		case labels && v == s.spec.IgnoreIndex:
		case v < 0 && labels:
			return fmt.Errorf("value %d at element %d is negative; labels are class indices or the ignore index %d", v, j, s.spec.IgnoreIndex)
		case v < 0:
			return fmt.Errorf("value %d at element %d is negative; it indexes %s", v, j, f.limit.Of)
		case f.limit.Size > 0 && v >= f.limit.Size:
			return fmt.Errorf("value %d at element %d is outside [0, %d), %s", v, j, f.limit.Size, f.limit.Of)
		}
	}
	return nil
}
