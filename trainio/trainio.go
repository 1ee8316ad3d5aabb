// Package trainio is the contract between the training-graph compiler
// (rewrite) and the code that runs it (runtime): the schema of train.json,
// which names every input and output of train.onnx and eval.onnx with its
// role. It imports nothing of ours, so both sides can depend on it
// without depending on each other.
package trainio

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
)

// Roles of graph inputs and outputs.
const (
	RoleBatch        = "batch"         // a model input, fed from the data
	RoleLabel        = "label"         // the labels the loss reads
	RoleParam        = "param"         // an adapter tensor (lora_A, lora_B)
	RoleState        = "state"         // optimizer state (AdamW moments, SGD momentum)
	RoleStep         = "step"          // the 1-based step number, float32 scalar
	RoleLR           = "lr"            // the learning rate, float32 scalar
	RoleLoss         = "loss"          // the scalar loss
	RoleGradNorm     = "grad_norm"     // global L2 norm of the gradients, before clipping
	RoleUpdatedParam = "updated_param" // a param after the step; Replaces names it
	RoleUpdatedState = "updated_state" // a state after the step; Replaces names it
	RoleGrad         = "grad"          // a gradient, with export-train --emit-grads
	RoleFinite       = "finite"        // float32 1 when every updated param and state value is finite, else 0
	RoleLossScale    = "loss_scale"    // float32 scalar the loss is multiplied by before the backward (fp16 dynamic loss scaling)
	// The data-parallel step's graphs (File.Grad, File.Optim):
	RoleLossSum = "loss_sum" // the loss summed over its counted terms, float32 scalar
	RoleCount   = "count"    // how many terms a loss sum counts (tokens, examples or elements), int64 scalar
)

// Entry describes one input or output of a compiled graph.
type Entry struct {
	Name     string `json:"name"`
	DType    string `json:"dtype"`
	Shape    []Dim  `json:"shape"` // nil: rank unknown
	Role     string `json:"role"`
	Replaces string `json:"replaces,omitempty"`
	// Parts, on a state vector, names the params whose state it holds,
	// concatenated in this order, each flattened row-major.
	Parts []string `json:"parts,omitempty"`
}

// Graph lists one compiled graph's inputs and outputs.
type Graph struct {
	Inputs  []Entry `json:"inputs"`
	Outputs []Entry `json:"outputs"`
}

// File is train.json.
type File struct {
	Train Graph `json:"train"`
	Eval  Graph `json:"eval"`
	// Multi, with StepsPerRun K > 1, is train_multi.onnx: K steps per run,
	// each batch and label input holding K equal micro-batches stacked
	// along the batch axis, lr and step of shape [K], loss and grad_norm
	// of shape [K].
	Multi       *Graph `json:"train_multi,omitempty"`
	StepsPerRun int    `json:"steps_per_run,omitempty"`
	// Grad and Optim, when compiled, are the step split where the
	// gradients are, for data-parallel training: grad.onnx outputs a
	// shard's loss sum, count and gradients (role grad, of the sum);
	// optim.onnx takes the sums over every rank (inputs of roles grad
	// and count) with params, state, lr and step, and outputs what
	// train.onnx outputs but the loss.
	Grad  *Graph `json:"grad,omitempty"`
	Optim *Graph `json:"optim,omitempty"`
}

// ByRole returns the entries with a role.
func (g Graph) ByRole(role string) []Entry {
	var out []Entry
	for _, e := range append(append([]Entry(nil), g.Inputs...), g.Outputs...) {
		if e.Role == role {
			out = append(out, e)
		}
	}
	return out
}

// Dim is one dim of a shape in train.json: a size, or a symbolic dim
// ("batch", "seq", "?" for an unknown one). JSON holds it as a number or a
// string, so readers in other languages see plain shapes.
type Dim struct {
	Size int64  // the size, when Name is empty
	Name string // the symbolic dim's name
}

// Symbolic reports whether the dim is a name rather than a size.
func (d Dim) Symbolic() bool { return d.Name != "" }

// String is the name or the size.
func (d Dim) String() string {
	if d.Symbolic() {
		return d.Name
	}
	return strconv.FormatInt(d.Size, 10)
}

// MarshalJSON writes a size as a number and a name as a string.
func (d Dim) MarshalJSON() ([]byte, error) {
	if d.Symbolic() {
		return json.Marshal(d.Name)
	}
	return strconv.AppendInt(nil, d.Size, 10), nil
}

// UnmarshalJSON reads a non-negative integer or a non-empty string, so a
// bad train.json fails when read, not in the middle of a run.
func (d *Dim) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var name string
		if err := json.Unmarshal(b, &name); err != nil {
			return err
		}
		if name == "" {
			return fmt.Errorf("trainio: a dim name is empty")
		}
		*d = Dim{Name: name}
		return nil
	}
	n, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("trainio: dim %s is neither a size nor a name", b)
	}
	*d = Dim{Size: n}
	return nil
}
