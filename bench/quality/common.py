"""Shared pieces of bench/quality (pretrain.py, arms.py): the model's
shape, the tokenizer, token chunks, loracc's data order, the training loop
and the evaluator every arm is scored with.

Runs on the GPU machine (torch, transformers, peft, tokenizers, onnx,
onnxruntime). Nothing here reads the network.
"""
import json
import math
import os
import subprocess
import time

import torch

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
SPECIALS = [PAD, BOS, EOS]  # ids 0, 1, 2

# The model of issue 14 (docs/quality.md, "Model"): 4,999,424 parameters
# with the embedding tied to the LM head; int8 weights ≈ 5.0 MB.
FULL = dict(vocab=8192, hidden=256, layers=4, heads=4, kv_heads=2, inter=688, ctx=256)
# --smoke: the same code paths on a model that trains in seconds.
SMOKE = dict(vocab=512, hidden=64, layers=2, heads=4, kv_heads=2, inter=128, ctx=64)


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, path)


def llama_config(shape, attn="sdpa"):
    from transformers import LlamaConfig
    cfg = LlamaConfig(vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["inter"],
                      num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                      num_key_value_heads=shape["kv_heads"], max_position_embeddings=shape["ctx"],
                      tie_word_embeddings=True, attention_dropout=0.0, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2, attn_implementation=attn)
    try:  # older spellings of the same choice
        cfg._attn_implementation = attn
    except Exception:
        pass
    return cfg


def param_count(shape):
    """Parameters of the tied Llama of this shape, by formula (checked
    against the built model's count in pretrain.py)."""
    h, v, i, L = shape["hidden"], shape["vocab"], shape["inter"], shape["layers"]
    kv = h // shape["heads"] * shape["kv_heads"]
    attn = h * h * 2 + h * kv * 2
    mlp = 3 * h * i
    return v * h + L * (attn + mlp + 2 * h) + h


def load_tokenizer(model_dir):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))


def encode_records(tok, records):
    """Ids of each record as `loracc train` makes them from {"text"}
    records: the tokenizer's post-processor adds BOS, and EOS is appended."""
    eos = tok.token_to_id(EOS)
    out = []
    for enc in tok.encode_batch([r["text"] for r in records]):
        ids = list(enc.ids)
        if not ids or ids[-1] != eos:
            ids.append(eos)
        out.append(ids)
    return out


def chunks(docs, length, keep_tail):
    """The documents' ids concatenated and cut into examples of `length`
    tokens (what `loracc train --packing` does: no attention reset between
    documents); the short tail is kept only if keep_tail."""
    stream = [t for d in docs for t in d]
    out = [stream[i:i + length] for i in range(0, len(stream), length)]
    if out and len(out[-1]) < length and not keep_tail:
        out.pop()
    return out, len(stream)


def write_token_jsonl(path, examples):
    with open(path, "w") as f:
        for ids in examples:
            f.write(json.dumps({"input_ids": ids, "labels": ids}) + "\n")


SPLITS = ("pretrain_train", "pretrain_heldout", "downstream_train", "downstream_valid", "downstream_heldout")


def read_splits(corpus, smoke):
    """corpus.sh's JSONL splits; --smoke takes the first records of each."""
    splits = {k: read_jsonl(os.path.join(corpus, k + ".jsonl")) for k in SPLITS}
    if smoke:
        splits = {k: v[:40 if k == "pretrain_train" else 6] for k, v in splits.items()}
    return splits


def make_data(tok, splits, ctx, data_dir):
    """Token ids of every split, packed into examples of ctx tokens (the
    training splits drop their short tail, the others keep it); writes all
    but pretrain_train as token-id JSONL (the files both PyTorch and loracc
    train and evaluate on) and stats.json. Returns (examples, stats)."""
    os.makedirs(data_dir, exist_ok=True)
    data, stats = {}, {}
    for k, recs in splits.items():
        docs = encode_records(tok, recs)
        ex, n_tok = chunks(docs, ctx, keep_tail=not k.endswith("_train"))
        data[k] = ex
        text_bytes = sum(len(r["text"].encode()) for r in recs)
        stats[k] = {"records": len(recs), "tokens": n_tok, "examples": len(ex),
                    "bytes_per_token": text_bytes / max(1, n_tok)}
        if k != "pretrain_train":
            write_token_jsonl(os.path.join(data_dir, k + ".tokens.jsonl"), ex)
        log(f"{k}: {len(recs)} records, {n_tok} tokens ({text_bytes / max(1, n_tok):.2f} bytes/token), {len(ex)} examples")
    write_json(os.path.join(data_dir, "stats.json"), stats)
    return data, stats


def read_token_jsonl(path):
    return [r["input_ids"] for r in read_jsonl(path)]


def loracc_order(order_bin, n, seed, epoch):
    """The order in which `loracc train --seed seed` visits n examples in an
    epoch (dataset.Order), from the Go helper bench/gpu/order."""
    out = subprocess.run([order_bin, "-n", str(n), "-seed", str(seed), "-epoch", str(epoch)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def loracc_batches(order_bin, n, batch, seed, steps):
    """The examples of each step as `loracc train --batch-size batch
    --seed seed --max-steps steps` takes them (dynamic shapes): consecutive
    slices of each epoch's order, the epoch's last batch short."""
    out, epoch = [], 0
    while len(out) < steps:
        order = loracc_order(order_bin, n, seed, epoch)
        for i in range(0, n, batch):
            out.append(order[i:i + batch])
            if len(out) == steps:
                break
        epoch += 1
    return out


def cosine_lr(step, lr, warmup, total):
    """loracc's --schedule cosine (Hugging Face's
    get_cosine_schedule_with_warmup) for 1-based step."""
    cur = step - 1
    if cur < warmup:
        return lr * cur / max(1, warmup)
    progress = (cur - warmup) / max(1, total - warmup)
    return lr * max(0.0, 0.5 * (1 + math.cos(math.pi * progress)))


def train(model, params, data, batches, lr, warmup, clip, weight_decay=0.0, betas=(0.9, 0.999),
          eps=1e-8, bf16=False, log_every=0, tag=""):
    """AdamW over `batches` (lists of example indices into data, a [N, T]
    int64 tensor on the device), as `loracc train` steps: HF's shifted
    next-token loss (mean over the batch's counted tokens), clip_grad_norm_
    when clip > 0, then the step at the schedule's lr. Returns the losses."""
    opt = torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    total = len(batches)
    losses = []
    model.train()
    for step, idx in enumerate(batches, start=1):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, lr, warmup, total)
        ids = data[idx]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == total):
            log(f"{tag} step {step}/{total} loss {losses[-1]:.4f} lr {cosine_lr(step, lr, warmup, total):.2e}")
    model.eval()
    return losses


@torch.no_grad()
def evaluate(model, examples, batch=32, device="cuda"):
    """Mean next-token loss over every counted token of the examples (the
    first token of each example has no context and is not counted) and the
    top-1 next-token accuracy. Float32, TF32 off."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    model.eval()
    nll, correct, count = 0.0, 0, 0
    by_len = {}
    for e in examples:
        by_len.setdefault(len(e), []).append(e)
    for _, group in sorted(by_len.items()):
        for i in range(0, len(group), batch):
            ids = torch.tensor(group[i:i + batch], dtype=torch.long, device=device)
            if ids.shape[1] < 2:
                continue
            logits = model(input_ids=ids, use_cache=False).logits.float()
            lp = torch.log_softmax(logits[:, :-1], dim=-1)
            tgt = ids[:, 1:]
            nll -= lp.gather(-1, tgt.unsqueeze(-1)).sum().item()
            correct += (lp.argmax(-1) == tgt).sum().item()
            count += tgt.numel()
    torch.backends.cuda.matmul.allow_tf32 = tf32
    loss = nll / max(1, count)
    return {"loss": loss, "ppl": math.exp(loss), "acc": correct / max(1, count), "tokens": count}


@torch.no_grad()
def continuation_em(model, examples, prompt_len, k, batch=64, device="cuda"):
    """Greedy continuation task: from each example's first prompt_len
    tokens, generate k tokens (argmax, no sampling, EOS not special) and
    compare them with the example's next k tokens. Returns the share of
    exact matches of all k tokens and the mean matched prefix length."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    model.eval()
    rows = [e for e in examples if len(e) >= prompt_len + k]
    exact, prefix = 0, 0
    for i in range(0, len(rows), batch):
        ids = torch.tensor([r[:prompt_len + k] for r in rows[i:i + batch]], dtype=torch.long, device=device)
        cur = ids[:, :prompt_len]
        for _ in range(k):  # recompute the whole prefix: tiny model, few tokens
            nxt = model(input_ids=cur, use_cache=False).logits[:, -1].float().argmax(-1, keepdim=True)
            cur = torch.cat([cur, nxt], dim=1)
        same = (cur[:, prompt_len:] == ids[:, prompt_len:])
        exact += same.all(dim=1).sum().item()
        prefix += same.int().cumprod(dim=1).sum().item()
    torch.backends.cuda.matmul.allow_tf32 = tf32
    n = max(1, len(rows))
    return {"em": exact / n, "prefix": prefix / n, "prompts": len(rows), "k": k, "prompt_len": prompt_len}


def onnx_weights(path):
    """The PyTorch parameters held by pretrain.py's int8 model.onnx, from
    the map it records in the file's metadata (loracc.quality.weights)."""
    import onnx
    from onnx import numpy_helper
    m = onnx.load(path)
    meta = {p.key: p.value for p in m.metadata_props}
    if "loracc.quality.weights" not in meta:
        raise SystemExit(f"{path}: no loracc.quality.weights metadata (not written by bench/quality/pretrain.py)")
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    state = {}
    for name, where in json.loads(meta["loracc.quality.weights"]).items():
        if "init" in where:
            state[name] = torch.from_numpy(inits[where["init"]].copy())
            continue
        q = inits[where["q8"]]
        if where["q8"].endswith(".q8.T"):
            q = q.T
        state[name + ".q8"] = torch.from_numpy(q.copy())
        state[name + ".scale"] = torch.from_numpy(inits[where["scale"]].copy())
    return state


def load_q8(model_dir, device="cuda", attn="sdpa", source="auto"):
    """The pretrained model from model_dir: quality_shape.json and the int8
    weights with one float32 scale per row, each 2-D weight being q·scale
    (the values model.onnx holds), from weights_q8.safetensors or, without
    it (source "auto") or with source "onnx", from model.onnx itself."""
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM
    shape = json.load(open(os.path.join(model_dir, "quality_shape.json")))
    cfg = llama_config(shape, attn)
    model = LlamaForCausalLM(cfg)
    st = os.path.join(model_dir, "weights_q8.safetensors")
    if source == "onnx" or (source == "auto" and not os.path.exists(st)):
        state = onnx_weights(os.path.join(model_dir, "model.onnx"))
    else:
        state = load_file(st)
    full = {}
    for k, v in state.items():
        if k.endswith(".q8"):
            name = k[:-3]
            full[name] = v.float() * state[name + ".scale"].unsqueeze(1)
        elif not k.endswith(".scale"):
            full[k] = v
    missing, unexpected = model.load_state_dict(full, strict=False)
    missing = [m for m in missing if m != "lm_head.weight"]  # tied to the embedding
    if missing or unexpected:
        raise SystemExit(f"{model_dir}: weights missing {missing}, unexpected {list(unexpected)}")
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise SystemExit("the LM head is not tied to the embedding")
    return model.to(device).eval(), shape
