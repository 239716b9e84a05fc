"""Real English text as the haystack of the retrieval tasks, instead of the repeated "The grass is green." filler.

`english_text(text_dir=None)` is the text every machine has: the documentation strings (module, class and
function docstrings) of the held-out split of the Python standard library (`nats_model.data.text`), ASCII
only, whitespace folded, one paragraph a docstring; or the `*.txt` files of a local folder. `passage(rng,
n_chars, text_dir)` is a window of it starting at a sentence, drawn from `rng`, so an instance stays a pure
function of its seed. The needles are then inserted at sentence boundaries of real prose, which a
pretrained model does not see as a repeated pattern it can skip.
"""

from __future__ import annotations

import ast
import functools
import random
import re
from pathlib import Path

from nats_model.data.text import corpus_files

MIN_DOCSTRING_CHARS = 80


def _ascii(text: str) -> str:
    text = text.encode("ascii", errors="ignore").decode("ascii")
    return re.sub(r"\s+", " ", text).strip()


@functools.lru_cache(maxsize=4)
def english_text(text_dir: str | None = None) -> str:
    """The haystack text (see the module docstring); ValueError when a folder holds no usable text."""
    paragraphs: list[str] = []
    if text_dir is not None:
        for path in sorted(corpus_files("train", text_dir) + corpus_files("heldout", text_dir)):
            paragraphs.append(_ascii(path.read_text(encoding="utf-8", errors="replace")))
    else:
        for path in corpus_files("heldout"):
            try:
                tree = ast.parse(Path(path).read_text(encoding="utf-8", errors="replace"))
            except (SyntaxError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                    doc = ast.get_docstring(node)
                    if doc and len(doc) >= MIN_DOCSTRING_CHARS and ">>>" not in doc:
                        paragraphs.append(_ascii(doc))
    text = " ".join(p if p.endswith((".", "!", "?")) else p + "." for p in paragraphs if p)
    if len(text) < 10_000:
        raise ValueError(f"haystack text {'of ' + repr(text_dir) if text_dir else 'from the standard library'} "
                         f"is too short ({len(text)} characters; at least 10000 needed)")
    return text


def passage(rng: random.Random, n_chars: int, text_dir: str | None = None) -> str:
    """`n_chars` characters of the haystack text from a random sentence start (wrapping around)."""
    text = english_text(text_dir)
    start = rng.randrange(len(text))
    dot = text.find(". ", start)
    start = 0 if dot < 0 else dot + 2
    out = text[start:start + n_chars]
    while len(out) < n_chars:
        out += " " + text[: n_chars - len(out)]
    return out
