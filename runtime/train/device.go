package train

// Device-resident state: with a bound step graph (runtime.BoundSession),
// the adapter params and optimizer state stay in the session's device
// memory from step to step. A step feeds the previous step's updated
// values straight back and brings only the loss and the gradient norm to
// the host; a non-finite step's values are dropped, so the kept ones are
// the last good step's. The host copies in runner.params and runner.state
// are brought up to date (syncHost) only where they are read: checkpoints,
// evaluation and the end of the run.

import (
	"fmt"

	"github.com/loracc/loracc/runtime"
	"github.com/loracc/loracc/trainio"
)

// boundRunner is what the loop needs of a runtime.BoundSession; tests
// put a fake behind it.
type boundRunner interface {
	Run(host map[string]runtime.Tensor, dev map[string]*runtime.DeviceValue, toHost, toDevice []string) (map[string]runtime.Tensor, map[string]*runtime.DeviceValue, error)
	Fetch(vals map[string]*runtime.DeviceValue) (map[string]runtime.Tensor, error)
}

// runBound runs a bound step graph: params and state from device values
// where the loop has them, everything else from feeds; updated params and
// state stay on the device (returned, not yet taken), the rest comes back.
func (r *runner) runBound(g *stepGraph, feeds map[string]runtime.Tensor) (map[string]runtime.Tensor, map[string]*runtime.DeviceValue, error) {
	host := map[string]runtime.Tensor{}
	dev := map[string]*runtime.DeviceValue{}
	for _, in := range g.io.Inputs {
		if d := r.dev[in.Name]; d != nil && (in.Role == trainio.RoleParam || in.Role == trainio.RoleState) {
			dev[in.Name] = d
			continue
		}
		host[in.Name] = feeds[in.Name]
	}
	var toHost, toDevice []string
	for _, o := range g.io.Outputs {
		switch o.Role {
		case trainio.RoleUpdatedParam, trainio.RoleUpdatedState:
			toDevice = append(toDevice, o.Name)
		default:
			toHost = append(toHost, o.Name)
		}
	}
	return g.bound.Run(host, dev, toHost, toDevice)
}

// applyBound takes a finite step's device values as the current params
// and state, releasing the ones they replace.
func (r *runner) applyBound(g *stepGraph, out map[string]*runtime.DeviceValue) {
	if r.dev == nil {
		r.dev = map[string]*runtime.DeviceValue{}
	}
	for _, o := range g.io.Outputs {
		if o.Role != trainio.RoleUpdatedParam && o.Role != trainio.RoleUpdatedState {
			continue
		}
		if old := r.dev[o.Replaces]; old != nil {
			old.Close()
		}
		r.dev[o.Replaces] = out[o.Name]
	}
	r.fetcher = g.bound
	r.stale = true
}

// syncHost copies the device-resident params and state to the host when
// a step changed them since the last copy.
func (r *runner) syncHost() error {
	if !r.stale {
		return nil
	}
	var vals map[string]runtime.Tensor
	var err error
	if r.holder != nil {
		vals, err = r.holder.State()
	} else {
		vals, err = r.fetcher.Fetch(r.dev)
	}
	if err != nil {
		return fmt.Errorf("copying the adapter and optimizer state to the host: %w", err)
	}
	for name, t := range vals {
		if _, ok := r.params[name]; ok {
			r.params[name] = t
		} else {
			r.state[name] = t
		}
	}
	r.stale = false
	return nil
}

// releaseDevice frees the device values at the end of the run.
func (r *runner) releaseDevice() {
	for k, d := range r.dev {
		d.Close()
		delete(r.dev, k)
	}
}
