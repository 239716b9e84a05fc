"""TOVA: once over budget, drop the key the current query attends to least (layer-wise)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from nats_model.engine.cache import LayerStore
from nats_model.policies.base import ScorerPolicy, Step, model_state


@dataclass
class TOVAPolicy(ScorerPolicy):
    """TOVA (Oren et al., "Transformers are Multi-State RNNs", EMNLP 2024): Token Omission Via
    Attention. After every step, when a (layer, sequence) holds more than `budget_for(seen)` tokens
    per KV head, it keeps the budget's worth of keys with the highest attention from the step's
    last (current) query, averaged over all query heads of the layer (each query head scores its
    KV head's copy of a position; for GQA every head of the group counts), and drops the others.
    The score is per position, so all KV heads of a layer keep the same positions. In decode this
    drops one token per step (the lowest score, the newest token included, as in the paper); a
    prefill chunk is reduced to the budget at once with its last query's attention (a prompt
    prefilled at once: the last prompt query). On exact score ties the later position goes first (the
    scorer base's rule).
    Groups a sequence's KV heads by `Step.n_kv_heads` (or the count read by `bind_model`).
    """

    _n_kv_heads: int | None = model_state()  # from bind_model

    name: ClassVar[str] = "tova"
    # streaming: the paper's (evict after every step); prompt/context: statistics accumulate without
    # eviction until the compression point, then decode keeps evicting by the same rule
    protocols: ClassVar[tuple[str, ...]] = ("streaming", "prompt", "context")
    default_protocol: ClassVar[str] = "streaming"
    decode_evicts: ClassVar[bool] = True
    observe: ClassVar[str] = "probs"
    probs_rows: ClassVar[int | None] = 1  # the step's last query is all it reads

    def __post_init__(self) -> None:
        super().__post_init__()

    def bind_model(self, model) -> None:
        cfg = model.config
        n_kv = getattr(cfg, "n_kv_head", None) or getattr(cfg, "num_key_value_heads", None) \
            or getattr(cfg, "num_attention_heads", None)
        if not isinstance(n_kv, int) or n_kv < 1:
            raise ValueError(f"tova: cannot read the KV head count from {type(cfg).__name__} "
                             "(n_kv_head / num_key_value_heads / num_attention_heads)")
        self._n_kv_heads = n_kv

    def _kv_heads(self, store: LayerStore, step: Step) -> int:
        hkv = step.n_kv_heads or self._n_kv_heads
        if not hkv or store.n_seg % hkv:
            raise ValueError(f"tova: KV head count {hkv!r} unknown or not dividing {store.n_seg} segments "
                             "(the engine gives Step.n_kv_heads; else call bind_model(model))")
        return hkv

    def select(self, store: LayerStore, step: Step) -> torch.Tensor | None:
        n_drop, most = self.over_budget(store, step)
        if most <= 0:
            return None
        n, T, width = store.common_len(), step.probs.shape[2], step.probs.shape[3]
        if most == 1 and T == 1 and n >= 0 and width >= n:
            pick = self._decode_pick(store, step, self._kv_heads(store, step), n)
            if pick is not None:
                return pick if n_drop is None else torch.where(n_drop > 0, pick, -1)
        return super().select(store, step)  # rank by `score`, drop the lowest (ties: the later position)

    def score(self, store: LayerStore, step: Step) -> torch.Tensor:
        """(n_seg, row_cap): the last query's attention on each kept position, averaged over the layer's
        query heads (the same value in every KV head's slot of that position)."""
        hkv = self._kv_heads(store, step)
        n_seg, g, T, width = step.probs.shape
        row_cap = store.row_cap
        probs = F.pad(step.probs, (0, row_cap - width)) if width < row_cap else step.probs
        valid = step.q_valid[:, -T:]  # probs hold the step's last T queries
        last = (valid.long() * torch.arange(1, T + 1, device=valid.device)).argmax(1)  # (n_seg,)
        p = probs.gather(2, last[:, None, None, None].expand(n_seg, g, 1, row_cap))[:, :, 0].sum(1)
        occupied = store.valid_rows()
        pos = store.rows(store.pos, fill=0)  # (n_seg, row_cap)
        # mean over the layer's query heads, per (sequence, position)
        pos_g, occ_g = pos.view(-1, hkv, row_cap), occupied.view(-1, hkv, row_cap)  # (B, Hkv, row_cap)
        if bool((pos_g == pos_g[:, :1]).all()) and bool((occ_g == occ_g[:, :1]).all()):
            # the usual case: a sequence's heads hold the same positions in the same rows
            total = p.view(-1, hkv, row_cap).sum(1, keepdim=True).expand(-1, hkv, -1).reshape(n_seg, row_cap)
        else:  # rows ordered differently: add up by position
            span = int(step.seen.max())
            flat = (torch.arange(n_seg, device=pos.device) // hkv)[:, None] * span + pos  # (n_seg, row_cap)
            by_pos = torch.zeros(n_seg // hkv * span, device=pos.device)
            by_pos.index_add_(0, flat[occupied], p[occupied])
            total = by_pos[flat]
        return total / (hkv * g)

    @staticmethod
    def _decode_pick(store: LayerStore, step: Step, hkv: int, n: int) -> torch.Tensor | None:
        """One decode query, every segment holding `n` tokens: the row of each segment's lowest
        score (later position on ties), read from the first `n` slots; None when a sequence's heads
        hold their positions in different rows (the general path adds scores up by position)."""
        n_seg, g = step.probs.shape[:2]
        pos = store.rows(store.pos)[:, :n].view(-1, hkv, n)  # (B, Hkv, n)
        if hkv > 1 and not bool((pos == pos[:, :1]).all()):
            return None
        # the same sums and scaling as the general path (so exact ties fall the same way)
        total = step.probs[:, :, 0, :n].sum(1).view(-1, hkv, n).sum(1) / (hkv * g)  # (B, n)
        low = total == total.min(1, keepdim=True).values
        pick = torch.where(low, pos[:, 0], -1).argmax(1)  # (B,)
        return pick.repeat_interleave(hkv)
