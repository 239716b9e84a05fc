"""Kept positions per (layer, sequence, KV head) after every step equal the brute-force reference.

The real engine (memory-true cache + policy files) and `kv_reference.ReferenceEngine` (Python
lists, the papers' rules written out) are driven with the same tiny GPT, the same prompt (batch 2,
left padding, GQA) and the same prefill chunking; the kept sets must match after every layer
call and the logits must agree.
"""

import pytest
import torch

from nats_model.policies import build

from .kv_reference import RecordingEngine, ReferenceEngine, assert_same_run, drive, tiny_gpt

CASES = [
    ("full", {}, 7),
    ("streaming_llm", {"budget_tokens": 9, "n_sink": 4}, 6),
    ("streaming_llm", {"budget": 0.3, "n_sink": 2}, 40),
    ("streaming_llm", {"budget_tokens": 7, "n_sink": 3, "positions": "rerotate"}, 5),
    ("h2o", {"budget_tokens": 8}, 6),
    ("h2o", {"budget": 0.4, "recent_ratio": 0.25}, 9),
    ("h2o", {"budget": 0.25}, 40),
    ("knorm", {"budget_tokens": 8}, 6),
    ("knorm", {"budget": 0.3}, 40),
]


@pytest.fixture(scope="module")
def model():
    return tiny_gpt()


@pytest.fixture(scope="module")
def prompt():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 61, (2, 30), generator=g)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, :7] = False  # sequence 1 is left-padded
    return ids, mask


@pytest.mark.parametrize("name, params, chunk", CASES)
def test_kept_positions_match_reference(model, prompt, name, params, chunk):
    ids, mask = prompt
    policy = build(name, **params)
    if name == "streaming_llm":
        policy.rope_theta = model.config.rope_theta
    policy.reset()
    engine = RecordingEngine(policy, batch=2)
    ref = ReferenceEngine(name, batch=2, budget=params.get("budget"), budget_tokens=params.get("budget_tokens"),
                          n_sink=params.get("n_sink", 4), recent_ratio=params.get("recent_ratio", 0.5),
                          rerotate=params.get("positions") == "rerotate", rope_theta=model.config.rope_theta)
    assert_same_run(model, engine, ref, policy.rope_positions, ids, mask, chunk, n_decode=12)
    if name != "full":  # the policy really evicted: every head ends within its budget
        final = engine.history[-1]
        seen = mask.sum(1) + 12
        for (_, b, _), kept in final.items():
            assert len(kept) < int(seen[b])


def test_streaming_original_vs_rerotate_differ_only_in_positions(model, prompt):
    """Without eviction both position modes are the full cache; with eviction they diverge."""
    ids, mask = prompt
    outs = {}
    for mode in ("original", "rerotate"):
        policy = build("streaming_llm", budget_tokens=64, positions=mode)
        policy.rope_theta = model.config.rope_theta
        engine = RecordingEngine(policy, batch=2)
        outs[mode] = drive(model, engine, policy.rope_positions, ids, mask, 8, n_decode=4)[1]
    full_engine = RecordingEngine(build("full"), batch=2)
    full = drive(model, full_engine, lambda p, k, v: p, ids, mask, 8, n_decode=4)[1]
    for a, b, c in zip(outs["original"], outs["rerotate"], full, strict=True):
        torch.testing.assert_close(a, c, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(b, c, atol=1e-4, rtol=1e-4)
