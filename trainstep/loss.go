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
//         ignore-index rule;
//   mse — mean over all elements of (output − labels)², labels shaped
//         like the output.

import (
	"fmt"
	"math"

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
	var loss *graph.Value
	var err error
	switch o.Loss {
	case "lm":
		if rank != 3 {
			return fmt.Errorf("lm loss needs logits [batch, seq, vocab]; %q has rank %d", logits.Name, rank)
		}
		labels := g.AddInput(o.Labels, &graph.TensorType{DType: graph.Int64, Shape: append([]graph.Dim(nil), lt.Shape[:2]...)})
		st.role(labels, trainio.RoleLabel, "")
		x := c2.Slice(logits, 0, -1, 1)
		y := c2.Slice(labels, 1, math.MaxInt64, 1)
		loss, err = crossEntropy(c2, x, y, 3, o.IgnoreIndex)
	case "ce":
		if rank != 2 {
			return fmt.Errorf("ce loss needs logits [batch, classes]; %q has rank %d", logits.Name, rank)
		}
		labels := g.AddInput(o.Labels, &graph.TensorType{DType: graph.Int64, Shape: append([]graph.Dim(nil), lt.Shape[:1]...)})
		st.role(labels, trainio.RoleLabel, "")
		loss, err = crossEntropy(c2, logits, labels, 2, o.IgnoreIndex)
	case "mse":
		labels := g.AddInput(o.Labels, &graph.TensorType{DType: lt.DType, Shape: append([]graph.Dim(nil), lt.Shape...)})
		st.role(labels, trainio.RoleLabel, "")
		d := c2.Op("Sub", ops(logits, labels))
		loss = c2.Op("ReduceMean", ops(c2.Op("Mul", ops(d, d))), graph.AttrI("keepdims", 0))
	default:
		return fmt.Errorf("unknown loss %q (want lm, ce or mse)", o.Loss)
	}
	if err != nil {
		return err
	}
	if dt := st.inf.DType(logits); dt != graph.Float && dt != graph.Undefined {
		loss = c2.Op("Cast", ops(loss), graph.AttrI("to", int64(graph.Float)))
	}
	out := c2.Named("Identity", "loss", ops(loss))
	out.Type = &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{}}
	st.inf.Set(out, infer.Info{DType: graph.Float, Rank: 0, Dims: []graph.Dim{}})
	st.loss = out
	st.role(out, trainio.RoleLoss, "")
	return nil
}

// crossEntropy is the mean negative log-likelihood of labels y under
// logits x (classes on the last axis), over labels not equal to ignore.
func crossEntropy(c *opb.Builder, x, y *graph.Value, rank int, ignore int64) (*graph.Value, error) {
	last := int64(rank - 1)
	lp := c.Op("LogSoftmax", ops(x), graph.AttrI("axis", last))
	if c.Opset < 13 && rank != 2 {
		return nil, fmt.Errorf("opset %d LogSoftmax flattens its input; lm loss needs opset ≥ 13", c.Opset)
	}
	ign := c.Int64s("loss.ignore_index", []int64{ignore})
	ignS := c.Op("Reshape", ops(ign, c.Ints()))
	valid := c.Op("Not", ops(c.Op("Equal", ops(y, ignS))))
	zero := c.Op("Reshape", ops(c.Int64s("loss.zero", []int64{0}), c.Ints()))
	safe := c.Op("Where", ops(valid, y, zero))
	idx := c.Unsqueeze(safe, last)
	picked := c.Squeeze(c.Op("GatherElements", ops(lp, idx), graph.AttrI("axis", last)), last)
	dt := int64(c.Inf.DType(x))
	if dt == 0 {
		dt = int64(graph.Float)
	}
	w := c.Op("Cast", ops(valid), graph.AttrI("to", dt))
	nll := c.Op("Neg", ops(c.Op("Mul", ops(picked, w))))
	total := c.Op("ReduceSum", ops(nll), graph.AttrI("keepdims", 0))
	one, err := c.Scalar(1, x)
	if err != nil {
		return nil, err
	}
	count := c.Op("Max", ops(c.Op("ReduceSum", ops(w), graph.AttrI("keepdims", 0)), one))
	return c.Op("Div", ops(total, count)), nil
}
