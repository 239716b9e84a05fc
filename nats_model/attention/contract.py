"""The input contract of NAtS training attention, shared by the dense reference
(`nats_model.attention.reference`) and the block-wise CPU form (`nats_model.attention.blockwise`), so neither
imports the other for it. (The Triton kernel, `nats_model.kernels.nats_attn`, checks the same shapes
plus what the kernel itself needs: head dim 16..256 and one float dtype.)"""

from __future__ import annotations

from nats_model.mask import chunk_count

P_TILDE_MODES = ("unmasked", "masked_clamped", "masked")


def check_inputs(q, k, v, types_onehot, window, chunk_size, p_tilde) -> tuple[int, int]:
    """Shapes and arguments of a NAtS attention call (the reference and the block-wise forms take the
    same): q (B, Hq, N, hd); k, v (B, Hkv, N, hd); types_onehot (B, Hkv, N or ceil(N/C), 3); window >= 0;
    p_tilde one of P_TILDE_MODES. ValueError naming what is wrong; returns (Hkv, Hq // Hkv)."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"q, k, v must be 4-D (B, H, N, hd); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    b, hq, n, hd = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[2] != n or k.shape[3] != hd:
        raise ValueError(f"k and v must be (B, Hkv, N, hd) = ({b}, Hkv, {n}, {hd}); got {tuple(k.shape)}, {tuple(v.shape)}")
    hkv = k.shape[1]
    if hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of KV heads ({hkv})")
    if chunk_size is not None and (int(chunk_size) != chunk_size or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or an integer >= 1, got {chunk_size!r}")
    n_types = n if chunk_size is None else chunk_count(n, chunk_size)
    if tuple(types_onehot.shape) != (b, hkv, n_types, 3):
        raise ValueError(f"types_onehot must be (B, Hkv, N_types, 3) = ({b}, {hkv}, {n_types}, 3); got {tuple(types_onehot.shape)}")
    if int(window) != window or window < 0:
        raise ValueError(f"window must be an integer >= 0, got {window!r}")
    if p_tilde not in P_TILDE_MODES:
        raise ValueError(f"p_tilde must be one of {P_TILDE_MODES}, got {p_tilde!r}")
    return hkv, hq // hkv
