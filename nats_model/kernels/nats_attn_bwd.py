"""Triton backward of NAtS attention: dQ, dK, dV and the per-key sums of the mask gradient dM.

Two kernels, FlashAttention-2 style, both recompute the probabilities from the saved LSE:
- `nats_bwd_dkdv_kernel`, one program per (key block, batch x KV head), loops over the query
  heads of its GQA group and the query blocks at or after it. Besides dK, dV it reduces the
  type-gradient tile dM = p~ (dP - D) (p~ from the `LSE_T` normaliser; clamped to 1 when `CLAMP`)
  over query rows into five per-key sums: all causal rows (G), rows <= loc_end (L), rows <= sw_end
  (S), the "strict" Local pairs strict_start < m <= loc_end (collected term, by key) and rows in
  (loc_end, loc_end2] (the collected term of the next Global key).
- `nats_bwd_dq_kernel`, one program per (query block, batch x query head), loops over key blocks:
  dQ, and the strict Local pairs reduced over keys (collected term, by query row).
The O(N) assembly of the type gradients from those sums is in `bounds.collected_term`.
Importing this module imports triton: library code imports it lazily.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from nats_model.kernels.nats_attn_fwd import mma, pow2_head_dim, upcast_dots


@triton.jit
def nats_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, LSE_T, DELTA,  # q/do (B,Hq,N,D), k/v (B,Hkv,N,D), lse/lse_t/delta (B,Hq,N) fp32
    TYPES, LOC_END, LOC_END2, SW_END, STRICT_START,  # (B,Hkv,N) int32
    DK, DV, COLS,  # dk/dv (B,Hkv,N,D) fp32, cols (5,B,Hkv,N) fp32
    scale, N, HQ, GROUP, HD, N_KV_TOTAL,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    CLAMP: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr, TYPE_GRAD: tl.constexpr,
):
    pid_n = tl.program_id(0)
    hk = tl.program_id(1)  # flat (batch, kv head)
    hkv = HQ // GROUP
    b = hk // hkv
    k_base = hk.to(tl.int64) * N * HD
    t_base = hk.to(tl.int64) * N
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < N
    d_ok = offs_d < HD
    kv_mask = n_ok[:, None] & d_ok[None, :]
    k = tl.load(K + k_base + offs_n[:, None] * HD + offs_d[None, :], mask=kv_mask, other=0.0)  # (BN, BD)
    v = tl.load(V + k_base + offs_n[:, None] * HD + offs_d[None, :], mask=kv_mask, other=0.0)  # (BN, BD)
    t = tl.load(TYPES + t_base + offs_n, mask=n_ok, other=2)
    le = tl.load(LOC_END + t_base + offs_n, mask=n_ok, other=-1)
    le2 = tl.load(LOC_END2 + t_base + offs_n, mask=n_ok, other=-1)
    se = tl.load(SW_END + t_base + offs_n, mask=n_ok, other=-1)
    ss = tl.load(STRICT_START + t_base + offs_n, mask=n_ok, other=N)
    vis_end = tl.where(t == 0, N - 1, tl.where(t == 1, le, se))  # (BN,)
    is_local = t == 1

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    col_g = tl.zeros([BLOCK_N], dtype=tl.float32)
    col_l = tl.zeros([BLOCK_N], dtype=tl.float32)
    col_s = tl.zeros([BLOCK_N], dtype=tl.float32)
    col_strict = tl.zeros([BLOCK_N], dtype=tl.float32)
    col_next = tl.zeros([BLOCK_N], dtype=tl.float32)

    lo = (pid_n * BLOCK_N // BLOCK_M) * BLOCK_M  # first query block that holds a causal row
    for g in range(GROUP):
        bh = b * HQ + (hk % hkv) * GROUP + g  # flat (batch, query head)
        q_base = bh.to(tl.int64) * N * HD
        r_base = bh.to(tl.int64) * N
        for start_m in range(lo, N, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)  # (BM,)
            m_ok = offs_m < N
            qd_mask = m_ok[:, None] & d_ok[None, :]
            q = tl.load(Q + q_base + offs_m[:, None] * HD + offs_d[None, :], mask=qd_mask, other=0.0)  # (BM, BD)
            do = tl.load(DO + q_base + offs_m[:, None] * HD + offs_d[None, :], mask=qd_mask, other=0.0)
            lse = tl.load(LSE + r_base + offs_m, mask=m_ok, other=0.0)
            lse_t = tl.load(LSE_T + r_base + offs_m, mask=m_ok, other=0.0)
            delta = tl.load(DELTA + r_base + offs_m, mask=m_ok, other=0.0)
            s_t = mma(k, tl.trans(q), IEEE, UPCAST) * scale  # (BN, BM) key x query
            dp_t = mma(v, tl.trans(do), IEEE, UPCAST)  # (BN, BM)
            rows = offs_m[None, :]  # (1, BM)
            causal = (rows >= offs_n[:, None]) & m_ok[None, :] & n_ok[:, None]  # (BN, BM)
            visible = causal & (rows <= vis_end[:, None])
            p_t = tl.where(visible, tl.exp(tl.where(visible, s_t - lse[None, :], 0.0)), 0.0)
            dpd = dp_t - delta[None, :]
            ds_t = p_t * dpd  # (BN, BM) softmax gradient of the scores
            dv += mma(p_t.to(do.dtype), do, IEEE, UPCAST)
            dk += mma(ds_t.to(q.dtype), q, IEEE, UPCAST)
            if TYPE_GRAD:  # type gradient tile: p~ over every causal pair, masked-out ones included
                pt_t = tl.exp(tl.where(causal, s_t - lse_t[None, :], 0.0))
                if CLAMP:
                    pt_t = tl.minimum(pt_t, 1.0)
                dm_t = tl.where(causal, pt_t * dpd, 0.0)  # (BN, BM)
                col_g += tl.sum(dm_t, 1)
                col_l += tl.sum(tl.where(rows <= le[:, None], dm_t, 0.0), 1)
                col_s += tl.sum(tl.where(rows <= se[:, None], dm_t, 0.0), 1)
                strict = is_local[:, None] & (rows > ss[:, None]) & (rows <= le[:, None])
                col_strict += tl.sum(tl.where(strict, dm_t, 0.0), 1)
                nxt = is_local[:, None] & (rows > le[:, None]) & (rows <= le2[:, None])
                col_next += tl.sum(tl.where(nxt, dm_t, 0.0), 1)

    tl.store(DK + k_base + offs_n[:, None] * HD + offs_d[None, :], dk * scale, mask=kv_mask)
    tl.store(DV + k_base + offs_n[:, None] * HD + offs_d[None, :], dv, mask=kv_mask)
    c_base = COLS + t_base + offs_n
    tl.store(c_base, col_g, mask=n_ok)
    tl.store(c_base + N_KV_TOTAL, col_l, mask=n_ok)
    tl.store(c_base + 2 * N_KV_TOTAL, col_s, mask=n_ok)
    tl.store(c_base + 3 * N_KV_TOTAL, col_strict, mask=n_ok)
    tl.store(c_base + 4 * N_KV_TOTAL, col_next, mask=n_ok)


@triton.jit
def nats_bwd_dq_kernel(
    Q, K, V, DO, LSE, LSE_T, DELTA,
    TYPES, LOC_END, SW_END, STRICT_START,
    DQ, ROW,  # dq (B,Hq,N,D) fp32, row (B,Hq,N) fp32
    scale, N, HQ, GROUP, HD,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    CLAMP: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr, TYPE_GRAD: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HQ
    hk = b * (HQ // GROUP) + (bh % HQ) // GROUP
    q_base = bh.to(tl.int64) * N * HD
    r_base = bh.to(tl.int64) * N
    k_base = hk.to(tl.int64) * N * HD
    t_base = hk.to(tl.int64) * N
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < N
    d_ok = offs_d < HD
    qd_mask = m_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + q_base + offs_m[:, None] * HD + offs_d[None, :], mask=qd_mask, other=0.0)  # (BM, BD)
    do = tl.load(DO + q_base + offs_m[:, None] * HD + offs_d[None, :], mask=qd_mask, other=0.0)
    lse = tl.load(LSE + r_base + offs_m, mask=m_ok, other=0.0)
    lse_t = tl.load(LSE_T + r_base + offs_m, mask=m_ok, other=0.0)
    delta = tl.load(DELTA + r_base + offs_m, mask=m_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    row_strict = tl.zeros([BLOCK_M], dtype=tl.float32)

    hi = tl.minimum((pid_m + 1) * BLOCK_M, N)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(K + k_base + offs_n[:, None] * HD + offs_d[None, :], mask=kv_mask, other=0.0)  # (BN, BD)
        v = tl.load(V + k_base + offs_n[:, None] * HD + offs_d[None, :], mask=kv_mask, other=0.0)
        t = tl.load(TYPES + t_base + offs_n, mask=n_ok, other=2)
        le = tl.load(LOC_END + t_base + offs_n, mask=n_ok, other=-1)
        se = tl.load(SW_END + t_base + offs_n, mask=n_ok, other=-1)
        ss = tl.load(STRICT_START + t_base + offs_n, mask=n_ok, other=N)
        vis_end = tl.where(t == 0, N - 1, tl.where(t == 1, le, se))
        s = mma(q, tl.trans(k), IEEE, UPCAST) * scale  # (BM, BN)
        dp = mma(do, tl.trans(v), IEEE, UPCAST)
        rows = offs_m[:, None]  # (BM, 1)
        causal = (rows >= offs_n[None, :]) & n_ok[None, :] & m_ok[:, None]
        visible = causal & (rows <= vis_end[None, :])
        p = tl.where(visible, tl.exp(tl.where(visible, s - lse[:, None], 0.0)), 0.0)
        dpd = dp - delta[:, None]
        ds = p * dpd
        dq += mma(ds.to(k.dtype), k, IEEE, UPCAST)
        if TYPE_GRAD:
            pt = tl.exp(tl.where(causal, s - lse_t[:, None], 0.0))
            if CLAMP:
                pt = tl.minimum(pt, 1.0)
            strict = causal & (t == 1)[None, :] & (rows > ss[None, :]) & (rows <= le[None, :])
            row_strict += tl.sum(tl.where(strict, pt * dpd, 0.0), 1)

    tl.store(DQ + q_base + offs_m[:, None] * HD + offs_d[None, :], dq * scale, mask=qd_mask)
    tl.store(ROW + r_base + offs_m, row_strict, mask=m_ok)


def nats_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor, lse: torch.Tensor,
    lse_t: torch.Tensor, delta: torch.Tensor, bounds: tuple[torch.Tensor, ...], scale: float, *,
    clamp: bool, type_grad: bool = True, block_m: int = 64, block_n: int = 64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch both backward kernels. bounds = (types, loc_end, loc_end2, sw_end, strict_start).

    Returns dq (B,Hq,N,D), dk, dv (B,Hkv,N,D) in fp32, cols (5,B,Hkv,N) fp32 (G, L, S, strict,
    next per-key sums of dM, summed over the GQA group) and row (B,Hq,N) fp32 (strict sums by row);
    with `type_grad=False` cols and row stay zero and the kernels skip the dM tiles.
    """
    types, loc_end, loc_end2, sw_end, strict_start = bounds
    bsz, hq, n, hd = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    block_d = pow2_head_dim(hd)
    ieee = q.dtype == torch.float32
    upcast = upcast_dots(q)
    dq = torch.empty(q.shape, device=q.device, dtype=torch.float32)
    dk = torch.empty(k.shape, device=q.device, dtype=torch.float32)
    dv = torch.empty(k.shape, device=q.device, dtype=torch.float32)
    cols = torch.zeros((5, bsz, hkv, n), device=q.device, dtype=torch.float32)
    row = torch.zeros((bsz, hq, n), device=q.device, dtype=torch.float32)
    nats_bwd_dkdv_kernel[(triton.cdiv(n, block_n), bsz * hkv)](
        q, k, v, do, lse, lse_t, delta, types, loc_end, loc_end2, sw_end, strict_start,
        dk, dv, cols, float(scale), n, hq, group, hd, bsz * hkv * n,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, CLAMP=clamp, IEEE=ieee, UPCAST=upcast, TYPE_GRAD=type_grad,
    )
    nats_bwd_dq_kernel[(triton.cdiv(n, block_m), bsz * hq)](
        q, k, v, do, lse, lse_t, delta, types, loc_end, sw_end, strict_start,
        dq, row, float(scale), n, hq, group, hd,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, CLAMP=clamp, IEEE=ieee, UPCAST=upcast, TYPE_GRAD=type_grad,
    )
    return dq, dk, dv, cols, row
