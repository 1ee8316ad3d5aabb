package trainstep

// Pass "loss".
//
// Pre:  params ran; the model has an output named st.opts.Logits.
// Post: a labels input (st.opts.Labels) and a float32 scalar "loss":
//   lm  — next-token cross-entropy on logits [B, T, V] and labels [B, T]
//         int64: positions shifted inside the graph (logits[:, :-1] predict
//         labels[:, 1:]), labels equal to the ignore index excluded, mean
//         over the counted tokens (Hugging Face's causal-LM loss; a batch
//         with no counted token gives 0, not NaN);
//   ce  — cross-entropy on logits [B, C] with labels [B] int64, same
//         ignore-index rule (lm and ce in float32 for float16/bfloat16
//         logits: wideLogits);
//   mse — mean over all elements of (output − labels)², labels shaped
//         like the output.
//       With Options.Sums (the gradient half of a data-parallel step,
//       split.go) the output is instead "loss_sum", the float32 sum of the
//       counted terms, beside "loss_count", their number as an int64
//       scalar: the mean over every rank's terms is then Σ sums / Σ counts,
//       which no mean of per-rank means gives when ranks count different
//       numbers of tokens.

import (
	"fmt"
	"math"
	"slices"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
	"github.com/loracc/loracc/internal/opb"
	"github.com/loracc/loracc/trainio"
)

func (st *Compiler) Loss(m *graph.Model) error {
	o := st.opts
	g := m.Graph
	var logits *graph.Value
	for _, v := range g.Outputs {
		if v.Name == o.Logits {
			logits = v
		}
	}
	if logits == nil {
		var names []string
		for _, v := range g.Outputs {
			names = append(names, v.Name)
		}
		return fmt.Errorf("the model has no output %q (outputs: %v)", o.Logits, names)
	}
	if g.Lookup(o.Labels) != nil {
		return fmt.Errorf("labels name %q is already used in the model; pick another with --labels", o.Labels)
	}
	lt := logits.Type
	if lt == nil || lt.Shape == nil {
		return fmt.Errorf("output %q has no declared shape; the loss needs its rank", logits.Name)
	}
	rank := len(lt.Shape)
	c2 := opb.New(m, "loss", "loss", st.inf)
	var loss, count *graph.Value // count: with Sums, the int64 number of terms loss sums
	switch o.Loss {
	case "lm", "ce":
		var x, y, total, weight, valid *graph.Value
		if o.Loss == "lm" {
			if rank != 3 {
				return fmt.Errorf("lm loss needs logits [batch, seq, vocab]; %q has rank %d", logits.Name, rank)
			}
			labels := g.AddInput(o.Labels, &graph.TensorType{DType: graph.Int64, Shape: append([]graph.Dim(nil), lt.Shape[:2]...)})
			st.role(labels, trainio.RoleLabel, "")
			y = shiftedLabels(c2, labels, o.IgnoreIndex)
			if slices.Contains(o.Recompute, "loss") {
				var ok bool
				var why string
				if total, weight, valid, ok, why = st.chunkedCrossEntropy(c2, logits, y); !ok && why != errUnfixedBatch {
					return fmt.Errorf("--recompute loss cannot chunk this loss: %s (leave loss out of --recompute)", why)
				}
			}
			if total == nil {
				x = wideLogits(c2, lmLogits(c2, logits))
			}
		} else {
			if rank != 2 {
				return fmt.Errorf("ce loss needs logits [batch, classes]; %q has rank %d", logits.Name, rank)
			}
			labels := g.AddInput(o.Labels, &graph.TensorType{DType: graph.Int64, Shape: append([]graph.Dim(nil), lt.Shape[:1]...)})
			st.role(labels, trainio.RoleLabel, "")
			x, y = wideLogits(c2, logits), labels
		}
		if total == nil {
			total, weight, valid = crossEntropySums(c2, x, y, rank, o.IgnoreIndex)
		}
		if o.Sums {
			loss, count = total, c2.ReduceSum(c2.Cast(valid, graph.Int64), nil, false)
		} else {
			loss = c2.Div(total, c2.Max(weight, c2.K(1, x)))
		}
	case "mse":
		labels := g.AddInput(o.Labels, &graph.TensorType{DType: lt.DType, Shape: append([]graph.Dim(nil), lt.Shape...)})
		st.role(labels, trainio.RoleLabel, "")
		d := c2.Sub(logits, labels)
		if o.Sums {
			if dt := st.inf.DType(d); dt != graph.Float && dt != graph.Undefined {
				d = c2.Cast(d, graph.Float) // a sum of squares overflows 16 bits long before a mean does
			}
			loss, count = c2.ReduceSum(c2.Mul(d, d), nil, false), c2.Size(d)
		} else {
			loss = c2.Op("ReduceMean", ops(c2.Mul(d, d)), graph.AttrI("keepdims", 0)) // over all axes
		}
	default:
		return fmt.Errorf("unknown loss %q (want lm, ce or mse)", o.Loss)
	}
	if dt := st.inf.DType(logits); dt != graph.Float && dt != graph.Undefined && !o.Sums {
		loss = c2.Cast(loss, graph.Float)
	}
	if err := c2.Err(); err != nil {
		return err
	}
	if o.Sums {
		return st.lossSums(c2, loss, count)
	}
	out := c2.Named("Identity", "loss", ops(loss))
	out.Type = &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{}}
	st.inf.Set(out, infer.Info{DType: graph.Float, Rank: 0, Dims: []graph.Dim{}})
	st.loss = out
	st.role(out, trainio.RoleLoss, "")
	return nil
}

// wideLogits is x cast to float32 when it is float16 or bfloat16, else x.
// Hugging Face's causal-LM loss upcasts the same way: a log-softmax over
// a vocabulary and a sum over the batch's tokens lose digits in 16 bits
// (and ORT's CPU provider has no float16 ScatterElements with add, which
// the LogSoftmax gradient uses). The gradient reaching the model is cast
// back to x's type by Cast's rule.
func wideLogits(c *opb.Builder, x *graph.Value) *graph.Value {
	if dt := c.Inf.DType(x); dt == graph.Float16 || dt == graph.BFloat16 {
		return c.Cast(x, graph.Float)
	}
	return x
}

// crossEntropySums is the summed negative log-likelihood of labels y
// under logits x (classes on the last axis) over labels not equal to
// ignore, the number of those labels (in x's type) and the bool mask of
// them; the loss is the sum over the number, at least 1.
func crossEntropySums(c *opb.Builder, x, y *graph.Value, rank int, ignore int64) (total, weight, valid *graph.Value) {
	last := int64(rank - 1)
	if c.Opset < 13 && rank != 2 {
		c.Fail(fmt.Errorf("opset %d LogSoftmax flattens its input; lm loss needs opset ≥ 13", c.Opset))
		return nil, nil, nil
	}
	lp := c.Op("LogSoftmax", ops(x), graph.AttrI("axis", last))
	ign := c.Reshape(c.Int64s("loss.ignore_index", []int64{ignore}), c.Ints())
	valid = c.Not(c.Equal(y, ign))
	zero := c.Reshape(c.Int64s("loss.zero", []int64{0}), c.Ints())
	idx := c.Unsqueeze(c.Where(valid, y, zero), last)
	picked := c.Squeeze(c.Op("GatherElements", ops(lp, idx), graph.AttrI("axis", last)), last)
	dt := c.Inf.DType(x)
	if dt == graph.Undefined {
		dt = graph.Float
	}
	w := c.Cast(valid, dt)
	total = c.ReduceSum(c.Neg(c.Mul(picked, w)), nil, false)
	return total, c.ReduceSum(w, nil, false), valid
}

// lmLogits is the logits [B, T, V] the next-token loss reads with
// shiftedLabels: position t is scored against label t+1 and the last
// position against the ignore index, so no slice of the vocabulary-sized
// logits is copied (nor padded back in the gradient).
//
// When the logits are a slice of the vocabulary axis of a wider product
// (canonicalize pads wide heads to aligned columns), the rows are that
// product as a Gemm whose bias is 0 on the model's columns and −10³⁰ on the
// padding: the padding's probabilities are exactly 0, so the loss and
// its gradient equal those of the unpadded logits, and the aligned GEMM is
// kept.
func lmLogits(c *opb.Builder, logits *graph.Value) *graph.Value {
	if x, build := paddedHead(c, logits); build != nil {
		return build(x)
	}
	return logits
}

// paddedHead recognises the padded head lmLogits reads through: it
// returns the head's input x and the product build(rows) of any rows of
// x (the aligned Gemm with the padding's −10³⁰ bias, reshaped to the
// rows' leading dims), or a nil build.
func paddedHead(c *opb.Builder, logits *graph.Value) (*graph.Value, func(*graph.Value) *graph.Value) {
	p, _ := logits.Producer()
	if p == nil || p.Op != "Slice" || p.Domain != "" || c.Opset < 13 || p.NumInputs() != 4 || logits.NumUses() != 0 {
		return nil, nil
	}
	starts, ok1 := graph.ConstInts(p.Input(1))
	ends, ok2 := graph.ConstInts(p.Input(2))
	axes, ok3 := graph.ConstInts(p.Input(3))
	mm, _ := p.Input(0).Producer()
	if !ok1 || !ok2 || !ok3 || len(axes) != 1 || (axes[0] != -1 && axes[0] != 2) || starts[0] != 0 || mm == nil || mm.Op != "MatMul" || mm.Domain != "" {
		return nil, nil
	}
	x, w := mm.Input(0), mm.Input(1)
	wi := c.Inf.Info(w)
	if len(wi.Dims) != 2 || !wi.Dims[0].Known() || !wi.Dims[1].Known() || c.Inf.DType(w) != graph.Float || ends[0] >= wi.Dims[1].Value {
		return nil, nil
	}
	k, padded := wi.Dims[0].Value, wi.Dims[1].Value
	mask := make([]float32, padded)
	for j := ends[0]; j < padded; j++ {
		mask[j] = -1e30
	}
	t, err := graph.NewFloatTensor("loss.vocab_padding", graph.Float, []int64{padded}, mask)
	if err != nil {
		c.Fail(err)
		return nil, nil
	}
	bias := c.Const(t)
	return x, func(rows *graph.Value) *graph.Value {
		prod := c.Op("Gemm", []*graph.Value{c.Reshape(rows, c.Ints(-1, k)), w, bias})
		lead := c.Op("Shape", []*graph.Value{rows}, graph.AttrI("end", 2))
		return c.Reshape(prod, c.Concat(0, lead, c.Ints(padded)))
	}
}

// shiftedLabels is labels [B, T] as next-token targets [B, T]:
// labels[:, 1:] followed by the ignore index for each sequence's last
// position, which predicts nothing.
func shiftedLabels(c *opb.Builder, labels *graph.Value, ignore int64) *graph.Value {
	first := c.Slice(labels, 0, 1, 1)
	fill := c.Expand(c.Int64s("loss.ignore_fill", []int64{ignore}), c.ShapeOf(first))
	return c.Reshape(c.Concat(1, c.Slice(labels, 1, math.MaxInt64, 1), fill), c.ShapeOf(labels))
}
