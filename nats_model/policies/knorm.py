"""Knorm: drop the keys of largest L2 norm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from nats_model.engine.cache import LayerStore
from nats_model.policies.base import ScorerPolicy, Step


@dataclass
class KnormPolicy(ScorerPolicy):
    """Knorm (Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression",
    EMNLP 2024; kvpress `KnormPress`). Per (layer, sequence, KV head), when a head holds more than
    `budget_for(seen)` tokens on a step that may evict, it keeps the budget's keys of smallest L2
    norm (score = -||k||, the stored RoPE-rotated key: rotation keeps the norm) and drops the others
    (ties: the later position). Under "prompt" (the default, as kvpress) that is once at the end of
    the prompt, decode tokens then appended; under "streaming" after every step.
    """

    name: ClassVar[str] = "knorm"
    protocols: ClassVar[tuple[str, ...]] = ("streaming", "prompt", "context")
    default_protocol: ClassVar[str] = "prompt"
    decode_evicts: ClassVar[bool] = False

    def score(self, store: LayerStore, step: Step) -> torch.Tensor:
        return -store.rows(store.k).float().norm(dim=-1)
