#!/usr/bin/env python3
"""Tests of corpus.py's reST clean-up and splits (standard library only):
python3 scripts/quality/corpus_test.py"""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus  # noqa: E402


def clean(text):
    lines = text.split("\n")
    return corpus.clean(lines, corpus.substitutions(lines))


class Clean(unittest.TestCase):
    def test_roles(self):
        self.assertEqual(clean("Use :func:`os.path.join` and :class:`~a.b.C`."), "Use os.path.join and C.")
        self.assertEqual(clean("See :ref:`the tutorial <tut-intro>` and :ref:`label`."), "See the tutorial and label.")
        self.assertEqual(clean(":pep:`8`, :rfc:`2822`, :issue:`123`, :gh:`77`"), "PEP 8, RFC 2822, bpo-123, gh-77")
        self.assertEqual(clean(":c:func:`PyList_New` and :meth:`!close`"), "PyList_New and close")

    def test_role_across_lines(self):
        self.assertEqual(clean("a :term:`provisional\nAPI <provisional api>` here"), "a provisional API here")  # the role's lines joined

    def test_inline_markup(self):
        self.assertEqual(clean("``x = 1``, `Python <https://www.python.org>`_, `ref`_, **bold**, *em*"),
                         "x = 1, Python, ref, bold, em")
        self.assertEqual(clean("keep *args and a*b"), "keep *args and a*b")

    def test_substitutions(self):
        self.assertEqual(clean(".. |x| replace:: ``y()``\n\nCall |x| in |version|."), "Call y() in 3.11.")

    def test_directives(self):
        src = ".. function:: f(a, b)\n              f(a)\n   :noindex:\n\n   Body with :func:`g`.\n\n   .. versionadded:: 3.2\n"
        self.assertEqual(clean(src), "f(a, b)\nf(a)\n\n   Body with g.\n\n   New in version 3.2.")
        self.assertEqual(clean(".. deprecated-removed:: 3.8 3.12\n   Use x."), "Deprecated since version 3.8, will be removed in version 3.12.\n   Use x.")
        self.assertEqual(clean(".. note:: Short.\n\nText"), "Short.\n\nText")

    def test_dropped(self):
        src = ".. index:: single: foo\n   pair: bar\n\n.. _label:\n\n.. a comment\n   more comment\n\nText\n\n.. toctree::\n   :maxdepth: 2\n\n   a.rst\n"
        self.assertEqual(clean(src), "Text")

    def test_code_kept(self):
        src = "Example::\n\n    x = :func:`y`  # ``z``\n\nAfter :func:`z`."
        self.assertEqual(clean(src), "Example:\n\n    x = :func:`y`  # ``z``\n\nAfter z.")
        src = ".. code-block:: python\n   :emphasize-lines: 1\n\n   a = ``b``\n\nText"
        self.assertEqual(clean(src), "\n   a = ``b``\n\nText".lstrip("\n"))
        self.assertEqual(clean(">>> print(``x``)\n``x``\n\nText ``y``"), ">>> print(``x``)\n``x``\n\nText y")

    def test_code_after_list_item(self):
        # The literal block ends where the list item's text resumes.
        src = "* Use :func:`getattr`::\n\n     getattr(foo, 'bar')()\n\n  Note that :func:`getattr` works."
        self.assertEqual(clean(src), "* Use getattr:\n\n     getattr(foo, 'bar')()\n\n  Note that getattr works.")

    def test_headings(self):
        self.assertEqual(clean("*****\nTitle\n*****\n\nSection\n=======\n\nText"), "Title\n\nSection\n\nText")


class Split(unittest.TestCase):
    def test_sections(self):
        src = "****\n Doc\n****\n\nIntro.\n\nOne\n===\n\nA.\n\nSub\n---\n\nB.\n\nTwo\n===\n\nC.\n".split("\n")
        titles = [t for t, _ in corpus.sections(src)]
        self.assertEqual(titles, ["Doc", "One", "Two"])

    def test_bucket_is_stable(self):
        self.assertEqual(corpus.bucket("library/os.rst"), corpus.bucket("library/os.rst"))
        self.assertTrue(0 <= corpus.bucket("x") < 1000)

    def test_dedup_moves_repeated_text(self):
        words = " ".join(f"w{i}" for i in range(40))
        splits = {"pretrain_train": [], "pretrain_heldout": [], "downstream_train": [{"text": words, "source": "a"}],
                  "downstream_valid": [], "downstream_heldout": [{"text": words + " tail", "source": "b"},
                                                                 {"text": "other words entirely " * 5, "source": "c"}]}
        moved = corpus.dedup(splits, 0.2)
        self.assertEqual([m["source"] for m in moved], ["b"])
        self.assertEqual([r["source"] for r in splits["downstream_train"]], ["a", "b"])
        self.assertEqual([r["source"] for r in splits["downstream_heldout"]], ["c"])


if __name__ == "__main__":
    unittest.main()
