"""Block-wise NAtS attention (nats_model.attention.blockwise) against the dense reference oracle.

Forward, dq, dk, dv and the type gradients (token and chunk level, GQA, lambda, ragged N and
blocks, W >= N) must equal `nats_attention_reference`: to 1e-5 in float32 and to rounding in
float64. Also: `nats_attention` dispatches to it on the CPU for hard one-hots, no tensor of
N x N per (batch, head) is ever created, and the rare overflow path stays exact.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nats_model import scorer
from nats_model.attention import blockwise as blockwise_mod
from nats_model.attention import nats_attention, nats_attention_reference
from nats_model.attention.blockwise import NatsAttentionBlockwise, nats_attention_blockwise

F32, F64 = torch.float32, torch.float64


def make_case(seed, b, hq, hkv, n, hd, n_types, dtype):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, n, hd, generator=g, dtype=dtype)
    k = torch.randn(b, hkv, n, hd, generator=g, dtype=dtype)
    v = torch.randn(b, hkv, n, hd, generator=g, dtype=dtype)
    types = torch.randint(0, 3, (b, hkv, n_types), generator=g)
    if n_types > 6:  # a run of Local units, so the collected term is exercised
        types[0, 0, 2:5] = 1
    types[..., 0] = 0
    types[..., -1] = 0
    up = torch.randn(b, hq, n, hd, generator=g, dtype=dtype)
    return q, k, v, torch.nn.functional.one_hot(types, 3).to(dtype), up


def grads(fn, q, k, v, h, up, **kw):
    q, k, v, h = (t.clone().requires_grad_() for t in (q, k, v, h))
    out = fn(q, k, v, h, **kw)
    (out * up).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad, h.grad


def assert_same(got, want, tol):
    for name, a, b in zip(("out", "dq", "dk", "dv", "d_types"), got, want, strict=True):
        scale = b.abs().max().clamp(min=1.0)
        err = ((a - b).abs().max() / scale).item()
        assert err <= tol, f"{name}: max relative error {err:.2e} > {tol:.0e}"


CASES = [  # (seed, b, hq, hkv, n, hd, window, chunk, lam, block)
    (1, 2, 4, 4, 37, 8, 3, None, 0.0, 8),  # ragged last block
    (2, 2, 4, 2, 40, 8, 5, None, 0.1, 16),  # GQA group 2, lambda
    (3, 1, 3, 1, 29, 4, 0, None, 0.02, 7),  # GQA group 3, W = 0
    (4, 1, 2, 1, 23, 8, 40, None, 0.0, 5),  # W >= N
    (5, 2, 4, 2, 45, 8, 4, 4, 0.05, 8),  # chunk level, ragged last chunk, GQA, lambda
    (6, 1, 2, 2, 30, 8, 2, 3, 0.0, 64),  # chunk level, block > N
    (7, 1, 2, 1, 17, 4, 2, None, 0.3, 1),  # block of one row
    (8, 2, 2, 2, 130, 16, 16, None, 1e-3, 32),  # several blocks, window inside
    (9, 1, 4, 2, 130, 16, 16, 32, 1e-3, 48),  # the fine-tuning shape: chunk 32
]


@pytest.mark.parametrize("seed,b,hq,hkv,n,hd,window,chunk,lam,block", CASES)
@pytest.mark.parametrize("dtype,tol", [(F32, 1e-5), (F64, 1e-12)])
def test_equals_reference(seed, b, hq, hkv, n, hd, window, chunk, lam, block, dtype, tol):
    n_types = n if chunk is None else -(-n // chunk)
    q, k, v, h, up = make_case(seed, b, hq, hkv, n, hd, n_types, dtype)
    kw = {"window": window, "lam": lam, "chunk_size": chunk}
    want = grads(nats_attention_reference, q, k, v, h, up, **kw)
    got = grads(nats_attention_blockwise, q, k, v, h, up, block=block, **kw)
    assert want[4].abs().max() > 0  # the type gradient has something to compare
    assert_same(got, want, tol)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_sequences(n):
    q, k, v, h, up = make_case(20 + n, 1, 2, 1, n, 4, n, F64)
    kw = {"window": 0, "lam": 0.1}
    assert_same(grads(nats_attention_blockwise, q, k, v, h, up, block=2, **kw),
                grads(nats_attention_reference, q, k, v, h, up, **kw), 1e-12)


def test_straight_through_types_through_the_dispatcher():
    """What training feeds: straight-through Gumbel one-hots; the dispatcher picks the block-wise
    Function on the CPU, and the scorer logits receive the reference's gradient."""
    b, hq, hkv, n, hd = 2, 4, 2, 50, 8
    q, k, v, _, up = make_case(30, b, hq, hkv, n, hd, n, F32)
    logits = torch.randn(b, hkv, n, 3, generator=torch.Generator().manual_seed(3))

    def run(fn):
        lg = logits.clone().requires_grad_()
        onehot = scorer.sample_train_types(lg, generator=torch.Generator().manual_seed(4))
        qq = q.clone().requires_grad_()
        out = fn(qq, k, v, onehot, window=4, lam=0.01)
        (out * up).sum().backward()
        return out, qq.grad, lg.grad

    out, dq, dlogits = run(nats_attention)
    assert out.grad_fn.name() == "NatsAttentionBlockwiseBackward"
    r_out, r_dq, r_dlogits = run(nats_attention_reference)
    torch.testing.assert_close(out, r_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dq, r_dq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dlogits, r_dlogits, rtol=1e-5, atol=1e-5)
    assert dlogits.abs().max() > 0


def test_soft_types_still_use_the_reference():
    q, k, v, _, _ = make_case(40, 1, 2, 1, 9, 4, 9, F64)
    soft = torch.softmax(torch.randn(1, 1, 9, 3, dtype=F64), -1).requires_grad_()
    out = nats_attention(q, k, v, soft, window=1)
    assert out.grad_fn.name() == "NatsAttentionFunctionBackward"


def test_overflowing_hidden_key_takes_the_exact_path(monkeypatch):
    """A key hidden by its type whose score beats the visible ones by > 88 nats would overflow
    exp(s - LSE_masked); the block falls back to max-shifted exponentials and stays exact."""
    n, hd = 12, 4
    q, k, v, _, up = make_case(50, 1, 1, 1, n, hd, n, F64)
    types = torch.zeros(1, 1, n, dtype=torch.long)
    types[0, 0, 2] = 2  # SW key 2, W = 1: hidden from query 4 on
    q[0, 0, 6:] = 30.0
    k[0, 0, 2] = 30.0  # s = 30*30*4/2 = 1800 for the hidden pairs
    h = torch.nn.functional.one_hot(types, 3).to(F64)
    calls = []
    safe = blockwise_mod._safe_token_tile
    monkeypatch.setattr(blockwise_mod, "_safe_token_tile", lambda *a: calls.append(1) or safe(*a))
    want = grads(nats_attention_reference, q, k, v, h, up, window=1)
    got = grads(nats_attention_blockwise, q, k, v, h, up, window=1, block=4)
    assert len(calls) == 2  # the two blocks holding queries 4..11
    assert all(torch.isfinite(t).all() for t in got)
    assert_same(got, want, 1e-10)


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("chunk", [None, 8])
def test_no_n_by_n_tensor_per_head(chunk):
    """Memory O(N x block): the largest tensor of forward + backward is a (B, Hq, block, N) tile."""
    b, hq, hkv, n, hd, block = 1, 2, 1, 256, 8, 16
    n_types = n if chunk is None else n // chunk
    q, k, v, h, up = make_case(60, b, hq, hkv, n, hd, n_types, F32)
    q, h = q.requires_grad_(), h.requires_grad_()
    with _LargestTensor() as mode:
        out = nats_attention_blockwise(q, k, v, h, window=4, chunk_size=chunk, block=block)
        (out * up).sum().backward()
    assert h.grad is not None
    assert mode.largest <= b * hq * block * n + b * hq * n * hd
    assert mode.largest < n * n  # not one N x N tensor


def test_no_type_gradient_when_types_are_constant():
    q, k, v, h, up = make_case(70, 1, 2, 1, 20, 4, 20, F64)
    ql = q.clone().requires_grad_()
    out = nats_attention_blockwise(ql, k, v, h, window=2, lam=1.0, block=8)
    (out * up).sum().backward()
    assert ql.grad is not None and h.grad is None
    want = grads(nats_attention_reference, q, k, v, h, up, window=2, lam=1.0)
    torch.testing.assert_close(ql.grad, want[1])


def test_low_precision_and_autocast_compute_in_float32():
    q, k, v, h, up = make_case(80, 1, 2, 1, 24, 8, 24, F32)
    ref = nats_attention_reference(q, k, v, h, window=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = nats_attention_blockwise(q, k, v, h, window=2, block=8)
    assert auto.dtype == F32
    torch.testing.assert_close(auto, ref, rtol=1e-5, atol=1e-5)
    low = nats_attention_blockwise(q.bfloat16(), k.bfloat16(), v.bfloat16(), h.bfloat16(), window=2, block=8)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("block", [0, -3, 2.5, True])
def test_bad_block_names_the_parameter(block):
    q, k, v, h, _ = make_case(90, 1, 2, 1, 6, 4, 6, F32)
    with pytest.raises(ValueError, match="block must be an integer >= 1"):
        nats_attention_blockwise(q, k, v, h, window=1, block=block)


def test_function_is_the_one_autograd_node():
    q, k, v, h, _ = make_case(100, 1, 2, 1, 6, 4, 6, F32)
    out = nats_attention_blockwise(q.requires_grad_(), k, v, h, window=1)
    assert out.grad_fn.name() == NatsAttentionBlockwise.__name__ + "Backward"
