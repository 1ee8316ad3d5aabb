#!/usr/bin/env python3
"""Pretrain the small Llama-style model of issue 14 (docs/quality.md).

On the GPU machine, from the corpus scripts/quality/corpus.sh wrote:

  1. trains a byte-level BPE tokenizer (Hugging Face tokenizers, GPT-2's
     pre-tokenizer regex, the 256 byte symbols in the alphabet, <pad> <s>
     </s> as ids 0 1 2, "<s> $A" as post-processor) on pretrain_train only
     -> MODEL/tokenizer.json, tokenizer_config.json (bos/eos/pad,
     model_max_length = the context), the files loracc's tokenizer reads;
  2. tokenizes every split as `loracc train` does text records (BOS from
     the post-processor, EOS appended), packs each split's stream into
     examples of `ctx` tokens and writes the downstream splits and the
     pretraining held-out as token-id JSONL -> DATA/*.tokens.jsonl, stats;
  3. pretrains LlamaForCausalLM (tied embeddings, GQA) from HF's init on
     pretrain_train for a fixed number of epochs over its examples, each
     epoch in a fresh random order: AdamW (0.9, 0.95), weight decay on
     2-D weights, cosine schedule with warmup, clip 1.0, bf16 autocast;
     held-out loss every --eval-every steps;
  4. rounds every 2-D weight (embedding and linear layers) to int8 with one
     float32 scale per output row (symmetric, max|w|/127) and keeps the
     rounded values: this is the pretrained model from here on (held-out
     perplexity reported before and after) -> MODEL/weights_q8.safetensors
     (+ config.json, quality_shape.json);
  5. exports it with torch.onnx (dynamo, opset 20, a wrapper returning only
     the logits, use_cache=False, dynamic batch and sequence) in float32
     -> WORK/model.fp32.onnx (what the loracc arms inject), checked against
     torch with onnxruntime's CPU provider; then rewrites that file's
     weights as DequantizeLinear of int8 (the tied LM head reads the
     embedding's int8 table through a Transpose, so it is stored once)
     -> MODEL/model.onnx, the file to commit (≤ 8 MB), also checked; its
     metadata (loracc.quality.weights) says which initializer holds each
     PyTorch parameter, so common.load_q8 can rebuild the model from this
     file alone (checked: the same logits as the model in memory).

Writes WORK/pretrain.json with everything measured. --smoke runs the same
steps on a tiny model and a slice of the corpus (seconds of training).

  python3 bench/quality/pretrain.py --corpus CORPUS --work WORK [--smoke]
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import log  # noqa: E402


def train_tokenizer(texts, vocab, ctx, out_dir):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, special_tokens=common.SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id(common.BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{common.BOS} $A", special_tokens=[(common.BOS, bos)])
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"), pretty=False)  # 0.24 MB, not 0.56: it is committed
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": common.BOS, "eos_token": common.EOS,
           "pad_token": common.PAD, "model_max_length": ctx, "clean_up_tokenization_spaces": False}
    common.write_json(os.path.join(out_dir, "tokenizer_config.json"), cfg)
    ids = [tok.token_to_id(s) for s in common.SPECIALS]
    if ids != [0, 1, 2]:
        raise SystemExit(f"special tokens got ids {ids}, want 0 1 2")
    return tok


def quantize_rows(w):
    """Symmetric int8 per output row: (q int8, scale float32 [rows])."""
    w = w.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(w / scale.unsqueeze(1)).clamp_(-127, 127).to(torch.int8)
    return q, scale


def round_model(model):
    """Rounds every 2-D weight onto its int8 grid in place; returns the
    state for weights_q8.safetensors (q8 + scale per weight, the rest as is)."""
    state = {}
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    if not tied:
        raise SystemExit("the LM head is not tied to the embedding")
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied weight is listed once
            if p.dim() == 2:
                q, s = quantize_rows(p)
                p.copy_(q.float() * s.unsqueeze(1))
                state[name + ".q8"] = q.cpu().contiguous()
                state[name + ".scale"] = s.cpu().contiguous()
            else:
                state[name] = p.detach().float().cpu().contiguous()
    return state


class LogitsOnly(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids):
        return self.m(input_ids=input_ids, use_cache=False).logits


def export_onnx(model, path, vocab):
    """torch.onnx dynamo export as /work/shared/EXPORTERS.md records."""
    ids = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(100))
    wrapper = LogitsOnly(model).eval()
    kw = dict(dynamo=True, opset_version=20, input_names=["input_ids"], output_names=["logits"], external_data=False)
    try:
        torch.onnx.export(wrapper, (ids,), path, dynamic_shapes={"input_ids": {0: "batch", 1: "seq"}}, **kw)
    except Exception as e:  # an API without string dim names
        log(f"export with string dims failed ({type(e).__name__}: {str(e)[:300]}); retrying with Dim.DYNAMIC")
        D = torch.export.Dim.DYNAMIC
        torch.onnx.export(wrapper, (ids,), path, dynamic_shapes={"input_ids": {0: D, 1: D}}, **kw)


def ort_diff(path, model, vocab, ctx):
    """Max |logits| difference between onnxruntime (CPU) and torch (CPU, fp32)."""
    import onnxruntime as ort
    ids = torch.randint(3, vocab, (2, min(ctx, 48)), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = model(input_ids=ids, use_cache=False).logits.float().numpy()
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input_ids": ids.numpy()})[0]
    return float(np.max(np.abs(got - want)))


def quantize_onnx(src, dst, model, q8):
    """Rewrites the float32 export's weights as DequantizeLinear of int8.
    Each weight initializer is found by value: the export keeps nn.Linear
    weights pre-transposed ([in, out], renamed val_N) and the embedding as
    [vocab, hidden]; the tied LM head's [hidden, vocab] copy becomes
    Transpose of the embedding's int8 table. Returns what was replaced."""
    import onnx
    from onnx import helper, numpy_helper
    m = onnx.load(src)
    g = m.graph
    weights = {}  # (shape, bytes) -> (hf name, transposed)
    for name, p in model.named_parameters():
        if p.dim() != 2:
            continue
        w = p.detach().float().cpu().numpy()
        weights[(w.shape, w.tobytes())] = (name, False)
        wt = np.ascontiguousarray(w.T)
        weights.setdefault((wt.shape, wt.tobytes()), (name, True))
    stored, new_inits, new_nodes, replaced, kept = set(), [], [], [], []

    def store(name, array):
        if name not in stored:
            stored.add(name)
            new_inits.append(numpy_helper.from_array(array, name))

    emb = "model.embed_tokens.weight"
    mapping = {}  # PyTorch parameter -> where the file holds it (common.load_q8 reads this back)
    vectors = {}
    for name, p in model.named_parameters():
        if p.dim() == 1:
            vectors.setdefault(p.detach().float().cpu().numpy().tobytes(), []).append(name)
    for init in g.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 1:
            for hf in vectors.get(numpy_helper.to_array(init).tobytes(), []):
                mapping.setdefault(hf, {"init": init.name})
    for init in g.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or len(init.dims) != 2:
            kept.append(init)
            continue
        a = numpy_helper.to_array(init)
        hit = weights.get((a.shape, np.ascontiguousarray(a).tobytes()))
        if hit is None:
            kept.append(init)
            continue
        hf, transposed = hit
        q = q8[hf + ".q8"].numpy()  # [out, in] (the embedding: [vocab, hidden]), one scale per row
        s = q8[hf + ".scale"].numpy().astype(np.float32)
        sname = hf + ".scale"
        store(sname, s)
        if hf == emb or not transposed:  # stored as PyTorch holds it
            qname = hf + ".q8"
            store(qname, q)
            if transposed:  # the tied head reads the embedding's table transposed
                new_nodes.append(helper.make_node("Transpose", [qname], [qname + ".T"], perm=[1, 0],
                                                  name=init.name + "/Transpose"))
                qname += ".T"
        else:  # nn.Linear, pre-transposed by the exporter: [in, out]
            qname = hf + ".q8.T"
            store(qname, np.ascontiguousarray(q.T))
        new_nodes.append(helper.make_node("DequantizeLinear", [qname, sname], [init.name], axis=1 if transposed else 0,
                                          name=init.name + "/DequantizeLinear"))
        # the table's initializer: [rows, cols] as PyTorch holds it, or ".q8.T" holding its transpose
        mapping[hf] = {"q8": hf + (".q8" if hf == emb or not transposed else ".q8.T"), "scale": sname}
        replaced.append({"initializer": init.name, "weight": hf, "transposed": transposed, "shape": list(a.shape)})
    missing = [n for n, _ in model.named_parameters() if n not in mapping]
    if missing:
        raise RuntimeError(f"int8 export: no initializer holds {missing}")
    del g.initializer[:]
    g.initializer.extend(kept + new_inits)
    m.metadata_props.append(onnx.StringStringEntryProto(key="loracc.quality.weights", value=json.dumps(mapping, sort_keys=True)))
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(new_nodes + nodes)
    for n in g.node:  # the exporter's per-node stack traces: ~0.6 MB of the committed file
        n.doc_string = ""
        del n.metadata_props[:]
    onnx.checker.check_model(m)
    onnx.save(m, dst)
    return replaced


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", required=True, help="folder of corpus.sh's JSONL splits")
    ap.add_argument("--work", required=True, help="work folder: model/, data/, model.fp32.onnx, pretrain.json")
    ap.add_argument("--smoke", action="store_true", help="tiny model, a slice of the corpus, a few hundred steps")
    ap.add_argument("--epochs", type=float, default=8.0, help="passes over pretrain_train's examples")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--warmup-frac", type=float, default=0.02)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attn", default="sdpa", help="attention of the exported model (sdpa, eager); eager is tried if sdpa fails")
    a = ap.parse_args()
    t_start = time.time()
    shape = dict(common.SMOKE if a.smoke else common.FULL)
    model_dir, data_dir = os.path.join(a.work, "model"), os.path.join(a.work, "data")
    os.makedirs(model_dir, exist_ok=True)
    os.makedirs(data_dir, exist_ok=True)
    import peft
    import tokenizers
    import transformers
    rep = {"smoke": a.smoke, "shape": shape, "args": vars(a),
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                        "tokenizers": tokenizers.__version__, "python": platform.python_version(),
                        "gpu": torch.cuda.get_device_name(0)}}
    out_json = os.path.join(a.work, "pretrain.json")

    # 1. Tokenizer, on pretrain_train only.
    splits = common.read_splits(a.corpus, a.smoke)
    t0 = time.time()
    tok = train_tokenizer([r["text"] for r in splits["pretrain_train"]], shape["vocab"], shape["ctx"], model_dir)
    rep["tokenizer"] = {"vocab": tok.get_vocab_size(), "train_s": time.time() - t0}
    log(f"tokenizer: {tok.get_vocab_size()} tokens in {time.time() - t0:.1f} s")

    # 2. Token ids, packed into examples of ctx tokens.
    data, rep["data"] = common.make_data(tok, splits, shape["ctx"], data_dir)
    # A text file of a few held-out records, for the check that loracc's
    # tokenizer gives these ids (run.sh: loracc data --json).
    with open(os.path.join(data_dir, "tokenizer_check.jsonl"), "w") as f:
        for r in splits["downstream_heldout"][:8] + splits["pretrain_heldout"][:4]:
            f.write(json.dumps({"text": r["text"][:4000]}, ensure_ascii=False) + "\n")
    common.write_json(os.path.join(data_dir, "tokenizer_check.ids.json"),
                      common.encode_records(tok, [json.loads(l) for l in open(os.path.join(data_dir, "tokenizer_check.jsonl"))]))

    # 3. Pretraining.
    from transformers import LlamaForCausalLM
    torch.manual_seed(a.seed)
    cfg = common.llama_config(shape, a.attn)
    model = LlamaForCausalLM(cfg).cuda()
    n_params = model.num_parameters()
    if n_params != common.param_count(shape):
        log(f"warning: {n_params} parameters, the formula says {common.param_count(shape)}")
    rep["parameters"] = n_params
    rep["parameters_formula"] = common.param_count(shape)
    log(f"model: {n_params} parameters ({n_params / 1e6:.2f}M), {shape}")
    train_t = torch.tensor(data["pretrain_train"], dtype=torch.long, device="cuda")
    n = train_t.shape[0]
    steps = max(1, int(a.epochs * n / a.batch))
    if a.smoke:
        steps = min(steps, 300)
    g = torch.Generator().manual_seed(a.seed)
    batches, perm = [], []
    while len(batches) < steps:
        if len(perm) < a.batch:
            perm = perm + torch.randperm(n, generator=g).tolist()
        batches.append(perm[:a.batch])
        perm = perm[a.batch:]
    decay = [p for nm, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for nm, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    warmup = max(1, int(a.warmup_frac * steps))
    curve = []
    torch.backends.cuda.matmul.allow_tf32 = True
    t0, eval_s = time.time(), 0.0
    model.train()
    for step, idx in enumerate(batches, start=1):
        for grp in opt.param_groups:
            grp["lr"] = common.cosine_lr(step, a.lr, warmup, steps)
        ids = train_t[idx]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % a.eval_every == 0 or step == steps:
            te = time.time()
            ev = common.evaluate(model, data["pretrain_heldout"])
            model.train()
            eval_s += time.time() - te
            curve.append({"step": step, "epoch": step * a.batch / n, "train_loss": loss.item(),
                          "heldout_loss": ev["loss"], "heldout_ppl": ev["ppl"], "elapsed_s": time.time() - t0})
            log(f"step {step}/{steps} train {loss.item():.4f} held-out {ev['loss']:.4f} (ppl {ev['ppl']:.2f})")
    model.eval()
    train_s = time.time() - t0 - eval_s  # the held-out evaluations left out
    tokens = steps * a.batch * shape["ctx"]
    rep["pretrain"] = {"steps": steps, "batch": a.batch, "ctx": shape["ctx"], "tokens": tokens,
                       "epochs": steps * a.batch / n, "lr": a.lr, "warmup": warmup, "weight_decay": a.weight_decay,
                       "betas": [0.9, 0.95], "clip": 1.0, "precision": "bf16 autocast, TF32", "wall_s": train_s,
                       "eval_s": eval_s,
                       "tokens_per_s": tokens / train_s, "curve": curve}
    rep["heldout_before_rounding"] = common.evaluate(model, data["pretrain_heldout"])
    common.write_json(out_json, rep)

    # 4. int8 rounding: the model from here on.
    q8 = round_model(model)
    from safetensors.torch import save_file
    save_file(q8, os.path.join(model_dir, "weights_q8.safetensors"))
    model.config.save_pretrained(model_dir)
    common.write_json(os.path.join(model_dir, "quality_shape.json"), shape)
    rep["heldout_pretrain"] = common.evaluate(model, data["pretrain_heldout"])
    rep["heldout_downstream_base"] = common.evaluate(model, data["downstream_heldout"])
    log(f"pretrain held-out ppl {rep['heldout_before_rounding']['ppl']:.3f} before int8 rounding, "
        f"{rep['heldout_pretrain']['ppl']:.3f} after; downstream held-out ppl {rep['heldout_downstream_base']['ppl']:.3f}")
    reloaded, _ = common.load_q8(model_dir)
    with torch.no_grad():  # weights_q8.safetensors gives this model back exactly
        rep["reload_max_abs_logit_diff"] = float((reloaded(input_ids=train_t[:2]).logits
                                                  - model(input_ids=train_t[:2]).logits).abs().max())
    del reloaded
    common.write_json(out_json, rep)

    # 5. ONNX: float32 (for the arms), then int8 (to commit).
    fp32 = os.path.join(a.work, "model.fp32.onnx")
    rep["export"], cpu = {}, None
    for attn in ([a.attn, "eager"] if a.attn != "eager" else ["eager"]):
        try:
            cpu = LlamaForCausalLM(common.llama_config(shape, attn))
            cpu.load_state_dict(model.state_dict())
            cpu.eval()
            t0 = time.time()
            export_onnx(cpu, fp32, shape["vocab"])
            diff = ort_diff(fp32, cpu, shape["vocab"], shape["ctx"])
            rep["export"] = {"attn": attn, "attn_used": getattr(cpu.config, "_attn_implementation", None),
                             "export_s": time.time() - t0, "ort_max_abs_diff": diff,
                             "bytes": os.path.getsize(fp32)}
            log(f"exported {fp32} ({attn} attention): {os.path.getsize(fp32) / 1e6:.2f} MB, ORT vs torch {diff:.3g}")
            if diff <= 1e-3:
                break
            rep["export"]["rejected"] = "ORT differs from torch by more than 1e-3"
        except Exception as e:
            rep["export"] = {"attn": attn, "failed": f"{type(e).__name__}: {str(e)[:2000]}"}
            log(f"export with {attn} attention failed: {type(e).__name__}: {str(e)[:500]}")
    common.write_json(out_json, rep)
    try:
        if cpu is None or "failed" in rep["export"]:
            raise RuntimeError("no float32 export")
        q8_path = os.path.join(model_dir, "model.onnx")
        replaced = quantize_onnx(fp32, q8_path, cpu, q8)
        diff = ort_diff(q8_path, cpu, shape["vocab"], shape["ctx"])
        rep["int8_onnx"] = {"bytes": os.path.getsize(q8_path), "replaced": len(replaced), "ort_max_abs_diff": diff,
                            "weights": replaced, "limit_bytes": 8_000_000, "fits": os.path.getsize(q8_path) <= 8_000_000}
        # The file alone gives the PyTorch model back (so only it need be committed).
        from_onnx, _ = common.load_q8(model_dir, source="onnx")
        with torch.no_grad():
            rep["int8_onnx"]["reload_max_abs_logit_diff"] = float((from_onnx(input_ids=train_t[:2]).logits
                                                                  - model(input_ids=train_t[:2]).logits).abs().max())
        del from_onnx
        log(f"int8 ONNX {q8_path}: {os.path.getsize(q8_path) / 1e6:.2f} MB, {len(replaced)} weights, ORT vs torch {diff:.3g}")
    except Exception as e:
        rep["int8_onnx"] = {"failed": f"{type(e).__name__}: {str(e)[:2000]}"}
        log(f"int8 ONNX failed: {type(e).__name__}: {str(e)[:500]}")
    rep["wall_s"] = time.time() - t_start
    common.write_json(out_json, rep)
    log(f"done in {rep['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
