"""The variable-length Triton decode kernel (`nats_model.kernels.decode`) against the engine's torch
path `attend_store`, on stores whose segments hold different counts (Triton interpreter on the CPU),
and the engine's dispatch: never on the CPU, the same outputs when forced on."""

import os

import pytest
import torch

from nats_model.engine import kv_engine
from nats_model.engine.cache import LayerStore
from nats_model.engine.generation import generate
from nats_model.engine.kv_engine import KVEngine, attend_store
from nats_model.kernels.decode import ENV_SWITCH, use_decode_kernel, varlen_decode_attention
from nats_model.policies import build


def varied_store(counts, hd, dtype, g_heads, seed, evict=True):
    """A store whose segment s kept `counts[s]` prompt tokens (left padding), then lost a random
    part of them (so slots hold shuffled positions), then appended this step's decode token.
    Returns the store, q (n_seg, g, 1, hd) and the query positions (n_seg, 1)."""
    g = torch.Generator().manual_seed(seed)
    n_seg, T = len(counts), max(counts)
    store = LayerStore(n_seg, hd, dtype, torch.device("cpu"))
    valid = torch.arange(T)[None, :] >= (T - torch.tensor(counts))[:, None]  # left padding
    pos = (valid.long().cumsum(1) - 1).clamp(min=0)
    store.append(torch.randn(n_seg, T, hd, generator=g).to(dtype), torch.randn(n_seg, T, hd, generator=g).to(dtype),
                 pos, valid)
    if evict:
        keep = torch.rand(n_seg, store.row_cap, generator=g) < 0.7
        keep[:, 0] = True  # every non-empty segment keeps something
        store.compact(keep)
    q_pos = torch.tensor(counts)[:, None]  # the decode token comes after each sequence's prompt
    store.append(torch.randn(n_seg, 1, hd, generator=g).to(dtype), torch.randn(n_seg, 1, hd, generator=g).to(dtype),
                 q_pos, torch.ones(n_seg, 1, dtype=torch.bool), True)
    q = torch.randn(n_seg, g_heads, 1, hd, generator=g).to(dtype)
    return store, q, q_pos


def run_kernel(store, q, q_pos, scale, window, **kw):
    n_seg, g_heads, _, hd = q.shape
    out, lse = varlen_decode_attention(q.view(n_seg, g_heads, hd), store.k, store.v, store.pos, store.offsets,
                                       store.lens, q_pos[:, 0], scale, window, **kw)
    return out.view(n_seg, g_heads, 1, hd), lse


def reference_lse(store, q, q_pos, scale, window):
    """log-sum-exp of scale * q.k over each segment's visible kept keys, in float64."""
    rows = []
    for s in range(store.n_seg):
        o, n = int(store.offsets[s]), int(store.lens[s])
        K, P = store.k[o:o + n].double(), store.pos[o:o + n]
        vis = P <= q_pos[s, 0]
        if window is not None:
            vis &= P > q_pos[s, 0] - window
        sc = (q[s, :, 0].double() @ K.T) * scale
        rows.append(torch.logsumexp(sc.masked_fill(~vis, float("-inf")), -1))
    return torch.stack(rows)


@pytest.mark.parametrize("g_heads", [1, 4])
@pytest.mark.parametrize("window", [None, 9])
@pytest.mark.parametrize("splits", [None, 3])
def test_kernel_equals_attend_store_fp32(g_heads, window, splits):
    # counts: 0 prompt tokens (1 key: the decode token), one below, at and above a block of 16
    counts = [0, 15, 16, 37, 70]
    store, q, q_pos = varied_store(counts, 32, torch.float32, g_heads, seed=1)
    assert store.common_len() == -1  # not the uniform path
    assert int(store.lens[0]) == 1
    scale = 32 ** -0.5
    want, _, _ = attend_store(store, q, q_pos, torch.ones_like(q_pos, dtype=torch.bool), True, scale, window, "none",
                              decode=True)
    got, lse = run_kernel(store, q, q_pos, scale, window, block_n=16, num_splits=splits)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(lse.double(), reference_lse(store, q, q_pos, scale, window), atol=1e-5, rtol=1e-5)


def test_kernel_on_groups_of_different_capacities_and_odd_head_dim():
    # lengths far apart: the store lays segments out in capacity groups (not one strided row view)
    store, q, q_pos = varied_store([3, 90, 0, 41], 24, torch.float32, 2, seed=2, evict=False)
    assert not store.uniform and len(store.groups) > 1
    scale = 0.3
    want, _, _ = attend_store(store, q, q_pos, torch.ones_like(q_pos, dtype=torch.bool), True, scale, None, "none",
                              decode=True)
    got, _ = run_kernel(store, q, q_pos, scale, None, block_n=32)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                    reason="Triton 3.9's interpreter reads bfloat16 tensors as raw bits (garbage); runs on CUDA")
def test_kernel_bf16_within_tolerance():
    store, q, q_pos = varied_store([5, 33, 64, 17], 32, torch.bfloat16, 2, seed=3)
    scale = 32 ** -0.5
    f32 = LayerStore(store.n_seg, 32, torch.float32, torch.device("cpu"))
    f32.__dict__.update({k: v for k, v in store.__dict__.items() if k not in ("k", "v", "dtype")})
    f32.k, f32.v = store.k.float(), store.v.float()
    want, _, _ = attend_store(f32, q.float(), q_pos, torch.ones_like(q_pos, dtype=torch.bool), True, scale, 12,
                              "none", decode=True)
    got, _ = run_kernel(store, q, q_pos, scale, 12, block_n=16)
    assert got.dtype == torch.bfloat16
    assert float((got.float() - want).abs().max()) < 3e-2


def test_kernel_rejects_bad_arguments():
    store, q, q_pos = varied_store([4, 6], 16, torch.float32, 1, seed=4)
    with pytest.raises(ValueError, match="block_n"):
        run_kernel(store, q, q_pos, 0.25, None, block_n=48)
    with pytest.raises(ValueError, match="sliding_window"):
        run_kernel(store, q, q_pos, 0.25, 0)


def _nats_gpt():
    from nats_model.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=61, n_layer=2, n_head=4, n_kv_head=2, d_model=64, max_seq_len=128,
                         attention="nats", window=3, global_bias=0.0)).eval()


def test_cpu_engine_never_takes_the_kernel(monkeypatch):
    assert not use_decode_kernel(torch.device("cpu"))

    def boom(*a, **k):
        raise AssertionError("the Triton decode kernel ran on the CPU")

    monkeypatch.setattr(kv_engine, "varlen_decode_attention", boom)
    ids = torch.randint(0, 61, (2, 14), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, :5] = False  # left padding: the two sequences' heads hold different counts
    res = generate(_nats_gpt(), ids, build("full"), max_new_tokens=4, attention_mask=mask)
    assert res.tokens.shape == (2, 4)


def test_env_switch_turns_it_off(monkeypatch):
    monkeypatch.setattr("nats_model.kernels.decode.triton_available", lambda: True)
    assert use_decode_kernel(torch.device("cuda"))
    monkeypatch.setenv(ENV_SWITCH, "0")
    assert not use_decode_kernel(torch.device("cuda"))
    assert not use_decode_kernel(torch.device("cpu"))


def test_engine_with_kernel_forced_matches_torch_path(monkeypatch):
    """NAtS keeps different counts per head: with the kernel forced on (interpreter) the engine's
    decode takes it on the non-uniform steps, and logits match the torch path."""
    from nats_model.engine.generation import _bind, _decode_step, _prefill
    from nats_model.models.bridge import bridge_for

    model = _nats_gpt()
    ids = torch.randint(0, 61, (2, 20), generator=torch.Generator().manual_seed(7))
    calls = []
    real = kv_engine.varlen_decode_attention

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(kv_engine, "varlen_decode_attention", counted)

    def run(force: bool):
        bridge = bridge_for(model)
        policy = build("nats", budget_tokens=6)
        _bind(policy, bridge)
        policy.reset()
        engine = KVEngine(policy, ids.shape[0], triton_decode=force)
        if force:
            monkeypatch.setattr(engine, "_kernel_on", lambda device: True)
        logits_all, uneven = [], 0
        with torch.no_grad(), bridge.session(engine):
            logits = _prefill(bridge, engine, ids, torch.ones_like(ids, dtype=torch.bool), 8)
            tok, pos = logits.argmax(-1), torch.full((ids.shape[0],), ids.shape[1])
            for _ in range(6):
                uneven += sum(s.common_len() == -1 for s in engine.cache.layers.values())
                logits = _decode_step(bridge, engine, tok, pos)
                logits_all.append(logits)
                tok, pos = logits.argmax(-1), pos + 1
        return torch.stack(logits_all), uneven

    want, uneven = run(False)
    assert not calls
    got, _ = run(True)
    assert uneven > 0 and len(calls) > 0  # some steps were non-uniform and went to the kernel
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
