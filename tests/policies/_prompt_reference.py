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
