package rewrite

// Training-graph compilation: options, the IO description of the compiled
// graphs, and pass "params".
//
// Pass "params".
//
// Pre:  the model has LoRA branches (inject ran).
// Post: every branch's lora_A and lora_B is a graph input of the main
//       graph (initializers are turned into inputs, keeping name, dtype and
//       shape); c.Params lists them in adapter order (by target name, A
//       before B) and c.IO describes them with role "param".

import (
	"fmt"
	"sort"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/trainio"
)

// TrainOptions are export-train's settings.
type TrainOptions struct {
	Loss        string // "lm", "ce" or "mse"
	Logits      string // the model output the loss reads
	Labels      string // name of the labels input to add
	IgnoreIndex int64  // label value excluded from lm/ce losses

	Optimizer   string // "adamw" or "sgd"
	WeightDecay float64
	Beta1       float64
	Beta2       float64
	Eps         float64
	Momentum    float64
	ClipNorm    float64 // 0 disables clipping

	// EmitGrads adds every adapter gradient (before clipping) to the
	// training graph's outputs as "<param>.grad", role "grad", for
	// inspection and tests.
	EmitGrads bool

	// StepsPerRun K > 1 makes pass "unroll" compile K steps into one run.
	StepsPerRun int
}

// DefaultTrainOptions mirrors PyTorch's AdamW defaults and Hugging Face's
// ignore index.
func DefaultTrainOptions() TrainOptions {
	return TrainOptions{Loss: "lm", IgnoreIndex: -100, Optimizer: "adamw", WeightDecay: 0.01, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8}
}

// IOEntry is one input or output of a compiled graph (train.json).
type IOEntry = trainio.Entry

// trainState is what the training passes hand each other.
type trainState struct {
	params  []*graph.Value
	loss    *graph.Value
	grads   []*graph.Value
	outputs []*graph.Value
	emitted []*graph.Value // gradients output with EmitGrads
	roles   map[*graph.Value]IOEntry
	inf     *inferer
}

func (c *Context) train() *trainState {
	if c.trainState == nil {
		c.trainState = &trainState{roles: map[*graph.Value]IOEntry{}, inf: newInferer()}
	}
	return c.trainState
}

// shapeOf describes a value's shape for train.json.
func shapeOf(t *graph.TensorType) []trainio.Dim {
	if t == nil || t.Shape == nil {
		return nil
	}
	out := make([]trainio.Dim, len(t.Shape))
	for i, d := range t.Shape {
		switch {
		case d.Param != "":
			out[i] = trainio.Dim{Name: d.Param}
		case d.Value >= 0:
			out[i] = trainio.Dim{Size: d.Value}
		default:
			out[i] = trainio.Dim{Name: "?"}
		}
	}
	return out
}

func (s *trainState) role(v *graph.Value, role, replaces string) {
	s.roles[v] = IOEntry{Name: v.Name, DType: v.DType().String(), Shape: shapeOf(v.Type), Role: role, Replaces: replaces}
}

// branchParams finds the lora_A and lora_B values of every branch, keyed
// by target name.
func branchParams(g *graph.Graph) (map[string][2]*graph.Value, error) {
	out := map[string][2]*graph.Value{}
	var err error
	g.Walk(func(n *graph.Node) {
		name := n.MetadataValue(BranchKey)
		if name == "" || n.Op != "MatMul" {
			return
		}
		pair := out[name]
		w := n.Input(1)
		switch {
		case pair[0] == nil:
			pair[0] = w
		case pair[1] == nil:
			pair[1] = w
		default:
			err = fmt.Errorf("branch %q has more than two MatMuls", name)
		}
		out[name] = pair
	})
	return out, err
}

func paramsPass(m *graph.Model, c *Context) error {
	st := c.train()
	g := m.Graph
	branches, err := branchParams(g)
	if err != nil {
		return err
	}
	if len(branches) == 0 {
		return fmt.Errorf("the model has no LoRA branches: run loracc inject first")
	}
	names := make([]string, 0, len(branches))
	for n := range branches {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		pair := branches[name]
		if pair[1] == nil {
			return fmt.Errorf("branch %q is incomplete", name)
		}
		// The first MatMul of a branch reads A, the second B (inject
		// builds them in that order).
		for _, v := range pair {
			if v.Const != nil {
				t := v.Const
				if err := g.PromoteToInput(v); err != nil {
					return err
				}
				dims := make([]graph.Dim, len(t.Dims))
				for i, d := range t.Dims {
					dims[i] = graph.Dim{Value: d}
				}
				v.Type = &graph.TensorType{DType: t.DType, Shape: dims}
			} else if !v.IsGraphInput() || v.Graph() != g {
				return fmt.Errorf("branch %q: %q is neither an initializer nor a graph input", name, v.Name)
			}
			if v.Type.DType != graph.Float {
				// Train an fp32 master copy: the graph takes the param in
				// fp32 and casts it to the branch's type where it is read,
				// so gradients and optimizer state stay fp32.
				master, err := masterCopy(g, v)
				if err != nil {
					return fmt.Errorf("branch %q: %w", name, err)
				}
				v = master
			}
			st.params = append(st.params, v)
			st.role(v, trainio.RoleParam, "")
		}
	}
	return nil
}

// masterCopy replaces a low-precision param input v by an fp32 input of
// the same name and shape followed by a Cast to v's type.
func masterCopy(g *graph.Graph, v *graph.Value) (*graph.Value, error) {
	name, low := v.Name, v.Type.DType
	if err := v.Rename(g.UniqueName(name + ".low")); err != nil {
		return nil, err
	}
	master := g.AddInput(name, &graph.TensorType{DType: graph.Float, Shape: v.Type.Shape})
	b := &graph.Builder{G: g, Prefix: "params"}
	cast := b.Op("Cast", name+".as_"+low.String(), []*graph.Value{master}, graph.AttrI("to", int64(low)))
	v.ReplaceAllUsesWith(cast)
	if err := g.RemoveInput(v); err != nil {
		return nil, err
	}
	return master, nil
}
