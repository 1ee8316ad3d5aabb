package lora

// Passes "unpack" and "repack".
//
// onnxruntime-genai's model builder packs a layer's query, key and value
// projections into one MatMul (qkv_proj) that com.microsoft
// GroupQueryAttention reads as a packed query, unless the model is built
// for LoRA. PEFT users train q_proj, k_proj and v_proj as separate modules
// (often only some of them), with adapters named that way, so loracc
// splits the packed projection into the three the builder would have
// written for LoRA, and joins them again after fuse, so the deployed model
// is the base graph with new weights.
//
// unpack
// Pre:  none.
// Post: unless c.KeepPacked or the adapter adapts a packed qkv_proj as
//       one module, every projection that GroupQueryAttention reads as its packed
//       query (key and value absent) — a MatMul with a constant weight
//       [K, (N + 2·Nkv)·D], or MatMulNBits without g_idx or bias, read
//       only by the attention or by one Add of a bias — is three nodes of
//       its op computing the q, k and v column blocks, joined by
//       Concat(axis −1) under the packed output's name. Pieces are named
//       by replacing "qkv_proj" with "q_proj", "k_proj", "v_proj" in the
//       node, output and weight names (a "_q", "_k", "_v" suffix where the
//       names lack it), so targets read model.layers.N.attn.q_proj. The
//       pieces and the Concat carry unpackedKey (the packed node's name),
//       the pieces packedWeightsKey (the packed weights' names).
//
// repack
// Pre:  no LoRA branches (strip first).
// Post: every Concat unpack made whose inputs are still its pieces, all
//       reading one x, is one node again under the packed node's name,
//       its weights the pieces' (possibly fused) weights side by side
//       under the packed weights' names.

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/loracc/loracc/graph"
)

const (
	// unpackedKey marks the nodes unpack made; its value is the packed
	// node's name.
	unpackedKey = "loracc.unpacked"
	// packedWeightsKey lists the packed node's constant inputs (the
	// weight, or MatMulNBits' data, scales and zero points), "," joined.
	packedWeightsKey = "loracc.packed_weights"
)

var qkvParts = [3]string{"q_proj", "k_proj", "v_proj"}

// partName names part i of a packed name.
func partName(name string, i int) string {
	if strings.Contains(name, "qkv_proj") {
		return strings.Replace(name, "qkv_proj", qkvParts[i], 1)
	}
	return name + "_" + qkvParts[i][:1]
}

// packedQKV is one projection unpack splits.
type packedQKV struct {
	mm     *graph.Node
	widths [3]int64 // output columns of q, k and v
	consts []int    // the mm inputs that are per-column constants
}

// findPackedQKV reports the packed projection GroupQueryAttention node n
// reads, if it is one unpack can split.
func findPackedQKV(n *graph.Node) (packedQKV, bool) {
	if n.Domain != "com.microsoft" || n.Op != "GroupQueryAttention" || n.Input(0) == nil || n.Input(1) != nil || n.Input(2) != nil {
		return packedQKV{}, false
	}
	mm, _ := n.Input(0).Producer()
	if mm != nil && mm.Op == "Add" && mm.Domain == "" && mm.Output(0).NumUses() == 1 {
		for i := range 2 {
			if graph.ConstTensor(mm.Input(1-i)) != nil {
				mm, _ = mm.Input(i).Producer()
				break
			}
		}
	}
	if mm == nil || mm.Output(0).NumUses() != 1 || mm.Output(0).IsGraphOutput() {
		return packedQKV{}, false
	}
	heads, kv := n.AttrInt("num_heads", 0), n.AttrInt("kv_num_heads", 0)
	var width int64
	var consts []int
	switch {
	case mm.Op == "MatMul" && mm.Domain == "":
		t := graph.ConstTensor(mm.Input(1))
		if t == nil || len(t.Dims) != 2 {
			return packedQKV{}, false
		}
		width, consts = t.Dims[1], []int{1}
	case mm.Op == "MatMulNBits" && mm.Domain == "com.microsoft":
		if mm.Input(4) != nil || mm.Input(5) != nil { // g_idx, bias
			return packedQKV{}, false
		}
		width, consts = mm.AttrInt("N", 0), []int{1, 2}
		if mm.Input(3) != nil {
			consts = append(consts, 3)
		}
		for _, i := range consts {
			if graph.ConstTensor(mm.Input(i)) == nil {
				return packedQKV{}, false
			}
		}
	default:
		return packedQKV{}, false
	}
	if heads <= 0 || kv <= 0 || width <= 0 || width%(heads+2*kv) != 0 {
		return packedQKV{}, false
	}
	d := width / (heads + 2*kv)
	return packedQKV{mm: mm, widths: [3]int64{heads * d, kv * d, kv * d}, consts: consts}, true
}

// Unpack is pass "unpack"; it returns how many projections it split.
// It splits nothing with c.KeepPacked, or when c.Adapter has a layer of a
// packed module (named qkv_proj, as PEFT names Phi-3's).
func Unpack(m *graph.Model, c *Options) (int, error) {
	if c != nil && c.KeepPacked {
		return 0, nil
	}
	if c != nil && c.Adapter != nil {
		for _, l := range c.Adapter.Layers {
			if strings.HasSuffix(l.Name, "qkv_proj") {
				return 0, nil
			}
		}
	}
	var found []packedQKV
	m.Graph.Walk(func(n *graph.Node) {
		if p, ok := findPackedQKV(n); ok {
			found = append(found, p)
		}
	})
	for _, p := range found {
		if err := p.split(); err != nil {
			return 0, fmt.Errorf("node %q (%s): %w", p.mm.Name, p.mm.Op, err)
		}
	}
	if len(found) > 0 && c != nil && c.Logf != nil {
		c.Logf("split %d packed q/k/v projections into q_proj, k_proj and v_proj (joined again by fuse)", len(found))
	}
	return len(found), nil
}

func (p packedQKV) split() error {
	mm := p.mm
	g := mm.Graph()
	out := mm.Output(0)
	total := p.widths[0] + p.widths[1] + p.widths[2]
	var names []string
	for _, i := range p.consts {
		names = append(names, mm.Input(i).Name)
	}
	var meta []graph.KV
	for _, kv := range mm.Metadata {
		if kv.Key != torchScopesKey { // the scope names the packed module
			meta = append(meta, kv)
		}
	}
	meta = append(meta, graph.KV{Key: unpackedKey, Value: mm.Name}, graph.KV{Key: packedWeightsKey, Value: strings.Join(names, ",")})
	var parts []*graph.Value
	var nodes []*graph.Node
	var off int64
	for i, w := range p.widths {
		ins := mm.Inputs()
		for _, k := range p.consts {
			t := graph.ConstTensor(mm.Input(k))
			var piece *graph.Tensor
			var err error
			if mm.Op == "MatMul" {
				piece, err = columns(t, partName(t.Name, i), off, w)
			} else {
				piece, err = rows(t, partName(t.Name, i), total, off, w)
			}
			if err != nil {
				return err
			}
			ins[k] = g.Root().AddInitializer(piece)
		}
		n := g.NewNode(mm.Op, partName(mm.Name, i), ins, 1, partName(out.Name, i))
		n.Domain = mm.Domain
		for _, a := range mm.Attrs {
			if mm.Op == "MatMulNBits" && a.Name == "N" {
				a = graph.AttrI("N", w)
			}
			n.Attrs = append(n.Attrs, a)
		}
		n.Metadata = slices.Clone(meta)
		if out.Type != nil && len(out.Type.Shape) > 0 {
			tt := *out.Type
			tt.Shape = slices.Clone(out.Type.Shape)
			tt.Shape[len(tt.Shape)-1] = graph.Dim{Value: w}
			n.Output(0).Type = &tt
		}
		parts = append(parts, n.Output(0))
		nodes = append(nodes, n)
		off += w
	}
	cat := g.NewNode("Concat", mm.Name+"/concat", parts, 1, out.Name+".concat")
	cat.Attrs = append(cat.Attrs, graph.AttrI("axis", -1))
	cat.Metadata = []graph.KV{{Key: unpackedKey, Value: mm.Name}}
	cat.Output(0).Type = out.Type
	g.PlaceAfter(mm, append(nodes, cat)...)
	return replaceNode(mm, cat)
}

// replaceNode makes by's output take the place and name of old's (single
// output) and removes old with the constants only it read.
func replaceNode(old, by *graph.Node) error {
	g := old.Graph()
	out, name := old.Output(0), old.Output(0).Name
	out.ReplaceAllUsesWith(by.Output(0))
	ins := old.Inputs()
	if err := g.RemoveNode(old); err != nil {
		return err
	}
	for _, v := range ins {
		if v != nil && v.Const != nil && v.NumUses() == 0 && !v.IsGraphInput() && !v.IsGraphOutput() {
			if err := v.Graph().RemoveInitializer(v); err != nil {
				return err
			}
		}
	}
	return by.Output(0).Rename(name)
}

// columns is t [K, total] restricted to columns [off, off+w).
func columns(t *graph.Tensor, name string, off, w int64) (*graph.Tensor, error) {
	k, total := t.Dims[0], t.Dims[1]
	es := t.DType.ByteSize(1)
	if es <= 0 {
		return nil, fmt.Errorf("weight %q: %s cannot be split by columns", t.Name, t.DType)
	}
	return derived(t, name, []int64{k, w}, func(dst io.Writer, src []byte) error {
		for r := range k {
			if _, err := dst.Write(src[(r*total+off)*es : (r*total+off+w)*es]); err != nil {
				return err
			}
		}
		return nil
	})
}

// rows is t, whose data holds total equal rows (MatMulNBits' per-column
// data, scales and zero points), restricted to rows [off, off+w).
func rows(t *graph.Tensor, name string, total, off, w int64) (*graph.Tensor, error) {
	size, err := t.ByteSize()
	if err != nil {
		return nil, err
	}
	if size%total != 0 || len(t.Dims) == 0 || (len(t.Dims) > 1 && t.Dims[0] != total) {
		return nil, fmt.Errorf("tensor %q %v does not hold %d rows", t.Name, t.Dims, total)
	}
	row := size / total
	dims := slices.Clone(t.Dims)
	dims[0] = dims[0] / total * w
	return derived(t, name, dims, func(dst io.Writer, src []byte) error {
		_, err := dst.Write(src[off*row : (off+w)*row])
		return err
	})
}

// derived is a tensor computed from t's bytes by write: at once when t is
// in memory, else when the model is saved, so an external weight is read
// one tensor at a time and never held.
func derived(t *graph.Tensor, name string, dims []int64, write func(io.Writer, []byte) error) (*graph.Tensor, error) {
	out := graph.NewTensor(name, t.DType, dims, nil)
	if !t.InMemory() {
		out.SetStream(func(w io.Writer) error {
			src, err := t.Bytes()
			if err != nil {
				return err
			}
			return write(w, src)
		})
		return out, nil
	}
	src, err := t.Bytes()
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := write(&b, src); err != nil {
		return nil, err
	}
	out.SetBytes(b.Bytes())
	return out, nil
}

// Repack is pass "repack"; it returns how many projections it joined.
func Repack(m *graph.Model, c *Options) (int, error) {
	var cats []*graph.Node
	m.Graph.Walk(func(n *graph.Node) {
		if n.Op == "Concat" && n.MetadataValue(unpackedKey) != "" {
			cats = append(cats, n)
		}
	})
	joined := 0
	for _, cat := range cats {
		parts, ok := unpackedParts(cat)
		if !ok {
			if c != nil && c.Logf != nil {
				c.Logf("note: %q stays split: its parts are no longer the projections unpack made", cat.MetadataValue(unpackedKey))
			}
			continue
		}
		if err := join(cat, parts); err != nil {
			return joined, fmt.Errorf("node %q: %w", cat.MetadataValue(unpackedKey), err)
		}
		joined++
	}
	return joined, nil
}

// unpackedParts returns the nodes feeding cat if they are still unpack's
// pieces of one projection, reading one x.
func unpackedParts(cat *graph.Node) ([]*graph.Node, bool) {
	name := cat.MetadataValue(unpackedKey)
	var parts []*graph.Node
	for _, in := range cat.Inputs() {
		p, _ := in.Producer()
		if p == nil || p.MetadataValue(unpackedKey) != name || in.NumUses() != 1 || in.IsGraphOutput() {
			return nil, false
		}
		if len(parts) > 0 && (p.Input(0) != parts[0].Input(0) || p.Op != parts[0].Op) {
			return nil, false
		}
		parts = append(parts, p)
	}
	return parts, len(parts) == len(qkvParts)
}

// join replaces cat and its parts by the packed node.
func join(cat *graph.Node, parts []*graph.Node) error {
	first := parts[0]
	g := first.Graph()
	names := strings.Split(first.MetadataValue(packedWeightsKey), ",")
	nbits := first.Op == "MatMulNBits"
	consts := []int{1}
	if nbits {
		consts = []int{1, 2, 3}[:len(names)]
	}
	var widths []int64
	for _, p := range parts {
		w := p.AttrInt("N", 0)
		if !nbits {
			t := graph.ConstTensor(p.Input(1))
			if t == nil || len(t.Dims) != 2 {
				return fmt.Errorf("part %q has no constant 2-D weight", p.Name)
			}
			w = t.Dims[1]
		}
		widths = append(widths, w)
	}
	var total int64
	for _, w := range widths {
		total += w
	}
	ins := first.Inputs()
	var joined []*graph.Tensor
	for j, k := range consts {
		var ts []*graph.Tensor
		for _, p := range parts {
			t := graph.ConstTensor(p.Input(k))
			if t == nil {
				return fmt.Errorf("part %q: input %d is not a constant", p.Name, k)
			}
			ts = append(ts, t)
		}
		t, err := concatParts(ts, names[j], widths, nbits)
		if err != nil {
			return err
		}
		joined = append(joined, t)
	}
	n := g.NewNode(first.Op, "", nil, 1, cat.Output(0).Name+".joined")
	n.Name = cat.MetadataValue(unpackedKey)
	n.Domain = first.Domain
	for _, a := range first.Attrs {
		if nbits && a.Name == "N" {
			a = graph.AttrI("N", total)
		}
		n.Attrs = append(n.Attrs, a)
	}
	for _, kv := range first.Metadata {
		if kv.Key != unpackedKey && kv.Key != packedWeightsKey {
			n.Metadata = append(n.Metadata, kv)
		}
	}
	n.Output(0).Type = cat.Output(0).Type
	g.PlaceAfter(cat, n)
	if err := replaceNode(cat, n); err != nil {
		return err
	}
	for _, p := range parts {
		pin := p.Inputs()
		if err := g.RemoveNode(p); err != nil {
			return err
		}
		for _, k := range consts {
			if v := pin[k]; v.NumUses() == 0 && !v.IsGraphInput() {
				if err := v.Graph().RemoveInitializer(v); err != nil {
					return err
				}
			}
		}
	}
	for j, k := range consts {
		ins[k] = g.Root().AddInitializer(joined[j])
	}
	for i, v := range ins {
		n.SetInput(i, v)
	}
	return nil
}

// concatParts joins the parts' weights: W [K, wᵢ] side by side, or
// MatMulNBits' per-column rows one after another.
func concatParts(ts []*graph.Tensor, name string, widths []int64, nbits bool) (*graph.Tensor, error) {
	dims := slices.Clone(ts[0].Dims)
	lazy := false
	for _, t := range ts {
		lazy = lazy || !t.InMemory()
		if t.DType != ts[0].DType || len(t.Dims) != len(dims) {
			return nil, fmt.Errorf("parts of %q differ in type or rank", name)
		}
	}
	if nbits {
		dims[0] = 0
		for _, t := range ts {
			dims[0] += t.Dims[0]
		}
	} else {
		dims[1] = 0
		for _, w := range widths {
			dims[1] += w
		}
	}
	write := func(dst io.Writer) error {
		srcs := make([][]byte, len(ts))
		for i, t := range ts {
			b, err := t.Bytes()
			if err != nil {
				return err
			}
			srcs[i] = b
		}
		if nbits {
			for _, b := range srcs {
				if _, err := dst.Write(b); err != nil {
					return err
				}
			}
			return nil
		}
		es := ts[0].DType.ByteSize(1)
		for r := range dims[0] {
			for i, b := range srcs {
				if _, err := dst.Write(b[r*widths[i]*es : (r+1)*widths[i]*es]); err != nil {
					return err
				}
			}
		}
		return nil
	}
	out := graph.NewTensor(name, ts[0].DType, dims, nil)
	if lazy {
		out.SetStream(write)
		return out, nil
	}
	var b bytes.Buffer
	if err := write(&b); err != nil {
		return nil, err
	}
	out.SetBytes(b.Bytes())
	return out, nil
}
