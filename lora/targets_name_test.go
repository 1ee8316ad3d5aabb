package lora

import "testing"

// TestWeightModule: weight names of PEFT-style, quantized and
// onnxruntime-genai builder models name the module they belong to.
func TestWeightModule(t *testing.T) {
	for in, want := range map[string]string{
		"model.layers.0.self_attn.q_proj.weight":         "model.layers.0.self_attn.q_proj",
		"model.layers.0.attn.q_proj.MatMul.weight":       "model.layers.0.attn.q_proj",
		"model.layers.0.attn.q_proj.MatMul.weight_Q4":    "model.layers.0.attn.q_proj",
		"model.layers.3.mlp.up_proj.MatMul.weight_Q4G32": "model.layers.3.mlp.up_proj",
		"fc1.weight_quantized":                           "fc1",
		"fc1_quantized":                                  "fc1",
		"h.0.attn.c_attn.weight_scale":                   "h.0.attn.c_attn.weight_scale",
		"lm_head.MatMul.weight":                          "lm_head",
		"proj":                                           "proj",
	} {
		if got := weightModule(in); got != want {
			t.Errorf("weightModule(%q) = %q, want %q", in, got, want)
		}
	}
}
