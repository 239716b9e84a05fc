"""NAtS token types and the visibility rule they define (docs/METHOD.md, "Visibility").

This file is the readable reference of the rule: the attention function, the Triton kernels,
the inference cache and the tests all agree with `visibility`.

Types are integers per key position: 0 Global, 1 Local, 2 Sliding window (SW).
With n <= m (causal), key n is visible to query m when
- Global: always;
- Local: m <= e(n), e(n) = the first Global position >= n (N-1 if no Global follows, the
  inference rule: a Local token no Global token has followed yet stays visible);
- SW: m <= n + W (the token itself and the W queries after it).

Chunk variant: one type per chunk of C tokens (the last chunk may be shorter). A token inherits
its chunk's type; SW stays a token-level window (m <= n + W, the inference ring holds the last W
tokens), while a Local chunk stays visible up to and including the last token of the next
Global chunk (the chunk segment end), because at inference a chunk's type is known only once
the chunk is complete; `chunk_size=1` is exactly the token rule.
"""

from __future__ import annotations

import torch

GLOBAL, LOCAL, SLIDING = 0, 1, 2
TYPE_NAMES = ("global", "local", "sliding_window")


def _check_types(types: torch.Tensor) -> None:
    if types.dtype.is_floating_point or types.dtype == torch.bool:
        raise TypeError(f"types must be an integer tensor with values in {{0, 1, 2}}, got dtype {types.dtype}")
    if types.ndim < 1 or types.shape[-1] < 1:
        raise ValueError(f"types must have shape (..., N) with N >= 1, got {tuple(types.shape)}")
    if types.numel() and (int(types.min()) < 0 or int(types.max()) > 2):
        raise ValueError(
            f"types must take values 0 (Global), 1 (Local), 2 (SW); got range "
            f"[{int(types.min())}, {int(types.max())}]"
        )


def _check_window(window: int) -> None:
    if int(window) != window or window < 0:
        raise ValueError(f"window must be an integer >= 0, got {window!r}")


def segment_ends(types: torch.Tensor) -> torch.Tensor:
    """e(n): the first position >= n whose type is Global, N-1 where no Global follows.

    types: int (..., N). Returns long (..., N). A Global token's own e(n) is n.
    """
    _check_types(types)
    n_pos = types.shape[-1]
    pos = torch.arange(n_pos, device=types.device).expand_as(types)
    # candidate end of every position: itself when Global, else "no Global here" (N-1)
    cand = torch.where(types == GLOBAL, pos, torch.full_like(pos, n_pos - 1))
    # e(n) = min over g >= n of cand[g]: a reverse cumulative minimum
    return cand.flip(-1).cummin(dim=-1).values.flip(-1)


def next_global_after(types: torch.Tensor) -> torch.Tensor:
    """E(n): the first Global position strictly after n, N-1 if none.

    types: int (..., N). Returns long (..., N). For a non-Global key E(n) = e(n); for a Global
    key it is where its segment would end if it were Local. The mask gradient (docs/METHOD.md) uses it.
    """
    e = segment_ends(types)  # (..., N)
    last = torch.full_like(e[..., :1], types.shape[-1] - 1)
    return torch.cat([e[..., 1:], last], dim=-1)  # E(n) = e(n+1), E(N-1) = N-1


def previous_global_before(types: torch.Tensor) -> torch.Tensor:
    """The last Global position strictly before n, -1 if none. types int (..., N) -> long (..., N)."""
    _check_types(types)
    n_pos = types.shape[-1]
    pos = torch.arange(n_pos, device=types.device).expand_as(types)
    cand = torch.where(types == GLOBAL, pos, torch.full_like(pos, -1))
    incl = cand.cummax(dim=-1).values  # last Global <= n
    first = torch.full_like(incl[..., :1], -1)
    return torch.cat([first, incl[..., :-1]], dim=-1)


def visibility(types: torch.Tensor, window: int) -> torch.Tensor:
    """Bool (..., N, N), query x key: True where query m sees key n under the NAtS rule.

    types: int (..., N) with 0 Global, 1 Local, 2 SW; window: W >= 0. Causal (False for n > m).
    """
    _check_types(types)
    _check_window(window)
    n_pos = types.shape[-1]
    m = torch.arange(n_pos, device=types.device)[:, None]  # (N, 1) query
    n = torch.arange(n_pos, device=types.device)[None, :]  # (1, N) key
    e = segment_ends(types)[..., None, :]  # (..., 1, N)
    t = types[..., None, :]  # (..., 1, N)
    causal = n <= m
    vis = (t == GLOBAL) | ((t == LOCAL) & (m <= e)) | ((t == SLIDING) & (m <= n + window))
    return vis & causal


def chunk_count(n_tokens: int, chunk_size: int) -> int:
    """ceil(n_tokens / chunk_size), the number of chunks (the last may be shorter)."""
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    return -(-n_tokens // chunk_size)


def expand_chunk_types(chunk_types: torch.Tensor, chunk_size: int, n_tokens: int) -> torch.Tensor:
    """Per-token types from per-chunk ones: (..., ceil(N/C)) -> (..., N), token n gets chunk n // C."""
    n_chunks = chunk_count(n_tokens, chunk_size)
    if chunk_types.shape[-1] != n_chunks:
        raise ValueError(
            f"chunk_types has {chunk_types.shape[-1]} chunks, expected ceil({n_tokens}/{chunk_size}) = {n_chunks}"
        )
    idx = torch.arange(n_tokens, device=chunk_types.device) // chunk_size
    return chunk_types.index_select(-1, idx)


def chunk_token_ends(chunk_types: torch.Tensor, chunk_size: int, n_tokens: int) -> torch.Tensor:
    """Per token of a chunk-typed sequence, the last query position that sees it if Local.

    = the last token of the first Global chunk at or after its chunk (N-1 if none):
    (..., ceil(N/C)) -> long (..., N). With chunk_size=1 this is `segment_ends`.
    """
    e_chunk = segment_ends(chunk_types)  # (..., Nc)
    end_tok = ((e_chunk + 1) * chunk_size - 1).clamp(max=n_tokens - 1)  # last token of chunk e(c)
    return expand_chunk_types(end_tok, chunk_size, n_tokens)


def chunk_visibility(chunk_types: torch.Tensor, window: int, chunk_size: int, n_tokens: int) -> torch.Tensor:
    """Bool (..., N, N), query x key, for one type per chunk of `chunk_size` tokens.

    chunk_types: int (..., ceil(N/C)). Global chunks: always visible; SW: m <= n + W per token;
    Local: visible while the query's chunk is at or before the next Global chunk.
    """
    _check_types(chunk_types)
    _check_window(window)
    t = expand_chunk_types(chunk_types, chunk_size, n_tokens)[..., None, :]  # (..., 1, N)
    end = chunk_token_ends(chunk_types, chunk_size, n_tokens)[..., None, :]  # (..., 1, N)
    m = torch.arange(n_tokens, device=chunk_types.device)[:, None]
    n = torch.arange(n_tokens, device=chunk_types.device)[None, :]
    vis = (t == GLOBAL) | ((t == LOCAL) & (m <= end)) | ((t == SLIDING) & (m <= n + window))
    return vis & (n <= m)
