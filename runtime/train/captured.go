package train

// Captured steps: with static shapes on CUDA, each bucket's step graph
// runs as a runtime.CapturedStep (recorded once as a CUDA graph, replayed
// each step), its params and state in the step's own buffers. The step
// that holds the current state is r.holder; moving to another bucket
// copies the state to the host and into the new step's buffers.

import (
	"github.com/loracc/loracc/runtime"
	"github.com/loracc/loracc/trainio"
)

// capturedRunner is what the loop needs of a runtime.CapturedStep.
type capturedRunner interface {
	Load(vals map[string]runtime.Tensor) error
	Run(feeds map[string]runtime.Tensor) (map[string]runtime.Tensor, error)
	Commit() error
	State() (map[string]runtime.Tensor, error)
}

// stepSpec says how a captured step graph moves data: batch, labels, lr
// and step are fed; params and state are carried to their updates; the
// rest is fetched.
func stepSpec(io trainio.Graph) runtime.StepSpec {
	spec := runtime.StepSpec{Carry: map[string]string{}}
	carried := map[string]bool{}
	for _, o := range io.Outputs {
		switch o.Role {
		case trainio.RoleUpdatedParam, trainio.RoleUpdatedState:
			spec.Carry[o.Replaces] = o.Name
			carried[o.Replaces] = true
		default:
			spec.Fetch = append(spec.Fetch, o.Name)
		}
	}
	for _, in := range io.Inputs {
		if !carried[in.Name] {
			spec.Feed = append(spec.Feed, in.Name)
		}
	}
	return spec
}

// runCaptured runs a captured step graph, first moving the current
// params and state into its buffers when another step (or the host)
// holds them.
func (r *runner) runCaptured(g *stepGraph, feeds map[string]runtime.Tensor) (map[string]runtime.Tensor, error) {
	if r.holder != g.captured {
		if err := r.syncHost(); err != nil {
			return nil, err
		}
		carried := map[string]runtime.Tensor{}
		for _, in := range g.io.Inputs {
			switch in.Role {
			case trainio.RoleParam:
				carried[in.Name] = r.params[in.Name]
			case trainio.RoleState:
				carried[in.Name] = r.state[in.Name]
			}
		}
		if err := g.captured.Load(carried); err != nil {
			return nil, err
		}
		r.holder = g.captured
	}
	fed := map[string]runtime.Tensor{}
	for k, v := range feeds {
		if !isCarried(g.io, k) {
			fed[k] = v
		}
	}
	return g.captured.Run(fed)
}

func isCarried(io trainio.Graph, name string) bool {
	for _, in := range io.Inputs {
		if in.Name == name {
			return in.Role == trainio.RoleParam || in.Role == trainio.RoleState
		}
	}
	return false
}
