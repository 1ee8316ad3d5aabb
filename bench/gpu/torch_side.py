#!/usr/bin/env python3
"""PyTorch + PEFT side of the loracc GPU benchmark (docs/gpu-benchmarks.md).

For one model (gpt2: GPT2Config() defaults, 124M; llama1b: a Llama-style
model of about 1B parameters), all with random init from fixed seeds:

  1. builds the model (CPU, float32, eval mode, dropout 0) and exports it
     with torch.onnx.export(dynamo=True): a wrapper returning only the
     logits, use_cache=False, dynamic batch and seq; external data for the
     1B model  -> DIR/model.onnx (+ DIR/model.onnx.data)
  2. wraps it with PEFT LoRA r=16, lora_alpha=16 (scale 1), dropout 0, on the
     attention projections (gpt2: c_attn with fan_in_fan_out=True; llama:
     q_proj, k_proj, v_proj, o_proj). lora_A: PEFT's default init after
     torch.manual_seed(1234); lora_B: randn * 0.02 from
     Generator().manual_seed(4321) in named_parameters() order (NON-ZERO, so
     both A and B get gradients from step 1) -> DIR/peft_init/ (save_pretrained)
  3. writes the data: N = steps * batch sequences of seq tokens, Zipf-
     distributed ids from numpy default_rng(0) -> DIR/data.jsonl (input_ids and
     labels, equal; the loss is the shifted next-token cross-entropy)
  4. trains the adapter for `steps` AdamW steps (lr 1e-4, betas 0.9/0.999,
     eps 1e-8, weight decay 0, no clipping), visiting the examples in the
     order `loracc train --seed 0` does (bench/gpu/order_n400_seed0.json,
     from bench/gpu/order), once per mode:
       fp32  float32, TF32 off (PyTorch's default)
       tf32  float32 storage, TF32 matrix products on (what ORT's CUDA EP does by default)
       bf16  torch.autocast(bfloat16)
       bf16w the usual PEFT recipe: base weights stored in bfloat16, LoRA
             params float32, torch.autocast(bfloat16) (what loracc's
             --compute-dtype bf16 compares with; the base is restored to
             float32 after the mode)
       compile  tf32 with the PEFT model wrapped in torch.compile (default
             options; the compile happens in the warm-up steps, which the
             median leaves out; a failure is recorded, not raised)
     Each mode starts from the same adapter with a new optimizer. A step is
     timed from the host batch to loss.item() (synchronised), H2D copy of
     the batch included. tokens/s = batch*seq / median step time over the
     steps after `warmup`. Memory: torch.cuda.max_memory_allocated and
     max_memory_reserved per mode, and the device's used memory
     (cudaMemGetInfo) at the end of the mode.
  5. times the forward alone (no_grad, loss included) in fp32 and tf32.

Writes DIR/torch_<mode>.json and DIR/torch_summary.json.

  python3 bench/gpu/torch_side.py --model gpt2 --dir /tmp/bench/gpt2
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def build(name):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    if name == "gpt2":
        cfg = GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = GPT2LMHeadModel(cfg)
        lora = dict(target_modules=["c_attn"], fan_in_fan_out=True)
        target_re = r"attn\.c_attn$"
    elif name == "llama1b":
        cfg = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
                          num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                          max_position_embeddings=2048, attention_dropout=0.0, tie_word_embeddings=False)
        model = LlamaForCausalLM(cfg)
        lora = dict(target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
        target_re = r"self_attn\.[qkvo]_proj$"
    else:
        raise SystemExit(f"unknown model {name}")
    model.eval()
    return model, cfg.vocab_size, lora, target_re


class LogitsOnly(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids):
        return self.m(input_ids=input_ids, use_cache=False).logits


def export(model, vocab, path, external):
    ids = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(100))
    wrapper = LogitsOnly(model).eval()
    kw = dict(dynamo=True, opset_version=20, input_names=["input_ids"], output_names=["logits"],
              external_data=external)
    t0 = time.time()
    try:
        torch.onnx.export(wrapper, (ids,), path, dynamic_shapes={"input_ids": {0: "batch", 1: "seq"}}, **kw)
    except Exception as e:  # API without string dim names
        print(f"export with string dims failed ({type(e).__name__}: {e}); retrying with Dim.DYNAMIC", flush=True)
        D = torch.export.Dim.DYNAMIC
        torch.onnx.export(wrapper, (ids,), path, dynamic_shapes={"input_ids": {0: D, 1: D}}, **kw)
    dt = time.time() - t0
    size = sum(os.path.getsize(os.path.join(os.path.dirname(path), f)) for f in os.listdir(os.path.dirname(path))
               if f.startswith(os.path.basename(path)))
    print(f"exported {path} in {dt:.1f} s ({size / 2**20:.0f} MiB with external data)", flush=True)
    # check against torch on a small input (ORT CPU) when the model is small
    return dt


def check_export(model, vocab, path):
    import onnxruntime as ort
    ids = torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = model(input_ids=ids, use_cache=False).logits.numpy()
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input_ids": ids.numpy()})[0]
    return float(np.max(np.abs(got - want)))


def make_data(path, n, seq, vocab):
    rng = np.random.default_rng(0)
    toks = (rng.zipf(1.2, size=(n, seq)) - 1) % vocab
    with open(path, "w") as f:
        for row in toks:
            ids = [int(t) for t in row]
            f.write(json.dumps({"input_ids": ids, "labels": ids}) + "\n")
    return torch.from_numpy(toks.astype(np.int64))


def add_lora(model, lora, out_dir):
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(1234)
    cfg = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, bias="none", **lora)
    pm = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(4321)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    pm.save_pretrained(out_dir)
    readme = os.path.join(out_dir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    trainable = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    return pm, trainable


def set_mode(mode):
    tf32 = mode in ("tf32", "compile")
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def train_mode(pm, init, data, order, mode, steps, batch, lr, warmup):
    dev = torch.device("cuda")
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if n in init:
                p.copy_(init[n])
    set_mode(mode)
    saved = {}
    if mode == "bf16w":
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if not p.requires_grad and p.dtype == torch.float32:
                    saved[n] = p.detach().cpu()
                    p.data = p.data.to(torch.bfloat16)
    params = [p for p in pm.parameters() if p.requires_grad]
    fn = torch.compile(pm) if mode == "compile" else pm
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    losses, times = [], []
    for step in range(steps):
        idx = order[step * batch:(step + 1) * batch]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        ids = data[idx].to(dev)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=(mode in ("bf16", "bf16w"))):
            out = fn(input_ids=ids, labels=ids, use_cache=False)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = out.loss.item()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(loss)
    free, total = torch.cuda.mem_get_info()
    steady = times[warmup:]
    med = statistics.median(steady)
    res = {
        "mode": mode, "steps": steps, "batch": batch, "seq": int(data.shape[1]),
        "tokens_per_step": batch * int(data.shape[1]),
        "median_step_ms": med * 1e3, "tokens_per_s": batch * int(data.shape[1]) / med,
        "step_ms": [t * 1e3 for t in times],
        "max_memory_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
        "max_memory_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        "device_used_at_end_gib": (total - free) / 2**30,
        "losses": losses,
    }
    del opt
    if saved:
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if n in saved:
                    p.data = saved[n].to(dev)
    return res


def forward_time(pm, data, batch, mode, n=10):
    set_mode(mode)
    ids = data[:batch].cuda()
    times = []
    with torch.no_grad():
        for i in range(n + 3):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = pm(input_ids=ids, labels=ids, use_cache=False).loss.item()
            torch.cuda.synchronize()
            if i >= 3:
                times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, loss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, choices=["gpt2", "llama1b"])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--modes", default="fp32,tf32,bf16", help='comma-separated, or "none" (export, adapter, data only)')
    ap.add_argument("--order", default=os.path.join(HERE, "order_n400_seed0.json"))
    ap.add_argument("--no-export", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    torch.set_num_threads(min(16, os.cpu_count() or 1))

    t0 = time.time()
    model, vocab, lora, target_re = build(args.model)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: {nparams / 1e6:.1f}M parameters, vocab {vocab}, built in {time.time() - t0:.1f} s", flush=True)
    summary = {"model": args.model, "parameters": nparams, "vocab": vocab, "config": model.config.to_dict(),
               "loracc_target_regex": target_re,
               "versions": {"torch": torch.__version__, "python": platform.python_version(),
                            "gpu": torch.cuda.get_device_name(0)}}
    import transformers
    import peft
    summary["versions"].update(transformers=transformers.__version__, peft=peft.__version__)

    path = os.path.join(args.dir, "model.onnx")
    if not args.no_export:
        summary["export_s"] = export(model, vocab, path, external=nparams > 300_000_000)
        if nparams < 300_000_000:
            summary["export_max_abs_diff_vs_torch"] = check_export(model, vocab, path)
            print(f"ORT CPU vs torch logits: max abs diff {summary['export_max_abs_diff_vs_torch']:.3g}", flush=True)

    n = args.steps * args.batch
    data = make_data(os.path.join(args.dir, "data.jsonl"), n, args.seq, vocab)
    with open(args.order) as f:
        order = json.load(f)
    if len(order) != n:
        raise SystemExit(f"order file has {len(order)} entries, need {n}")
    summary["data"] = {"examples": n, "seq": args.seq, "dist": "(zipf(1.2) - 1) % vocab, numpy default_rng(0)"}

    pm, trainable = add_lora(model, lora, os.path.join(args.dir, "peft_init"))
    summary["lora"] = {"r": 16, "alpha": 16, "trainable": trainable, **lora,
                       "init": "A: PEFT default (kaiming-uniform) after manual_seed(1234); B: randn*0.02 (seed 4321), non-zero"}
    print(f"LoRA trainable parameters: {trainable}", flush=True)
    pm = pm.cuda()
    init = {n: p.detach().clone() for n, p in pm.named_parameters() if p.requires_grad}

    summary["modes"] = {}
    with open(os.path.join(args.dir, "torch_summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    modes = [m for m in args.modes.split(",") if m and m != "none"]
    if not modes:  # export, adapter and data only
        return
    for mode in modes:
        t1 = time.time()
        try:
            res = train_mode(pm, init, data, order, mode, args.steps, args.batch, args.lr, args.warmup)
        except Exception as e:  # torch.compile may not run on this machine: say so, go on
            print(f"[{mode}] failed: {type(e).__name__}: {str(e)[:500]}", flush=True)
            summary["modes"][mode] = {"failed": f"{type(e).__name__}: {str(e)[:2000]}"}
            continue
        res["wall_s"] = time.time() - t1
        with open(os.path.join(args.dir, f"torch_{mode}.json"), "w") as f:
            json.dump(res, f, indent=1)
        summary["modes"][mode] = {k: v for k, v in res.items() if k not in ("step_ms", "losses")}
        summary["modes"][mode]["first_loss"], summary["modes"][mode]["last_loss"] = res["losses"][0], res["losses"][-1]
        with open(os.path.join(args.dir, "torch_summary.json"), "w") as f:  # after each mode: a timeout keeps what ran
            json.dump(summary, f, indent=1, default=str)
        print(f"[{mode}] {res['tokens_per_s']:.0f} tokens/s, median step {res['median_step_ms']:.1f} ms, "
              f"peak allocated {res['max_memory_allocated_gib']:.2f} GiB, reserved {res['max_memory_reserved_gib']:.2f} GiB, "
              f"device used {res['device_used_at_end_gib']:.2f} GiB; loss {res['losses'][0]:.5f} -> {res['losses'][-1]:.5f}",
              flush=True)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if n in init:
                p.copy_(init[n])
    summary["forward_ms"] = {}
    for mode in ("fp32", "tf32"):
        ms, loss = forward_time(pm, data, args.batch, mode)
        summary["forward_ms"][mode] = ms
        print(f"[{mode}] forward+loss alone (no_grad): {ms:.1f} ms (loss {loss:.5f})", flush=True)
    with open(os.path.join(args.dir, "torch_summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    print(f"done in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
