package generate

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/runtime"
)

// Input and output names of a causal-LM export, as Optimum writes them.
const (
	inputIDs      = "input_ids"
	attentionMask = "attention_mask"
	positionIDs   = "position_ids"
	logitsName    = "logits"
)

var (
	pastRE    = regexp.MustCompile(`^past_key_values\.(\d+)\.(key|value)$`)
	presentRE = regexp.MustCompile(`^present\.(\d+)\.(key|value)$`)
)

// kvLayer is one layer's cache: its past inputs and present outputs, and
// the shape of an empty past ([1, heads, 0, head_dim]).
type kvLayer struct {
	pastKey, pastValue       string
	presentKey, presentValue string
	dtype                    graph.DataType
	heads, headDim           int64
}

// Model is a causal LM session read for generation: which of the optional
// inputs it takes and whether it keeps a KV cache.
type Model struct {
	sess      *runtime.Session
	logits    string
	mask, pos bool
	cache     []kvLayer // nil: no cache, every step runs the whole sequence
	vocab     int64     // logits' last dim, -1 when symbolic
}

// NewModel reads s's signature. It takes input_ids (int64 [batch, seq])
// and, when declared, attention_mask and position_ids; a model with
// past_key_values.N.key/value inputs must have the matching
// present.N.key/value outputs, and is then run with its cache. Any other
// input is an error naming it: generation would have to invent its value.
func NewModel(s *runtime.Session) (*Model, error) {
	m := &Model{sess: s, vocab: -1}
	pasts := map[int]*kvLayer{}
	layer := func(i int) *kvLayer {
		if pasts[i] == nil {
			pasts[i] = &kvLayer{}
		}
		return pasts[i]
	}
	var unknown []string
	for _, in := range s.Inputs() {
		switch in.Name {
		case inputIDs:
			if in.DType != graph.Int64 || len(in.Shape) != 2 {
				return nil, fmt.Errorf("input %s is %s of shape %v; generation feeds int64 [batch, sequence]", in.Name, in.DType, in.Shape)
			}
			continue
		case attentionMask, positionIDs:
			if in.DType != graph.Int64 || len(in.Shape) != 2 {
				return nil, fmt.Errorf("input %s is %s of shape %v; generation feeds int64 [batch, length]", in.Name, in.DType, in.Shape)
			}
			if in.Name == attentionMask {
				m.mask = true
			} else {
				m.pos = true
			}
			continue
		}
		sub := pastRE.FindStringSubmatch(in.Name)
		if sub == nil {
			unknown = append(unknown, in.Name)
			continue
		}
		i, err := strconv.Atoi(sub[1])
		if err != nil || i > 1<<16 {
			return nil, fmt.Errorf("input %s: layer number out of range", in.Name)
		}
		if len(in.Shape) != 4 || in.Shape[1] < 0 || in.Shape[3] < 0 || !in.DType.IsFloat() {
			return nil, fmt.Errorf("input %s is %s of shape %v; a past needs a float type and shape [batch, heads, past, head_dim] with static heads and head_dim", in.Name, in.DType, in.Shape)
		}
		l := layer(i)
		if sub[2] == "key" {
			l.pastKey = in.Name
		} else {
			l.pastValue = in.Name
		}
		if l.dtype != 0 && (l.dtype != in.DType || l.heads != in.Shape[1] || l.headDim != in.Shape[3]) {
			return nil, fmt.Errorf("inputs past_key_values.%d.key and .value differ in type or shape", i)
		}
		l.dtype, l.heads, l.headDim = in.DType, in.Shape[1], in.Shape[3]
	}
	if !hasInput(s, inputIDs) {
		return nil, fmt.Errorf("no input_ids input (inputs: %s); generate runs causal LMs exported with Optimum's input names", inputNames(s))
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("input %s: generate feeds only input_ids, attention_mask, position_ids and past_key_values.N.key/value", strings.Join(unknown, ", "))
	}
	outs := s.Outputs()
	for _, o := range outs {
		if o.Name == logitsName {
			m.logits = o.Name
		}
	}
	if m.logits == "" && len(outs) == 1 {
		m.logits = outs[0].Name // a bare LM export with one unnamed-by-convention output
	}
	if m.logits == "" {
		return nil, fmt.Errorf("no logits output (outputs: %s)", outputNames(s))
	}
	for _, o := range outs {
		if o.Name == m.logits {
			if o.DType != graph.Float && o.DType != graph.Float16 {
				return nil, fmt.Errorf("output %s is %s; generate reads float32 or float16 logits", o.Name, o.DType)
			}
			if len(o.Shape) == 3 {
				m.vocab = o.Shape[2]
			}
			continue
		}
		sub := presentRE.FindStringSubmatch(o.Name)
		if sub == nil {
			continue
		}
		i, _ := strconv.Atoi(sub[1])
		l := pasts[i]
		if l == nil {
			continue // presents without pasts: an export without cache inputs
		}
		if sub[2] == "key" {
			l.presentKey = o.Name
		} else {
			l.presentValue = o.Name
		}
	}
	if len(pasts) > 0 {
		ids := make([]int, 0, len(pasts))
		for i := range pasts {
			ids = append(ids, i)
		}
		sort.Ints(ids)
		for want, i := range ids {
			l := pasts[i]
			switch {
			case i != want:
				return nil, fmt.Errorf("past_key_values: layer %d missing (layers must be numbered from 0)", want)
			case l.pastKey == "" || l.pastValue == "":
				return nil, fmt.Errorf("past_key_values.%d: needs both .key and .value inputs", i)
			case l.presentKey == "" || l.presentValue == "":
				return nil, fmt.Errorf("past_key_values.%d: no matching present.%d.key and present.%d.value outputs to feed back", i, i, i)
			}
			m.cache = append(m.cache, *l)
		}
	}
	return m, nil
}

func hasInput(s *runtime.Session, name string) bool {
	for _, in := range s.Inputs() {
		if in.Name == name {
			return true
		}
	}
	return false
}

func inputNames(s *runtime.Session) string {
	var ns []string
	for _, in := range s.Inputs() {
		ns = append(ns, in.Name)
	}
	return strings.Join(ns, ", ")
}

func outputNames(s *runtime.Session) string {
	var ns []string
	for _, o := range s.Outputs() {
		ns = append(ns, o.Name)
	}
	return strings.Join(ns, ", ")
}

// Cached reports whether the model keeps a KV cache, and for how many
// layers.
func (m *Model) Cached() (bool, int) { return m.cache != nil, len(m.cache) }

// Vocab is the logits' width when the model declares it statically, else
// -1.
func (m *Model) Vocab() int64 { return m.vocab }
