#!/usr/bin/env python3
"""Reference numbers for loracc's training-graph compiler, computed with PEFT.

Needs the outputs of make_models.py (testdata/torch/<name>.safetensors and
<name>.config.json). For each model it writes, under testdata/ref/:
  <name>_lora_init/               PEFT save_pretrained of the adapter before training
                                  (adapter_config.json, adapter_model.safetensors)
  <name>_batch.json               the fixed batch (inputs, labels) as nested lists
  <name>_grads.safetensors        d loss / d lora_{A,B} at the initial adapter, keyed
                                  like adapter_model.safetensors, float32
  <name>_ref.json                 loss, 20 per-step losses and grad norms, settings
  <name>_merged_logits.json       logits of merge_and_unload() (plus unmerged PEFT and
                                  base-model logits) for the batch, before training
  <name>_lora_trained.safetensors LoRA weights after the 20 AdamW steps

float32 on CPU, model.eval() (all dropouts are 0 anyway), fixed seeds.
Run from anywhere: python3 testdata/torch/make_refs.py
"""
import copy
import enum
import json
import os
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft
import torch
import torch.nn.functional as F
import transformers
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import (BertConfig, BertForSequenceClassification, GPT2Config,
                          GPT2LMHeadModel)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TORCH_DIR = os.path.join(ROOT, "testdata", "torch")
REF = os.path.join(ROOT, "testdata", "ref")

R, ALPHA = 4, 8
STEPS = 20
OPT = dict(name="torch.optim.AdamW", lr=1e-3, betas=[0.9, 0.999], eps=1e-8,
           weight_decay=0.01, amsgrad=False, maximize=False,
           grad_clipping=None,
           note="decoupled weight decay (p -= lr*wd*p), bias-corrected moments, "
                "applied to the LoRA parameters only; same batch every step")
LORA_A_SEED = 1234      # torch.manual_seed before get_peft_model (PEFT's lora_A init)
LORA_B_SEED = 4321      # torch.Generator for lora_B = randn * 0.02
LORA_B_STD = 0.02
BATCH_SEED = 2024

SPECS = {
    "gpt2_tiny": dict(cfg_cls=GPT2Config, cls=GPT2LMHeadModel,
                      target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True),
    "bert_tiny": dict(cfg_cls=BertConfig, cls=BertForSequenceClassification,
                      target_modules=["query", "key", "value", "dense"], fan_in_fan_out=False),
}


def jsonable(o):
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if isinstance(o, enum.Enum):
        return o.value
    if isinstance(o, torch.Tensor):
        return o.tolist()
    return str(o)


def dump(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, default=jsonable)
        f.write("\n")


def load_base(name):
    spec = SPECS[name]
    with open(os.path.join(TORCH_DIR, name + ".config.json")) as f:
        cfg = spec["cfg_cls"].from_dict(json.load(f))
    model = spec["cls"](cfg)
    sd = load_file(os.path.join(TORCH_DIR, name + ".safetensors"))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"}, missing
    model.eval()
    return model


def make_batch(name):
    g = torch.Generator().manual_seed(BATCH_SEED)
    ids = torch.randint(0, 256, (2, 8), generator=g, dtype=torch.int64)
    if name == "gpt2_tiny":
        labels = ids.clone()
        labels[0, 3] = -100
        labels[1, 6] = -100
        return {"input_ids": ids, "labels": labels}
    mask = torch.ones(2, 8, dtype=torch.int64)
    mask[1, -2:] = 0
    labels = torch.randint(0, 3, (2,), generator=g, dtype=torch.int64)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def logits_of(name, model, batch):
    if name == "gpt2_tiny":
        return model(input_ids=batch["input_ids"], use_cache=False).logits
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def loss_of(name, model, batch):
    if name == "gpt2_tiny":
        out = model(input_ids=batch["input_ids"], labels=batch["labels"], use_cache=False)
        return out.loss, out.logits
    logits = logits_of(name, model, batch)
    return F.cross_entropy(logits, batch["labels"]), logits


def manual_causal_lm_loss(logits, labels):
    """Shifted mean cross-entropy over labels != -100 (what HF computes inside)."""
    lg = logits[:, :-1, :].reshape(-1, logits.shape[-1]).float()
    lb = labels[:, 1:].reshape(-1)
    return F.cross_entropy(lg, lb, ignore_index=-100, reduction="mean")


def adapter_key(param_name):
    # base_model.model.<module>.lora_A.default.weight -> base_model.model.<module>.lora_A.weight
    return param_name.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")


def grad_norm(params):
    return float(sum(float(p.grad.double().pow(2).sum()) for p in params) ** 0.5)


def run(name):
    spec = SPECS[name]
    base = load_base(name)
    lcfg = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, bias="none",
                      target_modules=list(spec["target_modules"]),
                      fan_in_fan_out=spec["fan_in_fan_out"])
    torch.manual_seed(LORA_A_SEED)
    model = get_peft_model(base, lcfg)
    model.eval()

    lora = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert lora and all((".lora_A." in n or ".lora_B." in n) for n, _ in lora), [n for n, _ in lora]
    g = torch.Generator().manual_seed(LORA_B_SEED)
    with torch.no_grad():
        for n, p in lora:
            if ".lora_B." in n:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * LORA_B_STD)
    params = [p for _, p in lora]
    keys = [adapter_key(n) for n, _ in lora]
    modules = sorted({k.split(".lora_")[0][len("base_model.model."):] for k in keys})
    print(f"[{name}] LoRA on {len(modules)} modules: {modules}")
    for (n, p), k in zip(lora, keys):
        print(f"    {k:70s} {list(p.shape)}")

    # Adapter before training.
    init_dir = os.path.join(REF, name + "_lora_init")
    shutil.rmtree(init_dir, ignore_errors=True)
    model.save_pretrained(init_dir)
    readme = os.path.join(init_dir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    saved = load_file(os.path.join(init_dir, "adapter_model.safetensors"))
    assert sorted(saved) == sorted(keys), (sorted(saved), sorted(keys))
    for (n, p), k in zip(lora, keys):
        assert torch.equal(saved[k], p.detach()), k
    print(f"[{name}] saved adapter: {sorted(os.listdir(init_dir))}")

    batch = make_batch(name)
    dump(os.path.join(REF, name + "_batch.json"), {k: v.tolist() for k, v in batch.items()})

    # Logits before training: merged (fuse reference), unmerged PEFT, base model.
    with torch.no_grad():
        peft_logits = logits_of(name, model, batch)
        with model.disable_adapter():
            base_logits = logits_of(name, model, batch)
        merged = copy.deepcopy(model).merge_and_unload()
        merged.eval()
        merged_logits = logits_of(name, merged, batch)
    d_merge = float((merged_logits - peft_logits).abs().max())
    d_base = float((base_logits - peft_logits).abs().max())
    print(f"[{name}] merged vs unmerged max|diff|={d_merge:.3e}; adapter effect max|diff|={d_base:.3e}")
    assert d_merge < 1e-4
    dump(os.path.join(REF, name + "_merged_logits.json"), {
        "merged": merged_logits.tolist(),
        "peft_unmerged": peft_logits.tolist(),
        "base": base_logits.tolist(),
        "max_abs_diff_merged_vs_unmerged": d_merge,
        "shape": list(merged_logits.shape),
    })

    opt = torch.optim.AdamW(params, lr=OPT["lr"], betas=tuple(OPT["betas"]), eps=OPT["eps"],
                            weight_decay=OPT["weight_decay"])
    losses, norms = [], []
    loss0 = None
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss, logits = loss_of(name, model, batch)
        if step == 0 and name == "gpt2_tiny":
            manual = float(manual_causal_lm_loss(logits.detach(), batch["labels"]))
            print(f"[{name}] HF loss {float(loss.detach()):.8f} vs manual shifted CE {manual:.8f}")
            assert abs(manual - float(loss)) < 1e-6
        loss.backward()
        if step == 0:
            loss0 = float(loss.detach())
            grads = {k: p.grad.detach().clone().contiguous().float() for k, p in zip(keys, params)}
            save_file(grads, os.path.join(REF, name + "_grads.safetensors"))
        losses.append(float(loss.detach()))
        norms.append(grad_norm(params))
        opt.step()
        print(f"[{name}] step {step:2d} loss {losses[-1]:.8f} grad_norm {norms[-1]:.8e}")
    with torch.no_grad():
        final_loss = float(loss_of(name, model, batch)[0])
    print(f"[{name}] loss after {STEPS} steps {final_loss:.8f}")
    save_file({k: p.detach().clone().contiguous() for k, p in zip(keys, params)},
              os.path.join(REF, name + "_lora_trained.safetensors"))

    pcfg = model.peft_config["default"].to_dict()
    ref = {
        "model": name,
        "loss": loss0,
        "losses": losses,
        "grad_norms": norms,
        "final_loss": final_loss,
        "steps": STEPS,
        "loss_definition": (
            "transformers GPT2LMHeadModel(labels=...).loss: logits[:, :-1] vs labels[:, 1:], "
            "mean cross-entropy over positions with label != -100"
            if name == "gpt2_tiny" else
            "torch.nn.functional.cross_entropy(logits [2,3], labels [2]), mean over batch"),
        "grad_norm_definition": "global L2 norm over all lora_A/lora_B grads, before the step, no clipping",
        "optimizer": OPT,
        "peft_config": pcfg,
        "lora": {
            "r": R, "lora_alpha": ALPHA, "scaling": ALPHA / R,
            "fan_in_fan_out": spec["fan_in_fan_out"],
            "fan_in_fan_out_note": ("GPT-2 c_attn/c_proj/c_fc are transformers Conv1D (weight [in, out], "
                                    "y = x @ W + b); PEFT needs fan_in_fan_out=True for them. "
                                    "lora_A is still [r, in] and lora_B [out, r]; "
                                    "delta_W = (B @ A).T * scaling for Conv1D"
                                    if spec["fan_in_fan_out"] else
                                    "nn.Linear (weight [out, in]); delta_W = B @ A * scaling"),
            "modules": modules,
            "lora_A_init": f"PEFT default (kaiming_uniform_, a=sqrt(5)) after torch.manual_seed({LORA_A_SEED})",
            "lora_B_init": (f"torch.randn(shape, generator=torch.Generator().manual_seed({LORA_B_SEED})) "
                            f"* {LORA_B_STD}, in named_parameters() order"),
            "trainable_parameters": int(sum(p.numel() for p in params)),
        },
        "batch_seed": BATCH_SEED,
        "dtype": "float32", "device": "cpu", "mode": "eval",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__},
    }
    dump(os.path.join(REF, name + "_ref.json"), ref)


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.makedirs(REF, exist_ok=True)
    print(f"torch {torch.__version__} transformers {transformers.__version__} peft {peft.__version__}")
    for name in sys.argv[1:] or list(SPECS):
        run(name)
    print("make_refs: OK")


if __name__ == "__main__":
    main()
