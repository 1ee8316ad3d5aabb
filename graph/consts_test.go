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

// TestReinterpreted: a tensor's bytes read as another type and shape keep
// their values (two uint8 bytes are four uint4 codes, low nibble first),
// external data keeps its location and offset, and a size that does not
// match is an error naming both.
func TestReinterpreted(t *testing.T) {
	u8 := NewTensor("w", Uint8, []int64{2, 1}, []byte{0x21, 0x43})
	u4, err := u8.Reinterpreted("w.u4", Uint4, []int64{2, 2})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := u4.Bytes()
	if err != nil || u4.Name != "w.u4" || u4.DType != Uint4 || string(raw) != "\x21\x43" {
		t.Errorf("reinterpreted %s %s%v %x (%v)", u4.Name, u4.DType, u4.Dims, raw, err)
	}
	ext := NewTensor("e", Uint8, []int64{8}, nil)
	if err := ext.SetExternal(External{Location: "m.data", Offset: 64, Length: 8, Dir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	e4, err := ext.Reinterpreted("e.u4", Uint4, []int64{4, 4})
	if err != nil {
		t.Fatal(err)
	}
	if x := e4.External(); x == nil || x.Location != "m.data" || x.Offset != 64 || ext.DType != Uint8 {
		t.Errorf("external reinterpretation %+v (the original now %s)", x, ext.DType)
	}
	if _, err := u8.Reinterpreted("bad", Uint4, []int64{5}); err == nil || !strings.Contains(err.Error(), "cannot be read as uint4[5]") {
		t.Errorf("size mismatch: %v", err)
	}
}
