"""What a run returns: the cache's statistics at its end (`CacheStats`) and, per loop of
`nats_model.engine.generation`, the generated tokens and timings (`GenerationResult`) or the
streaming NLL (`ScoreResult`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from nats_model.engine.kv_engine import KVEngine


@dataclass
class CacheStats:
    """What the cache held at the end of a run. kv_bytes_* count K and V storage (see
    nats_model.engine.cache); kept_per_layer_head (n_layers, B, Hkv)."""

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



@dataclass
class ScoreResult(CacheStats):
    """Streaming NLL and what the cache held at the end (`CacheStats`).

    nll (B, T-1): entry t is -log p(token t+1 | tokens <= t), NaN where token t is padding."""

    nll: torch.Tensor
