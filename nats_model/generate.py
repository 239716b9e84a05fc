"""One generation engine for every policy and model: chunked prefill, token-by-token decode.

`KVEngine` is the `kv_engine` of the model contract (docs/DESIGN.md): each attention layer calls
`attend(layer_idx, q, k, v, positions=..., type_logits=...)`; the engine stores the new keys in
the memory-true `KVCache`, attends over exactly the kept tokens (batched per group of equal-
capacity segments, never a padded full-size cache), lets the policy evict, and returns
`(B, Hq, T, hd)`. `generate` and `score` drive a model (the small GPT or a Hugging Face Llama /
Mistral / Qwen2, see `nats_model.models.hf`) through it.

Compression protocols (`compress`, `PROTOCOLS`): when a policy may evict.
- "streaming": on every prefill chunk and every decode step (tokens evicted as they arrive; the
  H2O, TOVA, StreamingLLM and NAtS papers' setting).
- "prompt": the whole prompt is prefilled keeping every token (`Step.evict` False on every chunk
  but the last), compressed once at its end (`Step.compress_point`), then decode evicts only when
  the policy's `decode_evicts` says so (kvpress with `query_aware=True`; SnapKV's paper).
- "context": prefill chunks end exactly at `context_len`, the end of the context; the chunk that
  ends there is the compression point, the earlier ones and the question's chunks after it keep
  every token, so what is kept is decided before the question exists (kvpress' default,
  `query_aware=False`); decode as under "prompt".
A step that may not evict still updates the policy's statistics (`Policy.evicting`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nats_model.cache import KVCache, LayerStore
from nats_model.decode_attention import (
    attend_packed_decode,
    attend_uniform_decode,
    packed_ready,
    uniform_decode_ready,
)
from nats_model.kernels.decode import use_decode_kernel, varlen_decode_attention
from nats_model.policies.base import PROTOCOLS, Policy, Step
from nats_model.prefill_attention import (
    DEFAULT_OBSERVE_BLOCK,
    attend_prefill,
    attend_visible_until,
    attend_visible_until_batched,
    check_observe_block,
    valid_is_suffix,
)


class KVEngine:
    """Per-run engine state: the cache, the policy and the current step's positions/padding.

    Call `begin_step(positions, valid, ...)` before each model forward; the model then calls
    `attend` once per layer. `kv_bytes_physical_peak` is the largest K/V footprint seen at any
    point, including the moment between storing a step's tokens and evicting and the copy of a
    relayout (old and new buffers alive together). `observe_block`: queries per block when the
    attention statistics of an observing policy (H2O, TOVA, SnapKV) are computed in prefill;
    a block holds `(B * Hkv, g * observe_block, kept)` float32 probabilities at a time
    (`nats_model.prefill_attention`). `triton_decode`: on CUDA, a plain decode step over a store
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
    rule or sliding window goes to `nats_model.prefill_attention.attend_prefill`: fused kernels, no
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


@dataclass
class CacheStats:
    """What the cache held at the end of a run. kv_bytes_* count K and V storage (see
    nats_model.cache); kept_per_layer_head (n_layers, B, Hkv)."""

    kv_bytes_physical: int
    kv_bytes_physical_peak: int
    kv_bytes_full: int
    kv_bytes_kept: int
    kv_meta_bytes: int
    kept_fraction: float
    kept_per_layer_head: torch.Tensor

    @staticmethod
    def of(engine: KVEngine) -> dict:
        """The fields, read from a finished run's engine."""
        cache = engine.cache
        return {"kv_bytes_physical": cache.kv_bytes_physical(),
                "kv_bytes_physical_peak": engine.kv_bytes_physical_peak, "kv_bytes_full": cache.kv_bytes_full(),
                "kv_bytes_kept": cache.kv_bytes_kept(), "kv_meta_bytes": cache.meta_bytes(),
                "kept_fraction": cache.kept_fraction(), "kept_per_layer_head": cache.kept_per_layer_head()}


@dataclass
class GenerationResult(CacheStats):
    """New tokens (B, max_new_tokens) and what the run cost: the cache (`CacheStats`) and time.
    ttft_s: prompt in to first token out; tpot_s: mean time per later token; tokens_per_s:
    B * max_new_tokens over the whole call.
    """

    tokens: torch.Tensor
    ttft_s: float
    tpot_s: float
    tokens_per_s: float

    def metrics(self) -> dict:
        """The scalar fields as a plain dict (for run records)."""
        return {k: getattr(self, k) for k in ("kv_bytes_physical", "kv_bytes_physical_peak", "kv_bytes_full",
                                              "kv_bytes_kept", "kv_meta_bytes", "kept_fraction", "ttft_s",
                                              "tpot_s", "tokens_per_s")}


def _bind(policy: Policy, adapter) -> None:
    """Give a policy that re-rotates keys the model's RoPE theta unless it was set explicitly."""
    if getattr(policy, "rope_theta", 0) is None and adapter.rope_theta is not None:
        policy.rope_theta = adapter.rope_theta
    policy.bind_model(adapter.model)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  prefill_chunk_size: int | None) -> torch.Tensor:
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be (batch, length>0), got shape {tuple(input_ids.shape)}")
    if prefill_chunk_size is not None and (not isinstance(prefill_chunk_size, int) or prefill_chunk_size < 1):
        raise ValueError(f"prefill_chunk_size must be None or an int >= 1, got {prefill_chunk_size!r}")
    if attention_mask is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids {tuple(input_ids.shape)}")
    mask = attention_mask.bool()
    if bool((mask[:, 1:].int() < mask[:, :-1].int()).any()):
        raise ValueError("attention_mask: only left padding is supported (zeros before ones in each row)")
    if not bool(mask[:, -1].all()):
        raise ValueError("attention_mask: every sequence needs at least one real token")
    return mask


def check_protocol(policy: Policy, compress: str | None) -> str:
    """`compress`, or the policy's `default_protocol` for None; ValueError unless it is a protocol the
    policy declares (`Policy.protocols`)."""
    if compress is None:
        return str(getattr(policy, "default_protocol", "streaming"))
    allowed = tuple(getattr(policy, "protocols", ("streaming",)))
    if compress not in PROTOCOLS or compress not in allowed:
        raise ValueError(f"compress: policy {policy.name!r} does not support {compress!r}; allowed: "
                         f"{', '.join(allowed)}")
    return compress


def decode_evicts(policy: Policy, compress: str) -> bool:
    """Whether decode steps (and, in `score_run`, the steps after the prompt) may evict: always under
    "streaming", else as the policy declares (`Policy.decode_evicts`)."""
    return compress == "streaming" or bool(getattr(policy, "decode_evicts", True))


def prefill_steps(P: int, chunk: int | None, compress: str,
                  context_len: int | None = None) -> list[tuple[int, int, bool, bool]]:
    """The prefill chunks of a P-column prompt under a protocol: (start, end, evict, compress_point).

    streaming: chunks of `chunk` columns (None: one), each may evict, the last is the compression
    point; prompt: the same chunks, only the last may evict; context: chunks of the first
    `context_len` columns, then of the rest, so a chunk ends exactly at the context's end: that one is
    the only one that may evict (0 < context_len < P)."""
    chunk = P if chunk is None else chunk
    if compress == "context":
        if isinstance(context_len, bool) or not isinstance(context_len, int) or not 0 < context_len < P:
            raise ValueError(f"context_len: compress='context' needs the column where the context ends, an int "
                             f"in [1, {P - 1}] (a question must follow it), got {context_len!r}")
        spans = [(s, min(context_len, s + chunk)) for s in range(0, context_len, chunk)]
        spans += [(s, min(P, s + chunk)) for s in range(context_len, P, chunk)]
        return [(s, e, e == context_len, e == context_len) for s, e in spans]
    if compress not in PROTOCOLS:
        raise ValueError(f"compress: unknown protocol {compress!r}; allowed: {', '.join(PROTOCOLS)}")
    return [(s, min(P, s + chunk), compress == "streaming" or s + chunk >= P, s + chunk >= P)
            for s in range(0, P, chunk)]


def _prefill(adapter, engine: KVEngine, input_ids, mask, chunk: int | None, compress: str = "streaming",
             context_len: int | None = None) -> torch.Tensor:
    """Feed the prompt in chunks (`prefill_steps`); returns the logits of the last position (B, V)."""
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)  # (B, P) like Hugging Face
    P = input_ids.shape[1]
    logits = None
    for s, e, evict, point in prefill_steps(P, chunk, compress, context_len):
        pos, val = positions[:, s:e], mask[:, s:e]
        rope = engine.policy.rope_positions(pos, engine.kept_per_seq().to(pos.device), val)
        engine.begin_step(pos, val, prefill=True, last_prefill=e == P, evict=evict, compress_point=point)
        logits = adapter.forward(input_ids[:, s:e], rope, engine, logits_to_keep=1)  # (B, 1, V): the last only
    return logits[:, -1]


def _decode_step(adapter, engine: KVEngine, tok: torch.Tensor, pos: torch.Tensor,
                 evict: bool = True) -> torch.Tensor:
    """tok, pos (B,) -> logits (B, V) for the next token."""
    valid = torch.ones(tok.shape[0], 1, dtype=torch.bool, device=tok.device)
    rope = engine.policy.rope_positions(pos[:, None], engine.kept_per_seq().to(pos.device), valid)
    engine.begin_step(pos[:, None], valid, prefill=False, evict=evict, compress_point=False)
    return adapter.forward(tok[:, None], rope, engine)[:, -1]


def _pick(logits: torch.Tensor, do_sample: bool, temperature: float, top_k: int | None, gen) -> torch.Tensor:
    if not do_sample:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)[:, 0]


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, policy: Policy, max_new_tokens: int,
             attention_mask: torch.Tensor | None = None, prefill_chunk_size: int | None = 512,
             do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
             seed: int | None = None, observe_block: int = DEFAULT_OBSERVE_BLOCK, compress: str | None = None,
             context_len: int | None = None) -> GenerationResult:
    """Generate `max_new_tokens` per sequence with `policy` managing the KV cache.
    Greedy unless `do_sample`; left padding via `attention_mask`; `prefill_chunk_size=None`
    prefills the whole prompt in one step. `observe_block`: queries per block of an observing
    policy's prefill attention statistics (`KVEngine`; memory, not results). `compress`: the
    compression protocol (module docstring), one of the policy's `protocols` (None: its
    `default_protocol`, what the policy did before protocols existed); `context_len`
    (compress="context" only): the number of leading columns of `input_ids` that are the context
    (left padding included, so every row's context ends at that column), the question follows."""
    from nats_model.models.hf import adapt

    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    mask = _check_inputs(input_ids, attention_mask, prefill_chunk_size)
    compress = check_protocol(policy, compress)
    steps_evict = decode_evicts(policy, compress)
    prefill_steps(input_ids.shape[1], prefill_chunk_size, compress, context_len)  # bad context_len: before work
    adapter = adapt(model)
    device = input_ids.device
    gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    _bind(policy, adapter)
    policy.reset()
    engine = KVEngine(policy, input_ids.shape[0], observe_block=observe_block)
    out = []
    with adapter.session(engine):
        _sync(device)
        t0 = time.perf_counter()
        logits = _prefill(adapter, engine, input_ids, mask, prefill_chunk_size, compress, context_len)
        tok = _pick(logits, do_sample, temperature, top_k, gen)
        out.append(tok)
        _sync(device)
        t1 = time.perf_counter()
        pos = mask.long().sum(1)  # original position of the first new token
        for _ in range(max_new_tokens - 1):
            logits = _decode_step(adapter, engine, tok, pos, steps_evict)
            tok = _pick(logits, do_sample, temperature, top_k, gen)
            out.append(tok)
            pos = pos + 1
        _sync(device)
        t2 = time.perf_counter()
    return GenerationResult(
        tokens=torch.stack(out, 1), ttft_s=t1 - t0,
        tpot_s=(t2 - t1) / (max_new_tokens - 1) if max_new_tokens > 1 else 0.0,
        tokens_per_s=input_ids.shape[0] * max_new_tokens / max(t2 - t0, 1e-12), **CacheStats.of(engine))


@dataclass
class ScoreResult(CacheStats):
    """Streaming NLL and what the cache held at the end (`CacheStats`).

    nll (B, T-1): entry t is -log p(token t+1 | tokens <= t), NaN where token t is padding."""

    nll: torch.Tensor


@torch.no_grad()
def score_run(model, input_ids: torch.Tensor, policy: Policy, attention_mask: torch.Tensor | None = None,
              prefill_chunk_size: int = 1, prompt_len: int = 0, prompt_chunk_size: int = 512,
              observe_block: int = DEFAULT_OBSERVE_BLOCK, compress: str | None = None) -> ScoreResult:
    """Streaming NLL with the policy active, plus the cache's KV statistics at the end.

    The first `prompt_len` tokens are a prompt: fed in chunks of `prompt_chunk_size`, the last one
    flagged as the end of prefill (so prompt-compressing policies such as SnapKV compress there, as
    in generation); the remaining tokens are fed `prefill_chunk_size` per step (1 = token by
    token, as StreamingLLM evaluates). `prompt_len=0` streams everything. Every fed token's next-
    token NLL is scored, prompt included. `observe_block` as in `generate`. `compress` (None: the
    policy's default): "streaming"
    (every step may evict) or "prompt" (the prompt's chunks keep every token but the last one, the
    compression point; the later steps evict as `decode_evicts` says); "context" is refused (a scored
    text has no question to append)."""
    from nats_model.models.hf import adapt

    mask = _check_inputs(input_ids, attention_mask, prefill_chunk_size)
    if isinstance(prompt_len, bool) or not isinstance(prompt_len, int) or prompt_len < 0:
        raise ValueError(f"prompt_len must be an int >= 0, got {prompt_len!r}")
    if isinstance(prompt_chunk_size, bool) or not isinstance(prompt_chunk_size, int) or prompt_chunk_size < 1:
        raise ValueError(f"prompt_chunk_size must be an int >= 1, got {prompt_chunk_size!r}")
    compress = check_protocol(policy, compress)
    if compress == "context":
        raise ValueError("compress: score_run has no question to append after a context; allowed: streaming, "
                         "prompt")
    after_prompt_evicts = decode_evicts(policy, compress)
    adapter = adapt(model)
    _bind(policy, adapter)
    policy.reset()
    engine = KVEngine(policy, input_ids.shape[0], observe_block=observe_block)
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    T = input_ids.shape[1]
    n_prompt = min(prompt_len, T - 1)
    spans = [(s, min(n_prompt, s + prompt_chunk_size), True) for s in range(0, n_prompt, prompt_chunk_size)]
    spans += [(s, min(T - 1, s + prefill_chunk_size), False) for s in range(n_prompt, T - 1, prefill_chunk_size)]
    nll = []
    with adapter.session(engine):
        for s, e, in_prompt in spans:
            pos, val = positions[:, s:e], mask[:, s:e]
            rope = policy.rope_positions(pos, engine.kept_per_seq().to(pos.device), val)
            point = in_prompt and e == n_prompt
            evict = (compress == "streaming" or point) if in_prompt else after_prompt_evicts
            engine.begin_step(pos, val, prefill=True, last_prefill=point, evict=evict, compress_point=point)
            logp = torch.log_softmax(adapter.forward(input_ids[:, s:e], rope, engine).float(), -1)
            tgt = input_ids[:, s + 1:e + 1]
            step_nll = -logp.gather(-1, tgt[..., None])[..., 0]
            nll.append(step_nll.masked_fill(~val, float("nan")))
    return ScoreResult(nll=torch.cat(nll, 1), **CacheStats.of(engine))


def score(model, input_ids: torch.Tensor, policy: Policy, attention_mask: torch.Tensor | None = None,
          prefill_chunk_size: int = 1, prompt_len: int = 0) -> torch.Tensor:
    """Streaming NLL (B, T-1) only: `score_run(...).nll` (see there)."""
    return score_run(model, input_ids, policy, attention_mask, prefill_chunk_size, prompt_len).nll
