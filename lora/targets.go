package lora

import (
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/loracc/loracc/branch"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/quant"
)

// Target is a MatMul or Gemm whose weight is a constant 2-D float tensor:
// the place a LoRA branch can go.
type Target struct {
	// Name is the module path the exporter recorded, else the weight's
	// name without ".weight"; unique within the model.
	Name   string
	Node   *graph.Node
	Weight *graph.Value  // the B input: an initializer or a Constant output
	Tensor *graph.Tensor // the weight's data
	In     int64         // input features
	Out    int64         // output features
	DType  graph.DataType
	// TransB is Gemm's transB: the weight is stored [out, in].
	TransB bool
	// Quant is set when the weight is DequantizeLinear of constants;
	// Tensor is then nil.
	Quant *quant.Quantized
	// NBits is set for a com.microsoft MatMulNBits node; Tensor is nil.
	NBits *quant.NBits
}

// Skip is a MatMul or Gemm that is not a target, with the reason.
type Skip struct {
	Node   string `json:"node"`
	Op     string `json:"op"`
	Reason string `json:"reason"`
}

// torchScopesKey is where torch.onnx's dynamo exporter records the module
// path of each node.
const torchScopesKey = "pkg.torch.onnx.name_scopes"

// FindTargets lists every target of the model (subgraphs included, in a
// deterministic walk order) and every MatMul/Gemm that is not one.
func FindTargets(m *graph.Model) ([]*Target, []Skip) {
	var targets []*Target
	var skips []Skip
	wrapper := exportWrapper(m.Graph)
	m.Graph.Walk(func(n *graph.Node) {
		if n.Domain == "com.microsoft" && n.Op == "MatMulNBits" {
			q, reason := quant.FromNBits(n)
			if q == nil {
				skips = append(skips, Skip{Node: n.Name, Op: n.Op, Reason: reason})
				return
			}
			name := modulePath(n.MetadataValue(torchScopesKey))
			if name == "" {
				name = weightModule(n.Input(1).Name)
			}
			targets = append(targets, &Target{Name: name, Node: n, Weight: n.Input(1), DType: q.Scales.DType, In: q.K, Out: q.N, NBits: q})
			return
		}
		if n.Domain != "" || (n.Op != "MatMul" && n.Op != "Gemm") {
			return
		}
		if owner := n.MetadataValue(branch.Key); owner != "" {
			skips = append(skips, Skip{Node: n.Name, Op: n.Op, Reason: fmt.Sprintf("part of the LoRA branch of %q", owner)})
			return
		}
		t, reason := asTarget(n)
		if t == nil {
			skips = append(skips, Skip{Node: n.Name, Op: n.Op, Reason: reason})
			return
		}
		t.Name = targetName(n, t.Weight, wrapper)
		targets = append(targets, t)
	})
	uniqueNames(targets)
	return targets, skips
}

func asTarget(n *graph.Node) (*Target, string) {
	if n.NumInputs() < 2 || n.Input(0) == nil || n.Input(1) == nil {
		return nil, "missing an input"
	}
	w := n.Input(1)
	t := graph.ConstTensor(w)
	if t == nil && n.Op == "MatMul" {
		q, reason := quant.FromDequantize(w)
		if q != nil {
			return &Target{Node: n, Weight: w, DType: q.Scale.DType, In: q.Data.Dims[0], Out: q.Data.Dims[1], Quant: q}, ""
		}
		if reason != "" {
			return nil, reason
		}
	}
	if t == nil {
		if graph.ConstTensor(n.Input(0)) != nil {
			return nil, "constant is the first input (x·W expected, W·x found)"
		}
		if p, _ := w.Producer(); p != nil && p.Op != "Constant" {
			return nil, fmt.Sprintf("weight is not a constant: computed by %s node %q (activation × activation)", p.Op, p.Name)
		}
		return nil, "weight is not a constant (activation × activation)"
	}
	if len(t.Dims) != 2 {
		return nil, fmt.Sprintf("constant weight %q is %d-D, not 2-D", w.Name, len(t.Dims))
	}
	if t.DType != graph.Float && t.DType != graph.Float16 && t.DType != graph.BFloat16 {
		return nil, fmt.Sprintf("weight %q is %s, not fp32/fp16/bf16", w.Name, t.DType)
	}
	tg := &Target{Node: n, Weight: w, Tensor: t, DType: t.DType, In: t.Dims[0], Out: t.Dims[1]}
	if n.Op == "Gemm" {
		if n.AttrInt("transA", 0) != 0 {
			return nil, "Gemm with transA=1 is not supported"
		}
		if n.AttrInt("transB", 0) != 0 {
			tg.TransB = true
			tg.In, tg.Out = t.Dims[1], t.Dims[0]
		}
	}
	return tg, ""
}

// targetName picks the module path from the exporter's metadata, else the
// weight's name.
func targetName(n *graph.Node, w *graph.Value, wrapper string) string {
	if path := modulePath(n.MetadataValue(torchScopesKey)); path != "" {
		if wrapper != "" && strings.HasPrefix(path, wrapper+".") {
			path = strings.TrimPrefix(path, wrapper+".")
		}
		return path
	}
	if t := n.Input(1); t != nil {
		if q, _ := quant.FromDequantize(t); q != nil {
			return quantName(q.DQ.Input(0))
		}
	}
	if strings.HasPrefix(w.Name, "onnx::") { // the TorchScript exporter's anonymous weight name
		if path := torchScriptPath(n.Name); path != "" {
			if wrapper != "" && strings.HasPrefix(path, wrapper+".") {
				path = strings.TrimPrefix(path, wrapper+".")
			}
			return path
		}
	}
	name := weightModule(w.Name)
	if wrapper != "" && strings.HasPrefix(name, wrapper+".") { // a parameter named through the wrapper module
		name = strings.TrimPrefix(name, wrapper+".")
	}
	return name
}

// weightModule is the module a weight tensor's name belongs to: the name
// without ".weight" and what follows it in quantized names ("_Q4",
// "_Q4G32", "_quantized"), and without the op the onnxruntime-genai
// builder puts before it ("model.layers.0.attn.q_proj.MatMul.weight_Q4" →
// "model.layers.0.attn.q_proj"), so targets are named as the modules
// adapters are trained for.
func weightModule(name string) string {
	name = strings.TrimSuffix(name, "_quantized")
	if i := strings.LastIndex(name, ".weight"); i > 0 {
		rest := name[i+len(".weight"):]
		if rest == "" || strings.HasPrefix(rest, "_Q") {
			name = name[:i]
		}
	}
	return strings.TrimSuffix(name, ".MatMul")
}

// torchScriptPath reads the module path from a node name as torch.onnx's
// TorchScript exporter writes it, the scopes joined by "/" and the op
// last ("/m/model/layers.0/self_attn/q_proj/MatMul" →
// "m.model.layers.0.self_attn.q_proj"); "" for other names.
func torchScriptPath(name string) string {
	if !strings.HasPrefix(name, "/") {
		return ""
	}
	parts := strings.Split(name[1:], "/")
	if len(parts) < 2 || slices.Contains(parts, "") {
		return ""
	}
	return strings.Join(parts[:len(parts)-1], ".")
}

// modulePath reads a name_scopes list such as
// "[”, 'm', 'm.model', 'm.model.layers.0.q_proj', 'linear']" and returns
// the deepest entry of the chain in which each entry extends the one
// before with ".": here "m.model.layers.0.q_proj" (the trailing 'linear'
// names the function called, not a module). Lists that do not start at
// the root module (”) are not module stacks (the exporter uses them for
// shape arithmetic outside any module) and give "".
func modulePath(scopes string) string {
	parts := parseScopes(scopes)
	if len(parts) == 0 || parts[0] != "" {
		return ""
	}
	path := ""
	for _, p := range parts[1:] {
		if p == "" {
			continue
		}
		if path == "" || strings.HasPrefix(p, path+".") {
			path = p
			continue
		}
		break
	}
	return path
}

// parseScopes splits a Python list-of-strings literal.
func parseScopes(s string) []string {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, "[") || !strings.HasSuffix(s, "]") {
		return nil
	}
	var out []string
	for _, p := range strings.Split(s[1:len(s)-1], ",") {
		p = strings.TrimSpace(p)
		p = strings.Trim(p, `'"`)
		out = append(out, p)
	}
	return out
}

// exportWrapper detects the wrapper module that export scripts put around
// a model (EXPORTERS.md: "the leading scopes include the wrapper's
// attribute name"): when every node that records a module path has the
// same first path element, that element names the wrapper, not a module
// of the model, and is dropped from target names so they match the
// model's own (PEFT's) module names.
func exportWrapper(g *graph.Graph) string {
	first := ""
	same := true
	var count int
	g.Walk(func(n *graph.Node) {
		path := modulePath(n.MetadataValue(torchScopesKey))
		if path == "" {
			path = torchScriptPath(n.Name)
		}
		if path == "" || !same {
			return
		}
		head, _, _ := strings.Cut(path, ".")
		count++
		if first == "" {
			first = head
		} else if head != first {
			same = false
		}
	})
	if !same || count == 0 {
		return ""
	}
	return first
}

// uniqueNames keeps the first target of a name and gives later ones the
// smallest free numeric suffix, in walk order, so names are stable.
func uniqueNames(ts []*Target) {
	used := map[string]bool{}
	for _, t := range ts {
		used[t.Name] = true
	}
	first := map[string]bool{}
	next := map[string]int{} // per base, the suffix to try first: lower ones are all taken (used only grows)
	for _, t := range ts {
		if !first[t.Name] {
			first[t.Name] = true
			continue
		}
		base := t.Name
		i := max(next[base], 1)
		name := fmt.Sprintf("%s_%d", base, i)
		for used[name] {
			i++
			name = fmt.Sprintf("%s_%d", base, i)
		}
		next[base] = i + 1
		used[name] = true
		t.Name = name
	}
}

// Selector picks targets by Go regular expressions searched in the target
// name and the node name.
type Selector struct {
	Include []*regexp.Regexp
	Exclude []*regexp.Regexp
}

// Match reports whether a target passes the selector.
func (s Selector) Match(t *Target) bool {
	hit := func(res []*regexp.Regexp) bool {
		for _, re := range res {
			if re.MatchString(t.Name) || re.MatchString(t.Node.Name) {
				return true
			}
		}
		return false
	}
	if len(s.Include) > 0 && !hit(s.Include) {
		return false
	}
	return !hit(s.Exclude)
}

// Select returns the targets that pass, and the others as skips.
func (s Selector) Select(ts []*Target) ([]*Target, []Skip) {
	var in []*Target
	var out []Skip
	for _, t := range ts {
		if s.Match(t) {
			in = append(in, t)
		} else {
			out = append(out, Skip{Node: t.Node.Name, Op: t.Node.Op, Reason: fmt.Sprintf("target %q not selected by --target/--exclude", t.Name)})
		}
	}
	return in, out
}

// ParamCounts returns the number of elements in every float tensor
// constant of the model (initializers and Constant-node values, subgraphs
// included; integer tensors excluded).
func ParamCounts(m *graph.Model) int64 {
	var total int64
	count := func(t *graph.Tensor) {
		if t == nil || !t.DType.IsFloat() {
			return
		}
		if n, err := t.NumElements(); err == nil {
			total += n
		}
	}
	var visit func(g *graph.Graph)
	visit = func(g *graph.Graph) {
		for _, v := range g.Initializers {
			count(v.Const)
		}
		for _, n := range g.Nodes {
			if n.Op == "Constant" && n.Domain == "" {
				if a := n.Attr("value"); a != nil {
					count(a.T)
				}
			}
			for _, sg := range n.Subgraphs() {
				visit(sg)
			}
		}
	}
	visit(m.Graph)
	return total
}

// SortByName orders targets by name, the order adapters list layers in.
func SortByName(ts []*Target) {
	sort.SliceStable(ts, func(i, j int) bool { return ts[i].Name < ts[j].Name })
}
