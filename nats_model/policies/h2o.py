"""H2O: heavy hitters (accumulated attention) + a recent window, evicting at every step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from nats_model.engine.cache import LayerStore
from nats_model.policies.base import ScorerPolicy, Step, run_state


@dataclass
class H2OPolicy(ScorerPolicy):
    """H2O (Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large
    Language Models", NeurIPS 2023), as its real-drop code does it. Per (layer, sequence, KV head)
    every cached key carries a score: the attention probability it received, summed over every
    query so far (prefill queries included) and, for GQA, summed over the query heads of the KV
    head's group. Once a head holds more than `budget_for(seen)` tokens it keeps the
    `floor(budget * recent_ratio)` most recent tokens plus the highest-scoring of the others
    (the heavy hitters) up to the budget, and drops the rest; this runs after every prefill chunk
    and every decode step (protocol "streaming"; under "prompt" / "context" the scores accumulate
    without eviction until the compression point, then decode steps evict by the same rule). Exact
    score ties: the later position goes first (the scorer base's rule).
    """

    recent_ratio: float = 0.5
    _split_cache: tuple | None = run_state()  # per step: (seen, first position of the recent window)

    name: ClassVar[str] = "h2o"
    observe: ClassVar[str] = "sum"
    aux_fields: ClassVar[tuple[str, ...]] = ("h2o_score",)
    # streaming: the paper's (evict after every step); prompt/context: statistics accumulate without
    # eviction until the compression point, then decode keeps evicting by the same rule
    protocols: ClassVar[tuple[str, ...]] = ("streaming", "prompt", "context")
    default_protocol: ClassVar[str] = "streaming"
    decode_evicts: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.recent_ratio, int | float) or not 0 <= self.recent_ratio <= 1:
            raise ValueError(f"h2o: recent_ratio must be in [0, 1], got {self.recent_ratio!r}")

    def _recent_from(self, step: Step) -> torch.Tensor:
        """Once per step (all layers share `seen`): the first position of the recent window as a
        column (n_seg, 1)."""
        cached = self._split_cache
        if cached is None or cached[0] is not step.seen:
            n_recent = (self.step_budget(step).double() * self.recent_ratio).floor().long()
            cached = self._split_cache = (step.seen, (step.seen - n_recent)[:, None])
        return cached[1]

    def observe_step(self, store: LayerStore, step: Step) -> None:
        store.add_rows(store.aux["h2o_score"], step.attn_sum)  # accumulate this step's attention

    def score(self, store: LayerStore, step: Step) -> torch.Tensor:
        return store.rows(store.aux["h2o_score"])

    def protect(self, store: LayerStore, step: Step) -> torch.Tensor:
        return store.rows(store.pos, fill=-1) >= self._recent_from(step)  # the recent window
