"""Memory-true cache: contents, the physical-bytes bound, eviction, and ragged attention."""

import pytest
import torch
from policies.kv_reference import tiny_gpt

from nats_model.engine.cache import LayerStore
from nats_model.engine.generation import generate
from nats_model.engine.kv_engine import attend_store
from nats_model.policies import build

HD = 8


def storage_bytes(store: LayerStore) -> int:
    return store.k.untyped_storage().nbytes() + store.v.untyped_storage().nbytes()


def check_bound(store: LayerStore) -> None:
    kept = int(store.lens.sum())
    per_token = 2 * HD * store.k.element_size()
    assert store.kv_bytes_physical() == storage_bytes(store)
    assert storage_bytes(store) <= 1.05 * kept * per_token + store.n_seg * per_token


def contents(store: LayerStore) -> dict:
    """{segment: {position: key row}} read back through the row view."""
    pos, k, valid = store.rows(store.pos), store.rows(store.k), store.valid_rows()
    return {s: {int(p): k[s, j] for j, p in enumerate(pos[s].tolist()) if valid[s, j]} for s in range(store.n_seg)}


def test_random_appends_and_evictions_keep_exact_contents_within_the_bound():
    g = torch.Generator().manual_seed(0)
    n_seg, store = 6, LayerStore(6, HD, torch.float32, torch.device("cpu"), aux_names=("score",))
    model: dict[int, dict[int, torch.Tensor]] = {s: {} for s in range(n_seg)}
    next_pos = torch.zeros(n_seg, dtype=torch.long)
    for it in range(40):
        T = int(torch.randint(1, 9, (1,), generator=g))
        valid = torch.rand(n_seg, T, generator=g) < 0.8  # ragged: segments grow at different rates
        k = torch.randn(n_seg, T, HD, generator=g)
        pos = next_pos[:, None] + valid.long().cumsum(1) - 1
        next_pos += valid.sum(1)
        slots = store.append(k, k * 2, pos, valid)
        for s in range(n_seg):
            for t in range(T):
                if valid[s, t]:
                    model[s][int(pos[s, t])] = k[s, t]
                    assert int(slots[s, t]) >= 0 and torch.equal(store.k[slots[s, t]], k[s, t])
                else:
                    assert int(slots[s, t]) == -1
        check_bound(store)
        if it % 3 == 2:  # evict a random subset
            keep = torch.rand(store.n_seg, store.row_cap, generator=g) < 0.6
            before = storage_bytes(store)
            dropped = store.compact(keep)
            got_pos = store.rows(store.pos)
            for s in range(n_seg):
                survivors = {int(p) for j, p in enumerate(got_pos[s].tolist()) if j < int(store.lens[s])}
                assert survivors <= set(model[s])
                model[s] = {p: model[s][p] for p in survivors}
            assert dropped > 0 and storage_bytes(store) <= before
            check_bound(store)
        got = contents(store)
        for s in range(n_seg):
            assert set(got[s]) == set(model[s])
            for p, row in model[s].items():
                assert torch.equal(got[s][p], row)
                assert torch.equal(store.v[store.row_index[s][store.rows(store.pos)[s] == p][0]], row * 2)


def test_physical_bytes_fall_after_eviction():
    store = LayerStore(4, HD, torch.float32, torch.device("cpu"))
    pos = torch.arange(300).expand(4, 300)
    store.append(torch.randn(4, 300, HD), torch.randn(4, 300, HD), pos, torch.ones(4, 300, dtype=torch.bool))
    full_bytes = storage_bytes(store)
    assert full_bytes >= 4 * 300 * 2 * HD * 4
    keep = store.rows(store.pos) % 10 == 0  # keep 10%
    store.compact(keep)
    assert int(store.lens.sum()) == 4 * 30
    assert storage_bytes(store) <= 0.11 * full_bytes
    check_bound(store)


def dense_attention(store, q, q_pos, window):
    """Per-segment loop over the stored slots: the definition attend_store must match."""
    n_seg, g, T, hd = q.shape
    out = torch.zeros_like(q)
    sums = torch.zeros(n_seg, store.row_cap)
    pos, k, v = store.rows(store.pos), store.rows(store.k), store.rows(store.v)
    for s in range(n_seg):
        n = int(store.lens[s])
        for t in range(T):
            vis = (pos[s, :n] <= q_pos[s, t]) & (pos[s, :n] > q_pos[s, t] - window)
            for h in range(g):
                p = torch.softmax(k[s, :n][vis] @ q[s, h, t] * hd ** -0.5, -1)
                out[s, h, t] = p @ v[s, :n][vis]
                sums[s, :n][vis] += p
    return out, sums


def test_ragged_attention_matches_a_per_segment_loop():
    g = torch.Generator().manual_seed(1)
    store = LayerStore(3, HD, torch.float32, torch.device("cpu"))
    lens = [40, 7, 19]  # very different lengths: several groups, no common capacity
    for s, n in enumerate(lens):
        valid = torch.zeros(3, n, dtype=torch.bool)
        valid[s] = True
        store.append(torch.randn(3, n, HD, generator=g), torch.randn(3, n, HD, generator=g),
                     torch.arange(n).expand(3, n), valid)
    assert not store.uniform and len(store.groups) == 3
    q = torch.randn(3, 2, 4, HD, generator=g)
    q_pos = torch.tensor([[36, 37, 38, 39], [3, 4, 5, 6], [15, 16, 17, 18]])
    valid = torch.ones(3, 4, dtype=torch.bool)
    for window in (None, 5):
        out, sums, _ = attend_store(store, q, q_pos, valid, True, HD ** -0.5, window, "sum")
        ref, ref_sums = dense_attention(store, q, q_pos, window or 10**9)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sums, ref_sums, atol=1e-5, rtol=1e-5)
        out_fast, _, _ = attend_store(store, q, q_pos, valid, True, HD ** -0.5, window, "none")
        torch.testing.assert_close(out_fast, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_generate_reports_memory_true_metrics_for_an_evicting_policy():
    model = tiny_gpt()
    ids = torch.randint(0, 61, (2, 40), generator=torch.Generator().manual_seed(3))
    full = generate(model, ids, build("full"), 10, prefill_chunk_size=16)
    h2o = generate(model, ids, build("h2o", budget_tokens=12), 10, prefill_chunk_size=16)
    per_token = 2 * model.config.head_dim * 4
    n_seg_layers = 2 * model.config.n_kv_head * model.config.n_layer
    assert torch.equal(h2o.kept_per_layer_head, torch.full((2, 2, 2), 12))
    assert h2o.kv_bytes_kept == 12 * n_seg_layers * per_token
    assert h2o.kv_bytes_physical <= 1.05 * h2o.kv_bytes_kept + n_seg_layers * per_token
    assert h2o.kv_bytes_full == full.kv_bytes_full == 49 * n_seg_layers * per_token
    assert h2o.kv_bytes_physical < 0.35 * full.kv_bytes_physical
    assert h2o.kv_bytes_physical_peak > h2o.kv_bytes_physical  # the prefill chunk before eviction
    assert abs(h2o.kept_fraction - 12 / 49) < 1e-6
    with torch.no_grad():  # full through the engine == greedy decoding with the model's own forward
        seq = ids
        for _ in range(10):
            seq = torch.cat([seq, model(seq)[0][:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(full.tokens, seq[:, 40:])
