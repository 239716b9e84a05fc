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

from nats_model.engine.cache import LayerStore

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
    """The prefill case of `nats_model.engine.kv_engine.attend_store` (same returns): q (n_seg, g, T, hd)
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
    The same result as `nats_model.engine.kv_engine.attend_store` with the dense `visible` mask, to float
    rounding, without a (T, row_cap) mask. Per segment and block of `block` queries (positions
    p_a..p_b), the keys fall in three sets:

    - free: kept slots before the chunk that every query of the chunk sees (until >= the chunk's last
      query: Global tokens, Local ones no Global of the chunk ends) and the chunk's own slots before
      `cut` with that bound: one fused flash call without a mask (the GQA group's query heads folded
      into query rows) over a prefix of one buffer built once per chunk;
    - masked: the chunk's slots from `cut` to the block's last query (contiguous in the store), plus
      the kept slots with a bound inside the chunk while any of them reaches p_a: one flash call with
      an additive (block, those keys) mask;
    - hidden: everything else (the chunk's slots before `cut` whose bound ends before p_a, i.e. expired
      window tokens), never read. `cut` = min(block start, the first chunk slot with a bound inside
      the chunk that reaches p_a).

    The two calls are merged by their log-sum-exp. Needs the `KVEngine` invariant (the chunk's real
    tokens were just appended in order after the kept slots, real queries a suffix of each row: left
    padding). Returns out (n_seg, g, T, hd), zero for padding queries."""
    import bisect

    n_seg, g, T, hd = q.shape
    out = q.new_zeros(n_seg, g, T, hd)
    lens = store.lens.tolist()
    offsets = store.offsets.tolist()
    m_seg = [T] * n_seg if all_valid else q_valid.sum(1).tolist()
    cpu_flash = _CPU_FLASH is not None and q.device.type == "cpu"
    for s in range(n_seg):
        L, m = lens[s], m_seg[s]
        if m == 0 or L == 0:
            continue
        L0, off = L - m, offsets[s]
        K, V, P, U = store.k[off:off + L], store.v[off:off + L], store.pos[off:off + L], until[s, :L]
        qpos = q_pos[s, T - m:]  # (m,) the real queries' positions, increasing
        qs = q[s, :, T - m:]  # (g, m, hd)
        starts = list(range(0, m, block))
        pa = qpos[starts]  # (n_blocks,) each block's first query position
        p_last = int(qpos[-1])
        Uc = U[L0:]
        long_c = Uc >= p_last  # chunk slots visible from their own position to the chunk's end
        ll_idx = long_c.nonzero()[:, 0]
        short_idx = (~long_c).nonzero()[:, 0]
        if short_idx.numel():  # per block: the first short-lived chunk slot that reaches its first query
            reach = Uc.index_select(0, short_idx)[None, :] >= pa[:, None]  # (n_blocks, n_short)
            first = torch.where(reach.any(1), short_idx.index_select(0, reach.to(torch.uint8).argmax(1)), m)
            cuts = torch.minimum(first, torch.tensor(starts, device=q.device)).tolist()
        else:
            cuts = starts
        free_parts_k, free_parts_v = [], []
        n_free0 = 0
        Kb = Vb = Pb = Ub = None  # the prior slots with a bound inside the chunk
        if L0:
            free0 = U[:L0] >= p_last
            n_free0 = int(free0.sum())
            if n_free0 == L0:
                free_parts_k.append(K[:L0])
                free_parts_v.append(V[:L0])
            else:
                if n_free0:
                    idx = free0.nonzero()[:, 0]
                    free_parts_k.append(K.index_select(0, idx))
                    free_parts_v.append(V.index_select(0, idx))
                bidx = (~free0).nonzero()[:, 0]
                Kb, Vb, Pb, Ub = (t.index_select(0, bidx) for t in (K, V, P, U))
        ub_max = int(Ub.max()) if Ub is not None else -1
        if ll_idx.numel():
            free_parts_k.append(K[L0:].index_select(0, ll_idx))
            free_parts_v.append(V[L0:].index_select(0, ll_idx))
        KF = torch.cat(free_parts_k) if len(free_parts_k) > 1 else (free_parts_k[0] if free_parts_k else None)
        VF = torch.cat(free_parts_v) if len(free_parts_v) > 1 else (free_parts_v[0] if free_parts_v else None)
        ll_list = ll_idx.tolist()
        pa_list = pa.tolist()
        for a, cut, p_a in zip(starts, cuts, pa_list, strict=True):
            b = min(m, a + block)
            bm = b - a
            n_free = n_free0 + bisect.bisect_left(ll_list, cut)
            qb = qs[:, a:b]  # (g, bm, hd)
            Km, Vm, Pm, Um = K[L0 + cut:L0 + b], V[L0 + cut:L0 + b], P[L0 + cut:L0 + b], U[L0 + cut:L0 + b]
            if ub_max >= p_a:  # some prior bounded slot is still visible to this block
                Km, Vm, Pm, Um = torch.cat([Kb, Km]), torch.cat([Vb, Vm]), torch.cat([Pb, Pm]), torch.cat([Ub, Um])
            rows = qpos[a:b, None]
            add = torch.where((rows > Um[None]) | (rows < Pm[None]), float("-inf"), 0.0).to(q.dtype)
            nk = Km.shape[0]
            kk, vv = Km[None, None].expand(1, g, nk, hd), Vm[None, None].expand(1, g, nk, hd)
            if cpu_flash:
                o_m, l_m = _CPU_FLASH(qb[None], kk, vv, 0.0, False, attn_mask=add[None, None], scale=scale)
            else:
                o_m, l_m = _sdpa_lse(qb[None], kk, vv, add[None, None], scale)
            o_m, l_m = o_m[0], l_m[0]  # (g, bm, hd), (g, bm)
            if n_free:
                qf = qb.reshape(1, 1, g * bm, hd)
                kf, vf = KF[None, None, :n_free], VF[None, None, :n_free]
                o_f, l_f = _CPU_FLASH(qf, kf, vf, 0.0, False, scale=scale) if cpu_flash \
                    else _sdpa_lse(qf, kf, vf, None, scale)
                o_f, l_f = o_f.view(g, bm, hd), l_f.view(g, bm)
                lse = torch.logaddexp(l_f, l_m)
                o_m = (o_f.float() * (l_f - lse).exp_()[..., None] + o_m.float() * (l_m - lse).exp_()[..., None])
            out[s, :, T - m + a:T - m + b] = o_m
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


_FAR = 1 << 62  # a position no query reaches: pads the batched key sets (hidden by `pos <= query`)


DEFAULT_BATCHED_BLOCK = 128  # queries per block of `attend_visible_until_batched` (measured: 128 < 256 < 64 at 1k, 4k)


def attend_visible_until_batched(store: LayerStore, q: torch.Tensor, q_pos: torch.Tensor, until: torch.Tensor,
                                 scale: float, block: int = DEFAULT_BATCHED_BLOCK) -> torch.Tensor:
    """`attend_visible_until` for a step without padding, every segment at once: the same three key sets
    per segment and block (free / masked / hidden, see there), each padded to the longest segment's (a
    padded free slot gets -inf in a (n_seg, 1, 1, keys) mask, a padded masked slot the position `_FAR`),
    so a block is two flash calls for all segments instead of two per segment."""
    n_seg, g, T, hd = q.shape
    dev = q.device
    lens = store.lens
    L0 = lens - T  # (n_seg,) kept slots before the chunk
    Kr, Vr = store.rows(store.k), store.rows(store.v)  # (n_seg, row_cap, hd)
    Pr = store.rows(store.pos, fill=_FAR)
    R = store.row_cap
    j = torch.arange(R, device=dev)[None, :]
    occupied = j < lens[:, None]
    prior = j < L0[:, None]
    p_last = q_pos[:, -1:]  # (n_seg, 1)
    long_lived = occupied & (until >= p_last)  # visible from its own position to the chunk's end
    chunk_idx = j - L0[:, None]  # (n_seg, R) index inside the chunk (negative: prior)
    starts = list(range(0, T, block))
    st = torch.tensor(starts, device=dev)
    pa = q_pos[:, starts]  # (n_seg, n_blocks) each block's first query position
    # cut per (segment, block): min(block start, first short-lived chunk slot whose bound reaches p_a)
    short = occupied & ~prior & ~long_lived
    reach = short[:, None, :] & (until[:, None, :] >= pa[:, :, None])  # (n_seg, n_blocks, R)
    first_short = torch.where(reach.any(2), chunk_idx.gather(1, reach.to(torch.uint8).argmax(2)), T)
    cuts = torch.minimum(first_short, st[None, :])  # (n_seg, n_blocks)
    # free buffer per segment: prior long-lived slots, then the chunk's long-lived ones in chunk order
    rank = torch.where(long_lived, torch.where(prior, -1, chunk_idx), _FAR)
    order = rank.argsort(dim=1, stable=True)
    n_free_prior = (long_lived & prior).sum(1)  # (n_seg,)
    ll_chunk_idx = rank.gather(1, order)  # sorted: -1 ..., chunk indices ..., _FAR
    # free slots of block k: prior long-lived + chunk long-lived with index < cut
    n_free = n_free_prior[:, None] + ((ll_chunk_idx[:, None, :] >= 0)
                                      & (ll_chunk_idx[:, None, :] < cuts[:, :, None])).sum(2)  # (n_seg, n_blocks)
    f_max = int(n_free.max()) if n_free.numel() else 0
    if f_max:
        KF = Kr.gather(1, order[:, :f_max, None].expand(-1, -1, hd))
        VF = Vr.gather(1, order[:, :f_max, None].expand(-1, -1, hd))
    # prior slots with a bound inside the chunk, first in each segment's masked set
    bounded = occupied & prior & ~long_lived
    nb = bounded.sum(1)
    nb_max = int(nb.max()) if nb.numel() else 0
    b_order = torch.where(bounded, j, _FAR).argsort(dim=1, stable=True)[:, :nb_max]  # (n_seg, nb_max)
    b_valid = torch.arange(nb_max, device=dev)[None, :] < nb[:, None]
    # positions and bounds as float32 for the per-block masks (exact below 2^24; _FAR stays beyond any query)
    Pf, Uf, qf_pos = Pr.float(), until.float(), q_pos.float()
    cuts_l, n_free_l = cuts.tolist(), n_free.tolist()
    out = q.new_empty(n_seg, g, T, hd)
    neg = float("-inf")
    for k, a in enumerate(starts):
        b = min(T, a + block)
        bm = b - a
        width = b - min(c[k] for c in cuts_l)  # longest recent region [cut, b)
        r = torch.arange(width, device=dev)[None, :]
        cut_k = cuts[:, k:k + 1]
        region = cut_k + r  # (n_seg, width) chunk index
        in_region = region < b
        idx = torch.cat([b_order, (L0[:, None] + region).clamp(max=R - 1)], 1)  # row slots
        keep = torch.cat([b_valid, in_region], 1)
        Km = Kr.gather(1, idx[..., None].expand(-1, -1, hd))
        Vm = Vr.gather(1, idx[..., None].expand(-1, -1, hd))
        Pm = Pf.gather(1, idx).masked_fill_(~keep, float(_FAR))
        Um = Uf.gather(1, idx)
        rows = qf_pos[:, a:b, None]  # (n_seg, bm, 1)
        add = torch.where((rows > Um[:, None, :]) | (rows < Pm[:, None, :]), neg, 0.0).to(q.dtype)
        nk = idx.shape[1]
        kk, vv = Km[:, None].expand(n_seg, g, nk, hd), Vm[:, None].expand(n_seg, g, nk, hd)
        qb = q[:, :, a:b]
        if _CPU_FLASH is not None and dev.type == "cpu":
            o_m, l_m = _CPU_FLASH(qb, kk, vv, 0.0, False, attn_mask=add[:, None], scale=scale)
        else:
            o_m, l_m = _sdpa_lse(qb, kk, vv, add[:, None], scale)
        nf = max(row[k] for row in n_free_l)
        if nf:
            pad = torch.where(torch.arange(nf, device=dev)[None, :] < n_free[:, k:k + 1], 0.0, neg).to(q.dtype)
            qf = qb.reshape(n_seg, 1, g * bm, hd)
            kf, vf = KF[:, None, :nf], VF[:, None, :nf]
            if _CPU_FLASH is not None and dev.type == "cpu":
                o_f, l_f = _CPU_FLASH(qf, kf, vf, 0.0, False, attn_mask=pad[:, None, None, :], scale=scale)
            else:
                o_f, l_f = _sdpa_lse(qf, kf, vf, pad[:, None, None, :], scale)
            o_f, l_f = o_f.view(n_seg, g, bm, hd), l_f.view(n_seg, g, bm)
            if min(row[k] for row in n_free_l) == 0:
                # a segment with no free slot for this block: the kernel gives its rows out 0 and lse 0; no weight
                l_f = l_f.masked_fill((n_free[:, k] == 0)[:, None, None], neg)
            lse = torch.logaddexp(l_f, l_m)
            o_m = o_f.float() * (l_f - lse).exp_()[..., None] + o_m.float() * (l_m - lse).exp_()[..., None]
        out[:, :, a:b] = o_m
    return out
