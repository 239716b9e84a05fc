"""The `adakv` policy against a brute-force reference: SnapKV's pooled scores written out from the
prompt's real queries and keys, each head's window and safeguard kept, then the lowest of the rest of
all the sequence's heads together dropped until the layer holds Hkv x budget tokens; heads end with
different counts, physically."""

import math

import pytest
import torch

from nats_model.engine.generation import generate
from nats_model.policies import build

from ._prompt_reference import (
    budget_tokens,
    expected_with_decode,
    run_prompt_protocol,
    snap_pooled,
    top_positions,
)
from .kv_reference import physical_bound_ok, prompt_tensors, tiny_gpt


@pytest.fixture(scope="module")
def model():
    return tiny_gpt(seed=13, d_model=32, n_kv_head=2)


@pytest.fixture(scope="module")
def prompt():
    ids = torch.randint(0, 61, (2, 36), generator=torch.Generator().manual_seed(14))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, :5] = False
    return ids, mask


def reference(tensors, params, policy):
    want = {}
    for layer, per_b in tensors.items():
        for b, (q, k, _) in enumerate(per_b):
            hkv, n = k.shape[0], k.shape[1]
            g = q.shape[0] // hkv
            B = budget_tokens(n, params.get("budget"), params.get("budget_tokens"))
            if n <= B:
                want.update({(layer, b, h): list(range(n)) for h in range(hkv)})
                continue
            n_win = min(policy.window_size, B, n)
            kept, candidates = {}, []
            for h in range(hkv):
                pooled = snap_pooled(q[h * g:(h + 1) * g], k[h], n_win, policy.window_size, policy.kernel_size,
                                     policy.pooling)
                safe = top_positions(pooled, max(0, math.floor(B * policy.alpha_safeguard) - n_win))
                kept[h] = set(range(n - n_win, n)) | set(safe)
                candidates += [(pooled[p], -p, -h, h, p) for p in range(n - n_win) if p not in kept[h]]
            n_drop = hkv * (n - B)
            for *_, h, p in sorted(candidates)[n_drop:]:  # lowest first, ties: later position, later head
                kept[h].add(p)
            want.update({(layer, b, h): sorted(kept[h]) for h in range(hkv)})
    return want


CASES = [  # params, chunk
    ({"budget": 0.4, "window_size": 4, "kernel_size": 3}, 9),
    ({"budget_tokens": 12, "window_size": 3, "pooling": "avg", "alpha_safeguard": 0.5}, 36),
    ({"budget": 0.3, "window_size": 2, "alpha_safeguard": 0.0}, 7),
    ({"budget": 0.5, "window_size": 4, "alpha_safeguard": 1.0}, 5),  # every head its own top: SnapKV
]


@pytest.mark.parametrize("params, chunk", CASES)
def test_prompt_protocol_matches_reference(model, prompt, params, chunk):
    ids, mask = prompt
    policy = build("adakv", **params)
    got, _ = run_prompt_protocol(model, policy, ids, mask, chunk, n_decode=3)
    want = reference(prompt_tensors(model, ids, mask, chunk), params, policy)
    assert got == expected_with_decode(want, mask, 3)
    if params.get("alpha_safeguard", 0.2) == 1.0:  # the safeguard is the whole budget: SnapKV's kept set
        snap = build("snapkv", **{k: v for k, v in params.items() if k != "alpha_safeguard"})
        assert got == run_prompt_protocol(model, snap, ids, mask, chunk, n_decode=3)[0]


def test_heads_hold_different_counts_physically(model, prompt):
    ids, mask = prompt
    got = generate(model, ids, build("adakv", budget=0.3, window_size=2, alpha_safeguard=0.0), 4,
                   attention_mask=mask, compress="prompt")
    per_head = got.kept_per_layer_head  # (layers, B, Hkv)
    assert bool((per_head.amax(-1) != per_head.amin(-1)).any())  # unequal per head ...
    n_real = mask.sum(1)
    budget = torch.ceil(n_real.double() * 0.3).long()
    assert torch.equal(per_head.sum(-1), (2 * (budget + 3))[None].expand(per_head.shape[0], -1))  # ... same total
    assert physical_bound_ok(got, n_layers=2, batch=2, n_kv_heads=2, head_dim=8)


@pytest.mark.parametrize("params, needle", [
    ({"budget": 0.2, "alpha_safeguard": 1.5}, "adakv: alpha_safeguard must be in [0, 1]"),
    ({"budget_tokens": 8, "window_size": 8}, "must exceed window_size"),
    ({}, "needs a budget"),
])
def test_bad_parameters_are_named(params, needle):
    with pytest.raises(ValueError) as err:
        build("adakv", **params)
    assert needle in str(err.value)
