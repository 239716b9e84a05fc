"""AdaKV: a layer's budget spread over its KV heads by score (heads keep different counts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from nats_model.engine.cache import LayerStore
from nats_model.policies.base import Step, drop_lowest, lowest_first
from nats_model.policies.snapkv import SnapKVPolicy


@dataclass
class AdaKVPolicy(SnapKVPolicy):
    """AdaKV (Feng et al., "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation for
    Efficient LLM Inference", 2024), as kvpress' `AdaKVPress` over SnapKV's scores, but dropping the
    tokens instead of masking them, so heads physically hold different counts. At the compression
    point, per (layer, sequence) with per-head budget B (`budget_for`) and Hkv heads: each head keeps
    its observation window and, as a safeguard, its top floor(B * `alpha_safeguard`) tokens (the window
    counts first, as kvpress' window scores rank highest); of the remaining keys of all the sequence's
    heads together (SnapKV's pooled window attention, comparable across heads), the lowest go until
    the layer holds Hkv * B tokens for the sequence (ties: the later position, then the later head).
    """

    alpha_safeguard: float = 0.2

    name: ClassVar[str] = "adakv"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.alpha_safeguard, bool) or not isinstance(self.alpha_safeguard, int | float) \
                or not 0 <= self.alpha_safeguard <= 1:
            raise ValueError(f"adakv: alpha_safeguard must be in [0, 1], got {self.alpha_safeguard!r}")

    def choose(self, store: LayerStore, step: Step, score: torch.Tensor, rank: torch.Tensor,
               valid: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
        hkv = step.n_kv_heads
        if not hkv or store.n_seg % hkv:
            raise ValueError(f"adakv: KV head count {hkv!r} unknown or not dividing {store.n_seg} segments")
        lens = store.lens
        n_seg, width = score.shape
        n_win = torch.minimum(budget.clamp(max=self.window_size), lens)
        n_prefix = lens - n_win
        # safeguard: each head's top floor(B * alpha) tokens, its window first
        n_safe = (budget.double() * self.alpha_safeguard).floor().long()
        extra = (n_safe - n_win).clamp(min=0)[:, None]
        place = torch.empty_like(rank)
        place.scatter_(1, lowest_first(score, rank), torch.arange(width, device=rank.device).expand_as(rank))
        safe = (place >= n_prefix[:, None] - extra) & (place < n_prefix[:, None])
        score = score.masked_fill(safe, float("inf"))
        # the sequence's heads together: drop sum(lens - B) of the rest, the lowest first
        head = (torch.arange(n_seg, device=rank.device) % hkv)[:, None]
        tiebreak = (rank * hkv + head).view(-1, hkv, width).transpose(1, 2).reshape(-1, hkv * width)
        flat = score.view(-1, hkv, width).transpose(1, 2).reshape(-1, hkv * width)
        ok = valid.view(-1, hkv, width).transpose(1, 2).reshape(-1, hkv * width)
        n_drop = (lens - budget).view(-1, hkv).sum(1)
        keep = drop_lowest(flat, tiebreak, n_drop, ok)
        return keep.view(-1, width, hkv).transpose(1, 2).reshape(n_seg, width)
