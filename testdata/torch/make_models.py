#!/usr/bin/env python3
"""Build the tiny random-init GPT-2 and BERT test models and export them to ONNX.

Outputs (paths relative to the repository root):
  testdata/models/<name>.onnx          dynamo export, weights inline, IR <= 10
  testdata/torch/<name>.safetensors    PyTorch state_dict (contiguous clones)
  testdata/torch/<name>.config.json    transformers config (to_dict)

Run from anywhere: python3 testdata/torch/make_models.py
Everything runs on CPU in float32; seeds are fixed so the output is reproducible.
"""
import collections
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import torch
from safetensors.torch import load_file, save_file
from transformers import (BertConfig, BertForSequenceClassification, GPT2Config,
                          GPT2LMHeadModel)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODELS = os.path.join(ROOT, "testdata", "models")
TORCH_DIR = os.path.join(ROOT, "testdata", "torch")
OPSET = 20
MAX_IR = 10
TOL = 1e-4

SEEDS = {"gpt2_tiny": 0, "bert_tiny": 1}
PERTURB_STD = 0.02


def gpt2_config():
    return GPT2Config(vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def bert_config():
    return BertConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2,
                      num_attention_heads=4, intermediate_size=128,
                      max_position_embeddings=64, num_labels=3,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


class GPT2Wrapper(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids):
        return self.m(input_ids=input_ids, use_cache=False).logits


class BertWrapper(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids, attention_mask):
        return self.m(input_ids=input_ids, attention_mask=attention_mask).logits


SPECS = {
    "gpt2_tiny": dict(cls=GPT2LMHeadModel, config=gpt2_config, wrapper=GPT2Wrapper,
                      inputs=["input_ids"]),
    "bert_tiny": dict(cls=BertForSequenceClassification, config=bert_config,
                      wrapper=BertWrapper, inputs=["input_ids", "attention_mask"]),
}


def build(name):
    spec = SPECS[name]
    torch.manual_seed(SEEDS[name])
    model = spec["cls"](spec["config"]())
    # HF init leaves every bias at 0 and every LayerNorm weight at 1; the ONNX
    # optimizer then merges those identical initializers into one shared tensor,
    # which no trained model looks like. Perturb all 1-D parameters (biases,
    # LayerNorm weight/bias) with seeded noise so each weight is distinct.
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn(p.shape, dtype=p.dtype) * PERTURB_STD)
    model.eval()
    return model


def sample_inputs(name, batch, seq, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (batch, seq), generator=g, dtype=torch.int64)
    if name == "gpt2_tiny":
        return (ids,)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    if batch > 1 and seq > 2:
        mask[1, -2:] = 0
    return (ids, mask)


def save_torch(name, model):
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(TORCH_DIR, name + ".safetensors"))
    with open(os.path.join(TORCH_DIR, name + ".config.json"), "w") as f:
        json.dump(model.config.to_dict(), f, indent=2, sort_keys=True, default=str)
        f.write("\n")


def rebuild(name):
    """Rebuild the PyTorch model from the saved files (what make_refs.py does)."""
    spec = SPECS[name]
    with open(os.path.join(TORCH_DIR, name + ".config.json")) as f:
        cfg = spec["config"]().__class__.from_dict(json.load(f))
    model = spec["cls"](cfg)
    sd = load_file(os.path.join(TORCH_DIR, name + ".safetensors"))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    # Tied weights (GPT-2 lm_head.weight == transformer.wte.weight) may be left out.
    assert set(missing) <= {"lm_head.weight"}, missing
    model.eval()
    return model


def export(name, model):
    spec = SPECS[name]
    wrapper = spec["wrapper"](model).eval()
    args = sample_inputs(name, 2, 8, seed=100)
    path = os.path.join(MODELS, name + ".onnx")
    out_names = ["logits"]
    dyn_str = {n: {0: "batch", 1: "seq"} for n in spec["inputs"]}
    try:
        torch.onnx.export(wrapper, args, path, dynamo=True, opset_version=OPSET,
                          input_names=spec["inputs"], output_names=out_names,
                          dynamic_shapes=dyn_str, external_data=False)
        how = "string dim names"
    except Exception as e:  # older/newer API without string dims
        print(f"[{name}] export with string dims failed: {type(e).__name__}: {e}")
        D = torch.export.Dim.DYNAMIC
        dyn = {n: {0: D, 1: D} for n in spec["inputs"]}
        torch.onnx.export(wrapper, args, path, dynamo=True, opset_version=OPSET,
                          input_names=spec["inputs"], output_names=out_names,
                          dynamic_shapes=dyn, external_data=False)
        how = "Dim.DYNAMIC"
    m = onnx.load(path)
    print(f"[{name}] exported with {how}; ir_version={m.ir_version} opsets="
          f"{[(o.domain, o.version) for o in m.opset_import]} functions={len(m.functions)}")
    if m.ir_version > MAX_IR:
        print(f"[{name}] lowering ir_version {m.ir_version} -> {MAX_IR}")
        m.ir_version = MAX_IR
    # Name the dynamic axes of the graph inputs/outputs batch/seq if the exporter
    # left symbolic names such as s0/s1.
    for vi in list(m.graph.input) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if d.HasField("dim_param") and i < 2 and d.dim_param not in ("batch", "seq"):
                d.dim_param = ["batch", "seq"][i]
    onnx.checker.check_model(m, full_check=True)
    onnx.save_model(m, path, save_as_external_data=False)
    assert not any(os.path.exists(path + s) for s in (".data", "_data")), "external data left"
    return path


def fmt_vi(vi):
    t = vi.type.tensor_type
    dims = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in t.shape.dim]
    return f"{vi.name}: {onnx.TensorProto.DataType.Name(t.elem_type)} {dims}"


def describe(name, path):
    m = onnx.load(path)
    g = m.graph
    print(f"[{name}] file {path} {os.path.getsize(path)} bytes, ir_version={m.ir_version}, "
          f"opset={[(o.domain, o.version) for o in m.opset_import]}, producer="
          f"{m.producer_name} {m.producer_version}")
    print(f"[{name}] inputs:  {[fmt_vi(v) for v in g.input]}")
    print(f"[{name}] outputs: {[fmt_vi(v) for v in g.output]}")
    print(f"[{name}] nodes={len(g.node)} initializers={len(g.initializer)} "
          f"value_info={len(g.value_info)}")
    hist = collections.Counter(n.op_type for n in g.node)
    print(f"[{name}] op histogram:")
    for op, c in sorted(hist.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"    {op:24s} {c}")
    print(f"[{name}] MatMul={hist.get('MatMul', 0)} Gemm={hist.get('Gemm', 0)}")
    print(f"[{name}] initializers:")
    for t in g.initializer:
        print(f"    {t.name:50s} {onnx.TensorProto.DataType.Name(t.data_type)} {list(t.dims)}")

    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}

    def const_source(v, depth=0):
        """Follow a value back to an initializer/Constant through simple ops."""
        if v in inits:
            return v, list(inits[v].dims), []
        n = producer.get(v)
        if n is None:
            return None
        if n.op_type == "Constant":
            dims = []
            for a in n.attribute:
                if a.name == "value":
                    dims = list(a.t.dims)
            return f"Constant({n.name})", dims, []
        if n.op_type in ("Transpose", "Cast", "Identity", "Reshape") and depth < 4:
            r = const_source(n.input[0], depth + 1)
            if r is not None:
                desc = n.op_type
                for a in n.attribute:
                    if a.name == "perm":
                        desc += f"(perm={list(a.ints)})"
                return r[0], r[1], r[2] + [desc]
        return None

    def meta(n, key):
        for p in n.metadata_props:
            if p.key == key:
                return p.value
        return None

    keys = collections.Counter(p.key for n in g.node for p in n.metadata_props)
    print(f"[{name}] node metadata_props keys: {dict(keys)}")
    print(f"[{name}] MatMul/Gemm with constant weight:")
    dyn = 0
    for n in g.node:
        if n.op_type not in ("MatMul", "Gemm"):
            continue
        srcs = [(i, const_source(x)) for i, x in enumerate(n.input[:2])]
        srcs = [(i, s) for i, s in srcs if s is not None]
        if not srcs:
            dyn += 1
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        print(f"  - {n.op_type} node={n.name!r} inputs={list(n.input)} attrs={attrs}")
        for i, (w, shape, chain) in srcs:
            print(f"      weight input[{i}] = {w} shape={shape}"
                  + (f" via {' <- '.join(reversed(chain))}" if chain else ""))
        if n.op_type == "Gemm" and len(n.input) > 2:
            b = const_source(n.input[2])
            print(f"      bias input[2] = {b[0] if b else n.input[2]} shape={b[1] if b else '?'}")
        print(f"      name_scopes = {meta(n, 'pkg.torch.onnx.name_scopes')}")
        print(f"      class_hierarchy = {meta(n, 'pkg.torch.onnx.class_hierarchy')}")
    print(f"[{name}] MatMul/Gemm without constant weight (activation x activation): {dyn}")


def verify(name, model, path):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    in_names = [i.name for i in sess.get_inputs()]
    worst = 0.0
    for (b, s, seed) in [(2, 8, 100), (3, 5, 101), (1, 17, 102)]:
        args = sample_inputs(name, b, s, seed)
        with torch.no_grad():
            ref = SPECS[name]["wrapper"](model)(*args).numpy()
        got = sess.run(["logits"], {k: a.numpy() for k, a in zip(in_names, args)})[0]
        assert got.shape == ref.shape, (got.shape, ref.shape)
        d = float(np.max(np.abs(got - ref)))
        print(f"[{name}] ORT vs torch batch={b} seq={s}: shape={list(got.shape)} max|diff|={d:.3e}")
        worst = max(worst, d)
    assert worst < TOL, f"{name}: ORT mismatch {worst}"
    return worst


def main():
    torch.set_num_threads(1)
    os.makedirs(MODELS, exist_ok=True)
    print(f"torch {torch.__version__} onnx {onnx.__version__} onnxruntime {ort.__version__}")
    import transformers
    print(f"transformers {transformers.__version__}")
    names = sys.argv[1:] or list(SPECS)
    for name in names:
        model = build(name)
        print(f"[{name}] attn_implementation={getattr(model.config, '_attn_implementation', None)} "
              f"params={sum(p.numel() for p in model.parameters())}")
        save_torch(name, model)
        re = rebuild(name)
        args = sample_inputs(name, 2, 8, seed=100)
        with torch.no_grad():
            a = SPECS[name]["wrapper"](model)(*args)
            b = SPECS[name]["wrapper"](re)(*args)
        assert torch.equal(a, b), "rebuild from safetensors+config differs"
        print(f"[{name}] rebuild from safetensors+config: identical logits")
        path = export(name, model)
        describe(name, path)
        verify(name, model, path)
    print("make_models: OK")


if __name__ == "__main__":
    main()
