package lora

// Pass "inject".
//
// Pre:  the model has targets (FindTargets) and none of the selected ones
//       already carries a LoRA branch.
// Post: every selected target's output y is replaced, for all its readers
//       and under its own name, by y + scale·((x·A)·B), where A = lora_Aᵀ
//       [in, r] and B = lora_Bᵀ [r, out] are initializers (or graph
//       inputs) named "<target>.lora_A" / ".lora_B" holding exactly the
//       adapter's values, and scale is a separate scalar "<target>.lora_scale"
//       (with GenaiNames, inputs named as onnxruntime-genai does, B holding
//       scale·B and the scalar 1).
//       The base output is renamed "<y>.base". Branch nodes carry the
//       metadata key branch.Key so strip, fuse and FindTargets know them.
//       c.Adapter holds the adapter (new or given), c.Injected the targets.

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"strings"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/branch"
	"github.com/loracc/loracc/graph"
)

// Init chooses how a new adapter starts.
type Init struct {
	// Method is "kaiming" (PEFT's default: A uniform in ±1/√in, B = 0),
	// "gaussian" (A normal with std 1/r as PEFT does, B = 0) or "zeros".
	Method string
	Seed   uint64
}

// ErrNoTarget is returned when the selection leaves nothing to adapt.
var ErrNoTarget = errors.New("no target matched")

// ErrMismatch marks an adapter whose layers do not fit the model's
// targets, so commands can name the adapter folder as well as the model.
var ErrMismatch = errors.New("adapter and model do not match")

// Inject is pass "inject".
func Inject(m *graph.Model, c *Options) error {
	all, _ := FindTargets(m)
	var targets []*Target
	if c.Adapter != nil {
		matches, err := MatchAdapter(all, c.Adapter)
		if err != nil {
			return err
		}
		reportMatches(c, all, matches)
		// The graph's tensors take the target's name; the adapter keeps
		// its own module names, so it fuses back where it came from.
		for i, mt := range matches {
			targets = append(targets, mt.Target)
			if c.AdapterInputs && c.GenaiNames {
				// Deployment names follow the graph's modules (the
				// builder's attn, not Hugging Face's self_attn), and the
				// adapter written beside takes them too.
				c.Adapter.Layers[i].Name = mt.Target.Name
				continue
			}
			mt.Target.Name = c.Adapter.Layers[i].Name
		}
		c.Adapter.SortLayers()
	} else {
		targets, _ = c.Selector.Select(all)
		if len(targets) == 0 {
			return fmt.Errorf("%w (targets in the model: %s)", ErrNoTarget, targetList(all))
		}
		if err := CheckRanks(targets, c.Config, c.AllowLargeRank); err != nil {
			return err
		}
		a, err := newAdapter(targets, c.Config, c.Init)
		if err != nil {
			return err
		}
		c.Adapter = a
	}
	for _, t := range targets {
		if owner := branch.Of(t.Node); owner != "" {
			return fmt.Errorf("node %q (%s): target %q already has a LoRA branch; fuse or strip it first", t.Node.Name, t.Node.Op, t.Name)
		}
	}
	SortByName(targets)
	// Branch nodes are placed after their targets in one pass per graph
	// at the end (placing each at once would cost O(nodes) per target).
	place := map[*graph.Graph]map[*graph.Node][]*graph.Node{}
	for _, t := range targets {
		l := c.Adapter.Layer(t.Name)
		scale := c.Adapter.Config.Scale(t.Name)
		if place[t.Node.Graph()] == nil {
			place[t.Node.Graph()] = map[*graph.Node][]*graph.Node{}
		}
		if err := addBranch(t, l, scale, c, place[t.Node.Graph()]); err != nil {
			return fmt.Errorf("node %q (%s): %w", t.Node.Name, t.Node.Op, err)
		}
	}
	for g, groups := range place {
		g.PlaceAfterEach(groups)
	}
	c.Injected = targets
	return nil
}

func targetList(ts []*Target) string {
	if len(ts) == 0 {
		return "none"
	}
	var names []string
	for i, t := range ts {
		if i == 12 {
			names = append(names, fmt.Sprintf("... %d more", len(ts)-i))
			break
		}
		names = append(names, t.Name)
	}
	return strings.Join(names, ", ")
}

// newAdapter creates a PEFT-layout adapter for the targets. Each layer has
// its own random stream derived from the seed and its name, so adding or
// removing a target leaves the others' values unchanged.
func newAdapter(ts []*Target, cfg adapter.Config, init Init) (*adapter.Adapter, error) {
	a := &adapter.Adapter{Config: cfg}
	a.Config.TargetModules = nil
	for _, t := range ts {
		r := cfg.Rank(t.Name)
		if r <= 0 {
			return nil, fmt.Errorf("target %q: rank %d must be positive", t.Name, r)
		}
		// r above min(in, out) adds parameters without adding rank; PEFT
		// allows it and so do we (a model's small heads get the global r).
		l := adapter.Layer{Name: t.Name, Rank: r, In: int(t.In), Out: int(t.Out),
			A: make([]float32, r*int(t.In)), B: make([]float32, int(t.Out)*r)}
		h := fnv.New64a()
		h.Write([]byte(t.Name))
		rng := rand.New(rand.NewPCG(init.Seed, h.Sum64()))
		switch init.Method {
		case "", "kaiming":
			bound := 1 / math.Sqrt(float64(t.In))
			for i := range l.A {
				l.A[i] = float32((2*rng.Float64() - 1) * bound)
			}
		case "gaussian":
			std := 1 / float64(r)
			for i := range l.A {
				l.A[i] = float32(rng.NormFloat64() * std)
			}
		case "zeros":
		default:
			return nil, fmt.Errorf("unknown init %q (want kaiming, gaussian or zeros)", init.Method)
		}
		a.Layers = append(a.Layers, l)
		a.Config.TargetModules = append(a.Config.TargetModules, t.Name)
	}
	a.SortLayers()
	return a, nil
}

// addBranch inserts the LoRA branch for one target.
// Its nodes are appended to the graph and recorded in place, to be moved
// right after the target by the caller.
func addBranch(t *Target, l *adapter.Layer, scale float64, c *Options, place map[*graph.Node][]*graph.Node) error {
	asInputs, fp32 := c.AdapterInputs, c.BranchFP32
	g := t.Node.Graph()
	x := t.Node.Input(0)
	y := t.Node.Output(0)
	if y == nil {
		return errors.New("node has no output")
	}
	dt := t.DType // the branch's element type
	if fp32 {
		dt = graph.Float
	}
	ps := branch.Params(*l) // A [in, r], B [r, out]
	if asInputs && c.GenaiNames {
		// The deployment's contract: B carries the scale, the graph
		// multiplies by 1 (branch.GenaiAName).
		ps[0].Name, ps[1].Name = branch.GenaiAName(t.Name), branch.GenaiBName(t.Name)
		for i := range ps[1].Data {
			ps[1].Data[i] *= float32(scale)
		}
		scale = 1
	}
	b := &graph.Builder{G: g, Prefix: "lora/" + t.Name, Metadata: append(keepScopes(t.Node), graph.KV{Key: branch.Key, Value: t.Name})}
	// Adapter tensors live in the main graph so that they can be graph
	// inputs and so that one place holds them all; subgraphs see them.
	root := g.Root()
	// The names are the contract with train, fuse and ORT's adapters: a
	// value already holding one would push the branch to "<name>_1", and
	// every later command would look for the wrong tensor.
	for _, name := range []string{ps[0].Name, ps[1].Name, branch.ScaleName(t.Name)} {
		if root.Lookup(name) != nil {
			return fmt.Errorf("the model already has a value named %q, the name the branch of target %q needs; rename it in the model, or exclude the target", name, t.Name)
		}
	}
	param := func(name string, dims []int64, vals []float32) (*graph.Value, error) {
		tensor, err := graph.NewFloatTensor(name, dt, dims, vals)
		if err != nil {
			return nil, err
		}
		v := root.AddInitializer(tensor)
		if asInputs {
			// An input with an initializer is an optional input: runs
			// that feed nothing use this adapter, ONNX Runtime's active
			// adapters (or explicit feeds) override it per run.
			shape := make([]graph.Dim, len(dims))
			for i, d := range dims {
				shape[i] = graph.Dim{Value: d}
			}
			v.Type = &graph.TensorType{DType: dt, Shape: shape}
			root.Inputs = append(root.Inputs, v)
		}
		return v, nil
	}
	av, err := param(ps[0].Name, ps[0].Shape, ps[0].Data)
	if err != nil {
		return err
	}
	bv, err := param(ps[1].Name, ps[1].Shape, ps[1].Data)
	if err != nil {
		return err
	}
	st, err := graph.NewFloatTensor(branch.ScaleName(t.Name), dt, nil, []float32{float32(scale)})
	if err != nil {
		return err
	}
	sv := root.AddInitializer(st)

	readers := y.Uses()
	wasOutput := y.IsGraphOutput()
	orig := y.Name
	if err := y.Rename(g.UniqueName(orig + ".base")); err != nil {
		return err
	}
	var branch []*graph.Value
	xin := x
	if cast := fp32 && t.DType != dt; cast {
		xin = b.Op("Cast", t.Name+".lora_x32", []*graph.Value{x}, graph.AttrI("to", int64(graph.Float)))
		branch = append(branch, xin)
	}
	xa := b.Op("MatMul", t.Name+".lora_xA", []*graph.Value{xin, av})
	xab := b.Op("MatMul", t.Name+".lora_xAB", []*graph.Value{xa, bv})
	scaled := b.Op("Mul", t.Name+".lora_delta", []*graph.Value{xab, sv})
	branch = append(branch, xa, xab, scaled)
	if dt != t.DType {
		scaled = b.Op("Cast", t.Name+".lora_delta_"+t.DType.String(), []*graph.Value{scaled}, graph.AttrI("to", int64(t.DType)))
		branch = append(branch, scaled)
	}
	sum := b.Op("Add", orig, []*graph.Value{y, scaled})
	branch = append(branch, sum)
	// The sum takes over the value's identity: name, type, doc, metadata.
	if y.Type != nil {
		tt := *y.Type
		sum.Type = &tt
	}
	sum.DocString, sum.Metadata = y.DocString, y.Metadata
	y.DocString, y.Metadata = "", nil
	for _, u := range readers {
		u.Node.SetInput(u.Index, sum)
	}
	// x is ready before the target, so the branch can follow it directly.
	var nodes []*graph.Node
	for _, v := range branch {
		p, _ := v.Producer()
		nodes = append(nodes, p)
	}
	place[t.Node] = append(place[t.Node], nodes...)
	if wasOutput {
		for i, o := range g.Outputs {
			if o == y {
				g.Outputs[i] = sum
			}
		}
	}
	return nil
}

// keepScopes copies the exporter's module-path metadata of the target onto
// the branch, so tools that group nodes by module see the branch inside it.
func keepScopes(n *graph.Node) []graph.KV {
	var kvs []graph.KV
	for _, kv := range n.Metadata {
		if strings.HasPrefix(kv.Key, "pkg.torch.onnx.") {
			kvs = append(kvs, kv)
		}
	}
	return kvs
}
