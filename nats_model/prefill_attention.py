"""Prefill attention over the memory-true store without dense masks, and the attention
statistics of observing policies in bounded memory.

In a prefill step (a prompt chunk of T queries, or one streamed scoring token) of a policy
without its own visibility rule (`masks_attention` False) and without a sliding window, every
kept key precedes the chunk. After `LayerStore.append` a segment holds its `L0` kept slots and
then the chunk's `m` real tokens in chunk order (padding is never stored and, left padding only,
comes first in a chunk), `L = L0 + m` occupied slots in all. So the chunk's i-th real query sees
exactly the slots `j <= L0 + i`: a causal mask aligned bottom right, the same for every segment
with the same `(L, m)` and for every query head. No `(segments, g*T, cache)` mask is built:

- on the CPU, two fused flash calls merged by their log-sum-exp: the kept part without a mask
  (a GQA group's query heads folded into query rows) and the chunk part with `is_causal` (square);
- elsewhere (CUDA), one `scaled_dot_product_attention` call with PyTorch's lower-right causal
  bias, which dispatches to the flash / memory-efficient kernels.

Observing policies (`observe` "sum": H2O; "probs": TOVA, SnapKV) get their per-key statistics
from query blocks of `block` queries: `p = exp(scale * q K^T - lse)` for one block at a time,
`(n, g * block, L)` float32, never one `(chunk x cache)` probability tensor; "probs" computes only
the last `probs_rows` queries a policy reads (TOVA: 1, SnapKV: its observation window).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nats_model.cache import LayerStore

DEFAULT_OBSERVE_BLOCK = 64  # queries per statistics block: (n_seg, g * 64, L) float32 at a time

_CPU_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def check_observe_block(block: object) -> int:
    """`block` if it is a valid statistics block size (an int >= 1), else ValueError naming it."""
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"observe_block must be an int >= 1 (queries per attention-statistics block), got {block!r}")
    return block


def valid_is_suffix(q_valid: torch.Tensor) -> bool:
    """True when every row of `q_valid (n_seg, T)` is False then True (left padding): the real
    queries are the last `m` of the chunk, as this module assumes."""
    T = q_valid.shape[1]
    m = q_valid.sum(1, keepdim=True)
    return bool(torch.equal(q_valid, torch.arange(T, device=q_valid.device)[None, :] >= T - m))


def fused_causal(q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, L0: int, scale: float
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention of the chunk's real queries q (n, g, m, hd) over K, V (n, L, hd), L = L0 + m:
    query i sees slots j <= L0 + i. Returns out (n, g, m, hd) and its log-sum-exp (n, g, m)
    float32 (None where the backend does not give it: the statistics then use a softmax)."""
    n, g, m, hd = q.shape
    L = K.shape[1]
    if q.device.type == "cpu" and _CPU_FLASH is not None:
        if m == 1:  # one query sees every slot: one call, query heads folded into rows
            o, lse = _CPU_FLASH(q.reshape(n, 1, g, hd), K[:, None], V[:, None], 0.0, False, scale=scale)
            return o.view(n, g, 1, hd), lse.view(n, g, 1)
        # chunk part: square, causal; the group's query heads share their KV head (stride-0 expand)
        kn = K[:, None, L0:].expand(n, g, m, hd)
        vn = V[:, None, L0:].expand(n, g, m, hd)
        o_new, lse_new = _CPU_FLASH(q, kn, vn, 0.0, True, scale=scale)  # (n, g, m, hd), (n, g, m)
        if L0 == 0:
            return o_new, lse_new
        # kept part: every query sees every kept slot, so no mask and query heads fold into rows
        o_old, lse_old = _CPU_FLASH(q.reshape(n, 1, g * m, hd), K[:, None, :L0], V[:, None, :L0], 0.0, False,
                                    scale=scale)
        o_old, lse_old = o_old.view(n, g, m, hd), lse_old.view(n, g, m)
        lse = torch.logaddexp(lse_old, lse_new)  # (n, g, m): the softmax normaliser over all L slots
        out = o_old.float() * (lse_old - lse).exp_()[..., None] + o_new.float() * (lse_new - lse).exp_()[..., None]
        return out.to(q.dtype), lse
    from torch.nn.attention.bias import causal_lower_right

    mask = causal_lower_right(m, L) if m > 1 else None
    o = F.scaled_dot_product_attention(q, K[:, None].expand(n, g, L, hd), V[:, None].expand(n, g, L, hd),
                                       attn_mask=mask, scale=scale)
    return o, None


def observe_blocks(q: torch.Tensor, K: torch.Tensor, L0: int, scale: float, lse: torch.Tensor | None,
                   first: int, block: int):
    """Yield (a, b, p): the attention probabilities p (n, g, b - a, L) float32 of the real queries
    a..b-1 (of q (n, g, m, hd)), from query `first` on, `block` queries at a time. Slots a query
    may not see (j > L0 + i) get 0. With `lse` (n, g, m) from the fused forward p is
    exp(s - lse); without, a softmax over the visible slots."""
    n, g, m, hd = q.shape
    L = K.shape[1]
    Kt = K.transpose(1, 2)  # (n, hd, L)
    for a in range(first, m, block):
        b = min(m, a + block)
        qb = q[:, :, a:b].reshape(n, g * (b - a), hd)  # the group's query heads become rows
        s = torch.baddbmm(qb.new_empty(()), qb, Kt, beta=0.0, alpha=scale).float().view(n, g, b - a, L)
        cols = L - (L0 + a + 1)  # slots after the block's first query's own token (the chunk's later tokens)
        if cols > 0:  # query i sees slots up to L0 + i
            s[..., L0 + a + 1:].masked_fill_(_later(b - a, cols, q.device), float("-inf"))
        if lse is not None:
            p = s.sub_(lse[:, :, a:b, None]).exp_()
        else:
            p = torch.softmax(s, dim=-1)
        yield a, b, p


def _later(rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """(rows, cols) bool: column c (the slot c + 1 after row 0's own) is later than row r's own
    token exactly when c >= r."""
    r = torch.arange(rows, device=device)[:, None]
    c = torch.arange(cols, device=device)[None, :]
    return c >= r


def attend_prefill(store: LayerStore, q: torch.Tensor, q_valid: torch.Tensor, all_valid: bool, scale: float,
                   observe: str, probs_rows: int | None = None, block: int = DEFAULT_OBSERVE_BLOCK
                   ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The prefill case of `nats_model.generate.attend_store` (same returns): q (n_seg, g, T, hd)
    attends over every segment's kept slots plus the chunk's own real tokens (causal), segments
    with equal (occupied length, real queries) batched together. Needs: no policy visibility
    rule, no sliding window, real queries a suffix of each row of `q_valid` (the caller checks).
    Returns out (n_seg, g, T, hd) (zero for padding queries) and, as `observe` asks, attn_sum
    (n_seg, row_cap) (summed over real queries and query heads) or probs (n_seg, g, R, P): the
    last R = min(T, probs_rows or T) queries of the step (padding queries zero), P = row_cap."""
    n_seg, g, T, hd = q.shape
    lens = store.lens
    m_seg = None if all_valid else q_valid.sum(1)  # (n_seg,) real queries per segment
    attn_sum = q.new_zeros(n_seg, store.row_cap, dtype=torch.float32) if observe == "sum" else None
    R = min(T, probs_rows or T)
    probs = None
    if observe == "probs":
        probs = q.new_zeros(n_seg, g, R, store.row_cap, dtype=torch.float32)
    out = None  # allocated on the first part that does not cover every segment and query
    for seg_ids, start, cap in store.groups:
        n = seg_ids.numel()
        if n == 0 or cap == 0:
            continue
        K = store.k[start:start + n * cap].view(n, cap, hd)
        V = store.v[start:start + n * cap].view(n, cap, hd)
        for idx, L, m in _parts(store, seg_ids, lens, m_seg, T):
            if m == 0 or L == 0:
                continue  # no real query here: its output stays zero
            ids = seg_ids if idx is None else seg_ids[idx]  # segment ids of this part
            whole = store.uniform and idx is None and m == T  # this part is every segment and query
            Kp, Vp = (K[:, :L], V[:, :L]) if idx is None else (K[idx, :L], V[idx, :L])  # (n', L, hd)
            qv = q if whole else q[ids][:, :, T - m:]  # (n', g, m, hd)
            L0 = L - m
            o, lse = fused_causal(qv, Kp, Vp, L0, scale)
            if whole:
                out = o
            else:
                if out is None:
                    out = q.new_zeros(n_seg, g, T, hd)
                out[ids, :, T - m:] = o
            if attn_sum is not None:
                total = torch.zeros(qv.shape[0], L, dtype=torch.float32, device=q.device)
                for _, _, p in observe_blocks(qv, Kp, L0, scale, lse, 0, block):
                    total += p.sum(dim=(1, 2))
                attn_sum[ids, :L] = total
            if probs is not None:
                # chunk position of real query i is T - m + i; probs row r holds position T - R + r
                for a, b, p in observe_blocks(qv, Kp, L0, scale, lse, max(0, m - R), block):
                    rows = slice(R - m + a, R - m + b)
                    if whole:
                        probs[:, :, rows, :L] = p
                    else:
                        probs[ids, :, rows, :L] = p
    if out is None:
        out = q.new_zeros(n_seg, g, T, hd)
    return out, attn_sum, probs


def _parts(store: LayerStore, seg_ids: torch.Tensor, lens: torch.Tensor, m_seg: torch.Tensor | None, T: int):
    """Split one capacity group into parts of equal (occupied length L, real queries m): yields
    (idx, L, m) with idx the positions inside the group (None: the whole group)."""
    if store.uniform and m_seg is None and store.common_len() >= 0:
        yield None, store.common_len(), T  # the common case: one part, no indexing
        return
    lens_g = lens if store.uniform else lens[seg_ids]
    m_g = torch.full_like(lens_g, T) if m_seg is None else (m_seg if store.uniform else m_seg[seg_ids])
    key = lens_g * (T + 1) + m_g
    uniq = key.unique()
    if uniq.numel() == 1:
        L, m = divmod(int(uniq[0]), T + 1)
        yield None, L, m
        return
    for u in uniq.tolist():
        L, m = divmod(u, T + 1)
        yield (key == u).nonzero()[:, 0], L, m


# ------------------------------------------------ a policy's interval visibility (NAtS), no dense mask
DEFAULT_BOUNDED_BLOCK = 128  # queries per block of the bounded part of `attend_visible_until`


def attend_visible_until(store: LayerStore, q: torch.Tensor, q_pos: torch.Tensor, q_valid: torch.Tensor,
                         all_valid: bool, until: torch.Tensor, scale: float,
                         block: int = DEFAULT_BOUNDED_BLOCK) -> torch.Tensor:
    """Prefill attention of q (n_seg, g, T, hd) over every segment's kept slots when the policy's
    visibility is an interval per key: slot j is visible to query position m iff pos[j] <= m <=
    until[j] (`until (n_seg, row_cap)` long, -1 for unoccupied slots; NAtS `visible_until`).
    The same result as `nats_model.generate.attend_store` with the dense `visible` mask, to float
    rounding, without a (T, row_cap) mask: per segment,

    - the kept slots before the chunk that every real query of the chunk sees (pos <= first query,
      until >= last query: Global tokens, Local ones no Global of the chunk ends) in one fused flash
      call without a mask, the GQA group's query heads folded into query rows;
    - the others (kept slots with a bound inside the chunk, and the chunk's own tokens) per block of
      `block` queries against the slots that block can reach causally, with an additive mask of
      (block, reached slots);

    merged by their log-sum-exp. Needs the `KVEngine` invariant (the chunk's real tokens were just
    appended in order after the kept slots, real queries a suffix of each row: left padding).
    Returns out (n_seg, g, T, hd), zero for padding queries."""
    n_seg, g, T, hd = q.shape
    out = q.new_zeros(n_seg, g, T, hd)
    lens = store.lens.tolist()
    offsets = store.offsets.tolist()
    m_seg = [T] * n_seg if all_valid else q_valid.sum(1).tolist()
    neg = float("-inf")
    for s in range(n_seg):
        L, m = lens[s], m_seg[s]
        if m == 0 or L == 0:
            continue
        L0, off = L - m, offsets[s]
        K, V, P = store.k[off:off + L], store.v[off:off + L], store.pos[off:off + L]
        U = until[s, :L]
        qpos = q_pos[s, T - m:]  # (m,) the real queries' positions, increasing
        qs = q[s, :, T - m:]  # (g, m, hd)
        p_last = int(qpos[-1])
        o_all = lse_all = None
        if L0:
            seen_all = U[:L0] >= p_last  # prior slots precede every query: bounded by `until` only
            n_all = int(seen_all.sum())
            if n_all:
                if n_all == L0:
                    KA, VA = K[:L0], V[:L0]
                    bounded = None
                else:
                    idx = seen_all.nonzero()[:, 0]
                    KA, VA = K.index_select(0, idx), V.index_select(0, idx)
                    bounded = (~seen_all).nonzero()[:, 0]
                o_all, lse_all = _CPU_FLASH(qs.reshape(1, 1, g * m, hd), KA[None, None], VA[None, None], 0.0,
                                            False, scale=scale) if _CPU_FLASH is not None and q.device.type == "cpu" \
                    else _sdpa_lse(qs.reshape(1, 1, g * m, hd), KA[None, None], VA[None, None], None, scale)
                o_all, lse_all = o_all.view(g, m, hd), lse_all.view(g, m)
            else:
                bounded = torch.arange(L0, device=q.device)
        else:
            bounded = None
        # the bounded part: prior slots with a bound inside the chunk, then the chunk's own slots
        if bounded is None:
            KB, VB, PB, UB = K[L0:], V[L0:], P[L0:], U[L0:]
            nb = 0
        else:
            nb = bounded.numel()
            KB = torch.cat([K.index_select(0, bounded), K[L0:]])
            VB = torch.cat([V.index_select(0, bounded), V[L0:]])
            PB = torch.cat([P.index_select(0, bounded), P[L0:]])
            UB = torch.cat([U.index_select(0, bounded), U[L0:]])
        o_b = q.new_empty(g, m, hd)
        lse_b = torch.empty(g, m, dtype=torch.float32, device=q.device)
        for a in range(0, m, block):
            b = min(m, a + block)
            n_keys = nb + b  # the chunk's slots after query b - 1 are later than every query of the block
            rows = qpos[a:b, None]
            hide = (rows > UB[None, :n_keys]) | (rows < PB[None, :n_keys])
            add = torch.zeros(b - a, n_keys, dtype=q.dtype, device=q.device).masked_fill_(hide, neg)
            kk = KB[None, None, :n_keys].expand(1, g, n_keys, hd)
            vv = VB[None, None, :n_keys].expand(1, g, n_keys, hd)
            if _CPU_FLASH is not None and q.device.type == "cpu":
                o, lse = _CPU_FLASH(qs[None, :, a:b], kk, vv, 0.0, False, attn_mask=add[None, None], scale=scale)
            else:
                o, lse = _sdpa_lse(qs[None, :, a:b], kk, vv, add[None, None], scale)
            o_b[:, a:b] = o[0]
            lse_b[:, a:b] = lse[0]
        if o_all is None:
            out[s, :, T - m:] = o_b
        else:
            lse = torch.logaddexp(lse_all, lse_b)
            out[s, :, T - m:] = (o_all.float() * (lse_all - lse).exp_()[..., None]
                                 + o_b.float() * (lse_b - lse).exp_()[..., None]).to(q.dtype)
    return out


def _sdpa_lse(q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, add: torch.Tensor | None, scale: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, log-sum-exp float32) of softmax attention with an optional additive mask, in plain ops
    (devices without the CPU flash kernel: the attention of one block at a time)."""
    s = torch.matmul(q, K.transpose(-1, -2)).float() * scale
    if add is not None:
        s = s + add.float()
    lse = torch.logsumexp(s, -1)
    return torch.matmul(torch.exp(s - lse[..., None]).to(V.dtype), V), lse
