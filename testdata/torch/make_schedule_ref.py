#!/usr/bin/env python3
"""Learning rates per step from Hugging Face's schedules, for loracc's
runtime/train schedule test (testdata/ref/schedules.json).

For each case (kind, lr, warmup, total) it builds the schedule with
transformers.get_{constant,linear,cosine}_schedule_with_warmup on a dummy
SGD optimizer and records the lr that optimizer.step() uses at each of the
`total` steps, as a training loop sees it: the lr before the scheduler's
first step() is step 1's. Python floats are written with repr, so the JSON
holds them exactly.

Needs torch and transformers only; runs on the CPU in a second.
Usage: python3 testdata/torch/make_schedule_ref.py testdata/ref/schedules.json
"""
import json
import sys

import torch
import transformers

MAKERS = {
    "constant": lambda opt, warmup, total: transformers.get_constant_schedule_with_warmup(opt, warmup),
    "linear": transformers.get_linear_schedule_with_warmup,
    "cosine": transformers.get_cosine_schedule_with_warmup,
}

# (lr, warmup, total): no warmup, warmup of the whole run, one step, a
# warmup longer than the run, an odd split, a big and a small lr.
CASES = [
    (2e-4, 0, 10),
    (2e-4, 3, 10),
    (0.01, 10, 10),
    (0.01, 0, 1),
    (0.01, 1, 1),
    (1e-3, 7, 5),
    (3e-5, 13, 101),
    (0.5, 1, 2),
]


def lrs(kind, lr, warmup, total):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = MAKERS[kind](opt, warmup, total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_schedule_ref.py OUT.json")
    cases = []
    for kind in MAKERS:
        for lr, warmup, total in CASES:
            cases.append({"kind": kind, "lr": lr, "warmup": warmup, "total": total, "lrs": lrs(kind, lr, warmup, total)})
    doc = {"transformers": transformers.__version__, "torch": torch.__version__, "cases": cases}
    with open(sys.argv[1], "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {sys.argv[1]}")


if __name__ == "__main__":
    main()
