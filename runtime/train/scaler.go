package train

import (
	"fmt"
	"math"

	"github.com/loracc/loracc/trainio"
)

// Dynamic loss scaling for steps compiled with --compute-dtype fp16 (an
// input of role loss_scale): PyTorch's GradScaler rule. The scale starts
// at 2¹⁶; a step whose gradients overflow (non-finite gradient norm or
// update, with a finite loss) is skipped — its batch consumed, nothing
// applied — and the scale halved; after scalerGrowth clean steps in a row
// it doubles. AdamW's step number counts applied steps only, as
// torch.optim's does when GradScaler skips optimizer.step.
const (
	scalerInit   = 65536.0
	scalerGrowth = 2000
	// scalerFloor ends a run whose gradients overflow at any scale: below
	// it the scaled loss no longer keeps small gradients representable,
	// and the step is not going to become finite.
	scalerFloor = 1.0
)

// scaler is the run's loss-scale state; its fields live in Progress so a
// resumed run continues with the same scale and step count.
type scaler struct{ p *Progress }

// newScaler returns the scaler of a graph that takes a loss scale, else
// nil. The scale is fed from p.LossScale (scalerInit until set).
func newScaler(g trainio.Graph, p *Progress) *scaler {
	if len(g.ByRole(trainio.RoleLossScale)) == 0 {
		return nil
	}
	return &scaler{p: p}
}

// overflowed records a skipped step; it fails once the scale is below
// scalerFloor.
func (s *scaler) overflowed(step int) error {
	s.p.Skipped++
	s.p.CleanSteps = 0
	s.p.LossScale /= 2
	if s.p.LossScale < scalerFloor {
		return fmt.Errorf("step %d: the float16 gradients overflow at every loss scale (now %g, %d steps skipped): the step is %w; train with --compute-dtype fp32 or bf16, or a smaller learning rate", step, s.p.LossScale, s.p.Skipped, ErrNonFinite)
	}
	return nil
}

// clean records an applied step, growing the scale after scalerGrowth.
func (s *scaler) clean() {
	s.p.CleanSteps++
	if s.p.CleanSteps >= scalerGrowth && s.p.LossScale*2 <= math.MaxFloat32 {
		s.p.LossScale *= 2
		s.p.CleanSteps = 0
	}
}

// checkScaler validates the loss-scale fields of a checkpoint's progress.
func checkScaler(p Progress) error {
	if p.Skipped < 0 || p.Skipped > p.Step || p.CleanSteps < 0 || p.LossScale < 0 || math.IsNaN(p.LossScale) || math.IsInf(p.LossScale, 0) {
		return fmt.Errorf("loss scale %g, %d skipped and %d clean steps do not fit step %d", p.LossScale, p.Skipped, p.CleanSteps, p.Step)
	}
	return nil
}
