#!/usr/bin/env python3
"""make_expected.py writes the renders loracc's Go chat tests compare against.

For each chat template (the tokenizer_config.json of llama3/, llama3_2/,
qwen3/ and gemma3/ under --tokenizers, plus chatml-generation.jinja and
context-probe.jinja beside this script) and each conversation of --conversations it records the text
transformers renders (apply_chat_template(..., tokenize=False)), or the
error it raises; for the template with {% generation %} tags the generation
spans transformers reports; and for the others the assistant spans of the
prefix rule that chat/spans.go implements, computed here from transformers'
own renders. It also renders the feature probes of snippets.json and the random
templates of lexer-corpus.json.

Engines, tried in order with --engine auto (the one used is printed and
written into the output):
  render_jinja_template   transformers.utils.chat_template_utils.render_jinja_template
  compile_jinja_template  transformers' _compile_jinja_template (older releases)
  apply_chat_template     a tokenizer loaded from one of the folders (needs its
                          tokenizer files, not only tokenizer_config.json);
                          gives no generation spans
  jinja2                  plain jinja2 set up as transformers sets it up; only
                          for interim files (expected-jinja2.json), never the
                          reference

Usage (on a machine with transformers 5.x):
  python3 chat/testdata/make_expected.py --tokenizers DIR \
      --conversations chat/testdata/conversations.json \
      --out chat/testdata/expected.json
"""

import argparse
import datetime
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATE_DIRS = ["llama3", "llama3_2", "qwen3", "gemma3"]
GENERATION_TEMPLATE = "chatml-generation"
CONTEXT_PROBE = "context-probe"  # prints what the template context holds
DEFAULT_DATE = "26 Jul 2024"


def jinja2_engine():
    """A stand-in for transformers' template environment, written from its
    documented behaviour: ImmutableSandboxedEnvironment with trim_blocks,
    lstrip_blocks and loopcontrols, a tojson without HTML escaping,
    raise_exception, strftime_now, and a {% generation %} tag that records
    where its output lands."""
    import jinja2
    import jinja2.ext
    from jinja2 import nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        tags = {"generation"}

        def __init__(self, environment):
            super().__init__(environment)
            self.chunks = None
            self.spans = None

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            call = self.call_method("_mark")
            return nodes.CallBlock(call, [], [], body).set_lineno(lineno)

        def _mark(self, caller):
            out = caller()
            if self.chunks is not None:
                start = sum(len(c) for c in self.chunks)
                self.spans.append((start, start + len(out)))
            return out

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    ext = next(e for e in env.extensions.values() if isinstance(e, Generation))

    def render(src, ctx, want_spans):
        tmpl = env.from_string(src)
        if not want_spans:
            return tmpl.render(**ctx), None
        chunks, spans = [], []
        ext.chunks, ext.spans = chunks, spans
        try:
            for c in tmpl.generate(**ctx):
                chunks.append(c)
        finally:
            ext.chunks, ext.spans = None, None
        return "".join(chunks), spans

    def render_chat(src, messages, agp, tools, documents, kwargs, want_spans):
        ctx = dict(kwargs)
        ctx.update(messages=messages, tools=tools, documents=documents, add_generation_prompt=agp)
        return render(src, ctx, want_spans)

    return "jinja2 %s (stand-in for transformers)" % jinja2.__version__, render_chat, lambda s, c: render(s, c, False)[0]


def transformers_engines():
    import transformers
    from transformers.utils import chat_template_utils as ctu

    version = transformers.__version__
    if hasattr(ctu, "render_jinja_template"):
        def render_chat(src, messages, agp, tools, documents, kwargs, want_spans):
            kw = dict(kwargs)
            if documents is not None:
                kw["documents"] = documents
            rendered, indices = ctu.render_jinja_template(
                conversations=[messages],
                tools=tools,
                chat_template=src,
                return_assistant_tokens_mask=want_spans,
                add_generation_prompt=agp,
                **kw,
            )
            return rendered[0], (indices[0] if want_spans else None)

        def render_snippet(src, ctx):
            return ctu._compile_jinja_template(src).render(**ctx)

        return "transformers %s render_jinja_template" % version, render_chat, render_snippet

    compile_fn = getattr(ctu, "_compile_jinja_template", None)
    if compile_fn is None:
        from transformers import tokenization_utils_base as tub

        compile_fn = getattr(tub, "_compile_jinja_template", None)
    if compile_fn is None:
        raise ImportError("this transformers has neither render_jinja_template nor _compile_jinja_template")
    with_indices = getattr(ctu, "_render_with_assistant_indices", None)

    def render_chat(src, messages, agp, tools, documents, kwargs, want_spans):
        tmpl = compile_fn(src)
        ctx = dict(kwargs)
        if want_spans and with_indices is not None:
            return with_indices(
                compiled_template=tmpl, messages=messages, tools=tools, documents=documents,
                add_generation_prompt=agp, **ctx,
            )
        if want_spans:
            raise RuntimeError("no _render_with_assistant_indices in this transformers")
        return tmpl.render(messages=messages, tools=tools, documents=documents, add_generation_prompt=agp, **ctx), None

    return "transformers %s _compile_jinja_template" % version, render_chat, lambda s, c: compile_fn(s).render(**c)


def tokenizer_engine(tokenizers):
    from transformers import AutoTokenizer
    import transformers

    last = None
    for d in TEMPLATE_DIRS:
        try:
            tok = AutoTokenizer.from_pretrained(os.path.join(tokenizers, d))
            break
        except Exception as e:  # a folder without tokenizer files
            last = e
    else:
        raise ImportError("no tokenizer loads from %s: %s" % (tokenizers, last))

    def render_chat(src, messages, agp, tools, documents, kwargs, want_spans):
        if want_spans:
            raise RuntimeError("apply_chat_template gives token masks, not character spans")
        text = tok.apply_chat_template(
            messages, tools=tools, documents=documents, chat_template=src,
            add_generation_prompt=agp, tokenize=False, **kwargs,
        )
        return text, None

    def render_snippet(src, ctx):
        raise NotImplementedError("apply_chat_template cannot render a bare snippet")

    return "transformers %s apply_chat_template (%s)" % (transformers.__version__, d), render_chat, render_snippet


def pick_engine(name, tokenizers):
    if name in ("auto", "transformers"):
        try:
            return transformers_engines()
        except ImportError as e:
            print("make_expected: %s" % e, file=sys.stderr)
            try:
                return tokenizer_engine(tokenizers)
            except ImportError as e2:
                if name == "transformers":
                    sys.exit("make_expected: transformers not usable: %s; %s" % (e, e2))
                print("make_expected: transformers not usable (%s); falling back to jinja2" % e2, file=sys.stderr)
    return jinja2_engine()


SPECIAL_TOKENS = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"]


def special_token(v):
    if isinstance(v, dict):
        return v.get("content")
    return v


def load_templates(tokenizers):
    out = []
    for d in TEMPLATE_DIRS:
        path = os.path.join(tokenizers, d, "tokenizer_config.json")
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
        tmpl = cfg["chat_template"]
        if isinstance(tmpl, list):
            tmpl = next(t["template"] for t in tmpl if t["name"] == "default")
        # What apply_chat_template passes: the set special tokens.
        special = {k: special_token(cfg[k]) for k in SPECIAL_TOKENS if special_token(cfg.get(k))}
        out.append((d, tmpl, special))
    for name in (GENERATION_TEMPLATE, CONTEXT_PROBE):
        with open(os.path.join(HERE, name + ".jinja"), encoding="utf-8") as f:
            out.append((name, f.read(), {}))
    return out


def to_bytes(text, spans):
    """Code-point offsets (Python's) to UTF-8 byte offsets (Go's)."""
    return [[len(text[:s].encode("utf-8")), len(text[:e].encode("utf-8"))] for s, e in spans]


CONTENT_MARK = "\U0010FFFB"
NEXT_MARK = "\U0010FFFA"
PY_SPACE = "".join(chr(c) for c in range(0x110000) if chr(c).isspace())


def end_by_mark(render, messages, i, full, eos, agp, start):
    """chat/spans.go's endByMark: where message i's turn ends in full."""
    if not eos:
        raise ValueError("no eos_token to end the turn with")
    content = messages[i].get("content")
    if not isinstance(content, str):
        raise ValueError("its content is not a string")
    afters = [content + CONTENT_MARK, content.rstrip(PY_SPACE) + CONTENT_MARK]
    if content == "":
        afters = [None]  # a mark would make the content true; start at start
    befores = [None]
    if i + 1 < len(messages) and isinstance(messages[i + 1].get("content"), str):
        n = messages[i + 1]["content"]
        befores = [NEXT_MARK + n, NEXT_MARK + n.lstrip(PY_SPACE)]
    for after in afters:
        for before in befores:
            alt = list(messages)
            if after is not None:
                alt[i] = dict(messages[i], content=after)
            if before is not None:
                alt[i + 1] = dict(messages[i + 1], content=before)
            out = render(alt, agp)
            bare = out.replace(CONTENT_MARK, "", 1).replace(NEXT_MARK, "", 1)
            marks = 0 if after is None else 1
            if out.count(CONTENT_MARK) != marks or out.count(NEXT_MARK) > 1 or bare != full:
                continue
            at = start if after is None else out.index(CONTENT_MARK)
            nxt = out.find(NEXT_MARK)
            if nxt < 0:
                nxt = len(full)
            else:
                nxt -= len(CONTENT_MARK) * marks
                if nxt < at:
                    continue
            k = full.find(eos, at, nxt)
            if k < 0:
                raise ValueError("no eos_token %r follows its content before the next message" % eos)
            return k + len(eos)
    raise ValueError("marks around its content do not come back in place")


def prefix_spans(render, messages, full, eos, agp):
    """The prefix rule of chat/spans.go, on the engine's renders."""
    try:
        trailer = render([], False)
    except Exception:
        trailer = ""
    spans = []
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        prompt = render(messages[:i], True)
        start = len(prompt)
        if not full.startswith(prompt):
            try:
                bare = render(messages[:i], False)
            except Exception:
                bare = None
            if bare is None or not full.startswith(bare):
                raise ValueError("assistant span of message %d: the render of the messages before it is not a prefix of the whole render" % i)
            start = len(os.path.commonprefix([prompt, full]))
        turn = render(messages[: i + 1], False)
        if trailer and len(turn) - len(trailer) >= start and turn.endswith(trailer):
            turn = turn[: len(turn) - len(trailer)]
        end = len(turn.rstrip(" \t\n\r"))
        if not full.startswith(turn):
            try:
                end = end_by_mark(render, messages, i, full, eos, agp, start)
            except ValueError as e:
                raise ValueError("assistant span of message %d: the render up to it is not a prefix of the whole render, and %s" % (i, e))
        spans.append((start, max(start, end)))
    return spans


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizers", required=True, help="folder fetch-tokenizers.sh printed")
    ap.add_argument("--conversations", default=os.path.join(HERE, "conversations.json"))
    ap.add_argument("--snippets", default=os.path.join(HERE, "snippets.json"))
    ap.add_argument("--corpus", default=os.path.join(HERE, "lexer-corpus.json"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--engine", default="auto", choices=["auto", "transformers", "jinja2"])
    args = ap.parse_args()

    engine, render_chat, render_snippet = pick_engine(args.engine, args.tokenizers)
    print("make_expected: engine: %s" % engine, file=sys.stderr)
    with open(args.conversations, encoding="utf-8") as f:
        conversations = json.load(f)["conversations"]
    with open(args.snippets, encoding="utf-8") as f:
        snippets = json.load(f)["snippets"]

    cases = []
    for name, src, special in load_templates(args.tokenizers):
        generation = name == GENERATION_TEMPLATE
        for conv in conversations:
            extra = dict(conv.get("extra", {}))
            extra.setdefault("date_string", DEFAULT_DATE)
            tools = extra.pop("tools", None)
            documents = extra.pop("documents", None)
            kwargs = dict(special)
            kwargs.update(extra)
            messages = conv["messages"]
            case = {"template": name, "conversation": conv["name"]}

            def render(msgs, agp, want=False):
                return render_chat(src, msgs, agp, tools, documents, kwargs, want)

            try:
                text, _ = render(messages, conv["add_generation_prompt"])
            except Exception as e:
                case["error"] = "%s: %s" % (type(e).__name__, e)
                cases.append(case)
                continue
            case["text"] = text
            if generation:
                try:
                    again, spans = render(messages, conv["add_generation_prompt"], True)
                    if again != text:
                        raise RuntimeError("the render with generation tracking differs from the plain one")
                    case["generation_spans"] = to_bytes(text, sorted(tuple(s) for s in spans))
                except Exception as e:
                    case["generation_error"] = "%s: %s" % (type(e).__name__, e)
            else:
                try:
                    ps = prefix_spans(lambda m, a: render(m, a)[0], messages, text, kwargs.get("eos_token"), conv["add_generation_prompt"])
                    case["prefix_spans"] = to_bytes(text, ps)
                except Exception as e:
                    case["prefix_error"] = str(e)
            cases.append(case)

    probes = []
    for sn in snippets:
        p = {"name": sn["name"]}
        try:
            p["text"] = render_snippet(sn["template"], sn.get("context", {}))
        except NotImplementedError as e:
            p["skipped"] = str(e)
        except Exception as e:
            p["error"] = "%s: %s" % (type(e).__name__, e)
        probes.append(p)

    with open(args.corpus, encoding="utf-8") as f:
        corpus = []
        for src in json.load(f)["templates"]:
            try:
                corpus.append({"text": render_snippet(src, {})})
            except NotImplementedError as e:
                corpus.append({"skipped": str(e)})
            except Exception as e:
                corpus.append({"error": "%s: %s" % (type(e).__name__, e)})

    out = {
        "engine": engine,
        "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "default_date_string": DEFAULT_DATE,
        "cases": cases,
        "snippets": probes,
        "corpus": corpus,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("make_expected: wrote %d cases and %d snippets to %s" % (len(cases), len(probes), args.out), file=sys.stderr)


if __name__ == "__main__":
    main()
