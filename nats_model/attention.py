"""NAtS attention: causal softmax attention under the token-type mask, with the paper's gradient.

Forward: key n is removed for query m when the visibility rule (nats_model.mask) says so. The
mask is built from the one-hot types h(n) = (h_G, h_L, h_S) as a multiplicative mask on
exp(scores), M[m,n] = h_G(n) + h_L(n) [m <= E(n)] + h_S(n) [m <= n+W] (m >= n), with E(n) the
first Global key strictly after n; for hard one-hots this is exactly `mask.visibility`.

Backward: dq, dk, dv are the exact gradients of that attention. The type gradient is defined
explicitly (NATS_METHOD section 3) because E(n) comes from a cumulative max that autograd cannot
differentiate. For every causal pair, masked-out ones included, dM[m,n] = p~[m,n] (dP[m,n] - D[m])
is the sensitivity of the loss to letting query m see key n (dP = dO V^T, D = rowsum(dO * O)).
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

Sparsity regulariser (section 4), added in the backward, per query head and summed over the
GQA group (i.e. times Hq/Hkv): dh_G(n) += lam (N-n)/N on Global keys, dh_L(n) += lam (e(n)-n)/N
on Local keys (e(n) the last query that sees n), nothing on SW keys; N = number of tokens.

This dense reference holds O(N^2) per head; `nats_attention` uses the Triton kernel on CUDA.
"""

from __future__ import annotations

import torch

from nats_model.mask import GLOBAL, LOCAL, chunk_count, next_global_after, previous_global_before

P_TILDE_MODES = ("unmasked", "masked_clamped", "masked")


def _check_inputs(q, k, v, types_onehot, window, chunk_size, p_tilde) -> tuple[int, int]:
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


def _layout(types_onehot: torch.Tensor, n: int, c: int) -> dict[str, torch.Tensor]:
    """Index bookkeeping shared by forward and backward; c = chunk size (1 at token level).

    Returns per token (B, Hkv, N): `chunk` index, `h` (B, Hkv, N, 3) the one-hot per token,
    `ids` type id, `l_end` last query a Local token would reach (end of the next Global chunk);
    and per chunk (B, Hkv, Nc): `ids_c`, `c_end` own last token, `E_end`, `prev_end` (last token
    of the previous Global chunk, -1 if none), `start` (first token).
    """
    dev = types_onehot.device
    nc = types_onehot.shape[-2]
    ids_c = types_onehot.argmax(-1)  # (B, Hkv, Nc)
    cidx = torch.arange(nc, device=dev)
    last_tok = ((cidx + 1) * c - 1).clamp(max=n - 1)  # (Nc,) last token of each chunk
    e_next = next_global_after(ids_c)  # (B, Hkv, Nc) chunk index
    e_prev = previous_global_before(ids_c)  # (B, Hkv, Nc), -1 if none
    tok_chunk = torch.arange(n, device=dev) // c  # (N,)
    E_end = last_tok[e_next]  # (B, Hkv, Nc)
    return {
        "chunk": tok_chunk,
        "h": types_onehot.index_select(-2, tok_chunk),  # (B, Hkv, N, 3)
        "ids": ids_c.index_select(-1, tok_chunk),  # (B, Hkv, N)
        "l_end": E_end.index_select(-1, tok_chunk),  # (B, Hkv, N)
        "ids_c": ids_c,
        "c_end": last_tok,
        "E_end": E_end,
        "prev_end": torch.where(e_prev >= 0, (e_prev + 1) * c - 1, torch.full_like(e_prev, -1)),
        "start": cidx * c,
    }


def _mask_from_layout(lay: dict[str, torch.Tensor], n: int, window: int, dtype) -> torch.Tensor:
    """M (B, Hkv, N, N), query x key, from the per-token one-hot (section 3's formula)."""
    dev = lay["h"].device
    m = torch.arange(n, device=dev)[:, None]  # (N, 1) query
    j = torch.arange(n, device=dev)[None, :]  # (1, N) key
    h = lay["h"].to(dtype)  # (B, Hkv, N, 3)
    in_seg = (m <= lay["l_end"][..., None, :]).to(dtype)  # (B, Hkv, N, N)
    in_win = (m <= j + window).to(dtype)  # (N, N)
    mask = h[..., None, :, 0] + h[..., None, :, 1] * in_seg + h[..., None, :, 2] * in_win
    return mask * (j <= m).to(dtype)


def _scores(q, k, scale, hkv, group):
    """s (B, Hkv, G, N, N) = scale q k^T, q viewed as (B, Hkv, G, N, hd)."""
    b, _, n, hd = q.shape
    q5 = q.reshape(b, hkv, group, n, hd)
    return torch.matmul(q5, k[:, :, None].transpose(-1, -2)) * scale


def _chunk_mean(x: torch.Tensor, c: int, nc: int) -> torch.Tensor:
    """(..., N) -> (..., Nc): mean over each chunk's tokens (the last chunk may be shorter)."""
    n = x.shape[-1]
    pad = nc * c - n
    xp = torch.nn.functional.pad(x, (0, pad))
    counts = torch.full((nc,), float(c), dtype=x.dtype, device=x.device)
    counts[-1] = c - pad
    return xp.reshape(*x.shape[:-1], nc, c).sum(-1) / counts


def _type_gradients(dM, lay, n, window, c, nc, lam, group, dtype) -> torch.Tensor:
    """(dh_G, dh_L, dh_S) per chunk (B, Hkv, Nc, 3) from dM (B, Hkv, N, N) summed over the group."""
    dev = dM.device
    m = torch.arange(n, device=dev)[:, None]  # (N, 1) query
    j = torch.arange(n, device=dev)[None, :]  # (1, N) key
    # region sums per key token (dM is zero above the diagonal)
    r_all = dM.sum(-2)  # (B, Hkv, N)
    r_win = (dM * (m <= j + window).to(dtype)).sum(-2)
    r_seg = (dM * (m <= lay["l_end"][..., None, :]).to(dtype)).sum(-2)
    # collected term: A[m, t] = dM of the Local key token t, already divided by its chunk size
    counts = torch.bincount(lay["chunk"], minlength=nc).to(dtype)  # (Nc,)
    local_tok = (lay["ids"] == LOCAL).to(dtype) / counts[lay["chunk"]]  # (B, Hkv, N)
    a = dM * local_tok[..., None, :]  # (B, Hkv, N, N)
    cs = torch.nn.functional.pad(a.cumsum(-1), (1, 0))  # (B, Hkv, N, N+1), cs[..., i] = sum_{t<i}
    b, hkv = dM.shape[:2]
    hi = lay["start"].expand(b, hkv, nc)[..., None, :].expand(b, hkv, n, nc)  # tokens < start(c)
    lo = (lay["prev_end"] + 1)[..., None, :].expand(b, hkv, n, nc)  # tokens <= prev Global end
    q_lost = cs.gather(-1, hi) - cs.gather(-1, lo)  # (B, Hkv, N, Nc): Local chunks between, per row m
    rows = (m > lay["c_end"]) & (m <= lay["E_end"][..., None, :])  # (B, Hkv, N, Nc)
    collected = (q_lost * rows.to(dtype)).sum(-2)  # (B, Hkv, Nc)
    dh_g = _chunk_mean(r_all, c, nc) - collected
    dh_l = _chunk_mean(r_seg, c, nc)
    dh_s = _chunk_mean(r_win, c, nc)
    if lam:
        pos = torch.arange(n, device=dev, dtype=dtype)
        reg_g = (lay["ids"] == GLOBAL).to(dtype) * (n - pos) / n
        reg_l = (lay["ids"] == LOCAL).to(dtype) * (lay["l_end"].to(dtype) - pos) / n
        dh_g = dh_g + lam * group * _chunk_mean(reg_g, c, nc)
        dh_l = dh_l + lam * group * _chunk_mean(reg_l, c, nc)
    return torch.stack([dh_g, dh_l, dh_s], dim=-1)


class NatsAttentionFunction(torch.autograd.Function):
    """Dense NAtS attention (reference): masked causal softmax forward, the paper's backward.

    apply(q, k, v, types_onehot, window, lam, chunk_size, scale, p_tilde). Works on any device,
    holds (B, Hq, N, N) scores; computes in float64 for float64 inputs, else float32. Returns
    exact dq, dk, dv and the section 3-4 type gradient for `types_onehot`.
    """

    @staticmethod
    def forward(ctx, q, k, v, types_onehot, window, lam, chunk_size, scale, p_tilde):
        b, hq, n, hd = q.shape
        hkv = k.shape[1]
        group = hq // hkv
        cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
        c = 1 if chunk_size is None else int(chunk_size)
        qc, kc, vc = q.to(cdt), k.to(cdt), v.to(cdt)
        lay = _layout(types_onehot.detach(), n, c)
        log_mask = _mask_from_layout(lay, n, window, cdt).log()[:, :, None]  # (B, Hkv, 1, N, N)
        s = _scores(qc, kc, scale, hkv, group) + log_mask  # (B, Hkv, G, N, N)
        lse = torch.logsumexp(s, dim=-1)  # (B, Hkv, G, N)
        p = torch.exp(s - lse[..., None])
        out = torch.matmul(p, vc[:, :, None]).reshape(b, hq, n, hd)  # (B, Hq, N, hd)
        ctx.save_for_backward(q, k, v, types_onehot, out, lse)
        ctx.cfg = (int(window), float(lam), c, chunk_size is None, float(scale), p_tilde)
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, types_onehot, out, lse = ctx.saved_tensors
        window, lam, c, token_level, scale, p_tilde = ctx.cfg
        b, hq, n, hd = q.shape
        hkv = k.shape[1]
        group = hq // hkv
        cdt = out.dtype
        qc, kc, vc = q.to(cdt), k.to(cdt), v.to(cdt)
        do5 = d_out.to(cdt).reshape(b, hkv, group, n, hd)  # (B, Hkv, G, N, hd)
        o5 = out.reshape(b, hkv, group, n, hd)
        lay = _layout(types_onehot.detach(), n, c)
        mask = _mask_from_layout(lay, n, window, cdt)  # (B, Hkv, N, N)
        s = _scores(qc, kc, scale, hkv, group)  # (B, Hkv, G, N, N), unmasked
        p = mask[:, :, None] * torch.exp(s - lse[..., None])  # masked probabilities
        dv = torch.matmul(p.transpose(-1, -2), do5).sum(2)  # (B, Hkv, N, hd)
        dp = torch.matmul(do5, vc[:, :, None].transpose(-1, -2))  # (B, Hkv, G, N, N)
        delta = (do5 * o5).sum(-1, keepdim=True)  # D[m]: (B, Hkv, G, N, 1)
        ds = p * (dp - delta)
        dq = (torch.matmul(ds, kc[:, :, None]) * scale).reshape(b, hq, n, hd)
        dk = (torch.matmul(ds.transpose(-1, -2), qc.reshape(b, hkv, group, n, hd)) * scale).sum(2)
        del p, ds
        d_types = None
        if ctx.needs_input_grad[3]:
            causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
            if p_tilde is None:
                p_tilde = "unmasked" if token_level else "masked_clamped"
            if p_tilde == "unmasked":
                s_causal = s.masked_fill(~causal, float("-inf"))
                pt = torch.exp(s_causal - torch.logsumexp(s_causal, dim=-1, keepdim=True))
            elif p_tilde == "masked_clamped":
                pt = torch.exp((s - lse[..., None]).clamp(max=0.0)).masked_fill(~causal, 0.0)
            else:  # "masked": the exact derivative, for tests
                pt = torch.exp(s - lse[..., None]).masked_fill(~causal, 0.0)
            d_mask = (pt * (dp - delta)).sum(2)  # (B, Hkv, N, N), summed over the GQA group
            nc = types_onehot.shape[-2]
            d_types = _type_gradients(d_mask, lay, n, window, c, nc, lam, group, cdt).to(types_onehot.dtype)
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
    _check_inputs(q, k, v, types_onehot, window, chunk_size, p_mode)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    return NatsAttentionFunction.apply(q, k, v, types_onehot, window, lam, chunk_size, scale, p_tilde)


def _triton_impl():
    """The Triton kernel entry point if importable (CUDA builds), else None."""
    try:
        from nats_model import kernels
        fn = getattr(kernels, "nats_attention_triton", None)
        if fn is None:
            import importlib

            fn = importlib.import_module("nats_model.kernels.nats_attention_triton")
        if not callable(fn):  # a module of the same name: take its function
            fn = getattr(fn, "nats_attention_triton", None)
        return fn if callable(fn) else None
    except ImportError:
        return None


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
    """NAtS attention (see the module docstring): Triton kernel on CUDA when available, else the reference."""
    if q.is_cuda:
        fn = _triton_impl()
        if fn is not None:
            return fn(q, k, v, types_onehot, window=window, lam=lam, chunk_size=chunk_size, scale=scale)
    return nats_attention_reference(q, k, v, types_onehot, window=window, lam=lam, chunk_size=chunk_size, scale=scale)
