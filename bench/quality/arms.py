#!/usr/bin/env python3
"""The comparison of issue 14 (docs/quality.md): adapting the pretrained
model to the what's-new section with full fine-tuning, PEFT LoRA and
loracc LoRA, scored by one evaluator.

Subcommands (WORK is the folder pretrain.py wrote: model/, data/,
model.fp32.onnx; everything here goes to WORK/arms/):

  data     rebuild WORK/data from the corpus and model/tokenizer.json if it
           is missing (a fresh machine with only the model carried)
  sweep    PyTorch only, seed 0: each family's learning rate (full
           fine-tuning, LoRA on attention, LoRA on all linear layers, rank
           8) picked from a small grid by the downstream *valid* loss
           -> arms/sweep.json
  prepare  the plan: for every LoRA config and seed, PEFT's initial adapter
           (get_peft_model after torch.manual_seed(1000 + seed): A kaiming-
           uniform, B = 0) saved with save_pretrained -> arms/init/NAME/,
           arms/plan.json and arms/plan.tsv (one loracc job a line, read by
           run.sh); exports model.fp32.onnx again if it is missing
  torch    base, full fine-tuning and every PEFT job of the plan
           -> arms/rows_torch.jsonl, arms/curves/NAME.torch.json
  loracc   scores each loracc run of the plan (RUN/adapter, loaded with
           PeftModel.from_pretrained on the same base) with the same
           evaluator -> arms/rows_loracc.jsonl
  cpucuda  compares the CPU and CUDA loracc runs of one job
           -> arms/cpu_vs_cuda.json

Every arm sees the same examples in the same order: the order `loracc
train --seed S --batch-size B` visits them (dataset.Order through the Go
helper bench/gpu/order, .gpu/bin/order), for the same number of steps
(EPOCHS passes over downstream_train); AdamW (0.9, 0.999, eps 1e-8, no
weight decay), clip 1.0, cosine schedule with warmup. Metrics, all from
common.evaluate and common.continuation_em in float32: downstream
held-out loss, perplexity, next-token accuracy, greedy 8-token
continuation exact match; pretraining held-out perplexity (forgetting).
"""
import argparse
import csv
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import log  # noqa: E402

TARGETS = {  # PEFT target_modules
    "attn": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "all": "all-linear",
}
RANKS = (4, 8, 16)
SEEDS = (0, 1, 2)
DEFAULT_LR = {"full": 3e-4, "attn": 2e-3, "all": 2e-3}
GRID = {"full": (3e-4, 1e-3, 3e-3), "attn": (2e-3, 5e-3, 1e-2, 2e-2), "all": (2e-3, 5e-3, 1e-2, 2e-2)}
BATCH, EPOCHS, WARMUP_FRAC, CLIP = 16, 2, 0.05, 1.0
EM_PROMPT, EM_K = 128, 8


class Ctx:
    """Paths and the protocol's numbers for one WORK folder."""

    def __init__(self, a):
        self.work, self.smoke, self.order_bin, self.corpus = a.work, a.smoke, a.order, a.corpus
        self.model_dir, self.data_dir = os.path.join(a.work, "model"), os.path.join(a.work, "data")
        self.dir = os.path.join(a.work, "arms")
        os.makedirs(os.path.join(self.dir, "curves"), exist_ok=True)
        self.batch = BATCH
        self.seeds = SEEDS[:1] if a.smoke else SEEDS
        self.ranks = RANKS[:1] if a.smoke else RANKS

    def data(self):
        d = {k: common.read_token_jsonl(os.path.join(self.data_dir, k + ".tokens.jsonl"))
             for k in ("downstream_train", "downstream_valid", "downstream_heldout", "pretrain_heldout")}
        return d

    def steps(self, n):
        steps = EPOCHS * -(-n // self.batch)
        return min(steps, 6) if self.smoke else steps

    def lrs(self):
        p = os.path.join(self.dir, "sweep.json")
        if os.path.exists(p):
            return json.load(open(p))["chosen"]
        return dict(DEFAULT_LR)


def base_model(ctx):
    model, shape = common.load_q8(ctx.model_dir)
    return model, shape


def scores(model, d):
    down = common.evaluate(model, d["downstream_heldout"])
    pre = common.evaluate(model, d["pretrain_heldout"])
    ctx_len = max(len(e) for e in d["downstream_heldout"])
    em = common.continuation_em(model, d["downstream_heldout"], min(EM_PROMPT, ctx_len - EM_K), EM_K)
    return {"downstream_loss": down["loss"], "downstream_ppl": down["ppl"], "downstream_acc": down["acc"],
            "downstream_tokens": down["tokens"], "em8": em["em"], "em8_prefix": em["prefix"], "em8_prompts": em["prompts"],
            "pretrain_loss": pre["loss"], "pretrain_ppl": pre["ppl"], "pretrain_tokens": pre["tokens"]}


def lora_config(target, rank):
    from peft import LoraConfig
    return LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, bias="none", target_modules=TARGETS[target])


def run_arm(ctx, d, kind, target, rank, seed, lr, split="downstream_train", init=None, steps=None):
    """Trains one arm in PyTorch and returns (model, row, losses)."""
    from peft import PeftModel, get_peft_model
    torch.backends.cuda.matmul.allow_tf32 = True  # as ONNX Runtime's CUDA provider computes float32 GEMMs
    model, shape = base_model(ctx)
    total = model.num_parameters()
    if kind == "full":
        params = [p for p in model.parameters()]
    else:
        if init:
            model = PeftModel.from_pretrained(model, init, is_trainable=True)
        else:
            torch.manual_seed(1000 + seed)
            model = get_peft_model(model, lora_config(target, rank))
        params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    train_ex = d[split]
    data = torch.tensor(train_ex, dtype=torch.long, device="cuda")
    steps = steps or ctx.steps(len(train_ex))
    warmup = int(WARMUP_FRAC * steps)
    batches = common.loracc_batches(ctx.order_bin, len(train_ex), ctx.batch, seed, steps)
    torch.cuda.synchronize()
    t0 = time.time()
    losses = common.train(model, params, data, batches, lr, warmup, CLIP, tag=f"{kind}-{target}-r{rank}-s{seed}",
                          log_every=max(1, steps // 4))
    torch.cuda.synchronize()
    row = {"kind": kind, "target": target, "rank": rank, "alpha": 2 * rank if rank else 0, "seed": seed, "lr": lr,
           "steps": steps, "batch": ctx.batch, "warmup": warmup, "ctx": shape["ctx"],
           "tokens": sum(len(b) for b in batches) * shape["ctx"], "trainable": trainable, "total": total,
           "trainable_share": trainable / total, "train_s": time.time() - t0,
           "first_loss": losses[0], "last_loss": losses[-1]}
    return model, row, losses


def name_of(target, rank, seed):
    return f"{target}-r{rank}-s{seed}"


def cmd_data(ctx):
    if os.path.exists(os.path.join(ctx.data_dir, "downstream_train.tokens.jsonl")):
        log(f"{ctx.data_dir} is there")
        return
    tok = common.load_tokenizer(ctx.model_dir)
    shape = json.load(open(os.path.join(ctx.model_dir, "quality_shape.json")))
    common.make_data(tok, common.read_splits(ctx.corpus, ctx.smoke), shape["ctx"], ctx.data_dir)


def cmd_sweep(ctx):
    d = ctx.data()
    res = {"grid": GRID, "seed": 0, "rank": 8 if not ctx.smoke else ctx.ranks[0], "split": "downstream_valid", "runs": []}
    chosen = {}
    for fam, lrs in GRID.items():
        best = None
        for lr in lrs:
            kind = "full" if fam == "full" else "lora"
            model, row, _ = run_arm(ctx, d, kind, fam if kind == "lora" else "full", 0 if kind == "full" else res["rank"], 0, lr)
            ev = common.evaluate(model, d["downstream_valid"])
            row.update(valid_loss=ev["loss"], family=fam)
            res["runs"].append(row)
            log(f"sweep {fam} lr {lr:g}: valid loss {ev['loss']:.4f}")
            if best is None or ev["loss"] < best[1]:
                best = (lr, ev["loss"])
            del model
        chosen[fam] = best[0]
        res.setdefault("at_grid_edge", {})[fam] = best[0] in (lrs[0], lrs[-1])
    res["chosen"] = chosen
    common.write_json(os.path.join(ctx.dir, "sweep.json"), res)
    log(f"chosen learning rates: {chosen}")


def cmd_prepare(ctx):
    from peft import get_peft_model
    fp32 = os.path.join(ctx.work, "model.fp32.onnx")
    if not os.path.exists(fp32):  # a fresh machine: export again from the carried weights
        import pretrain
        from transformers import LlamaForCausalLM
        model, shape = base_model(ctx)
        pre = os.path.join(ctx.work, "pretrain.json")  # the attention the first export used
        attn = (json.load(open(pre)).get("export") or {}).get("attn", "sdpa") if os.path.exists(pre) else "sdpa"
        cpu = LlamaForCausalLM(common.llama_config(shape, attn))
        cpu.load_state_dict(model.state_dict())
        cpu.eval()
        pretrain.export_onnx(cpu, fp32, shape["vocab"])
        log(f"exported {fp32}: ORT vs torch {pretrain.ort_diff(fp32, cpu, shape['vocab'], shape['ctx']):.3g}")
    d = ctx.data()
    n = len(d["downstream_train"])
    steps = ctx.steps(n)
    lrs = ctx.lrs()
    jobs = []
    for target in TARGETS:
        for rank in ctx.ranks:
            for seed in ctx.seeds:
                name = name_of(target, rank, seed)
                init = os.path.join(ctx.dir, "init", name)
                if not os.path.exists(os.path.join(init, "adapter_model.safetensors")):
                    model, _ = base_model(ctx)
                    torch.manual_seed(1000 + seed)
                    pm = get_peft_model(model, lora_config(target, rank))
                    pm.save_pretrained(init)
                    readme = os.path.join(init, "README.md")
                    if os.path.exists(readme):
                        os.remove(readme)
                    del pm, model
                jobs.append({"name": name, "target": target, "rank": rank, "seed": seed, "lr": lrs[target],
                             "steps": steps, "warmup": int(WARMUP_FRAC * steps), "batch": ctx.batch, "init": init})
    plan = {"jobs": jobs, "examples": n, "steps": steps, "batch": ctx.batch, "epochs": EPOCHS, "clip": CLIP,
            "lrs": lrs, "smoke": ctx.smoke,
            "data": {"train": os.path.join(ctx.data_dir, "downstream_train.tokens.jsonl"),
                     "eval": os.path.join(ctx.data_dir, "downstream_heldout.tokens.jsonl")}}
    common.write_json(os.path.join(ctx.dir, "plan.json"), plan)
    with open(os.path.join(ctx.dir, "plan.tsv"), "w") as f:  # name seed lr steps warmup batch init
        for j in jobs:
            f.write(f"{j['name']}\t{j['seed']}\t{j['lr']!r}\t{j['steps']}\t{j['warmup']}\t{j['batch']}\t{j['init']}\n")
    log(f"plan: {len(jobs)} LoRA jobs, {steps} steps of {ctx.batch} examples ({n} examples, {EPOCHS} epochs)")


def append_row(path, row):
    with open(path, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")


def cmd_torch(ctx):
    plan = json.load(open(os.path.join(ctx.dir, "plan.json")))
    d = ctx.data()
    out = os.path.join(ctx.dir, "rows_torch.jsonl")
    if os.path.exists(out):
        os.remove(out)
    model, _ = base_model(ctx)
    row = {"impl": "base", "kind": "base", "target": "none", "rank": 0, "seed": 0, "trainable": 0,
           "total": model.num_parameters(), "trainable_share": 0.0, "tokens": 0, **scores(model, d)}
    append_row(out, row)
    log(f"base: downstream ppl {row['downstream_ppl']:.3f}, pretrain ppl {row['pretrain_ppl']:.3f}, em8 {row['em8']:.3f}")
    del model
    for seed in ctx.seeds:
        model, row, losses = run_arm(ctx, d, "full", "full", 0, seed, plan["lrs"]["full"])
        row.update(impl="torch", **scores(model, d))
        append_row(out, row)
        common.write_json(os.path.join(ctx.dir, "curves", f"full-s{seed}.torch.json"), losses)
        log(f"full s{seed}: downstream ppl {row['downstream_ppl']:.3f}, pretrain ppl {row['pretrain_ppl']:.3f}")
        del model
    for j in plan["jobs"]:
        model, row, losses = run_arm(ctx, d, "lora", j["target"], j["rank"], j["seed"], j["lr"], init=j["init"],
                                     steps=j["steps"])
        row.update(impl="peft", name=j["name"], **scores(model, d))
        append_row(out, row)
        common.write_json(os.path.join(ctx.dir, "curves", j["name"] + ".torch.json"), losses)
        log(f"peft {j['name']}: downstream ppl {row['downstream_ppl']:.3f}, pretrain ppl {row['pretrain_ppl']:.3f}, "
            f"{row['train_s']:.1f} s")
        del model


def read_metrics(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["loss"]) for r in rows]
    ev = [float(r["eval_loss"]) for r in rows if r.get("eval_loss") not in (None, "", "NaN", "nan")]
    tps = [float(r["tokens_per_s"]) for r in rows[min(8, max(0, len(rows) - 1)):]]  # steps 9+: past the warm-up
    return losses, (ev[-1] if ev else None), (statistics.median(tps) if tps else None)


def loracc_row(ctx, d, j, run, impl):
    from peft import PeftModel
    model, _ = base_model(ctx)
    params_total = model.num_parameters()
    pm = PeftModel.from_pretrained(model, os.path.join(run, "adapter"))
    trainable = sum(p.numel() for n, p in pm.named_parameters() if "lora_" in n)
    losses, eval_loss, tps = read_metrics(os.path.join(run, "metrics.csv"))
    wall = None
    if os.path.exists(os.path.join(run, "..", "wall_s.txt")):
        wall = float(open(os.path.join(run, "..", "wall_s.txt")).read().split()[0])
    row = {"impl": impl, "kind": "lora", "name": j["name"], "target": j["target"], "rank": j["rank"],
           "alpha": 2 * j["rank"], "seed": j["seed"], "lr": j["lr"], "steps": len(losses), "batch": j["batch"],
           "trainable": trainable, "total": params_total, "trainable_share": trainable / params_total,
           "first_loss": losses[0], "last_loss": losses[-1], "loracc_eval_loss": eval_loss,
           "loracc_tokens_per_s": tps, "train_s": wall, **scores(pm, d)}
    return row, losses


def cmd_loracc(ctx):
    plan = json.load(open(os.path.join(ctx.dir, "plan.json")))
    d = ctx.data()
    out = os.path.join(ctx.dir, "rows_loracc.jsonl")
    if os.path.exists(out):
        os.remove(out)
    for j in plan["jobs"]:
        run = os.path.join(ctx.dir, "loracc", j["name"], "run")
        if not os.path.exists(os.path.join(run, "adapter", "adapter_model.safetensors")) or \
                not read_metrics(os.path.join(run, "metrics.csv"))[0]:
            log(f"loracc {j['name']}: no adapter in {run} (the run failed or did not run)")
            append_row(out, {"impl": "loracc-cuda", "name": j["name"], "target": j["target"], "rank": j["rank"],
                             "seed": j["seed"], "failed": True})
            continue
        row, losses = loracc_row(ctx, d, j, run, "loracc-cuda")
        tl = os.path.join(ctx.dir, "curves", j["name"] + ".torch.json")
        if os.path.exists(tl):
            ref = json.load(open(tl))
            k = min(len(ref), len(losses))
            rel = [abs(losses[i] - ref[i]) / abs(ref[i]) for i in range(k)]
            row["curve_max_rel_diff_vs_peft"] = max(rel) if rel else None
            row["curve_last_rel_diff_vs_peft"] = rel[-1] if rel else None
        append_row(out, row)
        log(f"loracc {j['name']}: downstream ppl {row['downstream_ppl']:.3f} (loracc's own eval loss "
            f"{row['loracc_eval_loss']}), curve vs PEFT max rel {row.get('curve_max_rel_diff_vs_peft')}")


def cmd_cpucuda(ctx):
    """The CPU and CUDA runs of one job (run.sh: arms/loracc/NAME/run_cpu, run_cuda)."""
    from safetensors.torch import load_file
    plan = json.load(open(os.path.join(ctx.dir, "plan.json")))
    j = next(x for x in plan["jobs"] if x["name"] == os.environ.get("CPU_JOB", plan["jobs"][0]["name"]))
    base = os.path.join(ctx.dir, "cpucuda", j["name"])
    res = {"job": j["name"]}
    runs = {}
    for dev in ("cpu", "cuda"):
        p = os.path.join(base, "run_" + dev)
        if not os.path.exists(os.path.join(p, "metrics.csv")):
            res[dev] = "missing"
            continue
        m = read_metrics(os.path.join(p, "metrics.csv"))
        if not m[0]:
            res[dev] = "no steps (see " + os.path.join(base, "tmp_" + dev, "train.log") + ")"
            continue
        runs[dev] = m
        res[dev] = {"steps": len(runs[dev][0]), "first_loss": runs[dev][0][0], "last_loss": runs[dev][0][-1],
                    "eval_loss": runs[dev][1], "tokens_per_s": runs[dev][2]}
    if len(runs) == 2:
        a, b = runs["cpu"][0], runs["cuda"][0]
        rel = [abs(x - y) / abs(x) for x, y in zip(a, b)]
        res["loss_max_rel_diff"] = max(rel)
        res["eval_loss_rel_diff"] = (abs(runs["cpu"][1] - runs["cuda"][1]) / abs(runs["cpu"][1])
                                     if runs["cpu"][1] and runs["cuda"][1] else None)
        wa = load_file(os.path.join(base, "run_cpu", "adapter", "adapter_model.safetensors"))
        wb = load_file(os.path.join(base, "run_cuda", "adapter", "adapter_model.safetensors"))
        res["adapter_max_abs_diff"] = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
        res["adapter_max_abs"] = max(float(wa[k].abs().max()) for k in wa)
        res["tolerance"] = "loss columns within 1e-3 relative (TF32 GEMMs on CUDA against float32 on the CPU)"
        res["equal"] = res["loss_max_rel_diff"] <= 1e-3
    common.write_json(os.path.join(ctx.dir, "cpu_vs_cuda.json"), res)
    log(f"cpu vs cuda: {res}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cmd", choices=["data", "sweep", "prepare", "torch", "loracc", "cpucuda"])
    ap.add_argument("--work", required=True)
    ap.add_argument("--corpus", help="corpus.sh's folder (for data)")
    ap.add_argument("--order", default=".gpu/bin/order", help="the bench/gpu/order binary")
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    ctx = Ctx(a)
    {"data": cmd_data, "sweep": cmd_sweep, "prepare": cmd_prepare, "torch": cmd_torch, "loracc": cmd_loracc,
     "cpucuda": cmd_cpucuda}[a.cmd](ctx)


if __name__ == "__main__":
    main()
