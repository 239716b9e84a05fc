"""Shared pieces of the prompt-protocol reference tests (not a test module)."""

from __future__ import annotations

import torch

from .kv_reference import ProtocolEngine, budget_tokens, drive


def final_kept(history: list[dict]) -> dict:
    """{(layer, b, h): sorted kept positions} after the last step."""
    out: dict = {}
    for step in history:
        out.update(step)
    return out


def run_prompt_protocol(model, policy, ids, mask, chunk, n_decode):
    """Drive the real engine under "prompt"; returns the final kept positions per (layer, b, h)."""
    policy.bind_model(model)
    policy.reset()
    engine = ProtocolEngine(policy, batch=ids.shape[0])
    drive(model, engine, policy.rope_positions, ids, mask, chunk, n_decode)
    return final_kept(engine.history), engine


def expected_with_decode(kept_prompt: dict, mask: torch.Tensor, n_decode: int) -> dict:
    """The compressed prompt sets plus every decode token (decode appends, never evicts)."""
    n_real = mask.sum(1)
    return {key: sorted(pos) + list(range(int(n_real[key[1]]), int(n_real[key[1]]) + n_decode))
            for key, pos in kept_prompt.items()}


def top_positions(scores: list[float], budget: int, always: set[int] = frozenset()) -> list[int]:
    """Positions 0..n-1 kept: `always` plus the highest scores up to `budget` (ties: the earlier)."""
    if len(scores) <= budget:
        return list(range(len(scores)))
    rest = sorted((p for p in range(len(scores)) if p not in always), key=lambda p: (-scores[p], p))
    return sorted(list(always) + rest[: budget - len(always)])


__all__ = ["budget_tokens", "expected_with_decode", "final_kept", "run_prompt_protocol", "top_positions"]


def snap_pooled(q, k, n_win, window_size, kernel_size, pooling):
    """SnapKV's pooled scores of the keys before the kept window, written out: q (g, n, hd) one KV
    head's query heads, k (n, hd). The last `window_size` queries' causal attention (scale hd^-0.5)
    summed over them and the group, pooled over the n - n_win prefix keys (max: padding ignored; avg:
    zero padding counted)."""
    g, n, hd = q.shape
    raw = [0.0] * n
    for m in range(max(0, n - window_size), n):
        for j in range(g):
            p = torch.softmax((k[: m + 1] @ q[j, m]).double() * hd ** -0.5, -1)
            for i in range(m + 1):
                raw[i] += float(p[i])
    n_prefix = n - n_win
    r, pooled = kernel_size // 2, []
    for i in range(n_prefix):
        near = [raw[x] for x in range(i - r, i + r + 1) if 0 <= x < n_prefix]
        pooled.append(max(near) if pooling == "max" else sum(near) / kernel_size)
    return pooled


def pyramid_budget(n: int, uniform: int, window: int, beta: float, layer: int, n_layers: int) -> int:
    """kvpress' PyramidKV layer budget, in plain Python."""
    lo = uniform / beta
    hi = 2 * uniform - lo
    if hi >= n - window:
        hi = n - window
        lo = 2 * uniform - hi
    if n_layers == 1 or not (n >= hi >= lo >= window):
        return uniform
    return round(hi - layer * (hi - lo) / (n_layers - 1))
