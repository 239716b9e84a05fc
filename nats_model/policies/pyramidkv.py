"""PyramidKV: SnapKV's scores with per-layer budgets decreasing with depth, same total."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from nats_model.policies.base import model_state
from nats_model.policies.snapkv import SnapKVPolicy


@dataclass
class PyramidKVPolicy(SnapKVPolicy):
    """PyramidKV (Cai et al., "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information
    Funneling", 2024), with kvpress' `PyramidKVPress` budget rule. SnapKV (scores, window, pooling,
    the one compression at `compress_point`) with a layer's budget instead of the uniform one: with B
    the uniform budget of a segment that has seen L tokens, W = `window_size`, N layers, layer l keeps
    round(max - l * (max - min) / (N - 1)) tokens, min = B / `beta`, max = 2B - min (when max >=
    L - W: max = L - W, min = 2B - max), an arithmetic series whose mean over the layers is B (the
    same total as SnapKV at budget B); when L >= max >= min >= W does not hold, or N == 1, every layer
    keeps B (kvpress' SnapKV fallback). N is read from the model (`bind_model`).
    """

    beta: float = 20.0
    _n_layers: int | None = model_state()  # from bind_model

    name: ClassVar[str] = "pyramidkv"
    layer_budgets: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.beta, bool) or not isinstance(self.beta, int | float) or self.beta < 1:
            raise ValueError(f"pyramidkv: beta must be a number >= 1, got {self.beta!r}")

    def bind_model(self, model) -> None:
        cfg = model.config
        n = getattr(cfg, "n_layer", None) or getattr(cfg, "num_hidden_layers", None)
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"pyramidkv: cannot read the layer count from {type(cfg).__name__} "
                             "(n_layer / num_hidden_layers)")
        self._n_layers = n

    def budget_for(self, seen: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        uniform = super().budget_for(seen)
        if layer is None:
            return uniform
        n_layers = self._n_layers
        if n_layers is None:
            raise ValueError("pyramidkv: the layer count is unknown (generate/score call bind_model(model))")
        if n_layers == 1:
            return uniform
        B, L, W = uniform.double(), seen.double(), float(self.window_size)
        lo = B / self.beta
        hi = 2 * B - lo
        capped = hi >= L - W
        hi = torch.where(capped, L - W, hi)
        lo = torch.where(capped, 2 * B - hi, lo)
        ok = (L >= hi) & (hi >= lo) & (lo >= W)
        per_layer = torch.round(hi - layer * (hi - lo) / (n_layers - 1)).long()
        return torch.where(ok, per_layer, uniform).clamp(min=1)
