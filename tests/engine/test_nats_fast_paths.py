"""The fast NAtS paths of the engine against the dense NAtS oracle (NATSBENCH_FAST_MASKS=0: the
policy's dense `visible` mask in prefill and the general per-group decode path).

- `NatsPolicy.visible_until` (one bound per slot) is exactly the dense `visible` mask on real steps;
- `attend_visible_until` (block-wise prefill attention, no (T, row_cap) mask; per segment with left
  padding, `attend_visible_until_batched` all segments at once without) gives the dense path's output to
  float rounding;
- end to end (`generate`) on the shipped tiny-nats-ft and the tiny Llama with its adapter, several
  lengths and chunk sizes, token and chunk types, left padding, a hard cap: the same kept positions and
  types per layer and head, the same greedy tokens, the same byte counts.
"""

from __future__ import annotations

import pytest
import torch

import nats_model.engine.generation as gen
import nats_model.engine.kv_engine as kv_engine
from nats_model.engine.generation import generate
from nats_model.engine.kv_engine import KVEngine, attend_store
from nats_model.engine.prefill_attention import attend_visible_until, attend_visible_until_batched
from nats_model.policies import build
from nats_model.policies.nats import NatsPolicy


@pytest.fixture(scope="module")
def tiny_nats():
    from services.models import load_model

    return load_model("tiny-nats-ft").model


@pytest.fixture(scope="module")
def tiny_llama_nats():
    from services.models import load_model

    return load_model("tiny-llama-base", adapter="models/tiny-llama-nats").model


class _Recorder:
    """Captures every KVEngine made while active (the engine `generate` builds inside)."""

    def __init__(self, monkeypatch):
        self.engines: list[KVEngine] = []
        original = KVEngine.__init__
        recorder = self

        def init(engine, *a, **k):
            original(engine, *a, **k)
            recorder.engines.append(engine)

        monkeypatch.setattr(KVEngine, "__init__", init)


def _kept(engine: KVEngine) -> list[list[list[tuple[int, int]]]]:
    """Per layer, per segment: the sorted (position, order key) pairs the store holds."""
    out = []
    for layer in sorted(engine.cache.layers):
        st = engine.cache.layers[layer]
        segs = []
        for s in range(st.n_seg):
            off, n = int(st.offsets[s]), int(st.lens[s])
            pos = st.pos[off:off + n].tolist()
            key = st.aux["nats_order"][off:off + n].tolist()
            segs.append(sorted(zip(pos, key, strict=True)))
        out.append(segs)
    return out


def _run(monkeypatch, model, ids, policy, fast: bool, **kw):
    monkeypatch.setenv("NATSBENCH_FAST_MASKS", "1" if fast else "0")
    rec = _Recorder(monkeypatch)
    res = generate(model, ids, policy, **kw)
    monkeypatch.undo()
    return res, rec.engines[-1]


def _same(monkeypatch, model, ids, policy_kw=None, **kw):
    policy_kw = policy_kw or {}
    dense, e_dense = _run(monkeypatch, model, ids, NatsPolicy(**policy_kw), False, **kw)
    fast, e_fast = _run(monkeypatch, model, ids, NatsPolicy(**policy_kw), True, **kw)
    assert torch.equal(dense.tokens, fast.tokens)
    assert _kept(e_dense) == _kept(e_fast)
    assert torch.equal(dense.kept_per_layer_head, fast.kept_per_layer_head)
    for key in ("kv_bytes_physical", "kv_bytes_kept", "kv_bytes_full", "kept_fraction"):
        assert getattr(dense, key) == getattr(fast, key), key
    return dense, fast


@pytest.mark.parametrize(("length", "chunk"), [(300, 64), (700, 512), (1100, 512), (900, 100), (257, None)])
def test_tiny_nats_ft_same_kept_sets_and_tokens(monkeypatch, tiny_nats, length, chunk):
    ids = torch.randint(0, 256, (1, length), generator=torch.Generator().manual_seed(length))
    dense, _ = _same(monkeypatch, tiny_nats, ids, max_new_tokens=10, prefill_chunk_size=chunk)
    assert dense.kept_fraction < 0.5  # NAtS evicted: the comparison covers real eviction


@pytest.mark.parametrize(("length", "chunk"), [(400, 128), (1000, 512)])
def test_tiny_llama_adapter_same_kept_sets_and_tokens(monkeypatch, tiny_llama_nats, length, chunk):
    ids = torch.randint(0, 256, (1, length), generator=torch.Generator().manual_seed(length + 1))
    _same(monkeypatch, tiny_llama_nats, ids, max_new_tokens=10, prefill_chunk_size=chunk)


@pytest.mark.parametrize("pad", [450, 256])  # 256: a sequence's first real chunk has no padding (empty store)
def test_left_padding_batch(monkeypatch, tiny_nats, pad):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 256, (3, 600), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :37] = 0
    mask[2, :pad] = 0
    _same(monkeypatch, tiny_nats, ids, max_new_tokens=8, prefill_chunk_size=128, attention_mask=mask)


@pytest.mark.parametrize("chunk_size", [4, 7])
def test_chunk_types(monkeypatch, tiny_nats, chunk_size):
    ids = torch.randint(0, 256, (1, 500), generator=torch.Generator().manual_seed(chunk_size))
    _same(monkeypatch, tiny_nats, ids, {"chunk_size": chunk_size}, max_new_tokens=8, prefill_chunk_size=96)


def test_with_a_hard_cap(monkeypatch, tiny_nats):
    ids = torch.randint(0, 256, (1, 800), generator=torch.Generator().manual_seed(11))
    _same(monkeypatch, tiny_nats, ids, {"budget": 0.05}, max_new_tokens=8, prefill_chunk_size=256)


def _prefill_steps(model, ids, policy, chunk, mask=None):
    """Drive prefill through an engine whose `attend` checks, per layer and chunk, the bound against
    the dense mask and the block-wise attention against the dense attention; returns checks done."""
    from nats_model.models.bridge import bridge_for

    bridge = bridge_for(model)
    policy.bind_model(model)
    policy.reset()
    engine = KVEngine(policy, ids.shape[0])
    engine.fast_masks = False  # the engine runs the dense oracle; the check recomputes the fast way
    checks = []
    original_visible = policy.visible

    def visible(store, step):
        dense = original_visible(store, step)
        until = policy.visible_until(store, step)
        if dense is None:
            assert until is None
            return dense
        occupied = store.valid_rows()
        m = step.q_pos[:, :, None]
        fast_mask = (m <= until[:, None, :]) & occupied[:, None, :]
        rule = dense & occupied[:, None, :] & (store.rows(store.pos, fill=-1)[:, None, :] <= m)
        causal = fast_mask & (store.rows(store.pos, fill=-1)[:, None, :] <= m)
        real = step.q_valid[:, :, None]
        assert torch.equal(rule & real, causal & real)
        ref, _, _ = attend_store(store, step.q, step.q_pos, step.q_valid, bool(step.q_valid.all()), step.scale,
                                 None, "none", visible=dense, chunk_in_order=True)
        got = attend_visible_until(store, step.q, step.q_pos, step.q_valid, bool(step.q_valid.all()), until,
                                   step.scale, block=48)
        torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)
        if bool(step.q_valid.all()):  # no padding: the batched form too
            batched = attend_visible_until_batched(store, step.q, step.q_pos, until, step.scale, block=48)
            torch.testing.assert_close(batched, ref, atol=2e-5, rtol=1e-4)
        checks.append(int(until.shape[1]))
        return dense

    policy.visible = visible
    mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask
    with torch.no_grad(), bridge.session(engine):
        gen._prefill(bridge, engine, ids, mask, chunk)
    return checks


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_visible_until_is_the_dense_rule_and_attention_matches(tiny_nats, chunk_size):
    ids = torch.randint(0, 256, (2, 700), generator=torch.Generator().manual_seed(5))
    checks = _prefill_steps(tiny_nats, ids, NatsPolicy(chunk_size=chunk_size), 160)
    assert len(checks) == 3 * 5  # every layer of every chunk was checked


def test_build_registry_policy_is_the_fast_one():
    assert hasattr(build("nats"), "visible_until")


def test_fast_paths_are_the_ones_that_ran(monkeypatch, tiny_nats):
    """The end-to-end comparisons above exercise the fast paths: prefill through `attend_visible_until`,
    decode through the packed attention and the packed eviction (heads of unequal counts)."""
    import nats_model.engine.decode_attention as da

    calls = {"prefill": 0, "attend": 0, "select": 0}

    def count(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(kv_engine, "attend_visible_until_batched", count("prefill", kv_engine.attend_visible_until_batched))
    monkeypatch.setattr(kv_engine, "attend_packed_decode", count("attend", da.attend_packed_decode))
    monkeypatch.setattr(NatsPolicy, "_select_decode_packed", count("select", NatsPolicy._select_decode_packed))
    ids = torch.randint(0, 256, (1, 700), generator=torch.Generator().manual_seed(2))
    generate(tiny_nats, ids, NatsPolicy(), max_new_tokens=6, prefill_chunk_size=256)
    assert calls["prefill"] == 3 * 3  # 3 layers x 3 chunks
    assert calls["attend"] > 0 and calls["select"] > 0


def test_packed_decode_attention_matches_the_group_path():
    from nats_model.engine.cache import LayerStore
    from nats_model.engine.decode_attention import attend_packed_decode

    g = torch.Generator().manual_seed(0)
    store = LayerStore(4, 16, torch.float32, torch.device("cpu"))
    lens = [30, 5, 61, 17]
    T = max(lens)
    k, v = torch.randn(4, T, 16, generator=g), torch.randn(4, T, 16, generator=g)
    pos = torch.arange(T).expand(4, T)
    valid = torch.arange(T)[None, :] >= (T - torch.tensor(lens))[:, None]
    store.append(k, v, pos, valid)
    assert not store.uniform or store.common_len() < 0
    q = torch.randn(4, 2, 1, 16, generator=g)
    ref, _, _ = attend_store(store, q, torch.full((4, 1), T), torch.ones(4, 1, dtype=torch.bool), True, 0.25, None,
                             "none", decode=True)
    torch.testing.assert_close(attend_packed_decode(store, q, 0.25), ref, atol=1e-6, rtol=1e-5)


def test_batched_prefill_with_a_fresh_sequence_beside_one_with_history(tiny_nats):
    """Row 1's first real chunk (no padding in it) comes when row 0 already holds tokens: in the batched
    prefill row 1's segments have no free key for a block while row 0's have some (the kernel gives a
    row without keys lse 0: it must get no weight)."""
    ids = torch.randint(0, 256, (2, 480), generator=torch.Generator().manual_seed(9))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, :160] = False  # exactly the first chunk
    checks = _prefill_steps(tiny_nats, ids, NatsPolicy(), 160, mask)
    assert len(checks) == 3 * 3
