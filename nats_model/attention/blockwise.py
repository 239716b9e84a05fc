"""Block-wise NAtS attention for the CPU: the reference's exact gradient in O(N x block) memory.

Same contract and same numbers as `nats_model.attention.reference.NatsAttentionFunction` (the dense
oracle) for hard one-hot types, but no tensor is ever N x N per (batch, head): the work is done
one block of `block` query rows at a time against the keys 0..m1-1 those rows can see causally.

Forward: per query block one fused SDPA call (`_scaled_dot_product_flash_attention_for_cpu`,
which also returns the log-sum-exp) with an additive mask built from O(N) per-key bounds
(`kernels.bounds.key_bounds`: the last query that sees each key). The GQA group's query heads
ride as extra rows over their shared KV head, so the mask is built once per KV head.
Saves out and the masked LSE (B, Hq, N).

Backward, per query block (rows m0..m1-1 of all G heads of a KV head, keys 0..m1-1):
- s - LSE_masked = [scale q, -LSE] . [k, 1] and dP - D = [dO, -D] . [v, 1] come out of one
  matmul each (augmented operands), shared by dq/dk/dv and by the type gradient;
- e = exp(s - LSE_masked) is P on the visible pairs; the unmasked causal LSE of token-level p~
  comes from the block itself (a row sees all its causal keys inside the block, no online
  softmax): z = rowsum(e) = exp(LSE_causal - LSE_masked), p~ = e / z; the per-row factors ride
  in dO's rows before dP and in the small (rows x hd) matmul operands, never on a tile;
- at chunk level p~ = clamp(exp(s - LSE_masked), 0, 1), = P on the visible pairs;
- dM = p~ (dP - D) is summed over the GQA group, then a cumulative sum over the block's rows
  gives, per key n, the block's share of every region sum sum_{m <= r} dM[m, n] read at the
  region ends r (N-1, min(n+W, N-1), E(n), E(E(n)), the key's own chunk end), and a cumulative
  sum over Local keys gives the per-row sums of the collected term's pairs; the O(N) assembly of
  the type gradients (collected term by segment-wise cumsums) is `bounds.collected_term`, as
  in the Triton kernels (nats_model/kernels/nats_attn.py explains the decomposition).
Extra memory: a few (B, Hq, block, N) tiles plus O(B H N) vectors.

When a hidden key outscores a row's visible keys by more than ~88 nats (float32), exp(s - LSE)
overflows; such a token-level block is recomputed with max-shifted exponentials (exact, slower).
"""

from __future__ import annotations

import torch

from nats_model.attention.contract import check_inputs
from nats_model.kernels.bounds import collected_term, key_bounds, prev_global_strict

DEFAULT_BLOCK = 64  # measured: 64 ~ 32 < 128 < 256 at N=1024, B=8, 4 heads of 32 (2 threads)
_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def _gather_rows(cs: torch.Tensor, rows: torch.Tensor, m0: int) -> torch.Tensor:
    """Prefix sums of a block read at absolute rows: cs (B*Hkv, bm, K) cumulative over the block's
    rows, rows (B*Hkv, R, K) absolute row indices -> (B*Hkv, R, K), the sum over block rows <= row
    (0 for rows before the block, the block total for rows after it)."""
    idx = rows - m0
    got = cs.gather(-2, idx.clamp(0, cs.shape[-2] - 1))
    return got.masked_fill_(idx < 0, 0.0)


class NatsAttentionBlockwise(torch.autograd.Function):
    """NAtS attention, forward and backward block-wise over query rows (see the module docstring).

    apply(q, k, v, types_onehot, window, lam, chunk_size, scale, block). Computes in float64 for
    float64 inputs, else float32 (also under autocast); returns dq, dk, dv and the type gradient
    of docs/METHOD.md ("Mask gradient", "Regulariser") for `types_onehot` (its argmax are the types;
    hard one-hots).
    """

    @staticmethod
    def forward(ctx, q, k, v, types_onehot, window, lam, chunk_size, scale, block):  # noqa: D102
        with torch.autocast(device_type=q.device.type, enabled=False):
            return NatsAttentionBlockwise._forward(ctx, q, k, v, types_onehot, window, lam, chunk_size, scale, block)

    @staticmethod
    def backward(ctx, d_out):  # noqa: D102
        with torch.autocast(device_type=d_out.device.type, enabled=False):
            return NatsAttentionBlockwise._backward(ctx, d_out)

    @staticmethod
    def _forward(ctx, q, k, v, types_onehot, window, lam, chunk_size, scale, block):
        b, hq, n, hd = q.shape
        hkv = k.shape[1]
        g = hq // hkv
        cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
        kb = key_bounds(types_onehot.detach().argmax(-1), n, int(window), chunk_size)
        ve = kb.vis_end(n).reshape(b * hkv, 1, 1, n)  # the last query that sees each key
        q5 = q.to(cdt).reshape(b * hkv, g, n, hd)  # the group's heads share one KV head
        kc = k.to(cdt).reshape(b * hkv, 1, n, hd)
        vc = v.to(cdt).reshape(b * hkv, 1, n, hd)
        out = torch.empty(b * hkv, g, n, hd, dtype=cdt, device=q.device)
        lse = torch.empty(b * hkv, g, n, dtype=cdt, device=q.device)
        keys = torch.arange(n, device=q.device)
        tri = torch.ones(block, block, dtype=torch.bool, device=q.device).triu_(1)  # above the diagonal
        for m0 in range(0, n, block):
            m1 = min(n, m0 + block)
            rows = keys[m0:m1, None]  # (bm, 1)
            # additive mask (B*Hkv, 1, bm, m1), shared by the group: -inf where the type rule hides
            add = torch.where(rows > ve[..., :m1], float("-inf"), 0.0).to(cdt)
            add[..., m0:m1].masked_fill_(tri[: m1 - m0, : m1 - m0], float("-inf"))  # causal
            kk, vv = kc[:, :, :m1].expand(-1, g, -1, -1), vc[:, :, :m1].expand(-1, g, -1, -1)
            o, lb = _FLASH(q5[:, :, m0:m1], kk, vv, attn_mask=add, scale=scale)  # (B*Hkv, G, bm, hd), (.., bm)
            out[:, :, m0:m1] = o
            lse[:, :, m0:m1] = lb
        out = out.reshape(b, hq, n, hd)
        ctx.save_for_backward(q, k, v, types_onehot, out, lse)
        ctx.cfg = (int(window), float(lam), chunk_size, float(scale), int(block))
        return out.to(q.dtype)

    @staticmethod
    def _backward(ctx, d_out):
        q, k, v, types_onehot, out, lse = ctx.saved_tensors
        window, lam, chunk_size, scale, block = ctx.cfg
        b, hq, n, hd = q.shape
        hkv = k.shape[1]
        g = hq // hkv
        bh = b * hkv
        cdt = out.dtype
        dev = q.device
        want_types = ctx.needs_input_grad[3]
        token_level = chunk_size is None
        c = 1 if token_level else int(chunk_size)
        kb = key_bounds(types_onehot.detach().argmax(-1), n, window, chunk_size)
        ve = kb.vis_end(n).reshape(bh, 1, 1, n)
        q5 = q.to(cdt).reshape(bh, g, n, hd)
        kc = k.to(cdt).reshape(bh, n, hd)
        ones = torch.ones(bh, n, 1, dtype=cdt, device=dev)
        # augmented operands: [q scale, -LSE] . [k, 1] = s - LSE and [dO, -D] . [v, 1] = dP - D in one matmul each
        k_aug = torch.cat([kc, ones], -1)  # (B*Hkv, N, hd+1)
        v_aug = torch.cat([v.to(cdt).reshape(bh, n, hd), ones], -1)
        do5 = d_out.to(cdt).reshape(bh, g, n, hd)
        lse = lse.to(cdt)[..., None]  # (B*Hkv, G, N, 1)
        delta = (do5 * out.reshape(bh, g, n, hd)).sum(-1, keepdim=True)  # D[m] = rowsum(dO * O)
        q_aug = torch.cat([q5 * scale, -lse], -1)  # (B*Hkv, G, N, hd+1)
        dq = torch.empty(bh, g, n, hd, dtype=cdt, device=dev)
        dk = torch.zeros(bh, n, hd, dtype=cdt, device=dev)
        dv = torch.zeros(bh, n, hd, dtype=cdt, device=dev)
        keys = torch.arange(n, device=dev)
        if want_types:
            # per key (B*Hkv, 4, N): the region ends whose prefix sums the type gradient reads
            ends = torch.stack([kb.sw_end, kb.loc_end, kb.loc_end2, kb.strict_start], dim=2).long().reshape(bh, 4, n)
            # every end is non-decreasing in n, so the keys a block's rows can reach form a suffix
            first_key = torch.searchsorted(ends.amax(1).amax(0).contiguous(), keys).tolist()  # by row m0
            local = (kb.types == 1).to(cdt).reshape(bh, 1, n)
            col = torch.zeros(bh, 5, n, dtype=torch.float64, device=dev)  # all, S, L, L2, own-chunk prefix sums
            # per query row the collected pairs are its Local keys j with strict_start[j] < m <= loc_end[j]:
            # those of the units after the last Global unit strictly before m's unit, up to m's unit
            prev_g = prev_global_strict(kb.unit_types).index_select(-1, kb.unit_of)  # (B, Hkv, N) unit
            k_lo = ((prev_g + 1) * c - 1).reshape(bh, n, 1)  # the key before the first such key
            k_hi = (kb.unit_of * c - 1).expand(b, hkv, n).reshape(bh, n, 1)  # the last such key
            row_strict = torch.zeros(bh, n, dtype=torch.float64, device=dev)
        tri = torch.ones(block, block, dtype=torch.bool, device=dev).triu_(1)
        for m0 in range(0, n, block):
            m1 = min(n, m0 + block)
            bm = m1 - m0
            rows = keys[m0:m1, None]  # (bm, 1)
            qa = q_aug[:, :, m0:m1].reshape(bh, g * bm, hd + 1)
            dob = do5[:, :, m0:m1]  # (B*Hkv, G, bm, hd)
            d_b = delta[:, :, m0:m1]  # (B*Hkv, G, bm, 1)
            hidden = rows > ve[..., :m1]  # (B*Hkv, 1, bm, m1) masked-out by the type rule
            # x = s - LSE_masked (B*Hkv, G, bm, m1), the group's rows against the shared keys
            x = torch.matmul(qa, k_aug[:, :m1].transpose(1, 2)).view(bh, g, bm, m1)
            x[..., m0:m1].masked_fill_(tri[:bm, :bm], float("-inf"))  # causal: only the diagonal tile
            e = x.exp_()  # exp(s - LSE): P on visible pairs, 0 above the diagonal
            if token_level:
                z = e.sum(-1, keepdim=True)  # exp(LSE_causal - LSE_masked): p~ = e / z
                if bool(torch.isinf(z).any()):  # exp overflowed: a hidden key outscores the visible ones
                    dm, ds, p_blk, ds_fac = _safe_token_tile(qa, k_aug[:, :m1], v_aug[:, :m1], dob, d_b, hidden,
                                                             tri[:bm, :bm], m0)
                else:
                    a = 1.0 / z
                    # [a dO, -a D] . [v, 1] = a (dP - D): the unmasked normaliser rides in dO's rows
                    dpa = torch.cat([dob * a, -a * d_b], -1).reshape(bh, g * bm, hd + 1)
                    dm = torch.matmul(dpa, v_aug[:, :m1].transpose(1, 2)).view(bh, g, bm, m1).mul_(e)  # dM
                    ds, p_blk, ds_fac = None, None, z  # dS = z dM on visible pairs
            else:
                e = e.clamp_(max=1.0)  # p~ = clamp(exp(s - LSE_masked), 0, 1), = P on visible pairs
                dpa = torch.cat([dob, -d_b], -1).reshape(bh, g * bm, hd + 1)
                dm = torch.matmul(dpa, v_aug[:, :m1].transpose(1, 2)).view(bh, g, bm, m1).mul_(e)  # dM
                ds, p_blk, ds_fac = None, None, None
            if want_types:
                dm_g = dm.sum(1) if g > 1 else dm[:, 0]  # (B*Hkv, bm, m1) summed over the group
                col[:, 0, :m1] += dm_g.sum(-2)
                lo_key = min(first_key[m0], m1)
                if lo_key < m1:  # keys with a region end inside or after this block
                    cs = dm_g[..., lo_key:].cumsum(-2)  # prefix over the block's rows
                    col[:, 1:, lo_key:m1] += _gather_rows(cs, ends[:, :, lo_key:m1], m0)
                lo_row = max(int(k_lo[:, m0:m1].min()), -1) + 1  # first key any row's pairs start at
                if lo_row < m1:
                    rs = (dm_g[..., lo_row:] * local[..., lo_row:m1]).cumsum(-1)  # prefix over Local keys
                    row_strict[:, m0:m1] += (_gather_keys(rs, k_hi[:, m0:m1] - lo_row)
                                             - _gather_keys(rs, k_lo[:, m0:m1] - lo_row))
            if ds is None:
                vis = (~hidden).to(cdt)  # a multiply is cheaper than a broadcast masked_fill
                ds = dm.mul_(vis)  # dS / ds_fac (dM and e are finite here)
                p_blk = e.mul_(vis)  # P
            dsf = ds.reshape(bh, g * bm, m1)
            qs = q5[:, :, m0:m1] * scale
            if ds_fac is None:
                dq[:, :, m0:m1] = torch.matmul(dsf, kc[:, :m1]).view(bh, g, bm, hd).mul_(scale)
            else:
                dq[:, :, m0:m1] = torch.matmul(dsf, kc[:, :m1]).view(bh, g, bm, hd).mul_(ds_fac * scale)
                qs = qs * ds_fac
            dk[:, :m1] += torch.matmul(dsf.transpose(1, 2), qs.reshape(bh, g * bm, hd))
            dv[:, :m1] += torch.matmul(p_blk.reshape(bh, g * bm, m1).transpose(1, 2), dob.reshape(bh, g * bm, hd))
        dq = dq.reshape(b, hq, n, hd).to(q.dtype)
        dk = dk.reshape(b, hkv, n, hd).to(k.dtype)
        dv = dv.reshape(b, hkv, n, hd).to(v.dtype)
        d_types = None
        if want_types:
            d_types = _assemble_type_grads(kb, col.reshape(b, hkv, 5, n), row_strict.reshape(b, hkv, n), n, lam, g)
            d_types = d_types.to(types_onehot.dtype)
        return dq, dk, dv, d_types, None, None, None, None, None


def _gather_keys(rs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """rs (B*Hkv, bm, K) prefix sums over keys read at idx (B*Hkv, bm, 1) (-1: empty prefix) -> (B*Hkv, bm)."""
    got = rs.gather(-1, idx.clamp(min=0))
    return got.masked_fill_(idx < 0, 0.0)[..., 0]


def _safe_token_tile(qa, k_aug, v_aug, dob, d_b, hidden, tri, m0):
    """A token-level tile whose exp(s - LSE_masked) overflows on a hidden key: max-shifted instead.

    Returns dM, dS, P (B*Hkv, G, bm, m1) and ds_fac = None (dS is exact as returned).
    """
    bh, g, bm, hd = dob.shape
    m1 = k_aug.shape[1]
    x = torch.matmul(qa, k_aug.transpose(1, 2)).view(bh, g, bm, m1)  # s - LSE_masked
    x[..., m0:m1].masked_fill_(tri, float("-inf"))
    p = x.masked_fill(hidden, float("-inf")).exp_()  # P, visible pairs only (x <= 0 there)
    rmax = x.amax(-1, keepdim=True)
    e = x.sub_(rmax).exp_()
    pt = e.div_(e.sum(-1, keepdim=True))  # p~ with the unmasked causal normaliser
    dpd = torch.matmul(torch.cat([dob, -d_b], -1).reshape(bh, g * bm, hd + 1), v_aug.transpose(1, 2)).view(bh, g, bm, m1)
    return pt * dpd, p * dpd, p, None


def _per_unit(x: torch.Tensor, unit_of: torch.Tensor, n_units: int, c: int) -> torch.Tensor:
    """Sum token values over each unit along the last dim: (..., N) -> (..., U)."""
    if c == 1:
        return x
    out = torch.zeros(*x.shape[:-1], n_units, dtype=x.dtype, device=x.device)
    return out.index_add_(-1, unit_of, x)


def _assemble_type_grads(kb, col: torch.Tensor, row_strict: torch.Tensor, n: int, lam: float, group: int) -> torch.Tensor:
    """(dh_G, dh_L, dh_S) per unit (B, Hkv, U, 3) in float64 from the per-key prefix sums.

    col (B, Hkv, 5, N): sums of dM over queries m <= N-1, <= sw_end, <= loc_end, <= loc_end2,
    <= strict_start of each key; row_strict (B, Hkv, N) the per-row sums of the collected pairs.
    """
    c = kb.chunk_size
    n_units = kb.unit_types.shape[-1]
    unit_of = kb.unit_of
    p_all, p_win, p_seg, p_seg2, p_own = col.unbind(2)
    is_local = (kb.types == 1).double()
    col_strict = (p_seg - p_own) * is_local  # Local pairs strict_start < m <= loc_end, by key
    col_next = (p_seg2 - p_seg) * is_local  # Local pairs loc_end < m <= loc_end2, by key

    def unit(x):
        return _per_unit(x, unit_of, n_units, c)

    c_term = collected_term(kb.unit_types, unit(col_strict), unit(row_strict), unit(col_next))
    d_types = torch.stack([unit(p_all) - c_term, unit(p_seg), unit(p_win)], dim=-1)  # (B, Hkv, U, 3)
    if lam:
        pos = torch.arange(n, device=col.device, dtype=torch.float64)
        reg_g = torch.where(kb.types == 0, (n - pos) / n, 0.0)
        reg_l = torch.where(kb.types == 1, (kb.loc_end.double() - pos) / n, 0.0)
        d_types[..., 0] += lam * group * unit(reg_g)
        d_types[..., 1] += lam * group * unit(reg_l)
    if c > 1:  # chunk level: the mean over the chunk's tokens (the last chunk may be shorter)
        counts = torch.bincount(unit_of, minlength=n_units).double()
        d_types = d_types / counts[:, None]
    return d_types


def nats_attention_blockwise(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    types_onehot: torch.Tensor,
    *,
    window: int,
    lam: float = 0.0,
    chunk_size: int | None = None,
    scale: float | None = None,
    block: int = DEFAULT_BLOCK,
) -> torch.Tensor:
    """NAtS attention computed block-wise (CPU): out (B, Hq, N, hd), same contract as the reference.

    q (B, Hq, N, hd); k, v (B, Hkv, N, hd); types_onehot (B, Hkv, N, 3) or (B, Hkv, ceil(N/C), 3)
    with chunk_size=C, a hard one-hot in (G, L, S) order (straight-through values allowed).
    `block`: query rows per block (memory ~ B Hq block N); any integer >= 1.
    """
    p_mode = "unmasked" if chunk_size is None else "masked_clamped"
    check_inputs(q, k, v, types_onehot, window, chunk_size, p_mode)
    if isinstance(block, bool) or int(block) != block or block < 1:
        raise ValueError(f"block must be an integer >= 1, got {block!r}")
    if scale is None:
        scale = q.shape[-1] ** -0.5
    return NatsAttentionBlockwise.apply(q, k, v, types_onehot, int(window), float(lam), chunk_size, float(scale), int(block))
