package rewrite

// Pass "loss".
//
// Pre:  params ran; the model has an output named c.Train.Logits.
// Post: a labels input (c.Train.Labels) and a float32 scalar "loss":
//   lm  — next-token cross-entropy on logits [B, T, V] and labels [B, T]
//         int64: positions shifted inside the graph (logits[:, :-1] predict
//         labels[:, 1:]), labels equal to the ignore index excluded, mean
//         over the counted tokens (Hugging Face's causal-LM loss; a batch
//         with no counted token gives 0, not NaN);
//   ce  — cross-entropy on logits [B, C] with labels [B] int64, same
//         ignore-index rule;
//   mse — mean over all elements of (output − labels)², labels shaped
//         like the output.

import (
	"fmt"
	"math"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/trainio"
)

func lossPass(m *graph.Model, c *Context) error {
	st := c.train()
	o := c.Train
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
	c2 := newGradCtx(m, "loss", st.inf)
	var loss *graph.Value
	var err error
	switch o.Loss {
	case "lm":
		if rank != 3 {
			return fmt.Errorf("lm loss needs logits [batch, seq, vocab]; %q has rank %d", logits.Name, rank)
		}
		labels := g.AddInput(o.Labels, &graph.TensorType{DType: graph.Int64, Shape: append([]graph.Dim(nil), lt.Shape[:2]...)})
		st.role(labels, trainio.RoleLabel, "")
		x := c2.slice(logits, 0, -1, 1)
		y := c2.slice(labels, 1, math.MaxInt64, 1)
		loss, err = c2.crossEntropy(x, y, 3, o.IgnoreIndex)
	case "ce":
		if rank != 2 {
			return fmt.Errorf("ce loss needs logits [batch, classes]; %q has rank %d", logits.Name, rank)
		}
		labels := g.AddInput(o.Labels, &graph.TensorType{DType: graph.Int64, Shape: append([]graph.Dim(nil), lt.Shape[:1]...)})
		st.role(labels, trainio.RoleLabel, "")
		loss, err = c2.crossEntropy(logits, labels, 2, o.IgnoreIndex)
	case "mse":
		labels := g.AddInput(o.Labels, &graph.TensorType{DType: lt.DType, Shape: append([]graph.Dim(nil), lt.Shape...)})
		st.role(labels, trainio.RoleLabel, "")
		d := c2.op("Sub", vals(logits, labels))
		loss = c2.op("ReduceMean", vals(c2.op("Mul", vals(d, d))), graph.AttrI("keepdims", 0))
	default:
		return fmt.Errorf("unknown loss %q (want lm, ce or mse)", o.Loss)
	}
	if err != nil {
		return err
	}
	if dt := st.inf.dtype(logits); dt != graph.Float && dt != graph.Undefined {
		loss = c2.op("Cast", vals(loss), graph.AttrI("to", int64(graph.Float)))
	}
	out := c2.b.Op("Identity", "loss", vals(loss))
	out.Type = &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{}}
	st.inf.set(out, staticInfo{dt: graph.Float, rank: 0, dims: []graph.Dim{}})
	st.loss = out
	st.role(out, trainio.RoleLoss, "")
	return nil
}

// slice takes x[start:end] along axis, in the opset's form.
func (c *gradCtx) slice(x *graph.Value, start, end, axis int64) *graph.Value {
	if c.opset < 10 {
		if end == math.MaxInt64 {
			end = math.MaxInt32
		}
		return c.op("Slice", vals(x), graph.AttrIs("starts", start), graph.AttrIs("ends", end), graph.AttrIs("axes", axis))
	}
	return c.op("Slice", vals(x, c.ints(start), c.ints(end), c.ints(axis)))
}

// crossEntropy is the mean negative log-likelihood of labels y under
// logits x (classes on the last axis), over labels not equal to ignore.
func (c *gradCtx) crossEntropy(x, y *graph.Value, rank int, ignore int64) (*graph.Value, error) {
	last := int64(rank - 1)
	lp := c.op("LogSoftmax", vals(x), graph.AttrI("axis", last))
	if c.opset < 13 && rank != 2 {
		return nil, fmt.Errorf("opset %d LogSoftmax flattens its input; lm loss needs opset ≥ 13", c.opset)
	}
	ign := c.b.Int64s("loss.ignore_index", []int64{ignore})
	ignS := c.op("Reshape", vals(ign, c.ints()))
	valid := c.op("Not", vals(c.op("Equal", vals(y, ignS))))
	zero := c.op("Reshape", vals(c.b.Int64s("loss.zero", []int64{0}), c.ints()))
	safe := c.op("Where", vals(valid, y, zero))
	idx := c.unsqueeze(safe, last)
	picked := c.squeeze(c.op("GatherElements", vals(lp, idx), graph.AttrI("axis", last)), last)
	dt := int64(c.inf.dtype(x))
	if dt == 0 {
		dt = int64(graph.Float)
	}
	w := c.op("Cast", vals(valid), graph.AttrI("to", dt))
	nll := c.op("Neg", vals(c.op("Mul", vals(picked, w))))
	total := c.op("ReduceSum", vals(nll), graph.AttrI("keepdims", 0))
	one, err := c.scalar(1, x)
	if err != nil {
		return nil, err
	}
	count := c.op("Max", vals(c.op("ReduceSum", vals(w), graph.AttrI("keepdims", 0)), one))
	return c.op("Div", vals(total, count)), nil
}
