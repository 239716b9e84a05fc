"""NAtS attention, the dense reference: causal softmax attention under the token-type mask, with the
paper's gradient.

Forward: key n is removed for query m when the visibility rule (nats_model.mask) says so. The
mask is built from the one-hot types h(n) = (h_G, h_L, h_S) as a multiplicative mask on
exp(scores), M[m,n] = h_G(n) + h_L(n) [m <= E(n)] + h_S(n) [m <= n+W] (m >= n), with E(n) the
first Global key strictly after n; for hard one-hots this is exactly `mask.visibility`.

Backward: dq, dk, dv are the exact gradients of that attention. The type gradient is defined
explicitly (docs/METHOD.md, "Mask gradient") because E(n) comes from a cumulative max that
autograd cannot differentiate. For every causal pair, masked-out ones included, dM[m,n] = p~[m,n] (dP[m,n] -
D[m]) is the sensitivity of the loss to letting query m see key n (dP = dO V^T, D = rowsum(dO * O)).
Each type of key n collects dM over the queries it would make the key visible to: SW the window
n..n+W, Local the segment n..E(n), Global every later query. Being Global has one more effect
autograd cannot see: a Global key ends the segment of the Local keys before it (back to the
previous Global key), so they lose the queries after n up to E(n). That lost mass is the
"collected term" C(n), subtracted from dh_G(n). Everything is the straight-through linearisation
of M as a multilinear function of the types, [m <= E(j)] = prod_{j<g<m} (1 - h_G(g)); with the
exact (masked) normaliser for p~ it is the exact gradient of that extension (tests check it).

p~ follows the spec: at token level the probability under the UNMASKED causal normaliser,
exp(s - LSE_causal); at chunk level clamp(exp(s - LSE_masked), 0, 1). Chunk level: a chunk's
type covers all its tokens; its region sums, collected term and regulariser are the MEAN over
the chunk's tokens of the token-level quantities (so C = 1 gives the token rule; the last,
possibly shorter chunk averages over the tokens it has). Regions at chunk level: SW stays a
token window n..n+W; Local reaches the last token of the next Global chunk; the collected term
of chunk c is the loss of the queries after c's last token, up to the end of the next Global
chunk, by the Local chunks between the previous Global chunk and c.

Sparsity regulariser (docs/METHOD.md, "Regulariser"), added in the backward, per query head and
summed over the GQA group (i.e. times Hq/Hkv): dh_G(n) += lam (N-n)/N on Global keys, dh_L(n) += lam
(e(n)-n)/N on Local keys (e(n) the last query that sees n), nothing on SW keys; N = number of tokens.

This dense reference holds O(N^2) per head and stays the oracle; `nats_model.attention.nats_attention`
(`nats_model.attention.dispatch`) uses the Triton kernel on CUDA and the block-wise Function of
`nats_model.attention.blockwise` on the CPU.
"""

from __future__ import annotations

import torch

from nats_model.attention.contract import check_inputs
from nats_model.mask import GLOBAL, LOCAL, next_global_after, previous_global_before


def _layout(types_onehot: torch.Tensor, n: int, c: int) -> dict[str, torch.Tensor]:
    """Index bookkeeping shared by forward and backward; c = chunk size (1 at token level).

    Per token (B, Hkv, N): `h` (B, Hkv, N, 3) the one-hot of its chunk, `ids` its type id,
    `l_end` the last query it reaches as a Local key (last token of the next Global chunk),
    `w_local` 1/|chunk| on Local tokens else 0. Per chunk (B, Hkv, Nc): `c_end` own last token,
    `E_end` last token of the next Global chunk, `prev_end` last token of the previous Global
    chunk (-1 if none), `start` first token. `count` (Nc,) tokens per chunk.
    """
    dev = types_onehot.device
    nc = types_onehot.shape[-2]
    ids_c = types_onehot.argmax(-1)  # (B, Hkv, Nc)
    cidx = torch.arange(nc, device=dev)
    last_tok = ((cidx + 1) * c - 1).clamp(max=n - 1)  # (Nc,) last token of each chunk
    e_next = next_global_after(ids_c)  # (B, Hkv, Nc) chunk index
    e_prev = previous_global_before(ids_c)  # (B, Hkv, Nc), -1 if none
    tok_chunk = torch.arange(n, device=dev) // c  # (N,)
    count = torch.bincount(tok_chunk, minlength=nc)  # (Nc,)
    E_end = last_tok[e_next]  # (B, Hkv, Nc)
    ids = ids_c.index_select(-1, tok_chunk)  # (B, Hkv, N)
    return {
        "chunk": tok_chunk,
        "count": count,
        "h": types_onehot.index_select(-2, tok_chunk),  # (B, Hkv, N, 3)
        "ids": ids,
        "l_end": E_end.index_select(-1, tok_chunk),  # (B, Hkv, N)
        "w_local": (ids == LOCAL).double() / count[tok_chunk],  # (B, Hkv, N) float64
        "c_end": last_tok.expand_as(E_end),
        "E_end": E_end,
        "prev_end": torch.where(e_prev >= 0, (e_prev + 1) * c - 1, torch.full_like(e_prev, -1)),
        "start": (cidx * c).expand_as(E_end),
    }


def _log_mask(lay: dict[str, torch.Tensor], n: int, window: int, dtype) -> torch.Tensor:
    """log M (B, Hkv, N, N), query x key, from the per-token one-hot (M of docs/METHOD.md, "Visibility").

    M[m,n] = h_G(n) + h_L(n) [m <= l_end(n)] + h_S(n) [m <= n+W] for m >= n, else 0. For a
    one-hot whose other two entries are exactly 0 (hard, also straight-through) M is the selected
    entry on the visible pairs and 0 elsewhere, which is built from a boolean mask (fast path).
    """
    dev = lay["h"].device
    m = torch.arange(n, device=dev)[:, None]  # (N, 1) query
    j = torch.arange(n, device=dev)[None, :]  # (1, N) key
    h = lay["h"].to(dtype)  # (B, Hkv, N, 3)
    causal = j <= m
    if bool(((h != 0).sum(-1) == 1).all()):
        # the last query that sees each key: N-1 (Global), l_end (Local), n+W (SW)
        ids = lay["ids"]  # (B, Hkv, N)
        win_end = (j[0] + window).clamp(max=n - 1).expand_as(ids)
        vis_end = torch.where(ids == GLOBAL, n - 1, torch.where(ids == LOCAL, lay["l_end"], win_end))
        vis = causal & (m <= vis_end[..., None, :])  # (B, Hkv, N, N)
        log_h = h.gather(-1, ids[..., None]).log()  # (B, Hkv, N, 1), log of ~1
        return torch.where(vis, log_h.transpose(-1, -2), float("-inf"))
    in_seg = (m <= lay["l_end"][..., None, :]).to(dtype)  # (B, Hkv, N, N)
    in_win = (m <= j + window).to(dtype)  # (N, N)
    mask = h[..., None, :, 0] + h[..., None, :, 1] * in_seg + h[..., None, :, 2] * in_win
    return (mask * causal.to(dtype)).log()


def _scores(q, k, scale, hkv, group):
    """s (B, Hkv, G, N, N) = scale q k^T, q viewed as (B, Hkv, G, N, hd)."""
    b, _, n, hd = q.shape
    q5 = (q * scale).reshape(b, hkv, group, n, hd)
    return torch.matmul(q5, k[:, :, None].transpose(-1, -2))


def _chunk_mean(x: torch.Tensor, c: int, count: torch.Tensor) -> torch.Tensor:
    """(..., N) -> (..., Nc): mean over each chunk's tokens (the last chunk may be shorter)."""
    nc = count.shape[0]
    xp = torch.nn.functional.pad(x, (0, nc * c - x.shape[-1]))
    return xp.reshape(*x.shape[:-1], nc, c).sum(-1) / count.to(x.dtype)


def _type_gradients(d_mask, lay, n, window, c, lam, group) -> torch.Tensor:
    """(dh_G, dh_L, dh_S) per chunk (B, Hkv, Nc, 3) from dM (B, Hkv, N, N) summed over the group.

    Region sums of key n over queries n..r are column prefix sums read at row r; the collected
    term is a rectangle (rows, Local key columns) read from a 2-D prefix sum in float64.
    """
    dtype = d_mask.dtype
    col = d_mask.cumsum(-2)  # (B, Hkv, N, N): col[r, n] = sum_{m <= r} dM[m, n] (zero above diagonal)

    def at_row(rows: torch.Tensor) -> torch.Tensor:  # col[rows[n], n] for (B, Hkv, N) rows
        return col.gather(-2, rows[..., None, :]).squeeze(-2)

    pos = torch.arange(n, device=d_mask.device)
    r_all = col[..., n - 1, :]  # queries n..N-1
    r_win = at_row((pos + window).clamp(max=n - 1).expand_as(lay["l_end"]))  # n..n+W
    r_seg = at_row(lay["l_end"])  # n..end of the next Global chunk
    # collected term of chunk c: rows (c_end, E_end] x Local key tokens (prev_end, start)
    area = torch.nn.functional.pad((col.double() * lay["w_local"][..., None, :]).cumsum(-1), (1, 0))
    area = area.flatten(-2)  # (B, Hkv, N*(N+1)): area[r*(N+1) + t+1] = sum_{m<=r, j<=t} A[m, j]

    def corner(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return area.gather(-1, rows * (n + 1) + cols + 1)

    hi, lo = lay["start"] - 1, lay["prev_end"]
    collected = (
        corner(lay["E_end"], hi) - corner(lay["c_end"], hi) - corner(lay["E_end"], lo) + corner(lay["c_end"], lo)
    ).to(dtype)  # (B, Hkv, Nc)
    count = lay["count"]
    dh_g = _chunk_mean(r_all, c, count) - collected
    dh_l = _chunk_mean(r_seg, c, count)
    dh_s = _chunk_mean(r_win, c, count)
    if lam:
        fpos = pos.to(dtype)
        reg_g = (lay["ids"] == GLOBAL).to(dtype) * (n - fpos) / n
        reg_l = (lay["ids"] == LOCAL).to(dtype) * (lay["l_end"].to(dtype) - fpos) / n
        dh_g = dh_g + lam * group * _chunk_mean(reg_g, c, count)
        dh_l = dh_l + lam * group * _chunk_mean(reg_l, c, count)
    return torch.stack([dh_g, dh_l, dh_s], dim=-1)


class NatsAttentionFunction(torch.autograd.Function):
    """Dense NAtS attention (reference): masked causal softmax forward, the paper's backward.

    apply(q, k, v, types_onehot, window, lam, chunk_size, scale, p_tilde). Works on any device,
    holds a few (B, Hq, N, N) tensors; computes in float64 for float64 inputs, else float32.
    Returns exact dq, dk, dv and the type gradient for `types_onehot` (docs/METHOD.md, "Mask gradient").
    """

    @staticmethod
    def forward(ctx, q, k, v, types_onehot, window, lam, chunk_size, scale, p_tilde):
        # the reference computes in float32/float64 whatever autocast region it is called from
        with torch.autocast(device_type=q.device.type, enabled=False):
            return NatsAttentionFunction._forward(ctx, q, k, v, types_onehot, window, lam, chunk_size, scale, p_tilde)

    @staticmethod
    def backward(ctx, d_out):
        with torch.autocast(device_type=d_out.device.type, enabled=False):
            return NatsAttentionFunction._backward(ctx, d_out)

    @staticmethod
    def _forward(ctx, q, k, v, types_onehot, window, lam, chunk_size, scale, p_tilde):
        b, hq, n, hd = q.shape
        hkv = k.shape[1]
        group = hq // hkv
        cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
        c = 1 if chunk_size is None else int(chunk_size)
        lay = _layout(types_onehot.detach(), n, c)
        log_mask = _log_mask(lay, n, window, cdt).reshape(b * hkv, 1, n, n)  # shared by the group
        # fused softmax attention with an additive mask; the group's query heads see one KV head
        out = torch.nn.functional.scaled_dot_product_attention(
            q.to(cdt).reshape(b * hkv, group, n, hd),
            k.to(cdt).reshape(b * hkv, 1, n, hd),
            v.to(cdt).reshape(b * hkv, 1, n, hd),
            attn_mask=log_mask,
            scale=scale,
            enable_gqa=group > 1,
        ).reshape(b, hq, n, hd)  # (B, Hq, N, hd)
        ctx.save_for_backward(q, k, v, types_onehot, out)
        ctx.cfg = (int(window), float(lam), c, chunk_size is None, float(scale), p_tilde)
        return out.to(q.dtype)

    @staticmethod
    def _backward(ctx, d_out):
        q, k, v, types_onehot, out = ctx.saved_tensors
        window, lam, c, token_level, scale, p_tilde = ctx.cfg
        b, hq, n, hd = q.shape
        hkv = k.shape[1]
        group = hq // hkv
        cdt = out.dtype
        qc, kc, vc = q.to(cdt), k.to(cdt), v.to(cdt)
        do5 = d_out.to(cdt).reshape(b, hkv, group, n, hd)  # (B, Hkv, G, N, hd)
        lay = _layout(types_onehot.detach(), n, c)
        s = _scores(qc, kc, scale, hkv, group)  # (B, Hkv, G, N, N), unmasked
        sm = s + _log_mask(lay, n, window, cdt)[:, :, None]  # masked scores
        lse = torch.logsumexp(sm, dim=-1, keepdim=True)  # (B, Hkv, G, N, 1), masked normaliser
        want_types = ctx.needs_input_grad[3]
        if want_types:  # p~ from the unmasked scores, in place of s
            causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
            if p_tilde is None:
                p_tilde = "unmasked" if token_level else "masked_clamped"
            if p_tilde == "unmasked":
                pt = s.masked_fill_(~causal, float("-inf"))
                pt = pt.sub_(torch.logsumexp(pt, dim=-1, keepdim=True)).exp_()
            elif p_tilde == "masked_clamped":
                pt = s.sub_(lse).clamp_(max=0.0).exp_().masked_fill_(~causal, 0.0)
            else:  # "masked": the exact derivative, for tests
                pt = s.sub_(lse).exp_().masked_fill_(~causal, 0.0)
        del s
        p = sm.sub_(lse).exp_()  # masked probabilities P, in place of sm
        dv = torch.matmul(p.transpose(-1, -2), do5).sum(2)  # (B, Hkv, N, hd)
        dp = torch.matmul(do5, vc[:, :, None].transpose(-1, -2))  # (B, Hkv, G, N, N)
        delta = (do5 * out.reshape(b, hkv, group, n, hd)).sum(-1, keepdim=True)  # D[m]: (B, Hkv, G, N, 1)
        dp = dp.sub_(delta)  # dP - D
        ds = p.mul_(dp)  # dS = P (dP - D), in place of p
        dq = (torch.matmul(ds, kc[:, :, None]) * scale).reshape(b, hq, n, hd)
        dk = (torch.matmul(ds.transpose(-1, -2), qc.reshape(b, hkv, group, n, hd)) * scale).sum(2)
        del p, ds, sm
        d_types = None
        if want_types:
            d_mask = pt.mul_(dp).sum(2)  # dM (B, Hkv, N, N), summed over the GQA group
            del pt, dp
            d_types = _type_gradients(d_mask, lay, n, window, c, lam, group).to(types_onehot.dtype)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), d_types, None, None, None, None, None


def nats_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    types_onehot: torch.Tensor,
    *,
    window: int,
    lam: float = 0.0,
    chunk_size: int | None = None,
    scale: float | None = None,
    p_tilde: str | None = None,
) -> torch.Tensor:
    """NAtS attention by the dense reference autograd Function; out (B, Hq, N, hd).

    q (B, Hq, N, hd); k, v (B, Hkv, N, hd); types_onehot (B, Hkv, N, 3) in (G, L, S) order, or
    (B, Hkv, ceil(N/C), 3) with chunk_size=C. `p_tilde` overrides the normaliser of the mask
    gradient ("unmasked", "masked_clamped", "masked"); None = the spec's choice for the level.
    """
    p_mode = p_tilde if p_tilde is not None else ("unmasked" if chunk_size is None else "masked_clamped")
    check_inputs(q, k, v, types_onehot, window, chunk_size, p_mode)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    return NatsAttentionFunction.apply(q, k, v, types_onehot, window, lam, chunk_size, scale, p_tilde)
