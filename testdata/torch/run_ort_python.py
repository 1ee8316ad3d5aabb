#!/usr/bin/env python3
"""Run a loracc training graph unchanged in Python onnxruntime.

Given the folder `loracc export-train` wrote (train.onnx, eval.onnx,
train.json), a batch (testdata/ref/<model>_batch.json) and the PEFT adapter
PyTorch started from (testdata/ref/<model>_lora_init), this runs N AdamW
steps with onnxruntime's CPU provider, once with graph optimizations on and
once with them off, and compares every step's loss (and gradient norm) with
PyTorch + PEFT's (testdata/ref/<model>_ref.json).

Feeds, all taken from train.json:
  role batch / label   the batch's arrays (int64)
  role param           "<module>.lora_A" = lora_A.weightᵀ [in, r],
                       "<module>.lora_B" = lora_B.weightᵀ [r, out]
  role state           zeros of the declared shape (AdamW moments)
  role lr, step        float32 scalars; step counts from 1
After each step every output with "replaces" (updated params and state) is
fed back into the input it names.

Usage (from the repository root, after
  loracc inject testdata/models/gpt2_tiny.onnx --from-adapter testdata/ref/gpt2_tiny_lora_init -o DIR/m.lora.onnx
  loracc export-train DIR/m.lora.onnx --loss lm --logits logits --labels labels --weight-decay 0.01 -o DIR/train):

  python3 testdata/torch/run_ort_python.py DIR/train \
      --batch testdata/ref/gpt2_tiny_batch.json \
      --adapter testdata/ref/gpt2_tiny_lora_init \
      --ref testdata/ref/gpt2_tiny_ref.json \
      --out testdata/ref/portability_gpt2_tiny.json

Exits 1 when a loss differs from PyTorch's by more than --tol (relative).
Needs numpy, onnx, onnxruntime and safetensors.
"""
import argparse
import json
import os
import platform
import sys

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import load_file

PREFIX = "base_model.model."


def load_params(adapter_dir):
    """PEFT adapter -> {"<module>.lora_A": Aᵀ [in, r], "<module>.lora_B": Bᵀ [r, out]}."""
    raw = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    out = {}
    for key, val in raw.items():
        name = key[len(PREFIX):] if key.startswith(PREFIX) else key
        for part in ("lora_A", "lora_B"):
            suffix = "." + part + ".weight"
            if name.endswith(suffix):
                out[name[: -len(suffix)] + "." + part] = np.ascontiguousarray(val.astype(np.float32).T)
    return out


def load_batch(path):
    with open(path) as f:
        return {k: np.asarray(v, dtype=np.int64) for k, v in json.load(f).items()}


def static_shape(entry):
    shape = entry["shape"]
    if any(not isinstance(d, int) for d in shape):
        raise SystemExit(f"state input {entry['name']} has a symbolic shape {shape}")
    return shape


def initial_feeds(spec, batch, params):
    feeds = {}
    for e in spec["inputs"]:
        name, role = e["name"], e["role"]
        if role in ("batch", "label"):
            if name not in batch:
                raise SystemExit(f"the batch has no {name!r} (has {sorted(batch)})")
            feeds[name] = batch[name]
        elif role == "param":
            if name not in params:
                raise SystemExit(f"the adapter has no tensor for param {name!r}")
            want = tuple(e["shape"])
            if params[name].shape != want:
                raise SystemExit(f"param {name}: adapter gives {params[name].shape}, graph wants {want}")
            feeds[name] = params[name]
        elif role == "state":
            feeds[name] = np.zeros(static_shape(e), dtype=np.float32)
        elif role in ("lr", "step"):
            pass  # set per step
        else:
            raise SystemExit(f"input {name!r} has unknown role {role!r}")
    return feeds


def train(model_path, spec, batch, params, lr, steps, optimize):
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    sess = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
    feeds = initial_feeds(spec, batch, params)
    outs = [o["name"] for o in spec["outputs"]]
    by_role = {}
    for o in spec["outputs"]:
        by_role.setdefault(o["role"], o["name"])
    lr_name = next(e["name"] for e in spec["inputs"] if e["role"] == "lr")
    step_name = next(e["name"] for e in spec["inputs"] if e["role"] == "step")
    losses, norms = [], []
    for step in range(1, steps + 1):
        feeds[lr_name] = np.array(lr, dtype=np.float32)
        feeds[step_name] = np.array(step, dtype=np.float32)
        res = dict(zip(outs, sess.run(outs, feeds)))
        losses.append(float(res[by_role["loss"]]))
        if "grad_norm" in by_role:
            norms.append(float(res[by_role["grad_norm"]]))
        for o in spec["outputs"]:
            if o.get("replaces"):
                feeds[o["replaces"]] = res[o["name"]]
    final = {e["name"]: feeds[e["name"]] for e in spec["inputs"] if e["role"] == "param"}
    return losses, norms, final, sess.get_providers()


def max_rel(a, b):
    return max(abs(x - y) / abs(y) for x, y in zip(a, b))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("train_dir", help="folder written by loracc export-train")
    ap.add_argument("--batch", required=True)
    ap.add_argument("--adapter", required=True, help="PEFT adapter folder the run starts from")
    ap.add_argument("--ref", required=True, help="<model>_ref.json from make_refs.py")
    ap.add_argument("--trained", help="PEFT weights after training (<model>_lora_trained.safetensors)")
    ap.add_argument("--steps", type=int, default=0, help="default: as many as the reference has")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--out", help="write the result as JSON here")
    args = ap.parse_args()

    with open(os.path.join(args.train_dir, "train.json")) as f:
        io = json.load(f)
    with open(args.ref) as f:
        ref = json.load(f)
    steps = args.steps or len(ref["losses"])
    lr = ref["optimizer"]["lr"]
    batch = load_batch(args.batch)
    params = load_params(args.adapter)
    train_path = os.path.join(args.train_dir, "train.onnx")

    # Only standard ops: every node and opset import in the default domain.
    domains = {}
    for name in ("train.onnx", "eval.onnx"):
        m = onnx.load(os.path.join(args.train_dir, name))
        ds = {n.domain or "ai.onnx" for n in m.graph.node} | {o.domain or "ai.onnx" for o in m.opset_import}
        domains[name] = {"domains": sorted(ds), "nodes": len(m.graph.node),
                         "opset": [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")]}

    result = {
        "what": "loracc export-train graph run unchanged in Python onnxruntime (CPU), "
                "AdamW steps fed back through train.json's 'replaces', vs PyTorch + PEFT",
        "model": ref.get("model"),
        "train_dir_files": sorted(os.listdir(args.train_dir)),
        "graphs": domains,
        "steps": steps,
        "lr": lr,
        "tolerance_rel": args.tol,
        "pytorch_losses": ref["losses"][:steps],
        "pytorch_grad_norms": ref.get("grad_norms", [])[:steps],
        "versions": {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "runs": {},
    }
    ok = all(d["domains"] == ["ai.onnx"] for d in domains.values())
    trained = load_file(args.trained) if args.trained else None
    for optimize in (True, False):
        key = "optimizations_on" if optimize else "optimizations_off"
        losses, norms, final, providers = train(train_path, io["train"], batch, params, lr, steps, optimize)
        run = {"providers": providers, "losses": losses, "grad_norms": norms,
               "max_rel_diff_loss": max_rel(losses, ref["losses"][:steps])}
        if norms and ref.get("grad_norms"):
            run["max_rel_diff_grad_norm"] = max_rel(norms, ref["grad_norms"][:steps])
        if trained is not None and steps == len(ref["losses"]):
            worst = 0.0
            for key_t, val in trained.items():
                name = key_t[len(PREFIX):] if key_t.startswith(PREFIX) else key_t
                for part in ("lora_A", "lora_B"):
                    suffix = "." + part + ".weight"
                    if name.endswith(suffix):
                        p = final[name[: -len(suffix)] + "." + part]
                        worst = max(worst, float(np.max(np.abs(p.T - val))))
            run["max_abs_diff_trained_weights"] = worst
        run["pass"] = run["max_rel_diff_loss"] <= args.tol
        ok = ok and run["pass"]
        result["runs"][key] = run
        print(f"{key}: max relative loss difference {run['max_rel_diff_loss']:.3g} "
              f"({'ok' if run['pass'] else 'FAIL'}), providers {providers}")
    result["pass"] = ok
    text = json.dumps(result, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text if not args.out else f"wrote {args.out}")
    print("step  pytorch      ort(opt on)  ort(opt off)")
    for i in range(steps):
        print(f"{i + 1:4d}  {ref['losses'][i]:.7f}  {result['runs']['optimizations_on']['losses'][i]:.7f}  "
              f"{result['runs']['optimizations_off']['losses'][i]:.7f}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
