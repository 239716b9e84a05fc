"""Byte-level tokenizer: one token per UTF-8 byte, vocabulary 256, nothing to download.

Every string maps to a token sequence whose length is its UTF-8 byte length, so a context
length "in tokens" is a length in bytes (the synthetic tasks rely on this).
"""

from __future__ import annotations

import torch

VOCAB_SIZE = 256


class ByteTokenizer:
    """Maps text to UTF-8 bytes and back; token id == byte value, `vocab_size` 256.

    Decoding replaces invalid byte sequences (a model may emit half a multi-byte character)
    instead of raising, so generated text can always be scored.
    """

    vocab_size: int = VOCAB_SIZE

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        bad = [i for i in ids if not 0 <= int(i) < VOCAB_SIZE]
        if bad:
            raise ValueError(f"token ids must be in [0, {VOCAB_SIZE}), got {bad[:5]}")
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def n_tokens(text: str) -> int:
    """Number of tokens of `text` under the byte-level tokenizer (its UTF-8 length)."""
    return len(text.encode("utf-8"))
