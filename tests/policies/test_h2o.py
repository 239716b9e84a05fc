"""The `h2o` policy: its own tests (the streaming reference is in test_policies_vs_reference).

Under "prompt" it keeps every token until the prompt's last chunk, then exactly the budget: the
recent window plus the heavy hitters of the attention accumulated over every prompt query, which a
brute-force reference computes from the prompt's real queries and keys; decode keeps evicting.
"""

import math

import pytest
import torch

from nats_model.engine.generation import generate
from nats_model.policies import build

from ._prompt_reference import budget_tokens, run_prompt_protocol
from .kv_reference import keep_h2o, physical_bound_ok, prompt_tensors, tiny_gpt


@pytest.fixture(scope="module")
def model():
    return tiny_gpt(seed=15, d_model=32)


@pytest.fixture(scope="module")
def prompt():
    ids = torch.randint(0, 61, (2, 30), generator=torch.Generator().manual_seed(16))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, :6] = False
    return ids, mask


@pytest.mark.parametrize("params, chunk", [({"budget_tokens": 10}, 7), ({"budget": 0.3, "recent_ratio": 0.25}, 30)])
def test_prompt_protocol_compresses_once_with_all_prompt_attention(model, prompt, params, chunk):
    ids, mask = prompt
    policy = build("h2o", **params)
    got, engine = run_prompt_protocol(model, policy, ids, mask, chunk, n_decode=0)
    n_layers = 2
    before_last = engine.history[:-n_layers]  # layer calls before the prompt's last chunk
    for i, step in enumerate(before_last):  # nothing evicted: every real token seen so far is kept
        for (_, b, _), kept in step.items():
            assert kept == list(range(int(mask[b, : (i // n_layers + 1) * chunk].sum())))
    want = {}
    for layer, per_b in prompt_tensors(model, ids, mask, chunk).items():
        for b, (q, k, _) in enumerate(per_b):
            hkv, n = k.shape[0], k.shape[1]
            g, hd = q.shape[0] // hkv, q.shape[2]
            budget = budget_tokens(n, params.get("budget"), params.get("budget_tokens"))
            for h in range(hkv):
                score = [0.0] * n
                for m in range(n):
                    for j in range(g):
                        p = torch.softmax((k[h, : m + 1] @ q[h * g + j, m]).double() / math.sqrt(hd), -1)
                        for i in range(m + 1):
                            score[i] += float(p[i])
                entries = [{"pos": i, "score": score[i]} for i in range(n)]
                want[(layer, b, h)] = [e["pos"] for e in keep_h2o(entries, n, budget, policy.recent_ratio)]
    assert got == want


def test_prompt_protocol_then_decode_keeps_the_budget(model, prompt):
    ids, mask = prompt
    got = generate(model, ids, build("h2o", budget_tokens=9), 6, attention_mask=mask, compress="prompt",
                   prefill_chunk_size=8)
    assert got.kept_per_layer_head.eq(9).all()  # decode_evicts: the budget holds through decode
    assert physical_bound_ok(got, n_layers=2, batch=2, n_kv_heads=2, head_dim=8)


def test_streaming_bytes_and_declaration(model, prompt):
    ids, mask = prompt
    full = generate(model, ids, build("full"), 5, attention_mask=mask)
    got = generate(model, ids, build("h2o", budget=0.25), 5, attention_mask=mask, prefill_chunk_size=4)
    assert got.kv_bytes_physical < 0.5 * full.kv_bytes_physical
    assert physical_bound_ok(got, n_layers=2, batch=2, n_kv_heads=2, head_dim=8)
    cls = type(build("h2o", budget=0.5))
    assert cls.default_protocol == "streaming" and cls.decode_evicts and "prompt" in cls.protocols


@pytest.mark.parametrize("params, needle", [({"budget": 0.3, "recent_ratio": 1.5}, "h2o: recent_ratio must be in [0, 1]"),
                                            ({}, "h2o: needs a budget"),
                                            ({"budget": 0.3, "budget_tokens": 4}, "not both")])
def test_bad_parameters_are_named(params, needle):
    with pytest.raises(ValueError) as err:
        build("h2o", **params)
    assert needle in str(err.value)
