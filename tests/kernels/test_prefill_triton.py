"""The forward-only prefill kernel: equals the reference forward and really skips invisible key blocks."""

from __future__ import annotations

import os

import pytest
import torch

from nats_model.attention import nats_attention_reference
from nats_model.kernels import nats_prefill_triton
from nats_model.kernels.bounds import block_skip_table, key_bounds
from nats_model.mask import chunk_visibility, visibility

DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"


def _qkv(b, hq, hkv, n, hd, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, hd, generator=gen).to(DEVICE) for h in (hq, hkv, hkv)]


def _reference(q, k, v, types, window, chunk):
    onehot = torch.nn.functional.one_hot(types.long(), 3).float()
    return nats_attention_reference(q, k, v, onehot, window=window, chunk_size=chunk)


@pytest.mark.parametrize(
    "b,hq,hkv,n,hd,w,chunk,block",
    [
        pytest.param(1, 2, 1, 37, 16, 4, None, 32, id="gqa2-ragged"),
        pytest.param(2, 2, 2, 100, 32, 6, None, 32, id="batch2-n100"),
        pytest.param(1, 4, 2, 70, 16, 5, 8, 32, id="chunk8-gqa2"),
    ],
)
def test_prefill_equals_reference(b, hq, hkv, n, hd, w, chunk, block):
    q, k, v = _qkv(b, hq, hkv, n, hd, seed=n)
    units = n if chunk is None else -(-n // chunk)
    gen = torch.Generator().manual_seed(n + 1)
    types = torch.randint(0, 3, (b, hkv, units), generator=gen).to(DEVICE)  # inference: open Local keys allowed
    types[..., 0] = 0
    got = nats_prefill_triton(q, k, v, types, window=w, chunk_size=chunk, block=block)
    torch.testing.assert_close(got, _reference(q, k, v, types, w, chunk), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("chunk", [None, 4])
def test_skip_table_equals_block_visibility(chunk):
    """A block pair is visited exactly when it holds a visible (query, key) pair."""
    n, block, w = 90, 16, 3
    gen = torch.Generator().manual_seed(5)
    units = n if chunk is None else -(-n // chunk)
    types = torch.randint(0, 3, (2, 3, units), generator=gen)
    vis_end = key_bounds(types, n, w, chunk).vis_end(n)
    table = block_skip_table(vis_end, n, block, block)  # (B, H, Mb, Nb)
    vis = visibility(types, w) if chunk is None else chunk_visibility(types, w, chunk, n)  # (B, H, N, N)
    nb = -(-n // block)
    padded = torch.nn.functional.pad(vis, (0, nb * block - n, 0, nb * block - n))
    want = padded.view(2, 3, nb, block, nb, block).any(-1).any(-2)
    assert torch.equal(table, want)


def test_prefill_skips_invisible_blocks():
    """Mostly sliding-window keys: late query blocks visit only the sink block and their window."""
    b, hq, hkv, n, hd, w, block = 1, 2, 1, 160, 16, 4, 16
    q, k, v = _qkv(b, hq, hkv, n, hd, seed=11)
    types = torch.full((b, hkv, n), 2, dtype=torch.long)
    types[..., 0] = 0  # sink
    types[..., 70] = 1  # a Local key, cut by the Global key at 75
    types[..., 75] = 0
    types = types.to(DEVICE)
    out, visited = nats_prefill_triton(q, k, v, types, window=w, block=block, return_visited=True)
    torch.testing.assert_close(out, _reference(q, k, v, types, w, None), atol=2e-5, rtol=1e-4)
    table = block_skip_table(key_bounds(types, n, w, None).vis_end(n), n, block, block)
    assert torch.equal(visited.cpu(), table.sum(-1).to(torch.int32).repeat_interleave(hq // hkv, 1).cpu())
    # e.g. the last query block (rows 144..159) visits 4 of 10 causal key blocks: the sink block 0,
    # block 4 (Global 75), block 8 (the window of key 143 reaches row 147) and its own block 9
    # block 8 (the window of key 143 reaches row 147) and its own block 9; in all 31 of 55 causal pairs
    assert visited[0, 0].tolist() == [1, 2, 3, 3, 3, 3, 4, 4, 4, 4]
