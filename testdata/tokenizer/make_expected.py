#!/usr/bin/env python3
"""Write the Hugging Face reference ids that tokenizer/expected_test.go checks.

Runs once, offline, on a machine with the Python packages `tokenizers`,
`sentencepiece` and (optionally, for a GPT-2 cross-check) `transformers`:

    python3 testdata/tokenizer/make_expected.py \
        --tokenizers ~/.cache/loracc/tokenizers --out testdata/tokenizer/expected

--tokenizers is the folder scripts/fetch-tokenizers.sh fills (gpt2/,
llama3/, llama3_2/, qwen3/, llama2/, and gemma3/ if carried; a missing
folder is skipped with a warning). For each tokenizer and each line of
corpus.txt (escapes \\n \\r \\t \\\\ \\u{HEX} decoded) it records

    ids          = encode(text, add_special_tokens=False)
    ids_special  = encode(text, add_special_tokens=True)
    decoded      = decode(ids, skip_special_tokens=False)
    decoded_skip = decode(ids_special, skip_special_tokens=True)

in OUT/<name>.json. References: tokenizers.Tokenizer.from_file for every
tokenizer.json; for GPT-2, tokenizers' models.BPE.from_file(encoder.json,
vocab.bpe) with a ByteLevel(add_prefix_space=False) pre-tokenizer and
decoder and <|endoftext|> as a special added token -- the pipeline of
transformers' GPT2TokenizerFast, which is cross-checked when transformers is
installed.

It also trains, on the corpus plus generated text, three small tokenizers
and writes them with their expected ids (the trained files are committed):

    OUT/trained/unigram/tokenizer.json  HF Unigram (vocab 1000 + 256 byte
                                        pieces, NFKC, Metaspace, byte fallback)
    OUT/trained/sp_bpe.model            SentencePiece BPE (vocab 1200),
                                        byte_fallback
    OUT/trained/sp_unigram.model        SentencePiece Unigram (vocab 1000),
                                        rare characters become <unk>
    OUT/unigram_hf.json, OUT/sp_bpe.json, OUT/sp_unigram.json

For the .model files the reference is sentencepiece itself (encode, encode
with add_bos=True, decode).

Finally it times HF's throughput on the corpus repeated to --bench-mb MB
(single-thread encode loop and parallel encode_batch) and prints one JSON
line per tokenizer, prefixed "BENCH ". Exit status 1 if any step failed;
the others still write their files.
"""

import argparse
import json
import os
import random
import re
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REAL = ["gpt2", "llama3", "llama3_2", "qwen3", "llama2", "gemma3"]
ESCAPE = re.compile(r"\\(u\{([0-9A-Fa-f]+)\}|n|r|t|\\)")


def log(msg):
    print(f"[make_expected {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def unescape(line):
    """The corpus escapes, as tokenizer/helpers_test.go decodes them."""

    def sub(m):
        if m.group(2) is not None:
            v = int(m.group(2), 16)
            if v > 0x10FFFF or 0xD800 <= v <= 0xDFFF:
                return m.group(0)
            return chr(v)
        return {"n": "\n", "r": "\r", "t": "\t", "\\": "\\"}[m.group(1)]

    return ESCAPE.sub(sub, line)


def read_corpus(path):
    with open(path, encoding="utf-8", newline="") as f:
        data = f.read()
    if data.endswith("\n"):
        data = data[:-1]
    return [unescape(l) for l in data.split("\n")]


def cases_for(texts, encode, decode):
    """encode(text, add_special) -> ids; decode(ids, skip_special) -> str."""
    out = []
    for i, text in enumerate(texts):
        ids = list(encode(text, False))
        ids_special = list(encode(text, True))
        out.append({
            "line": i + 1,
            "text": text,
            "ids": ids,
            "ids_special": ids_special,
            "decoded": decode(ids, False),
            "decoded_skip": decode(ids_special, True),
        })
    return out


def write_expected(out_dir, name, generator, cases, load=None, file=None):
    doc = {"tokenizer": name, "generator": generator}
    if load:
        doc["load"] = load
    if file:
        doc["file"] = file
    doc["cases"] = cases
    path = os.path.join(out_dir, name + ".json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    size = os.path.getsize(path)
    log(f"wrote {path} ({len(cases)} lines, {size // 1024} KiB)")
    if size > 1_500_000:
        log(f"warning: {path} is over 1.5 MB")


def hf_funcs(tok):
    def enc(text, special):
        return tok.encode(text, add_special_tokens=special).ids

    def dec(ids, skip):
        return tok.decode(ids, skip_special_tokens=skip)

    return enc, dec


def build_gpt2(folder):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    bpe = models.BPE.from_file(os.path.join(folder, "encoder.json"), os.path.join(folder, "vocab.bpe"))
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    return tok


def crosscheck_gpt2(folder, texts, cases):
    try:
        from transformers import GPT2TokenizerFast
    except Exception as e:  # optional
        log(f"gpt2: transformers not importable ({e}); no cross-check")
        return
    t = GPT2TokenizerFast(vocab_file=os.path.join(folder, "encoder.json"),
                          merges_file=os.path.join(folder, "vocab.bpe"))
    bad = sum(1 for text, c in zip(texts, cases) if t(text)["input_ids"] != c["ids"])
    log(f"gpt2: transformers GPT2TokenizerFast differs from the tokenizers pipeline on {bad} lines")


def do_real(name, args, texts, toks):
    folder = os.path.join(args.tokenizers, name)
    if not os.path.isdir(folder):
        log(f"{name}: {folder} missing, skipped")
        return None
    import tokenizers

    if name == "gpt2":
        tok = build_gpt2(folder)
        gen = f"tokenizers {tokenizers.__version__} BPE.from_file(encoder.json, vocab.bpe) + ByteLevel, as GPT2TokenizerFast"
    else:
        tok = tokenizers.Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        gen = f"tokenizers {tokenizers.__version__} Tokenizer.from_file"
    enc, dec = hf_funcs(tok)
    cases = cases_for(texts, enc, dec)
    write_expected(args.out, name, gen, cases, load=name)
    if name == "gpt2":
        crosscheck_gpt2(folder, texts, cases)
    toks[name] = tok
    return True


def training_text(texts, n_lines, seed=1234):
    """The corpus plus shuffled recombinations of its words: enough text for
    a 1000-piece vocabulary, deterministic for a given seed."""
    rnd = random.Random(seed)
    words = [w for t in texts for w in t.split()]
    lines = list(texts)
    while len(lines) < n_lines:
        k = rnd.randint(3, 20)
        lines.append(" ".join(rnd.choice(words) for _ in range(k)))
    return [l.replace("\r", " ").replace("\n", " ") for l in lines]


def do_unigram_hf(args, texts, train_lines, toks):
    import tokenizers
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    for vocab_size in (1000, 1500, 3000):
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                          unk_token="<unk>", show_progress=False)
        try:
            tok.train_from_iterator(train_lines, trainer=trainer)
            break
        except Exception as e:
            if vocab_size == 3000:
                raise
            log(f"unigram_hf: trainer refused vocab_size={vocab_size} ({e}); trying larger")
    # Byte fallback: append the 256 byte pieces with the lowest score and
    # switch it on in the serialized model (the trainer has no option).
    doc = json.loads(tok.to_str())
    vocab = doc["model"]["vocab"]
    low = min(s for _, s in vocab) - 1.0
    have = {p for p, _ in vocab}
    vocab.extend([f"<0x{b:02X}>", low] for b in range(256) if f"<0x{b:02X}>" not in have)
    doc["model"]["byte_fallback"] = True
    ids = {p: i for i, (p, _) in enumerate(vocab)}
    doc["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": "</s>", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {
            "<s>": {"id": "<s>", "ids": [ids["<s>"]], "tokens": ["<s>"]},
            "</s>": {"id": "</s>", "ids": [ids["</s>"]], "tokens": ["</s>"]},
        },
    }
    try:
        tok = Tokenizer.from_str(json.dumps(doc))
    except Exception as e:
        log(f"unigram_hf: byte fallback / template rejected ({e}); keeping the plain trained model")
    folder = os.path.join(args.out, "trained", "unigram")
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"), pretty=False)
    log(f"unigram_hf: {tok.get_vocab_size()} pieces -> {folder}/tokenizer.json")
    enc, dec = hf_funcs(tok)
    write_expected(args.out, "unigram_hf", f"tokenizers {tokenizers.__version__} UnigramTrainer",
                   cases_for(texts, enc, dec), file="trained/unigram/tokenizer.json")
    toks["unigram_hf"] = tok
    return True


def do_sentencepiece(args, texts, train_lines, kind):
    import sentencepiece as spm

    folder = os.path.join(args.out, "trained")
    os.makedirs(folder, exist_ok=True)
    train_file = os.path.join(folder, ".train.txt")
    with open(train_file, "w", encoding="utf-8") as f:
        f.write("\n".join(train_lines) + "\n")
    name = "sp_" + kind
    prefix = os.path.join(folder, name)
    # The corpus has ~840 distinct characters; covering 98% of character
    # occurrences keeps ~625 of them, so the rest exercise byte fallback
    # (BPE) or <unk> (Unigram). Larger settings are tried if the trainer
    # refuses the first.
    base = dict(input=train_file, model_prefix=prefix, model_type=kind,
                normalization_rule_name="identity", num_threads=1, hard_vocab_limit=False,
                minloglevel=2, byte_fallback=(kind == "bpe"))
    tries = [dict(vocab_size=1200 if kind == "bpe" else 1000, character_coverage=0.98),
             dict(vocab_size=2000, character_coverage=0.98),
             dict(vocab_size=2000, character_coverage=0.95)]
    try:
        for i, extra in enumerate(tries):
            try:
                spm.SentencePieceTrainer.train(**base, **extra)
                log(f"{name}: trained with {extra}")
                break
            except Exception as e:
                if i == len(tries) - 1:
                    raise
                log(f"{name}: trainer refused {extra} ({e}); trying larger")
    finally:
        if os.path.exists(train_file):
            os.remove(train_file)
    if os.path.exists(prefix + ".vocab"):
        os.remove(prefix + ".vocab")
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    log(f"{name}: {sp.get_piece_size()} pieces -> {prefix}.model ({os.path.getsize(prefix + '.model') // 1024} KiB)")

    def enc(text, special):
        return sp.encode(text, add_bos=special)

    def dec(ids, skip):
        return sp.decode(ids)

    write_expected(args.out, name, f"sentencepiece {spm.__version__} ({kind}, identity normalization)",
                   cases_for(texts, enc, dec), file=f"trained/{name}.model")
    return sp


def bench(name, tok, texts, mb, encode_one=None, encode_batch=None):
    lines = [t for t in texts if t]
    total, reps = 0, []
    while total < mb * 1_000_000:
        reps.extend(lines)
        total += sum(len(t.encode("utf-8")) for t in lines)
    res = {"bench": "hf", "tokenizer": name, "bytes": total, "lines": len(reps)}
    if encode_one:
        t0 = time.perf_counter()
        n = sum(len(encode_one(t)) for t in reps)
        dt = time.perf_counter() - t0
        res.update(encode_s=round(dt, 3), encode_mb_s=round(total / dt / 1e6, 2), tokens=n,
                   encode_tokens_s=round(n / dt))
    if encode_batch:
        t0 = time.perf_counter()
        encode_batch(reps)
        dt = time.perf_counter() - t0
        res.update(batch_s=round(dt, 3), batch_mb_s=round(total / dt / 1e6, 2), cpus=os.cpu_count())
    print("BENCH " + json.dumps(res), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizers", required=True, help="folder filled by scripts/fetch-tokenizers.sh")
    ap.add_argument("--out", required=True, help="output folder (becomes testdata/tokenizer/expected)")
    ap.add_argument("--corpus", default=os.path.join(HERE, "corpus.txt"))
    ap.add_argument("--bench-mb", type=float, default=10.0, help="MB of text for the throughput run (0: none)")
    ap.add_argument("--train-lines", type=int, default=20000)
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.makedirs(args.out, exist_ok=True)
    texts = read_corpus(args.corpus)
    log(f"corpus: {len(texts)} lines from {args.corpus}")
    versions = {}
    for mod in ("tokenizers", "sentencepiece", "transformers"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception as e:
            versions[mod] = f"unavailable: {e}"
    log(f"python {sys.version.split()[0]}, {versions}")

    failed = []
    toks, sps = {}, {}

    def step(label, fn, *a):
        log(f"{label} ...")
        try:
            return fn(*a)
        except Exception:
            traceback.print_exc()
            log(f"{label}: FAILED")
            failed.append(label)
            return None

    for name in REAL:
        step(name, do_real, name, args, texts, toks)
    train_lines = training_text(texts, args.train_lines)
    step("unigram_hf", do_unigram_hf, args, texts, train_lines, toks)
    for kind in ("bpe", "unigram"):
        sp = step("sp_" + kind, do_sentencepiece, args, texts, train_lines, kind)
        if sp is not None:
            sps["sp_" + kind] = sp

    if args.bench_mb > 0:
        for name, tok in toks.items():
            step(f"bench {name}", bench, name, tok, texts, args.bench_mb,
                 lambda t, tok=tok: tok.encode(t, add_special_tokens=False).ids,
                 lambda b, tok=tok: tok.encode_batch(b, add_special_tokens=False))
        for name, sp in sps.items():
            step(f"bench {name}", bench, name, sp, texts, args.bench_mb, sp.encode, None)

    if failed:
        log(f"done with failures: {failed}")
        sys.exit(1)
    log(f"done: files in {args.out}")


if __name__ == "__main__":
    main()
