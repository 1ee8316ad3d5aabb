#!/usr/bin/env python3
"""PyTorch + PEFT side of the 7B run of docs/gpu-benchmarks.md (memory issue).

A Llama-2-7B-shaped model (hidden 4096, 32 layers, 32 heads, MLP 11008,
vocabulary 32000), random init, built on the GPU in bfloat16 (the usual
PEFT recipe: base weights loaded in bf16), LoRA r=16, alpha 16, dropout 0 on
q/k/v/o_proj (PEFT keeps the adapter in float32: autocast_adapter_dtype),
torch.autocast(bfloat16), AdamW lr 1e-4, batch B x T of Zipf tokens.

Modes: bf16w (gradient checkpointing off, the row loracc is held to) and
bf16w_ckpt (gradient checkpointing on, for reference).

Writes DIR/data.jsonl (the same tokens loracc trains on; the weights differ
between the two sides, as the issue allows) and DIR/torch7b_<mode>.json with
tokens/s (median step after the warm-up), max_memory_allocated and
max_memory_reserved, the device's used memory at the mode's end and the
CUDA context's share of it.

  python3 bench/gpu/torch_7b.py --dir /root/bench/l7b --batch 4 --seq 512
"""
import argparse
import json
import os
import statistics
import time

import numpy as np
import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--modes", default="bf16w,bf16w_ckpt")
    ap.add_argument("--layers", type=int, default=32)
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    from transformers import LlamaConfig, LlamaForCausalLM
    from peft import LoraConfig, get_peft_model

    n = args.steps * args.batch
    rng = np.random.default_rng(0)
    toks = (rng.zipf(1.2, size=(n, args.seq)) - 1) % 32000
    with open(os.path.join(args.dir, "data.jsonl"), "w") as f:
        for row in toks:
            ids = [int(t) for t in row]
            f.write(json.dumps({"input_ids": ids, "labels": ids}) + "\n")
    data = torch.from_numpy(toks.astype(np.int64))

    dev = torch.device("cuda")
    torch.cuda.init()
    free0, total = torch.cuda.mem_get_info()
    ctx = (total - free0) / 2**30  # the CUDA context (and nothing else yet)
    t0 = time.time()
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=args.layers,
                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                      max_position_embeddings=4096, attention_dropout=0.0, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(dev):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.eval()
    nparams = sum(p.numel() for p in model.parameters())
    print(f"7B-shaped Llama: {nparams / 1e9:.2f}B parameters in bf16, built in {time.time() - t0:.1f} s; "
          f"attention {model.config._attn_implementation}", flush=True)
    torch.manual_seed(1234)
    pm = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, bias="none",
                                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    params = [p for p in pm.parameters() if p.requires_grad]
    dtypes = sorted({str(p.dtype) for p in params})
    print(f"LoRA trainable parameters: {sum(p.numel() for p in params)} ({', '.join(dtypes)})", flush=True)
    init = {k: v.detach().clone() for k, v in pm.named_parameters() if v.requires_grad}
    summary = {"parameters": nparams, "cuda_context_gib": ctx, "adapter_dtypes": dtypes,
               "attn_implementation": model.config._attn_implementation, "modes": {}}
    for mode in args.modes.split(","):
        with torch.no_grad():
            for k, v in pm.named_parameters():
                if k in init:
                    v.copy_(init[k])
        if mode.endswith("_ckpt"):
            pm.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            pm.base_model.model.enable_input_require_grads()
            pm.train()  # HF checkpoints only in training mode; dropout is 0
        opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        times, losses = [], []
        try:
            for step in range(args.steps):
                ids = data[step * args.batch:(step + 1) * args.batch]
                torch.cuda.synchronize()
                t1 = time.perf_counter()
                ids = ids.to(dev)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    out = pm(input_ids=ids, labels=ids, use_cache=False)
                out.loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(out.loss.item())
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t1)
        except torch.OutOfMemoryError as e:
            print(f"[{mode}] out of memory: {str(e)[:300]}", flush=True)
            summary["modes"][mode] = {"failed": "out of memory"}
            continue
        free, _ = torch.cuda.mem_get_info()
        med = statistics.median(times[args.warmup:])
        res = {"mode": mode, "batch": args.batch, "seq": args.seq, "steps": args.steps,
               "median_step_ms": med * 1e3, "tokens_per_s": args.batch * args.seq / med,
               "max_memory_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
               "max_memory_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
               "device_used_at_end_gib": (total - free) / 2**30, "losses": losses,
               "step_ms": [t * 1e3 for t in times]}
        with open(os.path.join(args.dir, f"torch7b_{mode}.json"), "w") as f:
            json.dump(res, f, indent=1)
        summary["modes"][mode] = {k: v for k, v in res.items() if k not in ("losses", "step_ms")}
        print(f"[{mode}] {res['tokens_per_s']:.0f} tokens/s, median step {res['median_step_ms']:.1f} ms, "
              f"allocated {res['max_memory_allocated_gib']:.2f} GiB, reserved {res['max_memory_reserved_gib']:.2f} GiB, "
              f"device used {res['device_used_at_end_gib']:.2f} GiB (context {ctx:.2f}); loss {losses[0]:.4f} -> {losses[-1]:.4f}",
              flush=True)
        del opt
    with open(os.path.join(args.dir, "torch7b_summary.json"), "w") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
