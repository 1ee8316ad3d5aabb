package graph

import (
	"reflect"
	"strings"
	"testing"
)

func TestReadSlice(t *testing.T) {
	g := NewModel(18).Graph
	b := &Builder{G: g}
	x := g.AddInput("x", &TensorType{DType: Float})
	computed := b.Op("Shape", "s", []*Value{x})
	old := g.NewNode("Slice", "old", []*Value{x}, 1, "o")
	old.Attrs = []*Attr{AttrIs("starts", 1), AttrIs("ends", 3), AttrIs("axes", -1)}
	for _, tc := range []struct {
		n    *Node
		want SliceArgs
		err  string
	}{
		{old, SliceArgs{Starts: []int64{1}, Ends: []int64{3}, Axes: []int64{2}, Steps: []int64{1}}, ""},
		{g.NewNode("Slice", "n", []*Value{x, b.Int64s("a", []int64{0, 1}), b.Int64s("b", []int64{2, -1})}, 1, "n"),
			SliceArgs{Starts: []int64{0, 1}, Ends: []int64{2, -1}, Axes: []int64{0, 1}, Steps: []int64{1, 1}}, ""},
		{g.NewNode("Slice", "c", []*Value{x, computed, b.Int64s("b", []int64{2})}, 1, "c"), SliceArgs{}, "starts are computed at run time"},
		{g.NewNode("Slice", "l", []*Value{x, b.Int64s("a", []int64{0}), b.Int64s("b", []int64{2, 3})}, 1, "l"), SliceArgs{}, "differ in length"},
		{g.NewNode("Slice", "r", []*Value{x, b.Int64s("a", []int64{0}), b.Int64s("b", []int64{2}), b.Int64s("ax", []int64{3})}, 1, "r"), SliceArgs{}, "out of range"},
	} {
		got, err := ReadSlice(tc.n, 3)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err %v, want %q", tc.n.Name, err, tc.err)
			}
		case err != nil || !reflect.DeepEqual(got, tc.want):
			t.Errorf("%s: %+v %v, want %+v", tc.n.Name, got, err, tc.want)
		}
	}
}
