#!/usr/bin/env python3
"""The tables of docs/quality.md from one bench/quality work folder
(standard library only, so it also runs on the development machine on the
files a GPU call brought back).

Reads WORK/pretrain.json, WORK/tokenizer_check.json, WORK/arms/sweep.json,
WORK/arms/rows_torch.jsonl, WORK/arms/rows_loracc.jsonl and
WORK/arms/cpu_vs_cuda.json (whichever exist); prints Markdown and writes it
to --md, the aggregates to --json.

Statistics: mean ± σ over seeds, σ the sample standard deviation. Pass
rule per LoRA config, on the downstream held-out loss: |mean(loracc) −
mean(PEFT)| ≤ 2σ with σ = sqrt((σ_PEFT² + σ_loracc²) / 2), which needs at
least two seeds on each side. "Gap closed" is how much of full fine-tuning's
gain over the base model a LoRA config gets:
(loss_base − loss_LoRA) / (loss_base − loss_full).

  python3 bench/quality/summarize.py WORK [--md FILE] [--json FILE]
"""
import argparse
import json
import math
import os
import statistics


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_rows(path):
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except OSError:
        return []


def stats(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    sd = statistics.stdev(xs) if len(xs) > 1 else None
    return {"mean": statistics.fmean(xs), "sd": sd, "n": len(xs)}


def fmt(s, digits=4):
    if s is None:
        return "–"
    if s["sd"] is None:
        return f"{s['mean']:.{digits}f} (n=1)"
    return f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"


METRICS = ("downstream_loss", "downstream_ppl", "downstream_acc", "em8", "pretrain_ppl", "trainable_share", "train_s")


def group(rows):
    """Rows by (impl, target, rank) with their metrics' stats over seeds."""
    out = {}
    for r in rows:
        if r.get("failed"):
            key = (r["impl"], r.get("target"), r.get("rank"))
            out.setdefault(key, {"rows": [], "failed": 0})["failed"] += 1
            continue
        key = (r["impl"], r["target"], r["rank"])
        out.setdefault(key, {"rows": [], "failed": 0})["rows"].append(r)
    for g in out.values():
        for m in METRICS:
            g[m] = stats([r.get(m) for r in g["rows"]])
        g["trainable"] = g["rows"][0]["trainable"] if g["rows"] else None
        g["tokens"] = g["rows"][0].get("tokens") if g["rows"] else None
        g["seeds"] = sorted(r["seed"] for r in g["rows"])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("work")
    ap.add_argument("--md")
    ap.add_argument("--json")
    a = ap.parse_args()
    w = a.work
    pre = read_json(os.path.join(w, "pretrain.json")) or {}
    tok = read_json(os.path.join(w, "tokenizer_check.json"))
    sweep = read_json(os.path.join(w, "arms", "sweep.json"))
    cc = read_json(os.path.join(w, "arms", "cpu_vs_cuda.json"))
    rows = read_rows(os.path.join(w, "arms", "rows_torch.jsonl")) + read_rows(os.path.join(w, "arms", "rows_loracc.jsonl"))
    g = group(rows)
    md = []
    summary = {"pretrain": {}, "groups": {}, "pass": {}, "gap_closed": {}}

    if pre:
        p = pre.get("pretrain", {})
        md += ["### Pretrained model", ""]
        if pre.get("smoke"):
            md += ["**Smoke run (tiny model, a slice of the corpus): these numbers test the pipeline only.**", ""]
        q = pre.get("int8_onnx", {})
        md += [f"- shape {pre.get('shape')}, {pre.get('parameters')} parameters",
               f"- pretraining: {p.get('steps')} steps × {p.get('batch')} × {p.get('ctx')} tokens = {p.get('tokens')} tokens "
               f"({p.get('epochs', 0):.2f} epochs of pretrain_train), {p.get('wall_s', 0):.0f} s, "
               f"{p.get('tokens_per_s', 0):.0f} tokens/s, {p.get('precision')}",
               f"- pretraining held-out perplexity: {pre.get('heldout_before_rounding', {}).get('ppl', float('nan')):.3f} "
               f"before int8 rounding, {pre.get('heldout_pretrain', {}).get('ppl', float('nan')):.3f} after "
               f"(the model from then on)",
               f"- int8 ONNX: {q.get('bytes', 0) / 1e6:.2f} MB, ORT vs torch max |Δlogit| {q.get('ort_max_abs_diff')}"
               + (f" — failed: {q['failed']}" if "failed" in q else ""),
               f"- float32 export: {pre.get('export', {}).get('attn')} attention, ORT vs torch max |Δlogit| "
               f"{pre.get('export', {}).get('ort_max_abs_diff')}"]
        if tok:
            md += [f"- loracc's tokenizer reader vs HF tokenizers: {tok.get('equal')}/{tok.get('records')} records identical "
                   f"({tok.get('tokens')} tokens)" + ("" if tok.get("ok") else f", first mismatch {tok.get('first_mismatch')}")]
        md += [""]
        summary["pretrain"] = {k: pre.get(k) for k in ("parameters", "heldout_pretrain", "heldout_before_rounding", "int8_onnx")}

    if sweep:
        md += ["### Learning rates (seed 0, rank 8, downstream valid loss)", "",
               "| family | lr → valid loss | chosen |", "|---|---|---|"]
        for fam, lrs in sweep["grid"].items():
            runs = [r for r in sweep["runs"] if r.get("family") == fam]
            cells = ", ".join(f"{r['lr']:g} → {r['valid_loss']:.4f}" for r in runs)
            edge = " (grid edge)" if sweep.get("at_grid_edge", {}).get(fam) else ""
            md += [f"| {fam} | {cells} | {sweep['chosen'][fam]:g}{edge} |"]
        md += [""]

    base = g.get(("base", "none", 0))
    full = g.get(("torch", "full", 0))
    base_loss = base["downstream_loss"]["mean"] if base and base["downstream_loss"] else None
    base_pre = base["pretrain_ppl"]["mean"] if base and base["pretrain_ppl"] else None
    full_loss = full["downstream_loss"]["mean"] if full and full["downstream_loss"] else None
    if g:
        md += ["### Downstream adaptation (what's new), mean ± σ over seeds", "",
               "| arm | impl | trainable | share | held-out loss | held-out ppl | next-token acc | EM@8 | pretrain ppl (forgetting) | seeds | train s |",
               "|---|---|---|---|---|---|---|---|---|---|---|"]
        order = [("base", "none", 0), ("torch", "full", 0)]
        for target in ("attn", "all"):
            for rank in sorted({k[2] for k in g if k[1] == target}):
                order += [("peft", target, rank), ("loracc-cuda", target, rank)]
        for key in order:
            x = g.get(key)
            if not x:
                continue
            impl, target, rank = key
            arm = {"none": "base", "full": "full fine-tuning"}.get(target, f"LoRA {target} r={rank}")
            pp = x["pretrain_ppl"]
            forget = fmt(pp, 3) + (f" (Δ {pp['mean'] - base_pre:+.3f})" if pp and base_pre and impl != "base" else "")
            share = x["trainable_share"]["mean"] if x["trainable_share"] else 0
            failed = f", {x['failed']} failed" if x["failed"] else ""
            md += [f"| {arm} | {impl} | {x['trainable']} | {share * 100:.3f}% | {fmt(x['downstream_loss'])} | "
                   f"{fmt(x['downstream_ppl'], 3)} | {fmt(x['downstream_acc'])} | {fmt(x['em8'], 3)} | {forget} | "
                   f"{len(x['seeds'])}{failed} | {fmt(x['train_s'], 1)} |"]
            summary["groups"]["/".join(map(str, key))] = {m: x[m] for m in METRICS} | {"seeds": x["seeds"], "failed": x["failed"]}
        md += [""]

        md += ["### loracc against PEFT (pass: |Δ mean| ≤ 2σ on the held-out loss)", "",
               "| config | PEFT | loracc | Δ mean | 2σ | pass | max per-seed \\|Δ\\| | loss-curve max rel. diff | gap closed (PEFT) |",
               "|---|---|---|---|---|---|---|---|---|"]
        for key in order:
            if key[0] != "peft":
                continue
            p, l = g.get(key), g.get(("loracc-cuda", key[1], key[2]))
            if not p or not l or not p["downstream_loss"] or not l["downstream_loss"]:
                continue
            ps, ls = p["downstream_loss"], l["downstream_loss"]
            d = ls["mean"] - ps["mean"]
            if ps["sd"] is not None and ls["sd"] is not None:
                sigma = math.sqrt((ps["sd"] ** 2 + ls["sd"] ** 2) / 2)
                ok = abs(d) <= 2 * sigma
                rule = f"{2 * sigma:.2e}"
                verdict = "yes" if ok else "**no**"
            else:
                sigma, ok, rule, verdict = None, None, "–", "n/a (one seed)"
            by_seed_p = {r["seed"]: r["downstream_loss"] for r in p["rows"]}
            per_seed = [abs(r["downstream_loss"] - by_seed_p[r["seed"]]) for r in l["rows"] if r["seed"] in by_seed_p]
            curve = [r.get("curve_max_rel_diff_vs_peft") for r in l["rows"] if r.get("curve_max_rel_diff_vs_peft") is not None]
            gap = (base_loss - ps["mean"]) / (base_loss - full_loss) if base_loss is not None and full_loss is not None \
                and base_loss != full_loss else None
            name = f"{key[1]} r={key[2]}"
            md += [f"| {name} | {fmt(ps)} | {fmt(ls)} | {d:+.2e} | {rule} | {verdict} | "
                   f"{max(per_seed):.2e} | {max(curve):.2e} | {'–' if gap is None else f'{gap:.2f}'} |"
                   if per_seed and curve else
                   f"| {name} | {fmt(ps)} | {fmt(ls)} | {d:+.2e} | {rule} | {verdict} | – | – | {'–' if gap is None else f'{gap:.2f}'} |"]
            summary["pass"][name] = {"delta": d, "sigma": sigma, "pass": ok, "max_per_seed": max(per_seed) if per_seed else None,
                                     "curve_max_rel": max(curve) if curve else None}
            summary["gap_closed"][name] = gap
        md += [""]

    if cc:
        md += ["### loracc on the CPU against CUDA", ""]
        if isinstance(cc.get("cpu"), dict) and isinstance(cc.get("cuda"), dict):
            md += [f"job {cc['job']}, {cc['cpu']['steps']} steps: loss columns max relative difference "
                   f"{cc.get('loss_max_rel_diff', float('nan')):.2e}, eval loss {cc['cpu']['eval_loss']} (CPU) vs "
                   f"{cc['cuda']['eval_loss']} (CUDA), adapters max |Δ| {cc.get('adapter_max_abs_diff', float('nan')):.2e} "
                   f"(largest value {cc.get('adapter_max_abs', float('nan')):.3g}); {cc.get('tolerance')}: "
                   f"{'equal' if cc.get('equal') else '**not equal**'}", ""]
        else:
            md += [f"incomplete: {cc}", ""]
        summary["cpu_vs_cuda"] = cc

    text = "\n".join(md) + "\n"
    print(text)
    if a.md:
        with open(a.md, "w") as f:
            f.write(text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=1, sort_keys=True, default=str)


if __name__ == "__main__":
    main()
