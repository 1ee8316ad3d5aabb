#!/usr/bin/env python3
"""Text corpus for issue 14 (adaptation quality) from the Python 3.11 docs.

Reads the reST sources that Debian's python3.11-doc package ships
(usr/share/doc/python3.11/html/_sources/**/*.rst.txt), removes the reST
markup a reader of the rendered page does not see, and writes
deterministic splits as JSONL text records ({"text": ..., "source": ...},
the form `loracc train --data` reads; "source" is ignored by loracc):

  pretrain_train.jsonl     every document outside whatsnew/, one record each,
  pretrain_heldout.jsonl   ~2% of those documents (stable hash of the path)
  downstream_train.jsonl   whatsnew/: one record per section (level-2
  downstream_valid.jsonl   heading), ~85/5/10% by a stable hash of
  downstream_heldout.jsonl "path#index title"; never in pretraining

and a manifest (sizes, record counts, sha256 of every file). Standard
library only; the same sources give byte-identical files.

  python3 scripts/quality/corpus.py SOURCES_DIR OUT_DIR [--manifest FILE]

Cleaning, and why "light": the corpus is for a small language model, so
what matters is that the text reads like the rendered documentation.
Roles become their text (:func:`os.path.join` -> os.path.join, a ~ keeps
the last component, "title <target>" keeps the title, :pep:`8` -> PEP 8,
:issue:`123` -> bpo-123, :gh:`1` -> gh-1); ``literals``, `links <url>`_,
**strong** and *emphasis* lose their markers; version directives become
the sentence Sphinx prints ("New in version 3.2."); object directives keep
their signature as a line; index entries, labels, comments, toctrees,
includes, images, option lines and heading underlines are dropped;
substitutions defined in the file (and |version|, |release|) are
replaced. Code (literal blocks after "::", code-block, doctest, testcode,
productionlist bodies) is kept verbatim with its indentation.
"""
import argparse
import hashlib
import json
import os
import re
import sys

VERSION, RELEASE = "3.11", "3.11.2"  # the package's Sphinx |version| and |release|

# Directives dropped with their whole body.
DROP = {
    "index", "toctree", "highlight", "module", "currentmodule", "moduleauthor",
    "sectionauthor", "include", "literalinclude", "image", "figure", "raw",
    "tabularcolumns", "testsetup", "testcleanup", "audit-event", "audit-event-table",
    "contents", "program", "c:namespace", "c:namespace-push", "c:namespace-pop",
    "productionlist-ref", "limited-api-list", "miscnews", "role", "default-role",
}
# Directives whose argument is not text to keep (a language, a file, a flag).
NO_ARG = {
    "code-block", "sourcecode", "code", "doctest", "testcode", "testoutput",
    "only", "note", "warning", "seealso", "impl-detail", "important", "caution",
    "tip", "attention", "hint", "danger", "error", "admonition", "parsed-literal",
    "productionlist", "list-table", "csv-table", "table", "container", "epigraph",
    "compound", "centered", "hlist", "glossary", "math",
}
# Admonitions: an argument on the directive's line is the first line of text.
ADMONITION = {"note", "warning", "seealso", "important", "caution", "tip", "attention",
              "hint", "danger", "error", "impl-detail"}
# Directives whose body is code: kept verbatim.
CODE_BODY = {"code-block", "sourcecode", "code", "doctest", "testcode", "testoutput", "productionlist"}
VERSIONED = {
    "versionadded": "New in version {}.",
    "versionchanged": "Changed in version {}.",
    "deprecated": "Deprecated since version {}.",
    "deprecated-removed": "Deprecated since version {}, will be removed in version {}.",
}

DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([A-Za-z][\w:-]*)::(?:\s+(.*))?$")
EXPLICIT = re.compile(r"^(\s*)\.\.(\s|$)")
SUBST_DEF = re.compile(r"^\s*\.\.\s+\|([^|]+)\|\s+replace::\s+(.*)$")
FOOTNOTE = re.compile(r"^(\s*)\.\.\s+\[([^\]]+)\]\s*(.*)$")
ADORNMENT = re.compile(r"^([=\-~^\"'`#*+<>:_.])\1{2,}\s*$")
BULLET = re.compile(r"^\s*(?:[*+-]|#\.|\d+\.)\s+")
OPTION = re.compile(r"^\s+:[\w-]+:(\s.*)?$")
ROLE = re.compile(r":((?:[\w-]+:)?[\w-]+):`((?:[^`\\]|\\.)+?)`")
LINK = re.compile(r"`((?:[^`<\\]|\\.)+?)\s*<[^`>]*>`__?")
REF = re.compile(r"`((?:[^`\\]|\\.)+?)`__?(?=\W|$)")
LITERAL = re.compile(r"``(.+?)``", re.S)
DEFAULT_ROLE = re.compile(r"(?<![\w`])`([^`\n]+?)`(?![\w`])")
STRONG = re.compile(r"(?<![\w*\\])\*\*(\S(?:[^*]*?\S)?)\*\*(?![\w*])")
EMPH = re.compile(r"(?<![\w*\\])\*(\S(?:[^*\n]*?\S)?)\*(?![\w*])")
FOOTREF = re.compile(r"\s?\[(?:#\w*|\d+|\*)\]_")
SUBST = re.compile(r"\|([\w -]+)\|")


def role_text(role, body):
    """What Sphinx shows for :role:`body`."""
    body = body.replace("\n", " ")
    title, target = body, body
    m = re.match(r"^(.*?)\s*<([^<>]+)>$", body, re.S)
    if m and m.group(1):
        title, target = m.group(1), m.group(2)
    name = role.split(":")[-1]
    if name == "pep":
        return title if m else "PEP " + target.split("#")[0]
    if name == "rfc":
        return title if m else "RFC " + target.split("#")[0]
    if name == "issue":
        return "bpo-" + target
    if name == "gh":
        return "gh-" + target
    if m:
        return title
    t = body.lstrip("!")
    if t.startswith("~"):
        t = t[1:].split(".")[-1]
    return t


def clean_inline(text, subst):
    """Inline markup of prose (a run of lines joined by newlines)."""
    for _ in range(2):  # a substitution's text may hold roles
        text = SUBST.sub(lambda m: subst.get(m.group(1), m.group(0)), text)
    text = FOOTREF.sub("", text)
    text = LITERAL.sub(lambda m: m.group(1), text) if "``" in text else text
    text = ROLE.sub(lambda m: role_text(m.group(1), m.group(2)), text)
    text = LINK.sub(lambda m: m.group(1), text)
    text = REF.sub(lambda m: m.group(1), text)
    text = DEFAULT_ROLE.sub(lambda m: m.group(1), text)
    text = STRONG.sub(lambda m: m.group(1), text)
    text = EMPH.sub(lambda m: m.group(1), text)
    text = text.replace("\\ ", "")
    return re.sub(r"\\([*`|_\\<>])", r"\1", text)


def indent_of(line):
    return len(line) - len(line.lstrip(" "))


def block_end(lines, i, indent):
    """The index after the explicit-markup block starting at line i: lines
    that are blank or indented deeper than indent belong to it."""
    j = i + 1
    while j < len(lines) and (not lines[j].strip() or indent_of(lines[j]) > indent):
        j += 1
    while j > i + 1 and not lines[j - 1].strip():  # leave trailing blanks outside
        j -= 1
    return j


def substitutions(lines):
    subst = {"version": VERSION, "release": RELEASE, "today": ""}
    for line in lines:
        m = SUBST_DEF.match(line)
        if m:
            subst[m.group(1)] = m.group(2).strip()
    return subst


def clean(lines, subst):
    """Cleaned text of reST lines."""
    out = []    # (is_code, line)
    code = None  # indent that a literal block's lines must exceed
    pending_code = None
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        ind = indent_of(line)
        if code is not None:
            if not line.strip() or ind > code:
                out.append((True, line))
                i += 1
                continue
            code = None
        if pending_code is not None:  # first non-blank line after "::" decides
            if line.strip():
                if ind > pending_code:
                    code = pending_code
                    out.append((True, line))
                    pending_code = None
                    i += 1
                    continue
                pending_code = None
        if ADORNMENT.match(line):
            i += 1
            continue
        d = DIRECTIVE.match(line)
        if d:
            name, arg = d.group(2), (d.group(3) or "").strip()
            end = block_end(lines, i, ind)
            if name in DROP or SUBST_DEF.match(line):
                i = end
                continue
            # Signature continuation lines, then option lines, are not body text.
            j = i + 1
            sigs = [arg] if arg else []
            while j < end and lines[j].strip() and not OPTION.match(lines[j]) and name not in NO_ARG and name not in VERSIONED:
                sigs.append(lines[j].strip())
                j += 1
            while j < end and OPTION.match(lines[j]):
                j += 1
            pad = " " * ind
            if name in VERSIONED:
                parts = arg.split(None, 1)
                nums = parts[0] if parts else ""
                rest = parts[1] if len(parts) > 1 else ""
                if name == "deprecated-removed":
                    vs = (arg.split() + ["?", "?"])[:2]
                    rest = " ".join(arg.split()[2:])
                    out.append((False, pad + VERSIONED[name].format(*vs) + (" " + rest if rest else "")))
                else:
                    out.append((False, pad + VERSIONED[name].format(nums) + (" " + rest if rest else "")))
            elif name == "availability":
                out.append((False, pad + "Availability: " + " ".join(sigs)))
            elif name in ADMONITION:
                if arg:
                    out.append((False, pad + arg))
            elif name not in NO_ARG:
                for s in sigs:
                    out.append((False, pad + s))
            if name in CODE_BODY:
                code = ind
            i = j
            continue
        f = FOOTNOTE.match(line)
        if f:
            out.append((False, f.group(1) + "[" + f.group(2) + "] " + f.group(3)))
            i += 1
            continue
        if EXPLICIT.match(line):  # comment, label or hyperlink target
            i = block_end(lines, i, ind)
            continue
        s = line.strip()
        if s == "::":
            pending_code = ind
            i += 1
            continue
        if s.endswith("::"):
            line = line[:-3] if line.endswith(" ::") else line[:-1]
            # The block must be indented past the paragraph's text, which
            # starts after a list item's marker.
            bullet = BULLET.match(line)
            pending_code = ind + (len(bullet.group(0)) - ind if bullet else 0)
        elif s.startswith(">>>"):
            out.append((True, line))  # a doctest block: until the next blank line
            j = i + 1
            while j < len(lines) and lines[j].strip():
                out.append((True, lines[j].rstrip()))
                j += 1
            i = j
            continue
        m = re.match(r"^(\s*):([\w ]+):(\s|$)(.*)$", line)  # field list: ":Editor: name"
        if m and not ROLE.match(line.strip()):
            line = m.group(1) + m.group(2) + ":" + (" " + m.group(4) if m.group(4) else "")
        out.append((False, line))
        i += 1
    # Inline markup over runs of prose lines (roles may span lines).
    text, run = [], []
    for is_code, line in out + [(True, None)]:
        if not is_code:
            run.append(line)
            continue
        if run:
            text.extend(clean_inline("\n".join(run), subst).split("\n"))
            run = []
        if line is not None:
            text.append(line)
    # Trailing spaces off, blank runs squeezed, leading/trailing blanks dropped.
    res, blank = [], False
    for line in text:
        line = line.rstrip()
        if not line:
            blank = bool(res)
            continue
        if blank:
            res.append("")
        res.append(line)
        blank = False
    return "\n".join(res)


def headings(lines):
    """(line index, level) of each section heading: a title line under
    (and optionally over) a line of one repeated punctuation character."""
    styles, found = [], []
    i = 0
    while i + 1 < len(lines):
        t, u = lines[i].rstrip(), lines[i + 1].rstrip()
        over = i > 0 and ADORNMENT.match(lines[i - 1].rstrip()) is not None
        titled = bool(t.strip()) and not ADORNMENT.match(t) and ADORNMENT.match(u) is not None
        if titled and (over or (indent_of(t) == 0 and len(u) >= len(t.strip()))):
            style = (u[0], over)
            if style not in styles:
                styles.append(style)
            found.append((i - 1 if over else i, styles.index(style)))
            i += 2
            continue
        i += 1
    return found


def sections(lines):
    """The document cut before each heading of level 0 or 1: (title, lines)."""
    cuts = [0] + [i for i, lv in headings(lines) if lv <= 1 and i > 0] + [len(lines)]
    out = []
    for a, b in zip(cuts, cuts[1:]):
        part = lines[a:b]
        title = next((l.strip() for l in part if l.strip() and not ADORNMENT.match(l.rstrip())), "")
        out.append((title, part))
    return out


def bucket(key):
    """A stable number in [0, 1000) for a split."""
    return int(hashlib.sha256(("python3.11-doc:" + key).encode()).hexdigest()[:16], 16) % 1000


def shingles(text, n=10):
    """Hashes of the text's n-word windows."""
    w = text.split()
    return {hashlib.blake2b(" ".join(w[i:i + n]).encode(), digest_size=8).digest() for i in range(len(w) - n + 1)}


def dedup(splits, limit):
    """Moves held-out and valid records that repeat training text into the
    training split of their kind: the what's-new documents copy whole
    sections from one release to the next ("PEP 343: The 'with' statement"
    is in 2.5 and 2.6), and a held-out copy of a training section measures
    memory, not adaptation. A record moves when more than `limit` of its
    10-word windows occur in any training split; repeated until none does."""
    train = set()
    for k in ("pretrain_train", "downstream_train"):
        for r in splits[k]:
            train |= shingles(r["text"])
    moved = []
    changed = True
    while changed:
        changed = False
        for k in ("pretrain_heldout", "downstream_valid", "downstream_heldout"):
            keep = []
            for r in splits[k]:
                s = shingles(r["text"])
                share = len(s & train) / len(s) if s else 0.0
                if share > limit:
                    dst = k.split("_")[0] + "_train"
                    splits[dst].append(r)
                    train |= s
                    moved.append({"source": r["source"], "from": k, "overlap": round(share, 3)})
                    changed = True
                else:
                    keep.append(r)
            splits[k] = keep
    for k in splits:
        splits[k].sort(key=lambda r: r["source"])
    return moved


def write_jsonl(path, records):
    data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return {"file": os.path.basename(path), "records": len(records),
            "text_bytes": sum(len(r["text"].encode()) for r in records),
            "file_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sources", help="usr/share/doc/python3.11/html/_sources of the extracted package")
    ap.add_argument("out", help="folder for the JSONL splits")
    ap.add_argument("--manifest", help="also write the manifest here (default OUT/manifest.json)")
    ap.add_argument("--downstream", default="whatsnew/", help="the section kept out of pretraining")
    ap.add_argument("--max-overlap", type=float, default=0.2, help="held-out records repeating more of the training text move to train")
    ap.add_argument("--extra", action="append", default=[], help="KEY=VALUE recorded in the manifest")
    a = ap.parse_args()

    paths = []
    for root, dirs, files in os.walk(a.sources):
        dirs.sort()
        for f in sorted(files):
            if f.endswith(".rst.txt"):
                paths.append(os.path.relpath(os.path.join(root, f), a.sources).replace(os.sep, "/"))
    paths.sort()
    if not paths:
        sys.exit(f"corpus: no .rst.txt files under {a.sources}")

    splits = {k: [] for k in ("pretrain_train", "pretrain_heldout", "downstream_train", "downstream_valid", "downstream_heldout")}
    empty = 0
    for p in paths:
        with open(os.path.join(a.sources, p), encoding="utf-8") as f:
            lines = f.read().split("\n")
        subst = substitutions(lines)
        src = p[:-len(".txt")]
        if p.startswith(a.downstream):
            for k, (title, part) in enumerate(sections(lines)):
                text = clean(part, subst)
                if len(text) < 40:  # a toctree, an include, a bare heading
                    empty += 1
                    continue
                key = f"{src}#{k} {title}"
                b = bucket(key)
                split = "downstream_heldout" if b < 100 else "downstream_valid" if b < 150 else "downstream_train"
                splits[split].append({"text": text, "source": key})
        else:
            text = clean(lines, subst)
            if len(text) < 40:
                empty += 1
                continue
            split = "pretrain_heldout" if bucket(src) < 20 else "pretrain_train"
            splits[split].append({"text": text, "source": src})

    moved = dedup(splits, a.max_overlap)
    os.makedirs(a.out, exist_ok=True)
    manifest = {
        "recipe": "scripts/quality/corpus.sh + scripts/quality/corpus.py",
        "corpus_py_sha256": hashlib.sha256(open(__file__, "rb").read()).hexdigest(),
        "source_files": len(paths),
        "dropped_nearly_empty": empty,
        "downstream_section": a.downstream,
        "split_rule": "sha256('python3.11-doc:'+key)[:16 hex] mod 1000; pretrain (key: path): <20 held-out; "
                      "downstream (key: 'path#index title' of each level-0/1 section): <100 held-out, <150 valid, else train",
        "dedup": f"held-out/valid records with more than {a.max_overlap} of their 10-word windows in a training split moved to it",
        "moved_to_train": moved,
        "splits": {},
        "heldout_sources": {},
    }
    for kv in a.extra:
        k, _, v = kv.partition("=")
        manifest[k] = v
    for name, recs in splits.items():
        manifest["splits"][name] = write_jsonl(os.path.join(a.out, name + ".jsonl"), recs)
        if "heldout" in name or "valid" in name:
            manifest["heldout_sources"][name] = [r["source"] for r in recs]
    text = json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    for path in [os.path.join(a.out, "manifest.json")] + ([a.manifest] if a.manifest else []):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    for name, s in manifest["splits"].items():
        print(f"{name:20s} {s['records']:5d} records {s['text_bytes'] / 1e6:7.3f} MB text  sha256 {s['sha256'][:16]}")


if __name__ == "__main__":
    main()
