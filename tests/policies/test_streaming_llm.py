"""The `streaming_llm` policy: its own tests (the per-step reference is in test_policies_vs_reference).

Under "prompt" nothing is evicted before the prompt's last chunk, and the set kept then is the one
streaming eviction reaches (sinks + the most recent tokens depend only on the tokens seen).
"""

import pytest
import torch

from nats_model.engine.generation import generate
from nats_model.policies import build

from ._prompt_reference import final_kept, run_prompt_protocol
from .kv_reference import RecordingEngine, drive, keep_streaming, physical_bound_ok, tiny_gpt


@pytest.fixture(scope="module")
def model():
    return tiny_gpt(seed=17, d_model=32)


@pytest.fixture(scope="module")
def prompt():
    ids = torch.randint(0, 61, (2, 27), generator=torch.Generator().manual_seed(18))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, :4] = False
    return ids, mask


@pytest.mark.parametrize("params", [{"budget_tokens": 8, "n_sink": 3}, {"budget": 0.4, "n_sink": 1}])
def test_prompt_protocol_reaches_the_streaming_set(model, prompt, params):
    ids, mask = prompt
    got, engine = run_prompt_protocol(model, build("streaming_llm", **params), ids, mask, 5, n_decode=0)
    for i, step in enumerate(engine.history[:-2]):  # before the prompt's last chunk: every real token kept
        for (_, b, _), kept in step.items():
            assert kept == list(range(int(mask[b, : (i // 2 + 1) * 5].sum())))
    policy = build("streaming_llm", **params)
    streaming = RecordingEngine(policy, batch=2)
    drive(model, streaming, policy.rope_positions, ids, mask, 5, n_decode=0)
    assert got == final_kept(streaming.history)
    n_real = mask.sum(1)
    for (_, b, _), kept in got.items():  # and it is the rule's set
        n = int(n_real[b])
        budget = params.get("budget_tokens") or int(torch.ceil(torch.tensor(n * params["budget"] - 1e-9)))
        entries = [{"pos": i} for i in range(n)]
        assert kept == [e["pos"] for e in keep_streaming(entries, n, params["n_sink"], budget)]


def test_bytes_follow_the_kept_bytes(model, prompt):
    ids, mask = prompt
    got = generate(model, ids, build("streaming_llm", budget_tokens=7), 6, attention_mask=mask, prefill_chunk_size=5)
    assert got.kept_per_layer_head.eq(7).all()
    assert physical_bound_ok(got, n_layers=2, batch=2, n_kv_heads=2, head_dim=8)


def test_rerotate_without_theta_is_refused(model, prompt):
    ids, mask = prompt
    policy = build("streaming_llm", budget_tokens=6, positions="rerotate")
    engine = RecordingEngine(policy, batch=2)  # driven by hand: nobody sets rope_theta
    with pytest.raises(ValueError, match="positions='rerotate' needs rope_theta"):
        drive(model, engine, policy.rope_positions, ids, mask, 27, n_decode=0)


@pytest.mark.parametrize("params, needle", [
    ({"budget_tokens": 8, "n_sink": -1}, "streaming_llm: n_sink must be an int >= 0"),
    ({"budget_tokens": 8, "positions": "shifted"}, "streaming_llm: positions must be one of"),
    ({"budget_tokens": 4, "n_sink": 4}, "budget_tokens (4) must exceed n_sink (4)"),
    ({}, "needs a budget"),
])
def test_bad_parameters_are_named(params, needle):
    with pytest.raises(ValueError) as err:
        build("streaming_llm", **params)
    assert needle in str(err.value)
