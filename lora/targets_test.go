package lora

import "testing"

func TestModulePath(t *testing.T) {
	cases := map[string]string{
		"['', 'm', 'm.model', 'm.model.layers.0.self_attn.q_proj', 'linear']": "m.model.layers.0.self_attn.q_proj",
		"['', 'fc']": "fc",
		"['_empty_nn_module_stack_from_metadata_hook', 'sym_size_int_24']": "",
		"":        "",
		"garbage": "",
	}
	for in, want := range cases {
		if got := modulePath(in); got != want {
			t.Errorf("modulePath(%q) = %q, want %q", in, got, want)
		}
	}
}
