"""The fused prefill path (nats_model.engine.prefill_attention) equals the dense-mask path it replaces.

Stores are filled as the engine fills them (kept tokens first, then the chunk's real tokens in
order), then the same queries go through `attend_store` with `chunk_in_order=False` (the dense
`(segments, g*T, cache)` mask path) and `True` (fused, blockwise statistics): outputs, attention
sums and the probabilities of the last queries must agree, for uniform and ragged stores, left
padding, GQA and every block size.
"""

import pytest
import torch
from policies.kv_reference import tiny_gpt

import nats_model.engine.prefill_attention as pa
from nats_model.engine.cache import LayerStore
from nats_model.engine.generation import generate
from nats_model.engine.kv_engine import KVEngine, attend_store
from nats_model.policies import build

HD = 16


def filled_store(kept: list[int], T: int, real: list[int], seed: int = 0):
    """A store whose segment s holds kept[s] earlier tokens, then the chunk's last real[s] of T
    tokens (left padding before them). Returns the store, q_pos and q_valid (n_seg, T)."""
    g = torch.Generator().manual_seed(seed)
    n_seg = len(kept)
    store = LayerStore(n_seg, HD, torch.float32, torch.device("cpu"))
    for s, n in enumerate(kept):  # earlier steps, one segment at a time (ragged lengths)
        valid = torch.zeros(n_seg, max(n, 1), dtype=torch.bool)
        valid[s, :n] = True
        store.append(torch.randn(n_seg, max(n, 1), HD, generator=g), torch.randn(n_seg, max(n, 1), HD, generator=g),
                     torch.arange(max(n, 1)).expand(n_seg, -1), valid)
    q_valid = torch.arange(T)[None, :] >= T - torch.tensor(real)[:, None]
    q_pos = torch.tensor(kept)[:, None] + (q_valid.long().cumsum(1) - 1).clamp(min=0)
    store.append(torch.randn(n_seg, T, HD, generator=g), torch.randn(n_seg, T, HD, generator=g), q_pos, q_valid)
    return store, q_pos, q_valid


CASES = [  # kept per segment, chunk length, real queries per segment, query heads per KV head
    ([20, 20, 20, 20], 9, [9, 9, 9, 9], 1),  # uniform, one part: no indexing
    ([20, 20, 20, 20], 9, [9, 9, 9, 9], 3),  # GQA
    ([0, 0], 7, [7, 7], 2),  # first chunk: causal only
    ([13, 13, 5, 5], 6, [6, 6, 2, 2], 2),  # left padding: two (length, real) parts
    ([40, 7, 19], 5, [5, 3, 0], 2),  # ragged capacities, a segment with only padding queries
    ([30, 30], 1, [1, 1], 2),  # one streamed token (score_run)
]


@pytest.mark.parametrize("kept, T, real, g", CASES)
@pytest.mark.parametrize("block", [1, 4, 64])
def test_fused_prefill_equals_dense_mask_path(kept, T, real, g, block):
    store, q_pos, q_valid = filled_store(kept, T, real)
    q = torch.randn(len(kept), g, T, HD, generator=torch.Generator().manual_seed(9))
    all_valid = bool(q_valid.all())
    for observe in ("none", "sum", "probs"):
        ref = attend_store(store, q, q_pos, q_valid, all_valid, HD ** -0.5, None, observe)
        got = attend_store(store, q, q_pos, q_valid, all_valid, HD ** -0.5, None, observe, probs_rows=None,
                           observe_block=block, chunk_in_order=True)
        real_q = q_valid[:, None, :, None]
        torch.testing.assert_close(got[0] * real_q, ref[0] * real_q, atol=1e-5, rtol=1e-5)
        assert torch.equal(got[0][~q_valid[:, None, :, None].expand_as(got[0])],
                           torch.zeros(int((~q_valid).sum()) * g * HD))  # padding queries: zero output
        if observe == "sum":
            torch.testing.assert_close(got[1], ref[1], atol=1e-5, rtol=1e-5)
        if observe == "probs":
            w = ref[2].shape[-1]
            torch.testing.assert_close(got[2][..., :w], ref[2], atol=1e-5, rtol=1e-5)
            assert not got[2][..., w:].any()
            for rows in (1, 3):  # only the last `rows` queries are computed, equal to the same rows
                part = attend_store(store, q, q_pos, q_valid, all_valid, HD ** -0.5, None, observe,
                                    probs_rows=rows, observe_block=block, chunk_in_order=True)[2]
                assert part.shape[2] == min(rows, T)
                torch.testing.assert_close(part[..., :w], ref[2][:, :, T - min(rows, T):], atol=1e-5, rtol=1e-5)


def test_statistics_never_exceed_one_block(monkeypatch):
    """H2O's sums over a 64-query chunk come from blocks of at most `observe_block` queries."""
    store, q_pos, q_valid = filled_store([50, 50], 64, [64, 64])
    q = torch.randn(2, 2, 64, HD, generator=torch.Generator().manual_seed(2))
    seen_rows, real = [], pa.observe_blocks

    def spy(*args, **kw):
        for a, b, p in real(*args, **kw):
            seen_rows.append((a, b, p.shape[2]))
            yield a, b, p

    monkeypatch.setattr(pa, "observe_blocks", spy)
    attend_store(store, q, q_pos, q_valid, True, HD ** -0.5, None, "sum", observe_block=8, chunk_in_order=True)
    assert [r for _, _, r in seen_rows] == [8] * 8
    assert [(a, b) for a, b, _ in seen_rows] == [(i, i + 8) for i in range(0, 64, 8)]


def test_cpu_fallback_without_the_flash_op_agrees(monkeypatch):
    """Without the CPU flash op (other builds) the lower-right causal SDPA call and softmax
    statistics give the same results."""
    store, q_pos, q_valid = filled_store([13, 13, 5, 5], 6, [6, 6, 2, 2])
    q = torch.randn(4, 2, 6, HD, generator=torch.Generator().manual_seed(4))
    fused = attend_store(store, q, q_pos, q_valid, False, HD ** -0.5, None, "sum", chunk_in_order=True)
    monkeypatch.setattr(pa, "_CPU_FLASH", None)
    plain = attend_store(store, q, q_pos, q_valid, False, HD ** -0.5, None, "sum", chunk_in_order=True)
    torch.testing.assert_close(fused[0], plain[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused[1], plain[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, params", [("full", {}), ("h2o", {"budget": 0.3}), ("tova", {"budget_tokens": 10}),
                                          ("snapkv", {"budget": 0.4, "window_size": 4})])
def test_generate_same_tokens_and_kept_sets_for_any_block(name, params):
    """The block size changes memory only: tokens and kept counts are the same for 1 and 1000."""
    model = tiny_gpt()
    ids = torch.randint(0, 61, (2, 40), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[1, :9] = 0
    runs = [generate(model, ids, build(name, **params), 6, attention_mask=mask, prefill_chunk_size=16,
                     observe_block=block) for block in (1, 1000)]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert torch.equal(runs[0].kept_per_layer_head, runs[1].kept_per_layer_head)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "64"])
def test_bad_observe_block_names_the_parameter(bad):
    with pytest.raises(ValueError, match="observe_block must be an int >= 1"):
        KVEngine(build("full"), batch=1, observe_block=bad)
