"""The `pyramidkv` policy against a brute-force reference: kvpress' layer budgets in plain Python,
SnapKV's scores written out from the prompt's real queries and keys, then the top of each head."""

import pytest
import torch

from nats_model.engine.generation import generate
from nats_model.policies import build

from ._prompt_reference import (
    budget_tokens,
    expected_with_decode,
    pyramid_budget,
    run_prompt_protocol,
    snap_pooled,
    top_positions,
)
from .kv_reference import physical_bound_ok, prompt_tensors, tiny_gpt

N_LAYERS = 4


@pytest.fixture(scope="module")
def model():
    return tiny_gpt(seed=11, d_model=32, n_layer=N_LAYERS)


@pytest.fixture(scope="module")
def prompt():
    ids = torch.randint(0, 61, (2, 40), generator=torch.Generator().manual_seed(12))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, :6] = False
    return ids, mask


CASES = [  # params, chunk
    ({"budget": 0.4, "window_size": 4, "kernel_size": 3, "beta": 2}, 9),
    ({"budget_tokens": 14, "window_size": 3, "pooling": "avg", "beta": 3.5}, 40),
    ({"budget": 0.3, "window_size": 4, "beta": 20}, 8),  # min < window: kvpress falls back to SnapKV
]


@pytest.mark.parametrize("params, chunk", CASES)
def test_prompt_protocol_matches_reference(model, prompt, params, chunk):
    ids, mask = prompt
    policy = build("pyramidkv", **params)
    got, _ = run_prompt_protocol(model, policy, ids, mask, chunk, n_decode=3)
    want, per_layer = {}, {}
    for layer, per_b in prompt_tensors(model, ids, mask, chunk).items():
        for b, (q, k, _) in enumerate(per_b):
            hkv, n = k.shape[0], k.shape[1]
            g = q.shape[0] // hkv
            uniform = budget_tokens(n, params.get("budget"), params.get("budget_tokens"))
            budget = pyramid_budget(n, uniform, policy.window_size, policy.beta, layer, N_LAYERS)
            per_layer.setdefault(b, []).append(budget)
            n_win = min(policy.window_size, budget, n)
            for h in range(hkv):
                pooled = snap_pooled(q[h * g:(h + 1) * g], k[h], n_win, policy.window_size, policy.kernel_size,
                                     policy.pooling)
                top = top_positions(pooled, budget - n_win) if budget < n else list(range(n))
                want[(layer, b, h)] = sorted(set(top) | set(range(n - n_win, n)))
    assert got == expected_with_decode(want, mask, 3)
    for b, budgets in per_layer.items():  # the same total as SnapKV at the uniform budget
        n = int(mask[b].sum())
        uniform = budget_tokens(n, params.get("budget"), params.get("budget_tokens"))
        assert abs(sum(budgets) - N_LAYERS * uniform) <= N_LAYERS / 2
        if params["beta"] < 20:
            assert budgets == sorted(budgets, reverse=True) and budgets[0] > budgets[-1]  # a real pyramid


def test_physical_bytes_and_layer_count_from_the_model(model, prompt):
    ids, mask = prompt
    got = generate(model, ids, build("pyramidkv", budget=0.4, window_size=4, beta=2), 4, attention_mask=mask,
                   compress="prompt")
    kept = got.kept_per_layer_head[:, 0, 0]  # (layers,) decreasing with depth
    assert bool((kept[:-1] > kept[1:]).all())
    assert physical_bound_ok(got, n_layers=N_LAYERS, batch=2, n_kv_heads=2, head_dim=8)


@pytest.mark.parametrize("params, needle", [
    ({"budget": 0.2, "beta": 0.5}, "pyramidkv: beta must be a number >= 1"),
    ({"budget": 0.2, "kernel_size": 4}, "kernel_size must be odd"),
    ({}, "needs a budget"),
])
def test_bad_parameters_are_named(params, needle):
    with pytest.raises(ValueError) as err:
        build("pyramidkv", **params)
    assert needle in str(err.value)
