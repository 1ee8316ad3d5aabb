package dataset

import (
	"crypto/sha256"
	"fmt"
	"math"
	"strings"

	"github.com/loracc/loracc/trainio"
)

// Spec says what the training graph reads from the data. It comes from
// train.json and the export-train options, so the data is checked against
// the graph that will consume it, not against a second description.
type Spec struct {
	// Inputs are the train graph's inputs with roles batch and label (or
	// no role). Others (param, state, step, lr) are skipped, so
	// train.json's whole input list may be passed.
	Inputs []trainio.Entry
	// Loss is "lm", "ce" or "mse". lm lets sequence lengths differ between
	// examples and pads batches; ce and mse take examples as they are.
	Loss string
	// Labels names the labels input; "" picks the one entry with role label.
	Labels string
	// PadID pads the input ids of lm batches.
	PadID int64
	// IgnoreIndex pads lm labels; lm and ce labels equal to it are not
	// counted by Tokens (nor by the loss).
	IgnoreIndex int64
	// MaskInput names an attention-mask input the model takes, "" if none.
	// A line may give it; where it does not, it is built: 1 on the input
	// ids' elements, 0 on padding.
	MaskInput string
	// Ranges bounds integer inputs by the model (ModelRanges): ids that
	// index an embedding must be its rows. Classes bounds lm and ce labels
	// by the logits' last dim; a label equal to IgnoreIndex is exempt, and
	// other negative labels are refused even where Classes is unknown.
	// Values outside [0, Size) are refused at load with file:line, as
	// PyTorch refuses them: ORT's Gather would take -1 as the last row, and
	// an id past the table fails inside ORT naming a node, not the data.
	Ranges  map[string]Range
	Classes Range
	// MaxLength is the longest lm sequence, 0 for no limit: text records
	// are truncated to it (by default to the tokenizer's model_max_length,
	// at most DefaultMaxLength), token data longer than it is refused,
	// since its ids were chosen by hand.
	MaxLength int
	// Text says how files of text records are tokenised.
	Text TextOptions
}

// Range is the half-open interval [0, Size) a field's values must lie in;
// Of says what bounds it, for messages ("the 50257 rows of "wte.weight"").
// Size 0 is no bound.
type Range struct {
	Size int64
	Of   string
}

// kind is how a dtype is stored and checked. int32 and bool are kept in the
// int64 store: one integer path is simpler than four, and the data of a
// LoRA run is small next to the model.
type kind uint8

const (
	kInt64 kind = iota
	kInt32
	kBool
	kFloat32
)

func kindOf(dtype string) (kind, bool) {
	switch dtype {
	case "int64":
		return kInt64, true
	case "int32":
		return kInt32, true
	case "bool":
		return kBool, true
	case "float32", "float16", "bfloat16", "float64":
		// Parsed as float32 values; Batch encodes other float types.
		return kFloat32, true
	}
	return 0, false
}

// size is the element size in bytes in a Tensor's Data.
func (k kind) size() int {
	switch k {
	case kInt64:
		return 8
	case kInt32, kFloat32:
		return 4
	}
	return 1
}

// fits reports whether an integer is a value of the kind.
func (k kind) fits(v int64) bool {
	switch k {
	case kInt32:
		return v >= math.MinInt32 && v <= math.MaxInt32
	case kBool:
		return v == 0 || v == 1
	}
	return true
}

// dim is one dimension of an entry: a fixed size, or symbolic (size -1)
// with the graph's name for it ("?" or "" when unnamed).
type dim struct {
	size int64
	name string
}

func (d dim) String() string {
	if d.size >= 0 {
		return fmt.Sprint(d.size)
	}
	if d.name == "" {
		return "?"
	}
	return d.name
}

// field roles that change how a field is padded or built.
const (
	roleOther = iota
	roleIDs
	roleLabels
	roleMask
)

// field is one input of the graph and, after Load, its values for every
// example: the elements of all examples back to back in ints or floats,
// with each example's offset and shape.
type field struct {
	i     int // index in Set.fields
	name  string
	dtype string
	kind  kind
	batch dim   // the entry's leading dim
	dims  []dim // the entry's dims without the batch dim
	seq   bool  // lm: dims[0] is symbolic, so examples differ in length and batches are padded
	role  int
	pad   int64 // padding value for seq fields
	limit Range // the bound on its values (Spec.Ranges, Spec.Classes)

	ints   []int64
	floats []float32
	start  []int   // per example: offset of its first element; -1 when absent (mask only)
	shapes []int64 // per example: len(dims) sizes, back to back
}

// describe is the "int64 of rank 1 (shape [seq])" part of error messages.
func (f *field) describe() string {
	if len(f.dims) == 0 {
		return f.dtype + " of rank 0 (a single number)"
	}
	return fmt.Sprintf("%s of rank %d (shape %s)", f.dtype, len(f.dims), dimList(f.dims))
}

func dimList(ds []dim) string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = d.String()
	}
	return "[" + strings.Join(s, ", ") + "]"
}

func intList(ds []int64) string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = fmt.Sprint(d)
	}
	return "[" + strings.Join(s, ", ") + "]"
}

// entryDim is one shape element of train.json as the data sees it.
func entryDim(d trainio.Dim) (dim, error) {
	switch {
	case d.Symbolic():
		return dim{size: -1, name: d.Name}, nil
	case d.Size < 0:
		return dim{}, fmt.Errorf("dim %d is negative", d.Size)
	}
	return dim{size: d.Size}, nil
}

// compile checks a Spec and builds the empty Set it describes. Errors
// here are about the graph or the options, not the data.
func compile(spec Spec) (*Set, error) {
	switch spec.Loss {
	case "lm", "ce", "mse":
	default:
		return nil, fmt.Errorf("unknown loss %q (want lm, ce or mse)", spec.Loss)
	}
	s := &Set{spec: spec, byName: map[string]*field{}, sum: sha256.New()}
	s.spec.Inputs = nil
	for _, e := range spec.Inputs {
		switch e.Role {
		case trainio.RoleBatch, trainio.RoleLabel, "":
		default:
			continue // params, optimizer state, step, lr: not data
		}
		s.spec.Inputs = append(s.spec.Inputs, e)
		k, ok := kindOf(e.DType)
		if !ok {
			return nil, fmt.Errorf("input %q: dtype %q is not supported in data (int64, int32, bool, float32, float16, bfloat16, float64)", e.Name, e.DType)
		}
		if _, dup := s.byName[e.Name]; dup {
			return nil, fmt.Errorf("input %q is listed twice", e.Name)
		}
		if e.Shape == nil {
			return nil, fmt.Errorf("input %q has no declared shape; the data needs its rank", e.Name)
		}
		if len(e.Shape) == 0 {
			return nil, fmt.Errorf("input %q is a scalar; data inputs need a leading batch dim", e.Name)
		}
		var ds []dim
		for i, v := range e.Shape {
			d, err := entryDim(v)
			if err != nil {
				return nil, fmt.Errorf("input %q: shape %v: %w", e.Name, e.Shape, err)
			}
			ds = append(ds, d)
			if i == 0 && d.size == 0 {
				return nil, fmt.Errorf("input %q: batch dim is 0", e.Name)
			}
		}
		f := &field{i: len(s.fields), name: e.Name, dtype: e.DType, kind: k, batch: ds[0], dims: ds[1:]}
		f.seq = spec.Loss == "lm" && len(f.dims) > 0 && f.dims[0].size < 0
		s.fields = append(s.fields, f)
		s.byName[e.Name] = f
	}

	if len(s.fields) == 0 {
		return nil, fmt.Errorf("the graph has no batch or label inputs")
	}
	labels := spec.Labels
	if labels == "" {
		var names []string
		for _, e := range s.spec.Inputs {
			if e.Role == trainio.RoleLabel {
				names = append(names, e.Name)
			}
		}
		if len(names) != 1 {
			return nil, fmt.Errorf("no labels name given and %d inputs have role label %v", len(names), names)
		}
		labels = names[0]
		s.spec.Labels = labels
	}
	s.labels = s.byName[labels]
	if s.labels == nil {
		return nil, fmt.Errorf("labels %q are not among the graph's inputs", labels)
	}
	s.labels.role, s.labels.pad = roleLabels, spec.IgnoreIndex
	if spec.Loss != "mse" && s.labels.kind == kFloat32 {
		return nil, fmt.Errorf("labels %q: %s loss needs integer labels, the graph takes %s", labels, spec.Loss, s.labels.dtype)
	}

	if spec.MaskInput != "" {
		s.mask = s.byName[spec.MaskInput]
		if s.mask == nil {
			return nil, fmt.Errorf("mask input %q is not among the graph's inputs", spec.MaskInput)
		}
		if s.mask == s.labels {
			return nil, fmt.Errorf("mask input %q is also the labels", spec.MaskInput)
		}
		if s.mask.kind == kFloat32 {
			return nil, fmt.Errorf("mask input %q: dtype %s; a built mask is int64, int32 or bool", spec.MaskInput, s.mask.dtype)
		}
		s.mask.role = roleMask
	}

	// The input ids are what the mask copies its shape from and what PadID
	// pads. The graph does not say which input they are, so take the
	// conventional name, else the first integer input that is neither the
	// labels nor the mask (position or token-type ids come after input ids
	// in every exporter we know of).
	s.ids = s.byName["input_ids"]
	if s.ids != nil && (s.ids.role != roleOther || s.ids.kind == kFloat32) {
		s.ids = nil
	}
	if s.ids == nil {
		for _, f := range s.fields {
			if f.role == roleOther && f.kind != kFloat32 {
				s.ids = f
				break
			}
		}
	}
	if s.ids != nil {
		s.ids.role, s.ids.pad = roleIDs, spec.PadID
	}
	if s.mask != nil {
		if s.ids == nil {
			return nil, fmt.Errorf("mask input %q: no integer input ids to take its shape from", spec.MaskInput)
		}
		if len(s.mask.dims) != len(s.ids.dims) {
			return nil, fmt.Errorf("mask input %q has rank %d but input ids %q have rank %d", s.mask.name, len(s.mask.dims)+1, s.ids.name, len(s.ids.dims)+1)
		}
		s.mask.seq = s.ids.seq
	}
	if err := s.setLimits(); err != nil {
		return nil, err
	}
	for _, f := range s.fields {
		if f.seq && !f.kind.fits(f.pad) {
			what := "pad id"
			if f.role == roleLabels {
				what = "ignore index"
			}
			return nil, fmt.Errorf("input %q: %s %d does not fit %s", f.name, what, f.pad, f.dtype)
		}
		s.batchNames = append(s.batchNames, f.batch.name)
	}
	return s, nil
}
