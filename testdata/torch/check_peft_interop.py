"""PEFT out and ORT multi-LoRA checks for loracc (run on the GPU machine).

1. PEFT out: adapters trained by `loracc train` load with
   PeftModel.from_pretrained on the PyTorch model the ONNX file came from
   (rebuilt from testdata/torch/<model>.safetensors + config) and give the
   logits of loracc's fused ONNX model (run here with Python onnxruntime).
2. ORT multi-LoRA: a model injected with `loracc inject --adapter-inputs`
   runs with onnxruntime's active-adapter API, switching between two
   .onnx_adapter files written by `loracc export-adapter` in one session,
   and matches each adapter's fused model.

Usage: python3 testdata/torch/check_peft_interop.py DIR OUT.json
where DIR holds what loracc made (see docs/interop.md).
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort
import torch
import transformers
import peft
from safetensors.torch import load_file

root = os.path.dirname(os.path.abspath(__file__))
d, out_path = sys.argv[1], sys.argv[2]
result = {"versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                       "peft": peft.__version__, "onnxruntime": ort.__version__}}


def torch_model(name, cls, cfg_cls):
    cfg = cfg_cls.from_dict(json.load(open(os.path.join(root, name + ".config.json"))))
    m = cls(cfg)
    state = load_file(os.path.join(root, name + ".safetensors"))
    missing, unexpected = m.load_state_dict(state, strict=False)
    m.eval()
    return m, [k for k in missing if "lora" not in k], unexpected


def onnx_logits(path, feeds):
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return s.run(["logits"], feeds)[0]


rng = np.random.default_rng(0)
ids = rng.integers(0, 256, size=(2, 8)).astype(np.int64)
mask = np.ones((2, 8), dtype=np.int64)
mask[1, 6:] = 0

# 1. PEFT out.
checks = [
    ("gpt2_tiny", transformers.GPT2LMHeadModel, transformers.GPT2Config, os.path.join(d, "gpt/run/adapter"),
     os.path.join(d, "gpt/run/model.fused.onnx"), {"input_ids": ids}),
    ("bert_tiny", transformers.BertForSequenceClassification, transformers.BertConfig, os.path.join(d, "bertrun/adapter"),
     os.path.join(d, "bertrun/model.fused.onnx"), {"input_ids": ids, "attention_mask": mask}),
]
result["peft_out"] = {}
for name, cls, cfg_cls, adir, fused, feeds in checks:
    base, missing, unexpected = torch_model(name, cls, cfg_cls)
    pm = peft.PeftModel.from_pretrained(base, adir)
    pm.eval()
    with torch.no_grad():
        t_logits = pm(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    o_logits = onnx_logits(fused, feeds)
    diff = float(np.abs(t_logits - o_logits).max())
    n_lora = sum(1 for n, _ in pm.named_parameters() if "lora_" in n)
    result["peft_out"][name] = {"max_abs_diff": diff, "lora_tensors_loaded": n_lora, "ok": diff <= 1e-4,
                                "missing_base_keys": missing, "unexpected_base_keys": list(unexpected)}
    print(name, "PEFT(loracc adapter) vs loracc fused ONNX: max abs diff", diff, "lora tensors", n_lora)

# 2. ORT multi-LoRA.
sess = ort.InferenceSession(os.path.join(d, "ml.onnx"), providers=["CPUExecutionProvider"])
adapters = {}
for k in (1, 2):
    a = ort.LoraAdapter()
    a.Load(os.path.join(d, f"adapter{k}.onnx_adapter"))
    adapters[k] = a
ml = {"switches": []}
for k in (1, 2, 1, 2):
    ro = ort.RunOptions()
    ro.add_active_adapter(adapters[k])
    got = sess.run(["logits"], {"input_ids": ids}, ro)[0]
    want = onnx_logits(os.path.join(d, f"fused{k}.onnx"), {"input_ids": ids})
    diff = float(np.abs(got - want).max())
    ml["switches"].append({"adapter": k, "max_abs_diff_vs_fused": diff})
    print("active adapter", k, "vs its fused model: max abs diff", diff)
plain = sess.run(["logits"], {"input_ids": ids})[0]
base_logits = onnx_logits(os.path.join(d, "gpt2_tiny.onnx"), {"input_ids": ids})
ml["no_adapter_vs_base"] = float(np.abs(plain - base_logits).max())
print("no active adapter vs the base model: max abs diff", ml["no_adapter_vs_base"])
ml["ok"] = ml["no_adapter_vs_base"] <= 1e-4 and all(s["max_abs_diff_vs_fused"] <= 1e-4 for s in ml["switches"])
ml["adapters_differ"] = float(np.abs(onnx_logits(os.path.join(d, "fused1.onnx"), {"input_ids": ids}) -
                                    onnx_logits(os.path.join(d, "fused2.onnx"), {"input_ids": ids})).max())
result["multi_lora"] = ml

# 3. onnxruntime-genai names: the genai-form folder injected with
# --adapter-inputs takes <target>.lora_A.MatMul.weight / .lora_B.MatMul.weight
# (scale folded into B); its two .onnx_adapter files switch per run.
gd = os.path.join(d, "genai")
if os.path.isdir(gd):
    cfg = json.load(open(os.path.join(gd, "genai_config.json")))["model"]["decoder"]
    heads, kv, layers = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_hidden_layers"]
    hs = cfg["head_size"]
    gids = rng.integers(0, 96, size=(1, 6)).astype(np.int64)
    gfeeds = {"input_ids": gids, "attention_mask": np.ones((1, 6), dtype=np.int64)}
    for l in range(layers):
        for kvn in ("key", "value"):
            gfeeds[f"past_key_values.{l}.{kvn}"] = np.zeros((1, kv, 0, hs), dtype=np.float32)
    gs = ort.InferenceSession(os.path.join(gd, "multi.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in gs.get_inputs() if ".lora_" in i.name]
    ga = {}
    for k in (1, 2):
        a = ort.LoraAdapter()
        a.Load(os.path.join(d, f"genai{k}.onnx_adapter"))
        ga[k] = a
    g = {"adapter_inputs": len(names), "adapter_inputs_named_for_genai": all(n.endswith(".MatMul.weight") for n in names), "switches": []}
    for k in (1, 2, 1, 2):
        ro = ort.RunOptions()
        ro.add_active_adapter(ga[k])
        got = gs.run(["logits"], gfeeds, ro)[0]
        want = onnx_logits(os.path.join(d, f"genai_fused{k}", "model.onnx"), gfeeds)
        diff = float(np.abs(got - want).max())
        g["switches"].append({"adapter": k, "max_abs_diff_vs_fused": diff})
        print("genai: active adapter", k, "vs its fused folder: max abs diff", diff)
    g["adapters_differ"] = float(np.abs(onnx_logits(os.path.join(d, "genai_fused1", "model.onnx"), gfeeds) -
                                        onnx_logits(os.path.join(d, "genai_fused2", "model.onnx"), gfeeds)).max())
    g["ok"] = g["adapter_inputs_named_for_genai"] and g["adapters_differ"] > 1e-3 and all(
        s["max_abs_diff_vs_fused"] <= 1e-4 for s in g["switches"])
    result["genai_multi_lora"] = g
json.dump(result, open(out_path, "w"), indent=1)
print(json.dumps({k: v for k, v in result.items() if k != "versions"}, indent=1))
