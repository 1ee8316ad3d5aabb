#!/usr/bin/env python3
"""Optimum-style ONNX exports of tiny Hugging Face decoders, and PEFT's loss
curve on them, for loracc's KV-cache formats tests.

Optimum itself is not installed on the machines loracc is developed on, so
this script writes what its documentation says its decoder exports hold:

  OUT/optimum_<name>/model.onnx   the decoder with the cache as I/O:
      inputs  input_ids [batch_size, sequence_length],
              attention_mask [batch_size, past_sequence_length + sequence_length],
              position_ids [batch_size, sequence_length]            (llama only),
              past_key_values.N.key / .value [batch_size, kv_heads, past_sequence_length, head]
      outputs logits [batch_size, sequence_length, vocab],
              present.N.key / .value [batch_size, kv_heads, past_sequence_length + sequence_length, head]
  OUT/optimum_llama/decoder_model_merged.onnx
      the legacy merged decoder: input use_cache_branch (bool [1]) picks,
      with an If, the with-past graph or the no-past one; both branches
      read the weights from the outer graph
  OUT/optimum_<name>/config.json  the Hugging Face config
  REF/optimum_<name>/lora_init/   PEFT save_pretrained of the adapter before training
  REF/optimum_<name>/ref.json     the fixed batch, PEFT's per-step losses of STEPS
                                  AdamW steps on it, and the settings

float32 on CPU, fixed seeds, random init. Run on a machine with torch,
transformers and peft (the GPU machine), then commit OUT's files:

    python3 testdata/torch/make_optimum.py --out testdata/models --ref testdata/ref

(cmd/loracc's TestOptimumExportsMatchPEFT trains them.) The exports come
from torch.onnx's TorchScript exporter: torch.export could not trace the
cache (transformers 5.17, torch 2.11), so the weights have the exporter's
anonymous names and the merged decoder's two branches each keep their
own copy of most of them.
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

R, ALPHA, STEPS, LR = 4, 8, 20, 1e-3
VOCAB, BATCH, SEQ = 96, 2, 12


def log(msg):
    print(f"[make_optimum {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build(name):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    if name == "gpt2":
        cfg = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = GPT2LMHeadModel(cfg)
        lora = dict(target_modules=["c_attn"], fan_in_fan_out=True)
        heads, kv, head = 4, 4, 16
    else:
        cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                          attention_dropout=0.0, tie_word_embeddings=False)
        model = LlamaForCausalLM(cfg)
        lora = dict(target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
        heads, kv, head = 4, 2, 16
    model.eval()
    return model, cfg, lora, kv, head


def make_cache(past):
    """A transformers Cache holding the flat (key, value) pairs."""
    from transformers import DynamicCache
    cache = DynamicCache()
    for i in range(0, len(past), 2):
        cache.update(past[i], past[i + 1], i // 2)
    return cache


def flat_presents(cache, layers):
    out = []
    for i in range(layers):
        if hasattr(cache, "layers"):
            out += [cache.layers[i].keys, cache.layers[i].values]
        else:
            out += [cache.key_cache[i], cache.value_cache[i]]
    return out


class WithPast(torch.nn.Module):
    """forward(input_ids, attention_mask, [position_ids], *past) -> logits, *presents"""

    def __init__(self, m, layers, positions):
        super().__init__()
        self.m, self.layers, self.positions = m, layers, positions

    def forward(self, input_ids, attention_mask, *rest):
        kw = {}
        if self.positions:
            kw["position_ids"], rest = rest[0], rest[1:]
        out = self.m(input_ids=input_ids, attention_mask=attention_mask, past_key_values=make_cache(list(rest)),
                     use_cache=True, **kw)
        return (out.logits, *flat_presents(out.past_key_values, self.layers))


class NoPast(torch.nn.Module):
    """forward(input_ids, attention_mask, [position_ids]) -> logits, *presents"""

    def __init__(self, m, layers, positions):
        super().__init__()
        self.m, self.layers, self.positions = m, layers, positions

    def forward(self, input_ids, attention_mask, *rest):
        kw = {"position_ids": rest[0]} if self.positions else {}
        out = self.m(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, **kw)
        return (out.logits, *flat_presents(out.past_key_values, self.layers))


def export(module, args, names, outputs, dyn, path):
    """torch.onnx.export (dynamo, every named axis Dim.DYNAMIC, falling back to
    the TorchScript exporter), then the graph's I/O dims renamed as Optimum
    names them and the exporter's value_info dropped (its dims use the
    exporter's own symbols)."""
    import onnx
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        from torch.export import Dim
        shapes = tuple({axis: Dim.DYNAMIC for axis in dyn.get(n, {})} for n in names)
        torch.onnx.export(module, tuple(args), path, dynamo=True, opset_version=18, input_names=names,
                          output_names=outputs, dynamic_shapes=shapes, external_data=False)
        log(f"exported {path} with dynamo")
    except Exception as e:  # noqa: BLE001
        log(f"dynamo export failed ({type(e).__name__}: {str(e)[:400]}); trying the TorchScript exporter")
        axes = {n: dict(dyn.get(n, {})) for n in names}
        for o in outputs:
            axes[o] = {0: "batch_size", 1: "sequence_length"} if o == "logits" else {0: "batch_size", 2: "past_sequence_length + sequence_length"}
        torch.onnx.export(module, tuple(args), path, dynamo=False, opset_version=18, input_names=names,
                          output_names=outputs, dynamic_axes=axes)
        log(f"exported {path} with the TorchScript exporter")
    m = onnx.load(path)
    want = dict(dyn)
    for o in outputs:
        want[o] = {0: "batch_size", 1: "sequence_length"} if o == "logits" else {0: "batch_size", 2: "past_sequence_length + sequence_length"}
    if "past_key_values.0.key" not in names:  # no past: the total length is the sequence length
        for o in outputs[1:]:
            want[o] = {0: "batch_size", 2: "sequence_length"}
    for v in list(m.graph.input) + list(m.graph.output):
        for axis, dname in want.get(v.name, {}).items():
            d = v.type.tensor_type.shape.dim[axis]
            d.Clear()
            d.dim_param = dname
    del m.graph.value_info[:]
    onnx.save(m, path)


def check(path, module, args, names, outputs):
    import numpy as np
    import onnxruntime as ort
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = {n: a.numpy() for n, a in zip(names, args) if n in {i.name for i in sess.get_inputs()}}
    got = sess.run(None, feeds)
    with torch.no_grad():
        want = [w.numpy() for w in module(*args)]
    err = max(float(np.max(np.abs(g - w))) if g.size else 0.0 for g, w in zip(got, want))
    log(f"{path}: ORT vs torch max |diff| {err:.2e}")
    return err


def merge(with_past, no_past, path):
    """decoder_model_merged.onnx: If(use_cache_branch) then with-past else no-past;
    the weights both exports share (same name and bytes) live in the outer graph."""
    import onnx
    from onnx import helper, TensorProto
    w, n = onnx.load(with_past), onnx.load(no_past)
    wi = {t.name: t for t in w.graph.initializer}
    ni = {t.name: t for t in n.graph.initializer}
    shared = {k for k in wi if k in ni and wi[k].SerializeToString() == ni[k].SerializeToString()}

    def branch(m, name):
        g = helper.make_graph(list(m.graph.node), name, [], list(m.graph.output),
                              [t for t in m.graph.initializer if t.name not in shared])
        g.value_info.extend(m.graph.value_info)
        return g

    cond = helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1])
    outs = [o.name for o in w.graph.output]
    node = helper.make_node("If", ["use_cache_branch"], outs, name="optimum::if",
                            then_branch=branch(w, "with_past"), else_branch=branch(n, "no_past"))
    g = helper.make_graph([node], "merged_decoder", list(w.graph.input) + [cond], list(w.graph.output),
                          [wi[k] for k in sorted(shared)])
    m = helper.make_model(g, opset_imports=list(w.opset_import), ir_version=w.ir_version)
    onnx.save(m, path)
    try:
        onnx.checker.check_model(path)
    except Exception as e:  # noqa: BLE001 -- ORT's run below is what counts
        log(f"onnx.checker on the merged decoder: {str(e)[:300]}")
    log(f"merged decoder {path}: {len(shared)} shared weights")


def check_merged(path, with_past, args, names):
    """The merged decoder with use_cache_branch=True equals the with-past export."""
    import numpy as np
    import onnxruntime as ort
    feeds = {n: a.numpy() for n, a in zip(names, args)}
    want = ort.InferenceSession(with_past, providers=["CPUExecutionProvider"]).run(None, feeds)
    feeds["use_cache_branch"] = np.array([True])
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)
    err = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want))
    log(f"{path}: merged (use_cache_branch) vs with-past max |diff| {err:.2e}")
    return err


def peft_ref(name, model, lora, out):
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(1234)
    pm = get_peft_model(model, LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, bias="none", **lora))
    g = torch.Generator().manual_seed(4321)
    with torch.no_grad():
        for pn, p in pm.named_parameters():
            if "lora_B" in pn:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    init = os.path.join(out, "lora_init")
    pm.save_pretrained(init)
    readme = os.path.join(init, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(2024))
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    losses = []
    for _ in range(STEPS):
        out_ = pm(input_ids=ids, labels=ids, use_cache=False)
        opt.zero_grad()
        out_.loss.backward()
        opt.step()
        losses.append(float(out_.loss))
    with open(os.path.join(out, "ref.json"), "w") as f:
        json.dump({"input_ids": ids.tolist(), "losses": losses, "steps": STEPS, "lr": LR, "r": R, "alpha": ALPHA,
                   "weight_decay": 0.0, "clip": None, "loss": "Hugging Face causal LM loss (labels = input_ids)",
                   "torch": torch.__version__}, f, indent=1)
    log(f"{name}: PEFT losses {losses[0]:.6f} -> {losses[-1]:.6f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--ref", required=True)
    a = ap.parse_args()
    failed = []
    for name in ["gpt2", "llama"]:
        try:
            model, cfg, lora, kv, head = build(name)
            layers = cfg.num_hidden_layers
            positions = name == "llama"
            d = os.path.join(a.out, f"optimum_{name}")
            os.makedirs(d, exist_ok=True)
            cfg.to_json_file(os.path.join(d, "config.json"))
            past_len = 3
            ids = torch.randint(0, VOCAB, (BATCH, 4), generator=torch.Generator().manual_seed(7))
            mask = torch.ones(BATCH, past_len + 4, dtype=torch.int64)
            pos = torch.arange(past_len, past_len + 4).unsqueeze(0).expand(BATCH, 4).contiguous()
            past = [torch.randn(BATCH, kv, past_len, head) for _ in range(2 * layers)]
            names = ["input_ids", "attention_mask"] + (["position_ids"] if positions else [])
            past_names = [f"past_key_values.{i}.{kvn}" for i in range(layers) for kvn in ("key", "value")]
            outputs = ["logits"] + [f"present.{i}.{kvn}" for i in range(layers) for kvn in ("key", "value")]
            dyn = {"input_ids": {0: "batch_size", 1: "sequence_length"},
                   "attention_mask": {0: "batch_size", 1: "past_sequence_length + sequence_length"},
                   "position_ids": {0: "batch_size", 1: "sequence_length"}}
            for p in past_names:
                dyn[p] = {0: "batch_size", 2: "past_sequence_length"}
            wp = WithPast(model, layers, positions).eval()
            args = [ids, mask] + ([pos] if positions else []) + past
            path = os.path.join(d, "model.onnx")
            export(wp, args, names + past_names, outputs, dyn, path)
            if check(path, wp, args, names + past_names, outputs) > 1e-4:
                failed.append(f"{name}: with-past export differs from torch")
            if positions:
                np_ = NoPast(model, layers, positions).eval()
                nargs = [ids, torch.ones(BATCH, 4, dtype=torch.int64), torch.arange(4).unsqueeze(0).expand(BATCH, 4).contiguous()]
                npath = os.path.join(d, "no_past.onnx")
                ndyn = dict(dyn)
                ndyn["attention_mask"] = {0: "batch_size", 1: "sequence_length"}
                export(np_, nargs, names, outputs, ndyn, npath)
                check(npath, np_, nargs, names, outputs)
                merged = os.path.join(d, "decoder_model_merged.onnx")
                merge(path, npath, merged)
                if check_merged(merged, path, args, names + past_names) > 1e-5:
                    failed.append(f"{name}: merged decoder differs from the with-past export")
                os.remove(npath)
            peft_ref(name, model, lora, os.path.join(a.ref, f"optimum_{name}"))
        except Exception as e:  # noqa: BLE001
            import traceback
            traceback.print_exc()
            failed.append(f"{name}: {type(e).__name__}: {e}")
    if failed:
        log("FAILED: " + "; ".join(failed))
        sys.exit(1)
    log("done")


if __name__ == "__main__":
    main()
