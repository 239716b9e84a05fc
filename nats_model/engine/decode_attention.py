"""The engine's one-token decode attention, without the general path's preamble.

At a small kept budget a decode step reads few keys, so what it costs is per-call overhead (a few
microseconds per tensor op on a CPU, plus the Python around it), not arithmetic. The general
`nats_model.engine.kv_engine.attend_store` handles padding, sliding windows, policy visibility masks and
segments of different capacities; in the usual decode state none of that applies: every sequence
adds one real token, and the layer's store is uniform with every segment holding the same count
(StreamingLLM, SnapKV after the prompt, full cache, and H2O / TOVA / NAtS while their heads keep
equal counts). Then the occupied slots are exactly the first `common_len` of every row and the
attention is one call over a strided view of the store, with no mask.

The arithmetic is the general path's, op for op (the same SDPA call on the same views, or the same
baddbmm / softmax / bmm when the policy observes attention), so outputs are bitwise the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nats_model.engine.cache import LayerStore


def uniform_decode_ready(store: LayerStore, T: int, prefill: bool, all_valid: bool,
                         sliding_window: int | None, has_visible: bool) -> bool:
    """True when `attend_uniform_decode` computes what `attend_store` would for this step (called
    after the step's tokens are appended). `has_visible`: the policy gave a visibility mask for this
    step (a policy that masks attention but returns None, e.g. NAtS in decode, hides nothing)."""
    return (T == 1 and not prefill and all_valid and sliding_window is None and not has_visible
            and store.uniform and store.common_len() > 0)


def _row_views(store: LayerStore) -> tuple[torch.Tensor, torch.Tensor]:
    """k, v as (n_seg, 1, row_cap, hd) views, kept on the store until a relayout replaces its buffers."""
    cached = store.__dict__.get("_decode_row_views")
    if cached is None or cached[0] is not store.k or cached[1] is not store.v:
        shape = (store.n_seg, 1, store.row_cap, store.head_dim)
        cached = (store.k, store.v, store.k.view(shape), store.v.view(shape))
        store.__dict__["_decode_row_views"] = cached
    return cached[2], cached[3]


def attend_uniform_decode(store: LayerStore, q: torch.Tensor, scale: float, observe: str
                          ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """q (n_seg, g, 1, hd) over the first `common_len` slots of every row -> out (n_seg, g, 1, hd),
    attn_sum (n_seg, common_len) when observe == "sum", probs (n_seg, g, 1, common_len) when "probs"
    (slots past common_len are unoccupied: the `Step.attn_sum` / `Step.probs` contract)."""
    n_seg, g, _, hd = q.shape
    used = store.common_len()
    K4, V4 = _row_views(store)
    if observe == "none":
        # the group's query heads become query rows: q (n_seg, 1, g, hd) over K (n_seg, 1, used, hd)
        o = F.scaled_dot_product_attention(q.view(n_seg, 1, g, hd), K4[:, :, :used], V4[:, :, :used], scale=scale)
        return o.view(n_seg, g, 1, hd), None, None  # o (n_seg, 1, g, hd)
    K, V = K4[:, 0, :used], V4[:, 0, :used]  # (n_seg, used, hd): strided views, no copy
    qg = q.view(n_seg, g, hd)
    s = torch.baddbmm(qg.new_empty(()), qg, K.transpose(1, 2), beta=0.0, alpha=scale).float()  # (n_seg, g, used)
    p = torch.softmax(s, dim=-1)
    o = torch.bmm(p.to(V.dtype), V)  # (n_seg, g, hd)
    p4 = p.view(n_seg, g, 1, used)
    if observe == "sum":
        return o.view(n_seg, g, 1, hd), p4.sum(dim=(1, 2)), None
    return o.view(n_seg, g, 1, hd), None, p4


# ------------------------------------------- heads of unequal counts: one packed call, no per-group loop
PACKED_MAX_SEGMENTS = 8  # the packed call scores every query head against every segment's slots


def packed_ready(store: LayerStore, T: int, prefill: bool, all_valid: bool, sliding_window: int | None) -> bool:
    """True when `attend_packed_decode` computes the step's attention (a plain one-token decode step
    over a store whose segments differ in capacity or count, few enough segments that scoring the
    whole flat buffer costs less than one call per capacity group)."""
    return (T == 1 and not prefill and all_valid and sliding_window is None
            and 0 < store.n_seg <= PACKED_MAX_SEGMENTS and store.capacity > 0)


def packed_invalid(store: LayerStore) -> torch.Tensor:
    """(n_seg, capacity) bool: flat slot j does NOT hold a kept token of segment s (cached until `lens`
    or the layout change). Built from a per-layout table of each slot's place inside each segment."""
    cached = store.__dict__.get("_packed_invalid")
    lens = store.lens
    if cached is not None and cached[0] is lens and cached[1] is store.offsets:
        return cached[2]
    rel = store.__dict__.get("_packed_rel")
    if rel is None or rel[0] is not store.offsets or rel[1].shape[1] != store.capacity:
        j = torch.arange(store.capacity, device=store.device)
        r = j[None, :] - store.offsets[:, None]
        r = torch.where(r >= 0, r, torch.iinfo(torch.long).max)  # before the segment: never valid
        rel = (store.offsets, r)
        store.__dict__["_packed_rel"] = rel
    invalid = rel[1] >= lens[:, None]
    store.__dict__["_packed_invalid"] = (lens, store.offsets, invalid)
    return invalid


def attend_packed_decode(store: LayerStore, q: torch.Tensor, scale: float) -> torch.Tensor:
    """q (n_seg, g, 1, hd) over each segment's own kept slots -> out (n_seg, g, 1, hd): one scores
    matmul of every query head against the flat K buffer, the slots of other segments and the
    unoccupied ones set to -inf, one softmax, one matmul with V. The attention of
    `nats_model.engine.kv_engine.attend_store` to float rounding."""
    n_seg, g, _, hd = q.shape
    invalid = packed_invalid(store)
    s = F.linear(q.reshape(n_seg * g, hd) * scale, store.k)  # (n_seg * g, capacity)
    s.view(n_seg, g, -1).masked_fill_(invalid[:, None, :], float("-inf"))
    p = torch.softmax(s, -1) if s.dtype == torch.float32 else torch.softmax(s, -1, dtype=torch.float32)
    return torch.mm(p.to(store.v.dtype), store.v).view(n_seg, g, 1, hd)
