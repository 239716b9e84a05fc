"""NAtS attention: forward, exact dq/dk/dv, and the type gradients of docs/METHOD.md.

The type gradients are checked against slow double loops over (m, n) written here from the
formulas of docs/METHOD.md ("Mask gradient", "Regulariser"), independently of nats_model.attention.
"""

import math

import pytest
import torch

from nats_model.attention import nats_attention, nats_attention_reference
from nats_model.mask import chunk_visibility, visibility

F64 = torch.float64


def make_inputs(seed, b, hq, hkv, n, hd, n_types, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, n, hd, generator=g, dtype=dtype)
    k = torch.randn(b, hkv, n, hd, generator=g, dtype=dtype)
    v = torch.randn(b, hkv, n, hd, generator=g, dtype=dtype)
    types = torch.randint(0, 3, (b, hkv, n_types), generator=g)
    types[..., 0] = 0
    types[..., -1] = 0
    up = torch.randn(b, hq, n, hd, generator=g, dtype=dtype)  # upstream gradient dO
    return q, k, v, types, up


def onehot(types, dtype=F64):
    return torch.nn.functional.one_hot(types, 3).to(dtype).requires_grad_()


def run_reference(q, k, v, types, up, **kw):
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    h = onehot(types)
    out = nats_attention_reference(q, k, v, h, **kw)
    (out * up).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad, h.grad


def dense_masked(q, k, v, vis, scale):
    """Plain masked softmax attention, GQA by repeating KV heads; vis (B, Hkv, N, N)."""
    group = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = (q @ kk.transpose(-1, -2)) * scale
    s = s.masked_fill(~vis.repeat_interleave(group, 1), float("-inf"))
    return s.softmax(-1) @ vv


# ---------------------------------------------------------------- slow loops from the spec


def loop_d_mask(q, k, v, up, vis, scale, p_mode):
    """dM[b][h][m][n] per query head for causal pairs, as nested lists (docs/METHOD.md, "Mask gradient")."""
    b_, hq, n_pos, _ = q.shape
    group = hq // k.shape[1]
    out = dense_masked(q, k, v, vis, scale)
    res = []
    for b in range(b_):
        per_head = []
        for h in range(hq):
            kv = h // group
            d_m = [[0.0] * n_pos for _ in range(n_pos)]
            for m in range(n_pos):
                s = [float(q[b, h, m] @ k[b, kv, n]) * scale for n in range(m + 1)]
                lse_all = torch.logsumexp(torch.tensor(s, dtype=F64), 0).item()
                lse_vis = torch.logsumexp(torch.tensor([s[n] for n in range(m + 1) if vis[b, kv, m, n]], dtype=F64), 0).item()
                big_d = float(up[b, h, m] @ out[b, h, m])
                for n in range(m + 1):
                    d_p = float(up[b, h, m] @ v[b, kv, n])
                    if p_mode == "unmasked":
                        pt = math.exp(s[n] - lse_all)
                    elif p_mode == "masked_clamped":
                        pt = min(1.0, math.exp(s[n] - lse_vis))
                    else:
                        pt = math.exp(s[n] - lse_vis)
                    d_m[m][n] = pt * (d_p - big_d)
            per_head.append(d_m)
        res.append(per_head)
    return res


def loop_token_type_grads(d_m, types, window, lam, group):
    """(B, Hkv, N, 3) type gradients from dM by the formulas of docs/METHOD.md ("Mask gradient")."""
    b_, hkv, n_pos = types.shape
    grads = torch.zeros(b_, hkv, n_pos, 3, dtype=F64)
    for b in range(b_):
        for kv in range(hkv):
            t = types[b, kv].tolist()
            for h in range(kv * group, (kv + 1) * group):
                dm = d_m[b][h]
                for n in range(n_pos):
                    big_e = next((g for g in range(n + 1, n_pos) if t[g] == 0), n_pos - 1)
                    prev_g = next((g for g in range(n - 1, -1, -1) if t[g] == 0), -1)
                    d_s = sum(dm[m][n] for m in range(n, min(n + window, n_pos - 1) + 1))
                    d_l = sum(dm[m][n] for m in range(n, big_e + 1))
                    collected = sum(
                        dm[m][j] for j in range(prev_g + 1, n) if t[j] == 1 for m in range(n + 1, big_e + 1)
                    )
                    d_g = sum(dm[m][n] for m in range(n, n_pos)) - collected
                    if t[n] == 0:
                        d_g += lam * (n_pos - n) / n_pos
                    if t[n] == 1:
                        e_n = big_e  # for a Local key e(n) = E(n)
                        d_l += lam * (e_n - n) / n_pos
                    grads[b, kv, n] += torch.tensor([d_g, d_l, d_s], dtype=F64)
    return grads


def loop_chunk_type_grads(d_m, ctypes, window, lam, group, c, n_pos):
    """Chunk level: means over a chunk's tokens; Local reaches the end of the next Global chunk."""
    b_, hkv, n_chunks = ctypes.shape
    grads = torch.zeros(b_, hkv, n_chunks, 3, dtype=F64)

    def last(chunk):
        return min((chunk + 1) * c - 1, n_pos - 1)

    def toks(chunk):
        return list(range(chunk * c, last(chunk) + 1))

    for b in range(b_):
        for kv in range(hkv):
            t = ctypes[b, kv].tolist()
            for h in range(kv * group, (kv + 1) * group):
                dm = d_m[b][h]
                for ch in range(n_chunks):
                    e_c = next((g for g in range(ch + 1, n_chunks) if t[g] == 0), n_chunks - 1)
                    prev_c = next((g for g in range(ch - 1, -1, -1) if t[g] == 0), -1)
                    ts = toks(ch)
                    d_s = sum(sum(dm[m][n] for m in range(n, min(n + window, n_pos - 1) + 1)) for n in ts) / len(ts)
                    d_l = sum(sum(dm[m][n] for m in range(n, last(e_c) + 1)) for n in ts) / len(ts)
                    d_g = sum(sum(dm[m][n] for m in range(n, n_pos)) for n in ts) / len(ts)
                    for j in range(prev_c + 1, ch):
                        if t[j] == 1:
                            tj = toks(j)
                            d_g -= sum(dm[m][x] for x in tj for m in range(last(ch) + 1, last(e_c) + 1)) / len(tj)
                    if t[ch] == 0:
                        d_g += lam * sum((n_pos - n) / n_pos for n in ts) / len(ts)
                    if t[ch] == 1:
                        d_l += lam * sum((last(e_c) - n) / n_pos for n in ts) / len(ts)
                    grads[b, kv, ch] += torch.tensor([d_g, d_l, d_s], dtype=F64)
    return grads


# ---------------------------------------------------------------- forward and dq/dk/dv

SHAPES = [  # (b, hq, hkv, n, hd, window)
    (2, 2, 2, 9, 4, 2),  # GQA group 1
    (1, 4, 2, 11, 8, 3),  # GQA group 2
    (2, 3, 1, 7, 4, 0),  # W = 0, group 3
    (1, 2, 1, 6, 4, 10),  # W >= N
]


@pytest.mark.parametrize("b,hq,hkv,n,hd,window", SHAPES)
def test_forward_and_qkv_grads_equal_dense_masked_autograd(b, hq, hkv, n, hd, window):
    q, k, v, types, up = make_inputs(10 + n, b, hq, hkv, n, hd, n)
    out, dq, dk, dv, _ = run_reference(q, k, v, types, up, window=window)
    ql, kl, vl = (t.clone().requires_grad_() for t in (q, k, v))
    want = dense_masked(ql, kl, vl, visibility(types, window), hd**-0.5)
    (want * up).sum().backward()
    torch.testing.assert_close(out, want.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dq, ql.grad, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(dk, kl.grad, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(dv, vl.grad, rtol=1e-9, atol=1e-11)


def test_chunk_forward_and_grads_equal_dense_masked_with_chunk_visibility():
    c, n, window = 3, 10, 2
    q, k, v, ctypes, up = make_inputs(20, 2, 4, 2, n, 4, 4)
    out, dq, dk, dv, _ = run_reference(q, k, v, ctypes, up, window=window, chunk_size=c)
    ql, kl, vl = (t.clone().requires_grad_() for t in (q, k, v))
    want = dense_masked(ql, kl, vl, chunk_visibility(ctypes, window, c, n), 0.5)
    (want * up).sum().backward()
    torch.testing.assert_close(out, want.detach())
    for got, leaf in ((dq, ql), (dk, kl), (dv, vl)):
        torch.testing.assert_close(got, leaf.grad)


def test_gradcheck_q_k_v_and_custom_scale():
    q, k, v, types, _ = make_inputs(30, 1, 2, 1, 5, 3, 5)
    h = torch.nn.functional.one_hot(types, 3).to(F64)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(
        lambda a, b_, c_: nats_attention_reference(a, b_, c_, h, window=1, scale=0.3), (q, k, v)
    )


def test_float32_matches_float64_and_cpu_dispatch_uses_reference():
    q, k, v, types, up = make_inputs(40, 1, 2, 1, 12, 8, 12)
    h64 = torch.nn.functional.one_hot(types, 3).to(F64)
    out64 = nats_attention(q, k, v, h64, window=3)
    out32 = nats_attention(q.float(), k.float(), v.float(), h64.float(), window=3)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out64, nats_attention_reference(q, k, v, h64, window=3))


# ---------------------------------------------------------------- type gradients


TYPE_CASES = [  # (seed, b, hq, hkv, n, window)
    (1, 1, 1, 1, 8, 2),
    (2, 2, 2, 1, 9, 3),  # GQA group 2
    (3, 1, 4, 2, 12, 1),
    (4, 1, 2, 2, 7, 20),  # W >= N
    (5, 1, 1, 1, 10, 0),
]


@pytest.mark.parametrize("seed,b,hq,hkv,n,window", TYPE_CASES)
def test_token_type_grads_equal_slow_loop(seed, b, hq, hkv, n, window):
    q, k, v, types, up = make_inputs(seed, b, hq, hkv, n, 4, n)
    *_, d_types = run_reference(q, k, v, types, up, window=window)
    d_m = loop_d_mask(q, k, v, up, visibility(types, window), 0.5, "unmasked")
    want = loop_token_type_grads(d_m, types, window, 0.0, hq // hkv)
    torch.testing.assert_close(d_types, want, rtol=1e-9, atol=1e-11)
    assert want[..., 0].abs().max() > 0  # the check has something to compare


@pytest.mark.parametrize("c,n", [(2, 9), (3, 12), (4, 10)])
def test_chunk_type_grads_equal_slow_loop(c, n):
    window = 3
    nc = -(-n // c)
    q, k, v, ctypes, up = make_inputs(50 + c, 1, 4, 2, n, 4, nc)
    ctypes[0, 1, 1:-1] = torch.tensor([1, 1, 2, 1, 2][: nc - 2])  # make sure Local chunks exist
    *_, d_types = run_reference(q, k, v, ctypes, up, window=window, chunk_size=c, lam=0.05)
    d_m = loop_d_mask(q, k, v, up, chunk_visibility(ctypes, window, c, n), 0.5, "masked_clamped")
    want = loop_chunk_type_grads(d_m, ctypes, window, 0.05, 2, c, n)
    torch.testing.assert_close(d_types, want, rtol=1e-9, atol=1e-11)


def test_collected_term_is_present_and_needed():
    """A Global key after Local keys: dh_G without C(n) would differ (autograd-blind part)."""
    types = torch.tensor([[[0, 1, 1, 0, 1, 2, 0]]])
    q, k, v, _, up = make_inputs(60, 1, 1, 1, 7, 4, 7)
    *_, d_types = run_reference(q, k, v, types, up, window=1)
    d_m = loop_d_mask(q, k, v, up, visibility(types, 1), 0.5, "unmasked")
    with_c = loop_token_type_grads(d_m, types, 1, 0.0, 1)
    dm = d_m[0][0]
    no_c_g3 = sum(dm[m][3] for m in range(3, 7))
    assert abs(with_c[0, 0, 3, 0].item() - no_c_g3) > 1e-6
    torch.testing.assert_close(d_types, with_c)


@pytest.mark.parametrize("chunk_size", [None, 1, 2, 3])
def test_type_grads_are_exact_gradient_of_multilinear_mask(chunk_size):
    """With the exact normaliser, the spec's gradient is autograd of M written as a multilinear
    function of the types, [m <= E(j)] = prod_{j<g<m} (1 - h_G(g)) (at chunk level: over chunks,
    and the chunk mean of the token sums)."""
    n, window, hkv, hq = 10, 2, 2, 4
    c = chunk_size or 1
    nc = -(-n // c)
    q, k, v, ctypes, up = make_inputs(70 + c, 2, hq, hkv, n, 4, nc)
    *_, d_types = run_reference(q, k, v, ctypes, up, window=window, chunk_size=chunk_size, p_tilde="masked")
    h = onehot(ctypes)
    tok = torch.arange(n) // c
    rows = []
    for m in range(n):
        cols = []
        for j in range(n):
            if j > m:
                cols.append(torch.zeros(2, hkv, dtype=F64))
                continue
            hj = h[:, :, tok[j]]  # (B, Hkv, 3)
            keep_l = torch.ones(2, hkv, dtype=F64)
            for g in range(tok[j] + 1, tok[m]):
                keep_l = keep_l * (1 - h[:, :, g, 0])
            cols.append(hj[..., 0] + hj[..., 1] * keep_l + hj[..., 2] * float(m <= j + window))
        rows.append(torch.stack(cols, -1))
    mask = torch.stack(rows, -2).repeat_interleave(hq // hkv, 1)  # (B, Hq, N, N)
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    s = (q @ kk.transpose(-1, -2)) * 0.5
    w = mask * torch.exp(s - s.amax(-1, keepdim=True))
    out = (w / w.sum(-1, keepdim=True)) @ vv
    (out * up).sum().backward()
    counts = torch.bincount(tok, minlength=nc).to(F64)[:, None]
    torch.testing.assert_close(d_types * counts, h.grad, rtol=1e-9, atol=1e-11)


def test_chunk_size_one_equals_token_level():
    q, k, v, types, up = make_inputs(80, 2, 4, 2, 9, 4, 9)
    tok = run_reference(q, k, v, types, up, window=2, lam=0.02)
    # same normaliser: everything equal
    ch = run_reference(q, k, v, types, up, window=2, lam=0.02, chunk_size=1, p_tilde="unmasked")
    for a, b in zip(tok, ch, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # default normalisers differ only in the type gradient
    ch_default = run_reference(q, k, v, types, up, window=2, lam=0.02, chunk_size=1)
    tok_clamped = run_reference(q, k, v, types, up, window=2, lam=0.02, p_tilde="masked_clamped")
    for a, b in zip(tok[:4], ch_default[:4], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ch_default[4], tok_clamped[4], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_regulariser_adds_exactly_the_section4_terms(chunk_size):
    n, window, lam, hq, hkv = 11, 2, 0.3, 4, 2
    c = chunk_size or 1
    nc = -(-n // c)
    q, k, v, types, up = make_inputs(90, 2, hq, hkv, n, 4, nc)
    types[0, 0, 1:-1] = torch.tensor([1, 2, 1, 0, 1, 1, 2, 1, 2][: nc - 2])
    *_, g0 = run_reference(q, k, v, types, up, window=window, chunk_size=chunk_size)
    *_, g1 = run_reference(q, k, v, types, up, window=window, chunk_size=chunk_size, lam=lam)
    diff = g1 - g0
    want = torch.zeros_like(diff)
    for b in range(2):
        for kv in range(hkv):
            t = types[b, kv].tolist()
            for ch in range(nc):
                ts = range(ch * c, min((ch + 1) * c, n))
                if t[ch] == 0:
                    val = sum((n - x) / n for x in ts) / len(ts)
                    want[b, kv, ch, 0] = lam * (hq // hkv) * val
                elif t[ch] == 1:
                    e_c = next((g for g in range(ch + 1, nc) if t[g] == 0), nc - 1)
                    end = min((e_c + 1) * c - 1, n - 1)  # e(n): the last query that sees the key
                    want[b, kv, ch, 1] = lam * (hq // hkv) * sum((end - x) / n for x in ts) / len(ts)
    torch.testing.assert_close(diff, want, rtol=1e-9, atol=1e-12)
    assert (want[..., 2] == 0).all() and want[..., 1].abs().sum() > 0


def test_input_validation_names_the_bad_input():
    q, k, v, types, _ = make_inputs(0, 1, 3, 2, 5, 4, 5)
    with pytest.raises(ValueError, match="multiple of KV heads"):
        nats_attention(q, k, v, onehot(types), window=1)
    q, k, v, types, _ = make_inputs(0, 1, 2, 1, 5, 4, 5)
    with pytest.raises(ValueError, match="types_onehot"):
        nats_attention(q, k, v, onehot(types), window=1, chunk_size=2)
    with pytest.raises(ValueError, match="window"):
        nats_attention(q, k, v, onehot(types), window=-1)
    with pytest.raises(ValueError, match="p_tilde"):
        nats_attention_reference(q, k, v, onehot(types), window=1, p_tilde="bogus")


def test_soft_types_forward_uses_the_multiplicative_mask():
    """A non-hard one-hot goes through M = h_G + h_L [m <= E(n)] + h_S [m <= n+W] (general path)."""
    n, window = 6, 1
    q, k, v, types, _ = make_inputs(100, 1, 2, 1, n, 4, n)
    soft = torch.softmax(torch.randn(1, 1, n, 3, dtype=F64, generator=torch.Generator().manual_seed(1)), -1)
    got = nats_attention_reference(q, k, v, soft, window=window)
    ids = soft.argmax(-1)[0, 0].tolist()
    big_e = [next((g for g in range(x + 1, n) if ids[g] == 0), n - 1) for x in range(n)]
    mask = torch.zeros(n, n, dtype=F64)
    for m in range(n):
        for j in range(m + 1):
            h = soft[0, 0, j]
            mask[m, j] = h[0] + h[1] * (m <= big_e[j]) + h[2] * (m <= j + window)
    w = mask * torch.exp((q[0] @ k[0, 0].T) * 0.5)  # (Hq, N, N)
    want = (w / w.sum(-1, keepdim=True)) @ v[0, 0]
    torch.testing.assert_close(got[0], want)


@pytest.mark.parametrize("n", [1, 2])
def test_tiny_sequences(n):
    q, k, v, types, up = make_inputs(110 + n, 1, 2, 1, n, 4, n)
    out, dq, dk, dv, d_types = run_reference(q, k, v, types, up, window=0, lam=0.1)
    want = dense_masked(q, k, v, visibility(types, 0), 0.5)
    torch.testing.assert_close(out, want)
    d_m = loop_d_mask(q, k, v, up, visibility(types, 0), 0.5, "unmasked")
    torch.testing.assert_close(d_types, loop_token_type_grads(d_m, types, 0, 0.1, 2))


def test_low_precision_inputs_and_autocast_compute_in_float32():
    q, k, v, types, up = make_inputs(120, 1, 2, 1, 16, 8, 16, dtype=torch.float32)
    h = torch.nn.functional.one_hot(types, 3).float()
    ref = nats_attention_reference(q, k, v, h, window=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = nats_attention_reference(q, k, v, h, window=2)
    assert auto.dtype == torch.float32
    torch.testing.assert_close(auto, ref)
    low = nats_attention_reference(q.bfloat16(), k.bfloat16(), v.bfloat16(), h.bfloat16(), window=2)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, atol=3e-2, rtol=3e-2)


def test_no_type_gradient_when_types_are_constant():
    q, k, v, types, up = make_inputs(130, 1, 2, 1, 8, 4, 8)
    ql = q.clone().requires_grad_()
    h = torch.nn.functional.one_hot(types, 3).to(F64)  # no requires_grad
    (nats_attention(ql, k, v, h, window=2, lam=1.0) * up).sum().backward()
    assert ql.grad is not None and h.grad is None
