"""The Triton NAtS attention (interpreter on the CPU) against the dense reference and the spec's loops.

The reference is `nats_model.attention.nats_attention_reference` (another engineer's file); an
independent slow loop over (m, n) written here from docs/METHOD.md ("Mask gradient") checks the
token-level type gradients of both. Shapes are small because the interpreter is slow.
"""

from __future__ import annotations

import os

import pytest
import torch

from nats_model.attention import nats_attention_reference
from nats_model.attention.dispatch import _triton_impl
from nats_model.kernels import nats_attention_triton
from nats_model.kernels.bounds import collected_term, key_bounds

DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"


def _inputs(b, hq, hkv, n, hd, chunk, forced, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, n, hd, generator=gen)
    k = torch.randn(b, hkv, n, hd, generator=gen)
    v = torch.randn(b, hkv, n, hd, generator=gen)
    d_out = torch.randn(b, hq, n, hd, generator=gen)
    units = n if chunk is None else -(-n // chunk)
    types = torch.randint(0, 3, (b, hkv, units), generator=gen)
    if forced:  # training: first and last position Global
        types[..., 0] = 0
        types[..., -1] = 0
    onehot = torch.nn.functional.one_hot(types, 3).float()
    return [x.to(DEVICE, dtype) for x in (q, k, v, d_out)] + [onehot.to(DEVICE)]


def _run(fn, q, k, v, d_out, onehot, **kw):
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v, onehot)]
    out = fn(*leaves, **kw)
    grads = torch.autograd.grad(out, leaves, d_out)
    return (out, *grads)


NAMES = ("out", "dq", "dk", "dv", "d_types")
CASES = [
    # (B, Hq, Hkv, N, hd, W, chunk, lam, block, forced first/last Global)
    pytest.param(1, 2, 1, 37, 16, 4, None, 0.0, 32, True, id="gqa2-ragged37"),
    pytest.param(2, 2, 2, 64, 32, 8, None, 0.1, 32, False, id="lam-batch2-open-local"),
    pytest.param(1, 4, 2, 100, 16, 5, 8, 0.0, 64, True, id="chunk8-gqa2-ragged100"),
    pytest.param(1, 2, 1, 45, 24, 200, None, 0.0, None, True, id="window-ge-n-hd24-default-block"),
    pytest.param(1, 3, 1, 50, 16, 3, 16, 0.05, 16, False, id="chunk16-gqa3-lam-block16"),
    pytest.param(1, 2, 1, 29, 16, 3, 1, 0.2, 32, False, id="chunk1-clamped-p-tilde"),
]


@pytest.mark.parametrize("b,hq,hkv,n,hd,w,chunk,lam,block,forced", CASES)
def test_matches_reference_fp32(b, hq, hkv, n, hd, w, chunk, lam, block, forced):
    q, k, v, d_out, onehot = _inputs(b, hq, hkv, n, hd, chunk, forced, seed=n + hd)
    kw = dict(window=w, lam=lam, chunk_size=chunk)
    got = _run(lambda *a, **x: nats_attention_triton(*a, block=block, **x), q, k, v, d_out, onehot, **kw)
    ref = _run(nats_attention_reference, q, k, v, d_out, onehot, **kw)
    for name, g, r in zip(NAMES, got, ref, strict=True):
        assert g.shape == r.shape, name
        torch.testing.assert_close(g, r, atol=2e-4, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")
    # the type gradient is not trivially zero and really depends on the types
    assert got[4].abs().max() > 1e-2


@pytest.mark.parametrize(
    "n,w,types,hd",
    [
        pytest.param(1, 0, [0], 16, id="n1"),
        pytest.param(9, 0, [2] * 9, 16, id="all-sw-w0-diagonal-only"),
        pytest.param(17, 2, [1] * 17, 16, id="all-local-no-global"),
        pytest.param(20, 3, [0, 1, 2, 1, 0] * 4, 130, id="hd130-padded-to-256"),
    ],
)
def test_edge_cases(n, w, types, hd):
    gen = torch.Generator().manual_seed(n)
    q, k, v, d_out = (torch.randn(1, h, n, hd, generator=gen).to(DEVICE) for h in (2, 1, 1, 2))
    onehot = torch.nn.functional.one_hot(torch.tensor(types).view(1, 1, n), 3).float().to(DEVICE)
    got = _run(nats_attention_triton, q, k, v, d_out, onehot, window=w, lam=0.1)
    ref = _run(nats_attention_reference, q, k, v, d_out, onehot, window=w, lam=0.1)
    for name, g, r in zip(NAMES, got, ref, strict=True):
        torch.testing.assert_close(g, r, atol=2e-4, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


def test_without_type_gradient():
    """types_onehot without requires_grad: the kernels skip the type sums, dq/dk/dv unchanged."""
    q, k, v, d_out, onehot = _inputs(1, 2, 1, 33, 16, None, True, seed=2)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    out = nats_attention_triton(*leaves, onehot, window=3, block=32)
    got = (out, *torch.autograd.grad(out, leaves, d_out))
    ref = _run(nats_attention_reference, q, k, v, d_out, onehot, window=3)[:4]
    for name, g, r in zip(NAMES, got, ref, strict=False):
        torch.testing.assert_close(g, r, atol=2e-4, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


def _loop_type_grads(q, k, v, d_out, types, window, lam, scale):
    """dh (B, Hkv, N, 3) from docs/METHOD.md ("Mask gradient") with python loops over keys, queries."""
    b, hq, n, _ = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    q, k, v, d_out = (x.double() for x in (q, k, v, d_out))
    out = torch.zeros(b, hkv, n, 3, dtype=torch.float64)
    for bi in range(b):
        for hk in range(hkv):
            t = types[bi, hk].tolist()
            big_e = [next((g for g in range(i + 1, n) if t[g] == 0), n - 1) for i in range(n)]
            vis = torch.zeros(n, n, dtype=torch.bool)
            for m in range(n):
                for j in range(m + 1):
                    vis[m, j] = t[j] == 0 or (t[j] == 1 and m <= big_e[j]) or (t[j] == 2 and m <= j + window)
            d_m = torch.zeros(n, n, dtype=torch.float64)
            for h in range(hk * group, (hk + 1) * group):
                s = q[bi, h] @ k[bi, hk].T * scale  # (N, N)
                causal = torch.ones(n, n, dtype=torch.bool).tril()
                p = torch.softmax(s.masked_fill(~vis, float("-inf")), -1)
                o = p @ v[bi, hk]
                dp = d_out[bi, h] @ v[bi, hk].T
                delta = (d_out[bi, h] * o).sum(-1, keepdim=True)
                p_tilde = torch.softmax(s.masked_fill(~causal, float("-inf")), -1)  # unmasked normaliser
                d_m += (p_tilde * (dp - delta)).masked_fill(~causal, 0.0)
            for j in range(n):
                d_s = sum(d_m[m, j] for m in range(j, min(j + window, n - 1) + 1))
                d_l = sum(d_m[m, j] for m in range(j, big_e[j] + 1))
                prev_g = max([g for g in range(j) if t[g] == 0], default=-1)
                collected = sum(d_m[m, i] for i in range(prev_g + 1, j) if t[i] == 1
                                for m in range(j + 1, big_e[j] + 1))
                d_g = sum(d_m[m, j] for m in range(j, n)) - collected
                if t[j] == 0:
                    d_g += lam * group * (n - j) / n
                if t[j] == 1:
                    d_l += lam * group * (big_e[j] - j) / n
                out[bi, hk, j] = torch.tensor([float(d_g), float(d_l), float(d_s)], dtype=torch.float64)
    return out


@pytest.mark.parametrize("forced", [True, False])
def test_type_gradient_matches_spec_loops(forced):
    b, hq, hkv, n, hd, w, lam = 1, 2, 1, 21, 16, 3, 0.2
    q, k, v, d_out, onehot = _inputs(b, hq, hkv, n, hd, None, forced, seed=7 + forced)
    got = _run(lambda *a, **x: nats_attention_triton(*a, block=16, **x), q, k, v, d_out, onehot,
               window=w, lam=lam)[4]
    want = _loop_type_grads(q.cpu(), k.cpu(), v.cpu(), d_out.cpu(), onehot.argmax(-1).cpu(), w, lam, hd**-0.5)
    torch.testing.assert_close(got.double().cpu(), want, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_half_precision_inputs(dtype, tol):
    q, k, v, d_out, onehot = _inputs(1, 2, 1, 40, 24, None, True, seed=3, dtype=dtype)
    got = _run(lambda *a, **x: nats_attention_triton(*a, block=32, **x), q, k, v, d_out, onehot, window=4)
    # the reference in fp32 on the same (rounded) inputs; the kernel accumulates in fp32
    ref = _run(nats_attention_reference, q.float(), k.float(), v.float(), d_out.float(), onehot, window=4)
    for name, g, r in zip(NAMES, got, ref, strict=True):
        assert g.dtype == (dtype if name != "d_types" else torch.float32), name
        scale = r.abs().max().item()
        torch.testing.assert_close(g.float(), r, atol=tol * scale, rtol=tol, msg=lambda m, name=name: f"{name}: {m}")


def test_collected_term_difference_array_equals_pair_sum():
    """bounds.collected_term against the pair definition on random per-pair masses (no kernel)."""
    gen = torch.Generator().manual_seed(1)
    n = 30
    types = torch.randint(0, 3, (1, 1, n), generator=gen)
    kb = key_bounds(types, n, window=2, chunk_size=None)
    d_m = torch.randn(n, n, generator=gen).tril()  # (query, key)
    le, le2, t = kb.loc_end[0, 0].tolist(), kb.loc_end2[0, 0].tolist(), types[0, 0].tolist()
    col_strict = torch.tensor([sum(d_m[m, j] for m in range(j + 1, le[j] + 1)) if t[j] == 1 else 0.0
                               for j in range(n)])
    row_strict = torch.tensor([sum(d_m[m, j] for j in range(m) if t[j] == 1 and le[j] >= m) for m in range(n)])
    col_next = torch.tensor([sum(d_m[m, j] for m in range(le[j] + 1, le2[j] + 1)) if t[j] == 1 else 0.0
                             for j in range(n)])
    got = collected_term(types, col_strict[None, None], row_strict[None, None], col_next[None, None])[0, 0]
    for j in range(n):
        prev_g = max([g for g in range(j) if t[g] == 0], default=-1)
        want = sum(float(d_m[m, i]) for i in range(prev_g + 1, j) if t[i] == 1 for m in range(j + 1, le[j] + 1))
        assert abs(float(got[j]) - want) < 1e-4, (j, t, float(got[j]), want)


def test_reference_dispatcher_finds_the_kernel():
    assert _triton_impl() is nats_attention_triton


def test_rejects_bad_inputs():
    q, k, v, _, onehot = _inputs(1, 2, 1, 20, 16, None, True, seed=0)
    with pytest.raises(ValueError, match="types_onehot"):
        nats_attention_triton(q, k, v, onehot[:, :, :10], window=2)
    with pytest.raises(ValueError, match="head dim"):
        nats_attention_triton(q[..., :8], k[..., :8], v[..., :8], onehot, window=2)
    with pytest.raises(ValueError, match="Hq % Hkv"):
        nats_attention_triton(q[:, :1], k.expand(1, 2, 20, 16), v.expand(1, 2, 20, 16),
                              onehot.expand(1, 2, 20, 3), window=2)
