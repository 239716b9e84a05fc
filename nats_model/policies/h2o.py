"""H2O: heavy hitters (accumulated attention) + a recent window, evicting at every step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from nats_model.cache import LayerStore
from nats_model.policies.base import Policy, Step


@dataclass
class H2OPolicy(Policy):
    """H2O (Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large
    Language Models", NeurIPS 2023), as its real-drop code does it. Per (layer, sequence, KV head)
    every cached key carries a score: the attention probability it received, summed over every
    query so far (prefill queries included) and, for GQA, summed over the query heads of the KV
    head's group. Once a head holds more than `budget_for(seen)` tokens it keeps the
    `floor(budget * recent_ratio)` most recent tokens plus the highest-scoring of the others
    (the heavy hitters) up to the budget, and drops the rest; this runs after every prefill chunk
    and every decode step. Exact score ties are broken by storage slot (arbitrary).
    """

    recent_ratio: float = 0.5

    name: ClassVar[str] = "h2o"
    # streaming: the paper's (evict after every step); prompt/context: statistics accumulate without
    # eviction until the compression point, then decode keeps evicting by the same rule
    protocols: ClassVar[tuple[str, ...]] = ("streaming", "prompt", "context")
    default_protocol: ClassVar[str] = "streaming"
    decode_evicts: ClassVar[bool] = True
    observe: ClassVar[str] = "sum"
    aux_fields: ClassVar[tuple[str, ...]] = ("h2o_score",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.recent_ratio, int | float) or not 0 <= self.recent_ratio <= 1:
            raise ValueError(f"h2o: recent_ratio must be in [0, 1], got {self.recent_ratio!r}")

    def _split(self, step: Step) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Once per step (all layers share `seen`): budget, the first position of the recent
        window as a column (n_seg, 1), and the budget when every segment has the same (else -1)."""
        cached = self.__dict__.get("_split_cache")
        if cached is None or cached[0] is not step.seen:
            budget = self.step_budget(step)
            n_recent = (budget.double() * self.recent_ratio).floor().long()
            cached = (step.seen, budget, (step.seen - n_recent)[:, None], self.step_budget_common(step))
            self.__dict__["_split_cache"] = cached
        return cached[1:]

    def select(self, store: LayerStore, step: Step) -> torch.Tensor | None:
        store.add_rows(store.aux["h2o_score"], step.attn_sum)  # accumulate this step's attention
        budget, recent_from, common_budget = self._split(step)
        common_len = store.common_len()
        if common_len >= 0 and common_budget >= 0:
            most = common_len - common_budget
            if most <= 0:
                return None
            if most == 1:  # decode fast path: every segment drops its lowest-scoring non-recent slot
                pos = store.rows(store.pos)[:, :common_len]
                score = store.rows(store.aux["h2o_score"])[:, :common_len]
                return score.masked_fill(pos >= recent_from, float("inf")).argmin(dim=1)
        n_drop = store.lens - budget  # (n_seg,)
        most = int(n_drop.max())
        if most <= 0:
            return None
        valid = store.valid_rows()
        recent = store.rows(store.pos, fill=-1) >= recent_from
        # heavy-hitter candidates (occupied, not recent); the n_drop lowest scores go
        masked = store.rows(store.aux["h2o_score"]).masked_fill(~valid | recent, float("inf"))
        if most == 1:
            return torch.where(n_drop > 0, masked.argmin(dim=1), -1)
        order = masked.argsort(dim=1, stable=True)  # ascending: lowest scores first
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
        return valid & ~(rank < n_drop.clamp(min=0)[:, None])
