"""Which implementation of NAtS training attention runs: `nats_attention` picks the Triton kernel
(`nats_model.kernels`) on CUDA, the block-wise Function (`nats_model.attention.blockwise`) on the CPU
for hard one-hot types, else the dense reference (`nats_model.attention.reference`). All three take the
same arguments (`nats_model.attention.contract`) and give the same forward and gradient."""

from __future__ import annotations

import torch

from nats_model.attention.blockwise import nats_attention_blockwise
from nats_model.attention.reference import nats_attention_reference


def _triton_impl():
    """The Triton kernel entry point (`nats_model.kernels`, which imports triton only on first
    call), or None where the kernels package cannot be imported."""
    try:
        from nats_model.kernels import nats_attention_triton
    except ImportError:
        return None
    return nats_attention_triton


def nats_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    types_onehot: torch.Tensor,
    *,
    window: int,
    lam: float = 0.0,
    chunk_size: int | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """NAtS attention (`nats_model.attention.reference` explains the rule and gradient): the Triton kernel on CUDA when available; on the
    CPU the block-wise Function (`nats_model.attention.blockwise`, same gradient, O(N x block)
    memory) for hard one-hot types; else (soft types, other devices) the dense reference."""
    if q.is_cuda:
        fn = _triton_impl()
        if fn is not None:
            return fn(q, k, v, types_onehot, window=window, lam=lam, chunk_size=chunk_size, scale=scale)
    if q.device.type == "cpu" and _is_hard_onehot(types_onehot):
        return nats_attention_blockwise(q, k, v, types_onehot, window=window, lam=lam, chunk_size=chunk_size,
                                        scale=scale)
    return nats_attention_reference(q, k, v, types_onehot, window=window, lam=lam, chunk_size=chunk_size, scale=scale)


def _is_hard_onehot(types_onehot: torch.Tensor) -> bool:
    """Exactly one nonzero entry per position (hard, also straight-through, whose kept entry is 1 up
    to rounding): the mask is then the boolean visibility rule the block-wise Function builds."""
    return types_onehot.shape[-1] == 3 and bool(((types_onehot.detach() != 0).sum(-1) == 1).all())
