"""The KV engine: the `kv_engine` of the model contract (docs/DESIGN.md).

Each attention layer calls `KVEngine.attend(layer_idx, q, k, v, positions=..., type_logits=...)`;
the engine stores the new keys in the memory-true `KVCache` (`nats_model.engine.cache`), attends
over exactly the kept tokens (batched per group of equal-capacity segments, never a padded
full-size cache: `attend_store`, or the fused paths of `nats_model.engine.prefill_attention` /
`nats_model.engine.decode_attention`), lets the policy evict, and returns `(B, Hq, T, hd)`. The
loops that drive a model through it are `nats_model.engine.generation`.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from nats_model.engine.cache import KVCache, LayerStore
from nats_model.engine.decode_attention import (
    attend_packed_decode,
    attend_uniform_decode,
    packed_ready,
    uniform_decode_ready,
)
from nats_model.engine.prefill_attention import (
    DEFAULT_OBSERVE_BLOCK,
    attend_prefill,
    attend_visible_until,
    attend_visible_until_batched,
    check_observe_block,
    valid_is_suffix,
)
from nats_model.kernels.decode import use_decode_kernel, varlen_decode_attention
from nats_model.policies.base import Policy, Step


class KVEngine:
    """Per-run engine state: the cache, the policy and the current step's positions/padding.

    Call `begin_step(positions, valid, ...)` before each model forward; the model then calls
    `attend` once per layer. `kv_bytes_physical_peak` is the largest K/V footprint seen at any
    point, including the moment between storing a step's tokens and evicting and the copy of a
    relayout (old and new buffers alive together). `observe_block`: queries per block when the
    attention statistics of an observing policy (H2O, TOVA, SnapKV) are computed in prefill;
    a block holds `(B * Hkv, g * observe_block, kept)` float32 probabilities at a time
    (`nats_model.engine.prefill_attention`). `triton_decode`: on CUDA, a plain decode step over a store
    whose heads hold different counts runs the Triton kernel `nats_model.kernels.decode` (never on
    the CPU); False, or NATSBENCH_TRITON_DECODE=0, keeps the torch path.
    """

    def __init__(self, policy: Policy, batch: int, observe_block: int = DEFAULT_OBSERVE_BLOCK,
                 triton_decode: bool = True):
        self.policy = policy
        self.triton_decode = triton_decode
        self._decode_kernel: dict = {}  # device -> use the Triton decode kernel (decided once per device)
        self.observe_block = check_observe_block(observe_block)
        self.cache = KVCache(batch, tuple(policy.aux_fields), policy.aux_dtypes)
        self.kv_bytes_physical_peak = 0
        self._step: dict = {}
        # the fast paths of a policy with its own visibility rule (NAtS: `visible_until` in prefill);
        # NATSBENCH_FAST_MASKS=0 keeps the dense `visible` mask path (the oracle of the tests)
        self.fast_masks = os.environ.get("NATSBENCH_FAST_MASKS", "1") != "0"

    def begin_step(self, positions: torch.Tensor, valid: torch.Tensor, *, prefill: bool,
                   last_prefill: bool = False, evict: bool = True, compress_point: bool | None = None) -> None:
        """positions, valid (B, T): original positions of the step's tokens, False for padding.
        `evict` / `compress_point`: `Step.evict` / `Step.compress_point` of the step's layers (the
        compression protocol, see the module docstring)."""
        self.cache.seen = self.cache.seen.to(positions.device) + valid.sum(1)
        self._step = {"pos": positions, "valid": valid, "prefill": prefill, "last": last_prefill,
                      "evict": evict, "cpoint": compress_point}

    def _track_peak(self, store: LayerStore) -> None:
        """Peak K/V bytes, counting the old buffers a relayout held while copying."""
        now = self.cache.kv_bytes_physical() + store.relayout_old_bytes
        store.relayout_old_bytes = 0
        self.kv_bytes_physical_peak = max(self.kv_bytes_physical_peak, now)

    def _kernel_on(self, device: torch.device) -> bool:
        hit = self._decode_kernel.get(device)
        if hit is None:
            hit = self._decode_kernel[device] = self.triton_decode and use_decode_kernel(device)
        return hit

    def kept_per_seq(self) -> torch.Tensor:
        """(B,) tokens layer 0 / KV head 0 holds (0 before the first step)."""
        store = self.cache.layers.get(min(self.cache.layers, default=-1))
        if store is None:
            return torch.zeros(self.cache.batch, dtype=torch.long)
        return store.lens.view(self.cache.batch, -1)[:, 0]

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
               positions: torch.Tensor | None = None, type_logits: torch.Tensor | None = None,
               scale: float | None = None, sliding_window: int | None = None) -> torch.Tensor:
        """q (B, Hq, T, hd), k, v (B, Hkv, T, hd) (RoPE applied) -> attention output (B, Hq, T, hd).
        `positions` (the RoPE positions) are not needed: causality uses the original positions
        given to `begin_step`."""
        B, Hq, T, hd = q.shape
        Hkv = k.shape[1]
        if Hq % Hkv:
            raise ValueError(f"query heads {Hq} must be a multiple of KV heads {Hkv}")
        g, n_seg = Hq // Hkv, B * Hkv
        st = self._step
        if not st:
            raise RuntimeError("KVEngine.attend called before begin_step(positions, valid, prefill=...)")
        if "pos_seg" not in st:  # (n_seg, T), computed once per step
            st["pos_seg"] = st["pos"].repeat_interleave(Hkv, 0)
            st["valid_seg"] = st["valid"].repeat_interleave(Hkv, 0)
            st["all_valid"] = bool(st["valid"].all())
            st["seen_seg"] = self.cache.seen_per_segment(Hkv)
        store = self.cache.layer(layer_idx, k)
        k_new, v_new = k.reshape(n_seg, T, hd), v.reshape(n_seg, T, hd)
        capacity = store.capacity
        new_slots = store.append(k_new, v_new, st["pos_seg"], st["valid_seg"], st["all_valid"])
        if store.capacity != capacity or store.relayout_old_bytes:  # K/V bytes change only by a relayout
            self._track_peak(store)
        qs = q.reshape(n_seg, g, T, hd)
        scale = hd ** -0.5 if scale is None else scale
        out = None
        step = Step(layer=layer_idx, prefill=st["prefill"], last_prefill=st["last"],
                    seen=st["seen_seg"], q_pos=st["pos_seg"], q_valid=st["valid_seg"],
                    new_slots=new_slots, attn_sum=None, probs=None, type_logits=type_logits,
                    q=qs, k_new=k_new, v_new=v_new, n_kv_heads=Hkv, scale=scale,
                    evict=st["evict"], compress_point=st["cpoint"])
        visible = None
        if (self.fast_masks and st["prefill"] and T > 1 and sliding_window is None
                and self.policy.observe == "none" and hasattr(self.policy, "visible_until")):
            # an interval rule (NAtS): block-wise attention, no (T, row_cap) mask
            until = self.policy.visible_until(store, step)
            if st["all_valid"]:  # every segment at once (padded key sets)
                out = attend_visible_until_batched(store, qs, st["pos_seg"], until, scale)
            else:
                out = attend_visible_until(store, qs, st["pos_seg"], st["valid_seg"], False, until, scale)
        elif self.policy.masks_attention:
            # the policy's own visibility rule; None for a rule that hides nothing this step (NAtS decode)
            visible = self.policy.visible(store, step)
        if out is not None:
            pass  # attended above
        elif uniform_decode_ready(store, T, st["prefill"], st["all_valid"], sliding_window,
                                visible is not None):  # the usual decode step: no masks at all
            out, step.attn_sum, step.probs = attend_uniform_decode(store, qs, scale, self.policy.observe)
        elif (T == 1 and not st["prefill"] and st["all_valid"] and visible is None
              and self.policy.observe == "none" and self._kernel_on(q.device)):
            # variable-length decode over each head's own kept slots (CUDA only): no dense mask
            o, _ = varlen_decode_attention(qs.view(n_seg, g, hd), store.k, store.v, store.pos, store.offsets,
                                           store.lens, st["pos_seg"][:, 0], scale, sliding_window,
                                           max_len=store.row_cap)
            out = o.view(n_seg, g, 1, hd)
        elif (self.fast_masks and self.policy.masks_attention and visible is None and self.policy.observe == "none"
              and packed_ready(store, T, st["prefill"], st["all_valid"], sliding_window)):
            # heads of unequal counts (NAtS decode): one packed call over the flat store, no per-group loop
            out = attend_packed_decode(store, qs, scale)
        else:
            out, step.attn_sum, step.probs = attend_store(
                store, qs, st["pos_seg"], st["valid_seg"], st["all_valid"], scale, sliding_window,
                self.policy.observe, decode=not st["prefill"], visible=visible,
                probs_rows=self.policy.probs_rows, observe_block=self.observe_block, chunk_in_order=True)
        keep = self.policy.select(store, step)
        if keep is not None:
            capacity = store.capacity
            dropped = store.evict_one(keep) if keep.dtype == torch.long else store.compact(keep)
            if dropped:
                self.policy.after_compact(store, step)
                if store.capacity != capacity or store.relayout_old_bytes:
                    self._track_peak(store)
        return out.view(B, Hq, T, hd)


def attend_store(store: LayerStore, q: torch.Tensor, q_pos: torch.Tensor, q_valid: torch.Tensor,
                 all_valid: bool, scale: float, sliding_window: int | None, observe: str,
                 decode: bool = False, visible: torch.Tensor | None = None, probs_rows: int | None = None,
                 observe_block: int = DEFAULT_OBSERVE_BLOCK, chunk_in_order: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Attention of q (n_seg, g, T, hd) over every segment's kept slots, one batched call per
    group of equal-capacity segments. Key slot j is visible to query t when it is occupied, its
    original position <= the query's (and within `sliding_window`, and `visible (n_seg, T, row_cap)`
    allows it, when given; padding queries ignore `visible`). Returns out (n_seg, g, T, hd)
    and, as `observe` asks, attn_sum (n_seg, P) / probs (n_seg, g, T, P), P <= row_cap (slots past
    P are unoccupied).

    `chunk_in_order`: the step's real tokens were just appended in order and every other occupied
    slot precedes them (the `KVEngine` invariant). Then a prefill step without a policy visibility
    rule or sliding window goes to `nats_model.engine.prefill_attention.attend_prefill`: fused kernels, no
    dense mask, statistics in blocks of `observe_block` queries, and probs for only the last
    `probs_rows` queries (`Policy.probs_rows`; None: all)."""
    if (chunk_in_order and not decode and visible is None and sliding_window is None
            and (all_valid or valid_is_suffix(q_valid))):
        return attend_prefill(store, q, q_valid, all_valid, scale, observe, probs_rows, observe_block)
    n_seg, g, T, hd = q.shape
    want = observe != "none"
    out = q.new_empty(n_seg, g, T, hd) if not store.uniform else None
    attn_sum = None
    if observe == "sum" and not store.uniform:
        attn_sum = q.new_zeros(n_seg, store.row_cap, dtype=torch.float32)
    # probs: a uniform store hands over its one group's probabilities as they are (n_seg, g, T, used)
    probs_all = q.new_zeros(n_seg, g, T, store.row_cap, dtype=torch.float32) \
        if observe == "probs" and not store.uniform else None
    # padding queries look at everything (their output is discarded) so no row is empty
    qp = q_pos if all_valid else torch.where(q_valid, q_pos, torch.iinfo(torch.long).max // 2)
    for seg_ids, start, cap in store.groups:
        n = seg_ids.numel()
        if n == 0 or cap == 0:
            continue
        K = store.k[start:start + n * cap].view(n, cap, hd)
        V = store.v[start:start + n * cap].view(n, cap, hd)
        sel = slice(None) if store.uniform else seg_ids
        lens = store.lens if store.uniform else store.lens[seg_ids]
        used = cap  # key slots the attention reads
        if decode and all_valid and T == 1 and sliding_window is None and visible is None:
            # every stored position precedes the query: only unoccupied slots are hidden
            if store.uniform and store.common_len() >= 0:
                # every segment holds the same count: read exactly those slots, no mask
                used, mask = store.common_len(), None
                K, V = K[:, :used], V[:, :used]
            elif store.uniform:
                mask = store.valid_rows()[:, None, :]
            else:
                mask = (torch.arange(cap, device=q.device)[None, :] < lens[:, None])[:, None, :]
        else:
            slot = torch.arange(cap, device=q.device)
            P = store.pos[start:start + n * cap].view(n, cap)
            mask = (slot[None, :] < lens[:, None])[:, None, :] & (P[:, None, :] <= qp[sel][:, :, None])
            if sliding_window is not None:
                mask = mask & (P[:, None, :] > qp[sel][:, :, None] - sliding_window)  # (n, T, cap)
            if visible is not None:  # the policy's own rule (e.g. NAtS types); padding queries exempt
                mask = mask & (visible[sel][:, :, :cap] | ~q_valid[sel][:, :, None])
        qg = (q if store.uniform else q[seg_ids]).reshape(n, g * T, hd)  # query heads become query rows
        if mask is not None and mask.shape[1] != 1:
            mask = mask[:, None].expand(n, g, T, cap).reshape(n, g * T, cap)
        if not want:
            o = F.scaled_dot_product_attention(qg.unsqueeze(1), K.unsqueeze(1), V.unsqueeze(1),
                                               attn_mask=None if mask is None else mask.unsqueeze(1), scale=scale)
            # (n, 1, g*T, hd)
        else:
            s = torch.baddbmm(qg.new_empty(()), qg, K.transpose(1, 2), beta=0.0, alpha=scale).float()  # (n, g*T, cap)
            if mask is not None:
                s = s.masked_fill(~mask, torch.finfo(torch.float32).min)
            p = torch.softmax(s, dim=-1)
            o = torch.bmm(p.to(V.dtype), V)  # (n, g*T, hd)
            p4 = p.view(n, g, T, used)  # slots past `used` (the common length) got no attention
            if not all_valid:
                p4 = p4 * q_valid[sel][:, None, :, None]
            if observe == "sum":
                if store.uniform:
                    attn_sum = p4.sum(dim=(1, 2))  # (n_seg, used): slots past `used` are unoccupied
                else:
                    attn_sum[sel, :used] = p4.sum(dim=(1, 2))
            if observe == "probs":
                if store.uniform:
                    probs_all = p4
                else:
                    probs_all[sel, :, :, :used] = p4
        o = o.view(n, g, T, hd)
        if store.uniform:
            out = o
        else:
            out[seg_ids] = o
    if out is None:  # empty cache (cannot happen for real queries, which see themselves)
        out = q.new_zeros(n_seg, g, T, hd)
    if observe == "probs" and probs_all is None:
        probs_all = q.new_zeros(n_seg, g, T, store.row_cap, dtype=torch.float32)
    if not all_valid:
        out = out.masked_fill(~q_valid[:, None, :, None], 0.0)
    return out, attn_sum, probs_all
