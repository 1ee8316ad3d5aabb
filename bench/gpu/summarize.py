#!/usr/bin/env python3
"""Summarise one bench/gpu work folder (standard library only).

Reads DIR/torch_summary.json, DIR/torch_<mode>.json, DIR/run/metrics.csv,
DIR/mem_*.txt, DIR/train_wall.txt and DIR/latency.jsonl; prints a text
summary and writes DIR/summary.json.

loracc's metrics.csv counts the tokens the lm loss counts, batch*(seq-1)
per step; its step time is that count / tokens_per_s, and tokens/s here are
re-expressed per batch*seq tokens like the PyTorch side's.

  python3 bench/gpu/summarize.py /root/bench/gpt2
"""
import csv
import json
import os
import statistics
import sys


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def mem_peak(path):
    try:
        with open(path) as f:
            vals = [int(x) for x in f.read().split() if x.strip().isdigit()]
        return max(vals) if vals else None
    except OSError:
        return None


def main():
    d = sys.argv[1]
    ts = read_json(os.path.join(d, "torch_summary.json")) or {}
    out = {"model": ts.get("model"), "parameters": ts.get("parameters"), "lora": ts.get("lora"),
           "versions": ts.get("versions"), "export_s": ts.get("export_s"),
           "export_max_abs_diff_vs_torch": ts.get("export_max_abs_diff_vs_torch"),
           "torch_forward_ms": ts.get("forward_ms"), "torch": {}, "loracc": {}}
    modes = {}
    for mode in ("fp32", "tf32", "bf16"):
        r = read_json(os.path.join(d, f"torch_{mode}.json"))
        if r:
            modes[mode] = r
            out["torch"][mode] = {k: r[k] for k in ("tokens_per_s", "median_step_ms", "max_memory_allocated_gib",
                                                    "max_memory_reserved_gib", "device_used_at_end_gib")}
            out["torch"][mode]["losses"] = r["losses"]
    out["torch_process_gpu_peak_mib"] = mem_peak(os.path.join(d, "mem_torch.txt"))

    rows = []
    try:
        with open(os.path.join(d, "run", "metrics.csv")) as f:
            rows = list(csv.DictReader(f))
    except OSError:
        pass
    batch = modes.get("fp32", {}).get("batch", 8)
    seq = modes.get("fp32", {}).get("seq", 512)
    if rows:
        counted = batch * (seq - 1)
        step_ms = [counted / float(r["tokens_per_s"]) * 1e3 for r in rows]
        losses = [float(r["loss"]) for r in rows]
        steady = step_ms[5:] if len(step_ms) > 5 else step_ms
        med = statistics.median(steady)
        lo = {"steps": len(rows), "median_step_ms": med, "tokens_per_s": batch * seq / med * 1e3,
              "first_step_ms": step_ms[0], "losses": losses}
        idle = mem_peak(os.path.join(d, "mem_idle.txt")) or 0
        peak = mem_peak(os.path.join(d, "mem_loracc_train.txt"))
        lo["gpu_mem_peak_mib"] = peak
        lo["gpu_mem_idle_mib"] = idle
        try:
            with open(os.path.join(d, "train_wall.txt")) as f:
                lo["train_wall"] = f.read().strip()
        except OSError:
            pass
        for mode, r in modes.items():
            if mode == "bf16":
                continue
            ref = r["losses"][:len(losses)]
            rel = [abs(a - b) / abs(b) for a, b in zip(losses, ref)]
            lo[f"max_rel_diff_vs_torch_{mode}"] = max(rel)
            lo[f"step1_rel_diff_vs_torch_{mode}"] = rel[0]
        out["loracc"] = lo
    lat = []
    try:
        with open(os.path.join(d, "latency.jsonl")) as f:
            lat = [json.loads(line) for line in f if line.strip()]
    except OSError:
        pass
    out["latency"] = lat
    with open(os.path.join(d, "summary.json"), "w") as f:
        json.dump(out, f, indent=1)

    print(f"model {out['model']} ({(out['parameters'] or 0) / 1e6:.1f}M params), LoRA {json.dumps(out['lora'])}")
    print(f"{'run':22s} {'tokens/s':>10s} {'step ms':>9s} {'peak GiB':>22s}  loss first -> last")
    for mode, r in out["torch"].items():
        print(f"{'PyTorch+PEFT ' + mode:22s} {r['tokens_per_s']:10.0f} {r['median_step_ms']:9.1f} "
              f"{r['max_memory_allocated_gib']:6.2f} alloc {r['device_used_at_end_gib']:5.2f} dev  "
              f"{r['losses'][0]:.5f} -> {r['losses'][-1]:.5f}")
    if out["loracc"]:
        lo = out["loracc"]
        pk = lo["gpu_mem_peak_mib"]
        print(f"{'loracc (ORT CUDA)':22s} {lo['tokens_per_s']:10.0f} {lo['median_step_ms']:9.1f} "
              f"{(pk or 0) / 1024:6.2f} nvidia-smi        {lo['losses'][0]:.5f} -> {lo['losses'][-1]:.5f}")
        for k, v in lo.items():
            if k.startswith(("max_rel", "step1_rel")):
                print(f"  {k}: {v:.3g}")
        print(f"  {lo.get('train_wall')}; first step {lo['first_step_ms']:.0f} ms; "
              f"torch process peak (nvidia-smi) {out['torch_process_gpu_peak_mib']} MiB")
    print(f"PyTorch forward+loss alone: {out['torch_forward_ms']}")
    for r in lat:
        print(f"latency {r.get('label'):22s} {r['device']:4s} {r['batch']}x{r['seq']:<4d} median {r['median_ms']:9.2f} ms "
              f"(min {r['min_ms']:.2f}, first {r['first_ms']:.0f}, session {r['session_s']:.1f} s, "
              f"gpu peak {r.get('gpu_mem_peak_mib')} MiB, out {r['output_bytes'] / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
