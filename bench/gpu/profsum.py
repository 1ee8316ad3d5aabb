#!/usr/bin/env python3
"""Summarise an ONNX Runtime profile (the JSON that SessionOptions profiling writes).

Takes the last `model_run` of the file and reports, for its node events
(`*_kernel_time`): how many nodes ran on each execution provider, the
memcpy nodes ORT inserted between providers and the bytes they moved, the
nodes left on the CPU provider, and host-side time per op type. With the
CUDA provider a node's time is the host time of its Compute call (kernel
launches are asynchronous), not GPU time; a node that waits for the GPU
(a copy to the host) shows the wait. Standard library only.

  python3 bench/gpu/profsum.py prof_train_*.json
"""
import collections
import json
import sys


def main():
    path = sys.argv[1]
    with open(path) as f:
        events = json.load(f)
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    print(f"{path}: {len(runs)} model_run events, durations (ms): {[round(r['dur'] / 1000, 1) for r in runs]}")
    if not runs:
        return
    last = runs[-1]
    lo, hi = last["ts"], last["ts"] + last["dur"]
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
             and lo <= e["ts"] <= hi]
    by_prov = collections.Counter(e["args"].get("provider", "?") for e in nodes)
    host = sum(e["dur"] for e in nodes)
    print(f"last run: {last['dur'] / 1000:.1f} ms wall, {len(nodes)} nodes, sum of node host times {host / 1000:.1f} ms")
    print(f"nodes per provider: {dict(by_prov)}")

    agg = collections.defaultdict(lambda: [0, 0, 0])
    for e in nodes:
        a = e["args"]
        k = (a.get("op_name", "?"), a.get("provider", "?").replace("ExecutionProvider", ""))
        agg[k][0] += 1
        agg[k][1] += e["dur"]
        agg[k][2] += int(a.get("output_size", 0) or 0)
    memcpy = {k: v for k, v in agg.items() if k[0].startswith("Memcpy")}
    for k, v in sorted(memcpy.items()):
        print(f"memcpy {k[0]:16s} x{v[0]:<5d} {v[2] / 2**20:10.2f} MiB  host {v[1] / 1000:8.2f} ms")
    cpu = [e for e in nodes if e["args"].get("provider", "").startswith("CPU")]
    cpu_ops = collections.Counter(e["args"].get("op_name") for e in cpu)
    print(f"nodes on CPU: {len(cpu)}: {dict(cpu_ops.most_common(20))}")
    big = sorted(cpu, key=lambda e: -int(e["args"].get("output_size", 0) or 0))[:5]
    for e in big:
        print(f"  largest CPU node outputs: {e['name']} {e['args'].get('op_name')} "
              f"{int(e['args'].get('output_size', 0) or 0)} bytes {e['args'].get('output_type_shape')}")
    print(f"{'op':28s} {'provider':8s} {'count':>6s} {'host ms':>9s} {'out MiB':>10s}")
    for k, v in sorted(agg.items(), key=lambda kv: -kv[1][1])[:30]:
        print(f"{k[0]:28s} {k[1]:8s} {v[0]:6d} {v[1] / 1000:9.2f} {v[2] / 2**20:10.1f}")
    total_out = sum(v[2] for v in agg.values())
    print(f"all node outputs together: {total_out / 2**30:.2f} GiB (sum of every node's output size in one run)")


if __name__ == "__main__":
    main()
