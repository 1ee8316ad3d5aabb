package lora

// Fusing quantized targets: DequantizeLinear weights are re-quantized on
// their own grid or replaced by float weights; MatMulNBits weights are
// re-quantized block by block or the node becomes a float MatMul.

import (
	"fmt"
	"math"
	"strings"

	"github.com/loracc/loracc/graph"
)

// quantName names a quantized target after its data without the usual
// suffixes (".weight", "_quantized").
func quantName(v *graph.Value) string { return weightModule(v.Name) }

// fuseQuantized folds s·ΔW into a DequantizeLinear weight: re-quantized in
// place, or (toFloat) as a float initializer replacing the dequantization.
func fuseQuantized(t *Target, d lowRank, toFloat bool, logf func(string, ...any)) error {
	q := t.Quant
	w, err := q.Dequantize()
	if err != nil {
		return err
	}
	maxW := 0.0
	d.addRows(w, 0)
	for _, v := range w {
		maxW = math.Max(maxW, math.Abs(v))
	}
	if toFloat {
		if i := overflowAt(q.Scale.DType, w); i >= 0 {
			return overflowError(q.Scale.DType, w[i], i/d.cols, i%d.cols)
		}
		raw, err := encode64(q.Scale.DType, w)
		if err != nil {
			return err
		}
		g := t.Node.Graph()
		nv := g.Root().AddInitializer(graph.NewTensor(t.Weight.Name+".fused", q.Scale.DType, q.Data.Dims, raw))
		t.Node.SetInput(1, nv)
		if dqOut := q.DQ.Output(0); dqOut.NumUses() == 0 && !dqOut.IsGraphOutput() {
			ins := q.DQ.Inputs()
			if err := q.DQ.Graph().RemoveNode(q.DQ); err != nil {
				return err
			}
			for _, in := range ins {
				if in != nil && in.NumUses() == 0 && in.Const != nil {
					in.Graph().RemoveInitializer(in)
				}
			}
		}
		if logf != nil {
			logf("%s: quantized weight replaced by a %s weight (exact)", t.Name, q.Scale.DType)
		}
		return nil
	}
	if sharedValue(q.DQ.Input(0), q.DQ) || sharedValue(q.DQ.Output(0), t.Node) {
		return fmt.Errorf("quantized weight %q is shared with other nodes; fuse with --quantized float", q.DQ.Input(0).Name)
	}
	raw, worst, err := q.Requantize(w)
	if err != nil {
		return err
	}
	q.Data.SetBytes(raw)
	if logf != nil {
		logf("%s: re-quantized to %s with its own scales: max abs error %.3g (%.3g of max |W'|)", t.Name, q.Data.DType, worst, worst/math.Max(maxW, 1e-30))
	}
	return nil
}

// sharedValue reports whether v is read by anything but node n.
func sharedValue(v *graph.Value, n *graph.Node) bool {
	if v.IsGraphOutput() {
		return true
	}
	for _, u := range v.Uses() {
		if u.Node != n {
			return true
		}
	}
	return false
}

// fuseNBits folds s·ΔW into a MatMulNBits weight.
func fuseNBits(t *Target, d lowRank, toFloat bool, logf func(string, ...any)) error {
	q := t.NBits
	w, err := q.Dequantize()
	if err != nil {
		return err
	}
	d.addRows(w, 0)
	maxW := 0.0
	for _, v := range w {
		maxW = math.Max(maxW, math.Abs(v))
	}
	if toFloat {
		n := t.Node
		g := n.Graph()
		if i := overflowAt(q.Scales.DType, w); i >= 0 {
			return overflowError(q.Scales.DType, w[i], i/d.cols, i%d.cols)
		}
		raw, err := encode64(q.Scales.DType, w)
		if err != nil {
			return err
		}
		wv := g.Root().AddInitializer(graph.NewTensor(strings.TrimSuffix(t.Weight.Name, "_Q4")+".fused", q.Scales.DType, []int64{q.K, q.N}, raw))
		b := &graph.Builder{G: g, Prefix: n.Name + ".float", Metadata: n.Metadata}
		y := b.Op("MatMul", n.Output(0).Name+".float", []*graph.Value{n.Input(0), wv})
		if n.NumInputs() > 5 && n.Input(5) != nil {
			y = b.Op("Add", n.Output(0).Name+".biased", []*graph.Value{y, n.Input(5)})
		}
		out := n.Output(0)
		name, typ := out.Name, out.Type
		out.ReplaceAllUsesWith(y)
		ins := n.Inputs()
		if err := g.RemoveNode(n); err != nil {
			return err
		}
		if err := y.Rename(name); err != nil {
			return err
		}
		y.Type = typ
		for _, in := range ins {
			if in != nil && in.NumUses() == 0 && in.Const != nil && !in.IsGraphOutput() {
				in.Graph().RemoveInitializer(in)
			}
		}
		if err := g.SortTopo(); err != nil {
			return err
		}
		if logf != nil {
			logf("%s: MatMulNBits replaced by a %s MatMul (exact)", t.Name, q.Scales.DType)
		}
		return nil
	}
	if sharedValue(t.Weight, t.Node) {
		return fmt.Errorf("packed weight %q is shared with other nodes; fuse with --quantized float", t.Weight.Name)
	}
	raw, worst, err := q.Requantize(w)
	if err != nil {
		return err
	}
	q.B.SetBytes(raw)
	if logf != nil {
		logf("%s: re-quantized to %d bits with its blocks' scales: max abs error %.3g (%.3g of max |W'|)", t.Name, q.Bits, worst, worst/math.Max(maxW, 1e-30))
	}
	return nil
}
