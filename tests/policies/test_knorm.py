"""The `knorm` policy against a brute-force reference: under "prompt", each head keeps the budget's
keys of smallest L2 norm among the prompt's real keys (computed from a full-cache run), then decode
tokens are appended; the streaming form is in test_policies_vs_reference (kv_reference.keep_knorm)."""

import pytest
import torch

from nats_model.engine.generation import generate
from nats_model.policies import build

from ._prompt_reference import budget_tokens, expected_with_decode, run_prompt_protocol, top_positions
from .kv_reference import physical_bound_ok, prompt_tensors, tiny_gpt


@pytest.fixture(scope="module")
def model():
    return tiny_gpt(seed=5, d_model=32)


@pytest.fixture(scope="module")
def prompt():
    ids = torch.randint(0, 61, (2, 28), generator=torch.Generator().manual_seed(8))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, :5] = False
    return ids, mask


@pytest.mark.parametrize("params, chunk", [({"budget_tokens": 9}, 5), ({"budget": 0.3}, 28), ({"budget": 0.5}, 1)])
def test_prompt_protocol_keeps_the_smallest_norms(model, prompt, params, chunk):
    ids, mask = prompt
    policy = build("knorm", **params)
    got, _ = run_prompt_protocol(model, policy, ids, mask, chunk, n_decode=5)
    tensors = prompt_tensors(model, ids, mask, chunk)
    want = {}
    for layer, per_b in tensors.items():
        for b, (_, k, _) in enumerate(per_b):
            n = k.shape[1]
            budget = budget_tokens(n, params.get("budget"), params.get("budget_tokens"))
            for h in range(k.shape[0]):
                want[(layer, b, h)] = top_positions((-k[h].norm(dim=-1)).tolist(), budget)
    assert got == expected_with_decode(want, mask, 5)
    assert all(len(v) < int(mask[key[1]].sum()) for key, v in want.items())  # the prompt was compressed


def test_physical_bytes_follow_the_kept_bytes(model, prompt):
    ids, mask = prompt
    full = generate(model, ids, build("full"), 6, attention_mask=mask)
    got = generate(model, ids, build("knorm", budget=0.25), 6, attention_mask=mask, prefill_chunk_size=7)
    assert got.kv_bytes_kept < 0.5 * full.kv_bytes_kept
    assert physical_bound_ok(got, n_layers=2, batch=2, n_kv_heads=2, head_dim=8)


def test_declares_its_protocols():
    cls = type(build("knorm", budget=0.5))
    assert cls.default_protocol == "prompt" and cls.decode_evicts is False
    assert set(cls.protocols) == {"streaming", "prompt", "context"}


@pytest.mark.parametrize("params, needle", [({}, "knorm: needs a budget"), ({"budget": 1.5}, "budget must be a fraction"),
                                            ({"budget": 0.2, "window": 3}, "has no parameter 'window'")])
def test_bad_parameters_are_named(params, needle):
    with pytest.raises(ValueError) as err:
        build("knorm", **params)
    assert needle in str(err.value)
