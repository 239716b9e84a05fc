"""The real-text corpus: the Python standard library's source files, or a folder of .txt files.

The split into train and held-out parts is by file and deterministic: a file is held out when
the sha256 of its path relative to the corpus root falls in the held-out share, so the same
file always lands on the same side regardless of which other files exist.
"""

from __future__ import annotations

import hashlib
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "heldout")
DEFAULT_HELDOUT_FRACTION = 0.05


def stdlib_root() -> Path:
    """The folder of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def _is_heldout(rel_path: str, heldout_fraction: float) -> bool:
    digest = hashlib.sha256(rel_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < heldout_fraction


def corpus_files(
    split: str = "train", text_dir: str | Path | None = None, heldout_fraction: float = DEFAULT_HELDOUT_FRACTION
) -> list[Path]:
    """Sorted files of one split: `*.txt` under `text_dir`, else the stdlib's `*.py` files
    (site-packages and test folders excluded)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    if text_dir is not None:
        root = Path(text_dir)
        if not root.is_dir():
            raise ValueError(f"text_dir={str(text_dir)!r} is not a folder")
        files = sorted(root.rglob("*.txt"))
        if not files:
            raise ValueError(f"text_dir={str(text_dir)!r} holds no .txt files")
    else:
        root = stdlib_root()
        skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
        files = sorted(p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts))
    want_heldout = split == "heldout"
    return [p for p in files if _is_heldout(p.relative_to(root).as_posix(), heldout_fraction) == want_heldout]


@dataclass
class TextCorpus:
    """The bytes of one split, concatenated with a blank line between files, for sampling windows."""

    data: bytes
    n_files: int

    @classmethod
    def load(
        cls, split: str = "train", text_dir: str | Path | None = None, max_bytes: int | None = None,
        heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    ) -> TextCorpus:
        chunks: list[bytes] = []
        total = 0
        files = corpus_files(split, text_dir, heldout_fraction)
        for p in files:
            b = p.read_bytes() + b"\n\n"
            chunks.append(b)
            total += len(b)
            if max_bytes is not None and total >= max_bytes:
                break
        data = b"".join(chunks)
        if max_bytes is not None:
            data = data[:max_bytes]
        if not data:
            raise ValueError(f"the {split!r} split of the corpus is empty")
        return cls(data=data, n_files=len(chunks))

    def sample(self, rng: random.Random, n_tokens: int) -> list[int]:
        """A random window of `n_tokens` bytes as token ids (wraps around at the end)."""
        if n_tokens > len(self.data):
            reps = n_tokens // len(self.data) + 1
            return list((self.data * reps)[:n_tokens])
        start = rng.randrange(0, len(self.data) - n_tokens + 1)
        return list(self.data[start : start + n_tokens])
