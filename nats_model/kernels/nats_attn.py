"""`nats_attention_triton`: NAtS attention as an autograd Function over the Triton kernels.

Forward (`nats_attn_fwd`): FlashAttention-2 tiling, online softmax under the visibility rule,
mask built on-chip from per-key type ids and O(N) segment-end vectors (`bounds.key_bounds`);
saves the masked LSE and, at token level, the unmasked causal LSE.

Backward (`nats_attn_bwd`): dQ, dK, dV as in FlashAttention-2, plus the type gradients of
docs/METHOD.md, "Mask gradient", without any N x N tensor. The kernels reduce the tile
dM = p~ (dP - D) on the fly into per-key sums over the row ranges that matter:
G: n <= m < N, L: n <= m <= E(n), S: n <= m <= n+W, and two ranges for the collected term.
The collected term C(n) (the mass the Local keys j between the previous Global key and n lose
for n < m <= E(n)) is a sum over pairs (m, j) with j < n < m inside one segment, so it is not a
per-key column sum. It is rebuilt from O(N) vectors like a difference array:
- for a non-Global n, the pairs are P = {(m, j): j Local, j < m <= E(j)} restricted to
  j < n < m; the pairs of P with j < n are those counted by key (column sums of P, cumulated
  over the segment up to n-1) minus those with m <= n (row sums of P, cumulated up to n);
  the dK/dV kernel emits the column sums of P, the dQ kernel the row sums;
- for a Global n, its segment's Local keys all have E(j) = n, so m runs over (E(j), E(E(j))]:
  one more per-key column sum, cumulated over the segment.
The cumulations are segment-wise cumsums in torch (`bounds.collected_term`), O(N). At chunk
level the same sums are taken over token pairs (P then holds pairs whose query lies in a later
chunk than the key), grouped per chunk, and the chunk rule is applied to the per-chunk sums;
p~ = clamp(exp(s - LSE_masked), 0, 1) and every type gradient is the mean over the chunk's
tokens, as in the reference. The regulariser (docs/METHOD.md, "Regulariser") is added to the type
gradients in torch.
Extra memory beyond FlashAttention-2: two LSE rows and one row-sum per query head, five per-key
sums per KV head, all O(B H N) fp32.
Triton is imported lazily, so importing this module is cheap and works without a GPU.
"""

from __future__ import annotations

import math

import torch

from nats_model.kernels.bounds import KeyBounds, collected_term, key_bounds


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, types_onehot: torch.Tensor,
                  chunk_size: int | None) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.shape != k.shape:
        raise ValueError(f"expected q (B,Hq,N,hd), k and v (B,Hkv,N,hd); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    bsz, hq, n, hd = q.shape
    if k.shape[0] != bsz or k.shape[2] != n or k.shape[3] != hd or hq % k.shape[1] != 0:
        raise ValueError(f"k {tuple(k.shape)} does not fit q {tuple(q.shape)}: need same B, N, hd and Hq % Hkv == 0")
    if not 16 <= hd <= 256:
        raise ValueError(f"head dim must be in 16..256, got {hd}")
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share one dtype of float32/float16/bfloat16, got {q.dtype}, {k.dtype}, "
                        f"{v.dtype}")
    n_units = n if chunk_size is None else -(-n // int(chunk_size))
    if tuple(types_onehot.shape) != (bsz, k.shape[1], n_units, 3):
        raise ValueError(f"types_onehot must be (B, Hkv, {'N' if chunk_size is None else 'ceil(N/C)'}, 3) = "
                         f"{(bsz, k.shape[1], n_units, 3)}, got {tuple(types_onehot.shape)}")


def _regulariser(kb: KeyBounds, n_tokens: int) -> torch.Tensor:
    """Section 4 per query head and token: (B, Hkv, N, 3), (N-n)/N on Global, (E(n)-n)/N on Local.

    For a Local token loc_end is e(n), the last query that sees it (chunk level: the last token
    of the next Global chunk); nothing on SW tokens.
    """
    pos = torch.arange(n_tokens, device=kb.types.device, dtype=torch.float32)
    reg = torch.zeros(*kb.types.shape, 3, device=kb.types.device, dtype=torch.float32)
    reg[..., 0] = torch.where(kb.types == 0, (n_tokens - pos) / n_tokens, 0.0)
    reg[..., 1] = torch.where(kb.types == 1, (kb.loc_end.float() - pos) / n_tokens, 0.0)
    return reg


def _per_unit(x: torch.Tensor, kb: KeyBounds, dim: int = -1) -> torch.Tensor:
    """Sum token values over each unit: (..., N, ...) -> (..., U, ...) along `dim`."""
    if kb.chunk_size == 1:
        return x
    shape = list(x.shape)
    shape[dim] = kb.unit_types.shape[-1]
    out = torch.zeros(shape, device=x.device, dtype=x.dtype)
    return out.index_add_(dim, kb.unit_of, x)


class NatsAttentionTriton(torch.autograd.Function):
    """NAtS attention with Triton forward/backward; see the module docstring for the scheme."""

    @staticmethod
    def forward(ctx, q, k, v, types_onehot, window, lam, chunk_size, scale, block):  # noqa: D102
        from nats_model.kernels.nats_attn_fwd import default_block, nats_forward, with_block_fallback

        n = q.shape[2]
        unit_types = types_onehot.detach().argmax(-1)  # (B, Hkv, U) hard types
        kb = key_bounds(unit_types, n, window, chunk_size)
        token_level = chunk_size is None
        type_grad = types_onehot.requires_grad  # without it the backward skips the type-gradient sums
        full_lse = token_level and type_grad  # p~ of the token level needs the unmasked normaliser
        q_c, k_c, v_c = q.contiguous(), k.contiguous(), v.contiguous()
        block = block or default_block(q, q.shape[-1])
        out, lse, lse_full, _ = with_block_fallback(
            lambda bl: nats_forward(q_c, k_c, v_c, kb.types, kb.loc_end, kb.sw_end, scale,
                                    full_lse=full_lse, block_m=bl, block_n=bl), block)
        ctx.save_for_backward(q_c, k_c, v_c, out, lse, lse_full if full_lse else lse)
        ctx.kb, ctx.scale, ctx.lam, ctx.block, ctx.token_level = kb, scale, lam, block, token_level
        ctx.chunk_size, ctx.onehot_dtype = chunk_size, types_onehot.dtype
        return out

    @staticmethod
    def backward(ctx, d_out):  # noqa: D102
        from nats_model.kernels.nats_attn_bwd import nats_backward
        from nats_model.kernels.nats_attn_fwd import with_block_fallback

        q, k, v, out, lse, lse_t = ctx.saved_tensors
        kb: KeyBounds = ctx.kb
        bsz, hq, n, _ = q.shape
        hkv = k.shape[1]
        do = d_out.contiguous()
        delta = (do.float() * out.float()).sum(-1)  # (B, Hq, N) D[m] = rowsum(dO * O)
        bounds = (kb.types, kb.loc_end, kb.loc_end2, kb.sw_end, kb.strict_start)
        type_grad = ctx.needs_input_grad[3]
        dq, dk, dv, cols, row = with_block_fallback(
            lambda bl: nats_backward(q, k, v, do, lse, lse_t, delta, bounds, ctx.scale, clamp=not ctx.token_level,
                                     type_grad=type_grad, block_m=bl, block_n=bl), ctx.block)
        if not type_grad:
            return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None, None
        row_kv = row.view(bsz, hkv, hq // hkv, n).sum(2)  # (B, Hkv, N) summed over the GQA group
        col_g, col_l, col_s, col_strict, col_next = (_per_unit(c, kb) for c in cols)
        c_term = collected_term(kb.unit_types, col_strict, _per_unit(row_kv, kb), col_next)
        d_types = torch.stack([col_g - c_term, col_l, col_s], dim=-1)  # (B, Hkv, U, 3) sums over tokens
        if ctx.lam:
            reg = _per_unit(_regulariser(kb, n), kb, dim=-2)  # (B, Hkv, U, 3)
            d_types = d_types + ctx.lam * (hq // hkv) * reg
        if kb.chunk_size > 1:  # chunk level: the mean over the chunk's tokens (the last may be shorter)
            counts = torch.bincount(kb.unit_of, minlength=kb.unit_types.shape[-1]).to(d_types.dtype)
            d_types = d_types / counts[:, None]
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), d_types.to(ctx.onehot_dtype),
                None, None, None, None, None)


def nats_attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, types_onehot: torch.Tensor, *, window: int,
    lam: float = 0.0, chunk_size: int | None = None, scale: float | None = None, block: int | None = None,
) -> torch.Tensor:
    """NAtS attention on the Triton kernels: same contract as `nats_model.attention.nats_attention`.

    q (B,Hq,N,hd), k/v (B,Hkv,N,hd) (hd in 16..256, fp32/fp16/bf16), types_onehot (B,Hkv,N,3)
    or (B,Hkv,ceil(N/C),3) with `chunk_size=C`, hard one-hot in the order (G, L, S). Returns out
    (B,Hq,N,hd); its backward gives dq, dk, dv and the type gradients (docs/METHOD.md, "Mask gradient").
    Runs on CUDA, or on the CPU under TRITON_INTERPRET=1 (set before triton is imported).
    `block` (query = key block) defaults by head dim and dtype, halved on OutOfResources.
    """
    _check_inputs(q, k, v, types_onehot, chunk_size)
    if block not in (None, 16, 32, 64, 128):
        raise ValueError(f"block must be one of 16, 32, 64, 128, got {block}")
    sc = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return NatsAttentionTriton.apply(q, k, v, types_onehot, int(window), float(lam), chunk_size, sc, block)
