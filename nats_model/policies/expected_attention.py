"""Expected Attention: keep the keys future queries are expected to attend to, from query statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from nats_model.engine.cache import LayerStore
from nats_model.policies.base import ScorerPolicy, Step, run_state
from nats_model.rope import apply_rope, inv_frequencies, rope_cos_sin


@dataclass
class ExpectedAttentionPolicy(ScorerPolicy):
    """Expected Attention (kvpress `ExpectedAttentionPress`, Devoto et al., "Expected Attention: KV
    cache compression by estimating attention from future queries distribution", 2025), kvpress'
    rule. Per (layer, sequence, query head) the mean mu and covariance S of the queries seen so far
    (before RoPE: the engine's rotated queries are rotated back by their positions; positions below
    `n_sink` left out) are rotated by the mean RoPE rotation R of the next `n_future_positions`
    positions (seen .. seen + n - 1): mu' = R mu, S' = R S R^T. A kept key k (stored rotated) gets
    softmax over the head's kept keys of k.mu'/sqrt(d) + k^T S' k / (2d) (the covariance term only
    with `use_covariance`; d the head size), averaged over the KV head's GQA group, then, with
    `use_vnorm`, (score + `epsilon`) * ||v||. The first `n_sink` positions are always kept; the
    budget's highest scores are kept, the rest dropped (ties: the later position). Statistics use
    every real query from the start (kvpress uses the queries of the compressed prompt; equal under
    "prompt", the default). Needs plain RoPE: `rope_theta` is set from the model by the engine.
    """

    n_future_positions: int = 512
    n_sink: int = 4
    use_covariance: bool = True
    use_vnorm: bool = True
    epsilon: float = 0.0
    rope_theta: float | None = None
    # per layer: [count (n_seg,), sum q (n_seg, g, hd), sum q q^T (n_seg, g, hd, hd)]
    _stats: dict = run_state(dict)

    name: ClassVar[str] = "expected_attention"
    protocols: ClassVar[tuple[str, ...]] = ("streaming", "prompt", "context")
    default_protocol: ClassVar[str] = "prompt"
    decode_evicts: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        for field, low in (("n_future_positions", 1), ("n_sink", 0)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"expected_attention: {field} must be an int >= {low}, got {value!r}")
        for field in ("use_covariance", "use_vnorm"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"expected_attention: {field} must be true or false, got {getattr(self, field)!r}")
        if isinstance(self.epsilon, bool) or not isinstance(self.epsilon, int | float) or self.epsilon < 0:
            raise ValueError(f"expected_attention: epsilon must be a number >= 0, got {self.epsilon!r}")
        if self.rope_theta is not None and (not isinstance(self.rope_theta, int | float) or self.rope_theta <= 0):
            raise ValueError(f"expected_attention: rope_theta must be None (from the model) or > 0, "
                             f"got {self.rope_theta!r}")

    def _theta(self) -> float:
        if self.rope_theta is None:
            raise ValueError("expected_attention: needs rope_theta (the engine sets it from the model; this "
                             "model's RoPE is not plain)")
        return float(self.rope_theta)

    def observe_step(self, store: LayerStore, step: Step) -> None:
        n_seg, g, T, hd = step.q.shape
        cos, sin = rope_cos_sin(-step.q_pos, hd, self._theta())  # (n_seg, T, hd): undo each query's RoPE
        q = apply_rope(step.q.float(), cos[:, None], sin[:, None])  # (n_seg, g, T, hd)
        use = (step.q_valid & (step.q_pos >= self.n_sink)).float()  # (n_seg, T)
        q = q * use[:, None, :, None]
        stats = self._stats.get(step.layer)
        if stats is None:
            stats = self._stats[step.layer] = [
                torch.zeros(n_seg, device=q.device), torch.zeros(n_seg, g, hd, device=q.device),
                torch.zeros(n_seg, g, hd, hd, device=q.device) if self.use_covariance else None]
        stats[0] += use.sum(1)
        stats[1] += q.sum(2)
        if self.use_covariance:
            stats[2] += torch.einsum("sgti,sgtj->sgij", q, q)

    def _mean_rotation(self, seen: torch.Tensor, hd: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cos and sin (n_seg, hd / 2) of the RoPE angles over positions seen .. seen + n - 1."""
        t = seen.double()[:, None] + torch.arange(self.n_future_positions, device=seen.device, dtype=torch.float64)
        angles = t[:, :, None] * inv_frequencies(hd, self._theta(), device=seen.device).double()  # (n_seg, n, hd/2)
        return angles.cos().mean(1).float(), angles.sin().mean(1).float()

    def score(self, store: LayerStore, step: Step) -> torch.Tensor:
        count, q_sum, qq_sum = self._stats[step.layer]
        n_seg, g, hd = q_sum.shape
        n = count.clamp(min=1)[:, None, None]
        mu = q_sum / n  # (n_seg, g, hd)
        c, s = self._mean_rotation(step.seen, hd)  # (n_seg, hd/2)
        cos, sin = torch.cat([c, c], -1)[:, None], torch.cat([s, s], -1)[:, None]  # (n_seg, 1, hd)
        # R x = cos * x + sin * rotate_half(x) with the mean cos / sin: RoPE's own form
        mu = apply_rope(mu, cos, sin)
        keys = store.rows(store.k).float()  # (n_seg, row_cap, hd)
        logits = torch.einsum("sgi,sri->sgr", mu, keys) / hd ** 0.5  # (n_seg, g, row_cap)
        if self.use_covariance:
            cov = qq_sum / n[..., None] - (q_sum / n)[..., :, None] * (q_sum / n)[..., None, :]
            # the matrix of that map: its rows applied to the identity give R^T
            R = apply_rope(torch.eye(hd, device=cov.device), cos[:, :, None], sin[:, :, None]).transpose(-1, -2)
            cov = R @ cov @ R.transpose(-1, -2)
            logits = logits + torch.einsum("sri,sgij,srj->sgr", keys, cov, keys) / (2 * hd)
        blocked = ~store.valid_rows() | (store.rows(store.pos, fill=-1) < self.n_sink)
        probs = torch.softmax(logits.masked_fill(blocked[:, None], float("-inf")), dim=-1).mean(1)  # (n_seg, row_cap)
        if self.use_vnorm:
            probs = (probs + self.epsilon) * store.rows(store.v).float().norm(dim=-1)
        return probs

    def protect(self, store: LayerStore, step: Step) -> torch.Tensor | None:
        return store.rows(store.pos, fill=-1) < self.n_sink if self.n_sink else None
