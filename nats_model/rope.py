"""Rotary position embeddings, in the Hugging Face "rotate half" layout.

Shared by the small GPT and the cache engine, so a key rotated at its original position can
be re-rotated to another one (StreamingLLM's positions inside the cache) by the difference
of the two angles: R(p_new) k = R(p_new - p_old) R(p_old) k.
"""

from __future__ import annotations

import torch


def inv_frequencies(head_dim: int, theta: float, device=None) -> torch.Tensor:
    """(head_dim/2,) float32 inverse frequencies theta^(-2i/d)."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for RoPE, got {head_dim}")
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype=torch.float32):
    """cos, sin of shape positions.shape + (head_dim,), computed in float32 then cast."""
    inv = inv_frequencies(head_dim, theta, device=positions.device)
    angles = positions.to(torch.float32)[..., None] * inv  # (..., hd/2)
    emb = torch.cat([angles, angles], dim=-1)  # (..., hd)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (..., T, hd) rotated by cos/sin broadcastable to it."""
    return x * cos + rotate_half(x) * sin


def _rotate_half_matrix(head_dim: int, dtype, device) -> torch.Tensor:
    """(hd, hd) P with x @ P == rotate_half(x) for row vectors x."""
    h = head_dim // 2
    p = torch.zeros(head_dim, head_dim, dtype=dtype, device=device)
    idx = torch.arange(h, device=device)
    p[idx + h, idx] = -1.0
    p[idx, idx + h] = 1.0
    return p


_P_CACHE: dict = {}


def rope_matrix(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """cos, sin (..., hd) -> R (..., hd, hd) with x @ R == apply_rope(x, cos, sin) for row vectors x:
    one matmul per rotated tensor instead of five element-wise ops (the decode path, T = 1)."""
    hd = cos.shape[-1]
    key = (hd, cos.dtype, cos.device)
    p = _P_CACHE.get(key)
    if p is None:
        p = _P_CACHE[key] = _rotate_half_matrix(hd, cos.dtype, cos.device)
    return torch.diag_embed(cos) + p * sin.unsqueeze(-2)
