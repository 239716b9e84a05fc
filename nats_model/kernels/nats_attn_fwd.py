"""Triton forward of NAtS attention: FlashAttention-2 tiling with the mask built on-chip.

One program per (query block, batch x query head). It walks the causal key blocks, loads each
key's type id and its bounds (`bounds.KeyBounds`), derives vis_end[n] on-chip and keeps an online
softmax over the visible keys (the masked normaliser, LSE saved for the backward). With
`FULL_LSE` it also keeps a second running max/sum over all causal keys: the unmasked normaliser
p~ of the token-level type gradient needs it. The prefill kernel (`prefill.py`) adds block skips.

Importing this module imports triton: library code imports it lazily (see `__init__`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

NEG_BIG = tl.constexpr(-1.0e30)  # finite "minus infinity" for running maxima: exp(NEG_BIG - NEG_BIG) = 1, not nan


@triton.jit
def mma(a, b, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """tl.dot with fp32 accumulation; IEEE: full fp32 products (no TF32) for fp32 inputs; UPCAST:
    multiply in fp32, used only for bf16 under TRITON_INTERPRET (its bf16 dot returns garbage)."""
    if UPCAST:
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif IEEE:
        c = tl.dot(a, b, input_precision="ieee")
    else:
        c = tl.dot(a, b)
    return c


@triton.jit
def nats_fwd_kernel(
    Q, K, V, OUT, LSE, LSE_FULL,  # q (B,Hq,N,D) k/v (B,Hkv,N,D) out like q, lse (B,Hq,N) fp32
    TYPES, LOC_END, SW_END,  # (B,Hkv,N) int32 per-key bounds
    SKIP, VISITED,  # optional (B,Hq,Mb,Nb) int8 "visit" table and (B,Hq,Mb) int32 counters
    scale, N, HQ, GROUP, HD,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    FULL_LSE: tl.constexpr, USE_SKIP: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HQ
    h = pid_bh % HQ
    hk = b * (HQ // GROUP) + h // GROUP  # flat (batch, kv head) index
    q_base = pid_bh.to(tl.int64) * N * HD
    k_base = hk.to(tl.int64) * N * HD
    t_base = hk.to(tl.int64) * N

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BM,)
    offs_d = tl.arange(0, BLOCK_D)  # (BD,) head dim padded to a power of two
    d_ok = offs_d < HD
    q = tl.load(Q + q_base + offs_m[:, None] * HD + offs_d[None, :], mask=(offs_m < N)[:, None] & d_ok[None, :],
                other=0.0)  # (BM, BD)

    m_i = tl.full([BLOCK_M], NEG_BIG, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    mf_i = tl.full([BLOCK_M], NEG_BIG, dtype=tl.float32)
    lf_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    n_visited = 0

    hi = tl.minimum((pid_m + 1) * BLOCK_M, N)  # causal: keys < end of this query block
    for start_n in range(0, hi, BLOCK_N):
        visit = True
        if USE_SKIP:
            flag = tl.load(SKIP + (pid_bh.to(tl.int64) * tl.num_programs(0) + pid_m) * tl.cdiv(N, BLOCK_N)
                           + start_n // BLOCK_N)
            visit = flag != 0
        if visit:
            n_visited += 1
            offs_n = start_n + tl.arange(0, BLOCK_N)  # (BN,)
            n_ok = offs_n < N
            kv_mask = n_ok[None, :] & d_ok[:, None]
            k_t = tl.load(K + k_base + offs_n[None, :] * HD + offs_d[:, None], mask=kv_mask, other=0.0)  # (BD, BN)
            s = mma(q, k_t, IEEE, UPCAST) * scale  # (BM, BN) fp32
            t = tl.load(TYPES + t_base + offs_n, mask=n_ok, other=2)
            le = tl.load(LOC_END + t_base + offs_n, mask=n_ok, other=-1)
            se = tl.load(SW_END + t_base + offs_n, mask=n_ok, other=-1)
            vis_end = tl.where(t == 0, N - 1, tl.where(t == 1, le, se))  # (BN,) last query that sees n
            causal = (offs_m[:, None] >= offs_n[None, :]) & n_ok[None, :]
            visible = causal & (offs_m[:, None] <= vis_end[None, :])

            s_vis = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s_vis, 1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s_vis - m_new[:, None])  # (BM, BN), 0 where masked
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(V + k_base + offs_n[:, None] * HD + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :],
                        other=0.0)  # (BN, BD)
            acc = acc * alpha[:, None] + mma(p.to(v.dtype), v, IEEE, UPCAST)
            m_i = m_new
            if FULL_LSE:
                s_c = tl.where(causal, s, float("-inf"))
                mf_new = tl.maximum(mf_i, tl.max(s_c, 1))
                lf_i = lf_i * tl.exp(mf_i - mf_new) + tl.sum(tl.exp(s_c - mf_new[:, None]), 1)
                mf_i = mf_new

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)  # rows past N may see nothing; they are not stored
    out = acc / l_safe[:, None]
    m_ok = offs_m < N
    tl.store(OUT + q_base + offs_m[:, None] * HD + offs_d[None, :], out.to(OUT.dtype.element_ty),
             mask=m_ok[:, None] & d_ok[None, :])
    tl.store(LSE + pid_bh.to(tl.int64) * N + offs_m, m_i + tl.log(l_safe), mask=m_ok)
    if FULL_LSE:
        lf_safe = tl.where(lf_i > 0.0, lf_i, 1.0)
        tl.store(LSE_FULL + pid_bh.to(tl.int64) * N + offs_m, mf_i + tl.log(lf_safe), mask=m_ok)
    if USE_SKIP:
        tl.store(VISITED + pid_bh.to(tl.int64) * tl.num_programs(0) + pid_m, n_visited)


def upcast_dots(x: torch.Tensor) -> bool:
    """Whether the kernels must multiply in fp32: only bf16 on the CPU interpreter (see `mma`)."""
    return x.dtype == torch.bfloat16 and not x.is_cuda


def default_block(x: torch.Tensor, hd: int) -> int:
    """Query/key block size for the tiles: 64 on the interpreter; on CUDA smaller for wide rows."""
    if not x.is_cuda:
        return 64
    row_bytes = pow2_head_dim(hd) * x.element_size()
    return 64 if row_bytes <= 256 else 32 if row_bytes <= 512 else 16


def with_block_fallback(launch, block: int):
    """Call launch(block); on Triton's OutOfResources (shared memory) retry with half the block."""
    while True:
        try:
            return launch(block)
        except triton.runtime.errors.OutOfResources:
            if block <= 16:
                raise
            block //= 2


def pow2_head_dim(hd: int) -> int:
    """The head dim the kernels compute with: the next power of two, at least 16."""
    if not 1 <= hd <= 256:
        raise ValueError(f"head dim must be in 1..256 (the kernels support 16..256 padded), got {hd}")
    return max(16, triton.next_power_of_2(hd))


def nats_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, types: torch.Tensor, loc_end: torch.Tensor,
    sw_end: torch.Tensor, scale: float, *, full_lse: bool, skip: torch.Tensor | None = None,
    block_m: int = 64, block_n: int = 64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Launch the forward. q (B,Hq,N,D), k/v (B,Hkv,N,D) contiguous; bounds (B,Hkv,N) int32.

    Returns out (B,Hq,N,D) in q's dtype, lse (B,Hq,N) fp32 (masked normaliser), lse_full
    (B,Hq,N) fp32 or None, and the visited-block count per query block (B,Hq,Mb) when `skip`
    (int8 (B,Hq,Mb,Nb)) is given.
    """
    bsz, hq, n, hd = q.shape
    hkv = k.shape[1]
    if full_lse and skip is not None:
        raise ValueError("full_lse needs every causal key block: it cannot be combined with a skip table")
    out = torch.empty_like(q)
    lse = torch.empty((bsz, hq, n), device=q.device, dtype=torch.float32)
    lse_full = torch.empty_like(lse) if full_lse else None
    n_qb = triton.cdiv(n, block_m)
    visited = torch.zeros((bsz, hq, n_qb), device=q.device, dtype=torch.int32) if skip is not None else None
    grid = (n_qb, bsz * hq)
    nats_fwd_kernel[grid](
        q, k, v, out, lse, lse_full if full_lse else lse, types, loc_end, sw_end,
        skip if skip is not None else types, visited if visited is not None else types,
        float(scale), n, hq, hq // hkv, hd,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=pow2_head_dim(hd),
        FULL_LSE=full_lse, USE_SKIP=skip is not None, IEEE=q.dtype == torch.float32,
        UPCAST=upcast_dots(q),
    )
    return out, lse, lse_full, visited
