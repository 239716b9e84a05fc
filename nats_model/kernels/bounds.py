"""O(N) per-key bounds the NAtS kernels build their masks from, and the O(N) gradient assembly.

Everything here is plain torch on vectors of length N (or ceil(N/C)); nothing is N x N.

For every key token n (per batch and KV head) the kernels read four int32 numbers:
- `types[n]`: 0 Global, 1 Local, 2 Sliding window (a chunk's type for every token of a chunk);
- `loc_end[n]`: the last query that sees n if n is Local, E(n) (token level) or the last token of
  the next Global chunk (chunk level); for a Global key it is where its segment would end if it
  were Local;
- `loc_end2[n]` = the same bound one segment further, E(E(n)): the collected term of a Global key
  is made of what its segment's Local keys would see in (E(j), E(E(j))];
- `sw_end[n]` = min(n + W, N - 1) (the window stays token-level in both variants);
- `strict_start[n]`: n itself (token level) or the last token of n's chunk (chunk level); the
  pairs (m, j) with strict_start[j] < m <= loc_end[j] are those the collected term is made of.
From these the kernel derives on-chip `vis_end[n]` (the last query that sees key n) and
visible(m, n) = n <= m <= vis_end[n].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KeyBounds:
    """Per-key int32 vectors (B, Hkv, N) that define the NAtS mask, see the module docstring.

    `unit_types` are the types at the gradient's granularity (B, Hkv, U): U = N tokens or
    U = ceil(N/C) chunks; `unit_of` maps every token to its unit (N,).
    """

    types: torch.Tensor
    loc_end: torch.Tensor
    loc_end2: torch.Tensor
    sw_end: torch.Tensor
    strict_start: torch.Tensor
    unit_types: torch.Tensor
    unit_of: torch.Tensor
    chunk_size: int

    def vis_end(self, n_tokens: int) -> torch.Tensor:
        """The last query that sees each key: (B, Hkv, N) long."""
        full = torch.full_like(self.loc_end, n_tokens - 1)
        return torch.where(self.types == 0, full, torch.where(self.types == 1, self.loc_end, self.sw_end)).long()


def _next_global_strict(types: torch.Tensor) -> torch.Tensor:
    """E(u): first Global unit strictly after u, U-1 if none. (..., U) int -> (..., U) long."""
    n_units = types.shape[-1]
    pos = torch.arange(n_units, device=types.device).expand(types.shape)
    cand = torch.where(types == 0, pos, torch.full_like(pos, n_units - 1))
    incl = cand.flip(-1).cummin(dim=-1).values.flip(-1)  # first Global >= u
    return torch.cat([incl[..., 1:], torch.full_like(incl[..., :1], n_units - 1)], dim=-1)


def prev_global_strict(types: torch.Tensor) -> torch.Tensor:
    """Last Global unit strictly before u, -1 if none. (..., U) int -> (..., U) long."""
    pos = torch.arange(types.shape[-1], device=types.device).expand(types.shape)
    incl = torch.where(types == 0, pos, torch.full_like(pos, -1)).cummax(dim=-1).values
    return torch.cat([torch.full_like(incl[..., :1], -1), incl[..., :-1]], dim=-1)


def key_bounds(unit_types: torch.Tensor, n_tokens: int, window: int, chunk_size: int | None) -> KeyBounds:
    """Build the per-key vectors from integer types (B, Hkv, U), U = N or ceil(N / chunk_size)."""
    if int(window) != window or window < 0:
        raise ValueError(f"window must be an integer >= 0, got {window!r}")
    c = 1 if chunk_size is None else int(chunk_size)
    if c < 1:
        raise ValueError(f"chunk_size must be None or an integer >= 1, got {chunk_size!r}")
    n_units = -(-n_tokens // c)
    if unit_types.shape[-1] != n_units:
        raise ValueError(
            f"types have {unit_types.shape[-1]} positions, expected {n_units} "
            f"(N={n_tokens}, chunk_size={chunk_size})"
        )
    dev = unit_types.device
    tok = torch.arange(n_tokens, device=dev)
    unit_of = tok // c  # (N,)
    e_unit = _next_global_strict(unit_types)  # (B, Hkv, U)
    e2_unit = torch.gather(e_unit, -1, e_unit)  # E(E(u))

    def last_tok(u: torch.Tensor) -> torch.Tensor:  # last token of unit u, clipped to N-1
        return ((u + 1) * c - 1).clamp(max=n_tokens - 1)

    types_tok = unit_types.index_select(-1, unit_of)
    loc_end = last_tok(e_unit).index_select(-1, unit_of)
    loc_end2 = last_tok(e2_unit).index_select(-1, unit_of)
    sw_end = (tok + int(window)).clamp(max=n_tokens - 1).expand(types_tok.shape)
    strict_start = last_tok(unit_of).expand(types_tok.shape)
    i32 = torch.int32
    return KeyBounds(
        types=types_tok.to(i32).contiguous(),
        loc_end=loc_end.to(i32).contiguous(),
        loc_end2=loc_end2.to(i32).contiguous(),
        sw_end=sw_end.to(i32).contiguous(),
        strict_start=strict_start.to(i32).contiguous(),
        unit_types=unit_types,
        unit_of=unit_of,
        chunk_size=c,
    )


def _at(cs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """cs[..., idx] with 0 where idx < 0 (an empty prefix)."""
    val = torch.gather(cs, -1, idx.clamp(min=0))
    return torch.where(idx >= 0, val, torch.zeros_like(val))


def collected_term(
    unit_types: torch.Tensor, col_strict: torch.Tensor, row_strict: torch.Tensor, col_next: torch.Tensor
) -> torch.Tensor:
    """C(u) of docs/METHOD.md ("Mask gradient") from per-unit sums, all (B, Hkv, U) fp32.

    The pairs P = {(m, j): j Local, strict_start[j] < m <= loc_end[j]} carry the mass a Local key
    j loses when a later unit n between them becomes Global. col_strict[u] sums dM over P by key
    unit, row_strict[u] by query unit, col_next[u] sums dM[m, j] of Local keys j of unit u over
    m in (loc_end[j], loc_end2[j]].
    - non-Global u: C(u) = sum over pairs of its segment with unit(j) < u < unit(m)
      = sum_{j in (g, u)} col_strict[j] - sum_{m in (g, u]} row_strict[m], g = previous Global;
    - Global u: its segment's Local keys j have E(j) = u, so C(u) = sum_{j in (g, u)} col_next[j].
    """
    prev_g = prev_global_strict(unit_types)  # (B, Hkv, U)
    pos = torch.arange(unit_types.shape[-1], device=unit_types.device).expand(unit_types.shape)
    cs_col, cs_row, cs_next = col_strict.cumsum(-1), row_strict.cumsum(-1), col_next.cumsum(-1)
    c_local = _at(cs_col, pos - 1) - _at(cs_col, prev_g) - (_at(cs_row, pos) - _at(cs_row, prev_g))
    c_global = _at(cs_next, pos - 1) - _at(cs_next, prev_g)
    return torch.where(unit_types == 0, c_global, c_local)


def block_skip_table(vis_end: torch.Tensor, n_tokens: int, block_m: int, block_n: int) -> torch.Tensor:
    """Which (query block, key block) pairs hold at least one visible pair: bool (B, H, Mb, Nb).

    A key block is visited by a query block when it is causal (key start <= last query) and the
    largest vis_end of its keys reaches the query block's first row. vis_end: (B, H, N) long.
    """
    n_kb = -(-n_tokens // block_n)
    n_qb = -(-n_tokens // block_m)
    pad = n_kb * block_n - n_tokens
    ve = torch.nn.functional.pad(vis_end, (0, pad), value=-1)
    kb_max = ve.view(*ve.shape[:-1], n_kb, block_n).amax(-1)  # (B, H, Nb)
    q_start = torch.arange(n_qb, device=vis_end.device) * block_m  # (Mb,)
    q_last = (q_start + block_m - 1).clamp(max=n_tokens - 1)
    k_start = torch.arange(n_kb, device=vis_end.device) * block_n  # (Nb,)
    causal = k_start[None, :] <= q_last[:, None]  # (Mb, Nb)
    reach = kb_max[..., None, :] >= q_start[:, None]  # (B, H, Mb, Nb)
    return causal & reach
