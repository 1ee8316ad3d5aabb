package tokenizer

// postProcessor adds the special tokens of Encode(text, true).
type postProcessor interface {
	process(ids []int) []int
}

// template is HF's TemplateProcessing for a single sequence: ids before
// and after the text (the pair template is not used by loracc).
type template struct{ before, after []int }

func (p template) process(ids []int) []int {
	if len(p.before) == 0 && len(p.after) == 0 {
		return ids
	}
	out := make([]int, 0, len(p.before)+len(ids)+len(p.after))
	out = append(out, p.before...)
	out = append(out, ids...)
	return append(out, p.after...)
}

type postSequence []postProcessor

func (p postSequence) process(ids []int) []int {
	for _, x := range p {
		ids = x.process(ids)
	}
	return ids
}
