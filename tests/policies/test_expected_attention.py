"""The `expected_attention` policy against a brute-force reference written from kvpress' rule.

From the prompt's real rotated queries and keys (a full-cache run), per (layer, sequence, KV head):
each query is rotated back by its position with explicit 2x2 rotations, the mean and covariance of
the queries at positions >= n_sink are taken, rotated by the average of the explicit RoPE rotation
matrices of the next n_future positions, keys are scored by softmax(k.mu/sqrt(d) + k S k / 2d) over
the non-sink keys, averaged over the GQA group, times ||v||; sinks plus the top scores are kept.
"""

import math

import pytest
import torch

from nats_model.engine.generation import generate
from nats_model.policies import build

from ._prompt_reference import budget_tokens, expected_with_decode, run_prompt_protocol, top_positions
from .kv_reference import physical_bound_ok, prompt_tensors, tiny_gpt

THETA = 1e4


def rotation(t: float, hd: int) -> torch.Tensor:
    """The RoPE rotation matrix of position t (rotate-half layout), built pair by pair."""
    R = torch.zeros(hd, hd, dtype=torch.float64)
    h = hd // 2
    for i in range(h):
        a = t * THETA ** (-2 * i / hd)
        R[i, i], R[i, i + h], R[i + h, i], R[i + h, i + h] = math.cos(a), -math.sin(a), math.sin(a), math.cos(a)
    return R


def reference_scores(q, k, v, n_sink, n_future, use_cov, use_vnorm):
    """q (g, n, hd) one KV head's query heads, k, v (n, hd) -> score per position (non-sinks)."""
    g, n, hd = q.shape
    q, k, v = q.double(), k.double(), v.double()
    pre = torch.stack([torch.stack([rotation(-t, hd) @ q[j, t] for t in range(n)]) for j in range(g)])
    R = sum(rotation(float(t), hd) for t in range(n, n + n_future)) / n_future
    keys = list(range(n_sink, n))
    total = torch.zeros(len(keys), dtype=torch.float64)
    for j in range(g):
        Q = pre[j, n_sink:]
        mu = Q.mean(0)
        cov = (Q - mu).T @ (Q - mu) / Q.shape[0]
        mu, cov = R @ mu, R @ cov @ R.T
        logits = torch.tensor([float(k[p] @ mu) / math.sqrt(hd) + (float(k[p] @ cov @ k[p]) / (2 * hd) if use_cov else 0)
                               for p in keys])
        total += torch.softmax(logits, 0) / g
    if use_vnorm:
        total = total * v[keys].norm(dim=-1)
    return [0.0] * n_sink + total.tolist()


@pytest.fixture(scope="module")
def model():
    return tiny_gpt(seed=7, d_model=32, rope_theta=THETA)


@pytest.fixture(scope="module")
def prompt():
    ids = torch.randint(0, 61, (2, 24), generator=torch.Generator().manual_seed(9))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, :4] = False
    return ids, mask


CASES = [
    ({"budget_tokens": 9, "n_future_positions": 16}, 5),
    ({"budget": 0.4, "n_sink": 2, "use_covariance": False}, 24),
    ({"budget": 0.5, "n_future_positions": 3, "use_vnorm": False, "n_sink": 0}, 7),
]


@pytest.mark.parametrize("params, chunk", CASES)
def test_prompt_protocol_matches_reference(model, prompt, params, chunk):
    ids, mask = prompt
    policy = build("expected_attention", rope_theta=THETA, **params)
    got, _ = run_prompt_protocol(model, policy, ids, mask, chunk, n_decode=4)
    want = {}
    for layer, per_b in prompt_tensors(model, ids, mask, chunk).items():
        for b, (q, k, v) in enumerate(per_b):
            hkv, n = k.shape[0], k.shape[1]
            g = q.shape[0] // hkv
            budget = budget_tokens(n, params.get("budget"), params.get("budget_tokens"))
            for h in range(hkv):
                scores = reference_scores(q[h * g:(h + 1) * g], k[h], v[h], policy.n_sink, policy.n_future_positions,
                                          policy.use_covariance, policy.use_vnorm)
                want[(layer, b, h)] = top_positions(scores, budget, set(range(policy.n_sink)))
    assert got == expected_with_decode(want, mask, 4)


def test_physical_bytes_and_theta_from_the_model(model, prompt):
    ids, mask = prompt
    policy = build("expected_attention", budget=0.3)  # rope_theta None: generate sets the model's
    got = generate(model, ids, policy, 5, attention_mask=mask, prefill_chunk_size=6)
    assert policy.rope_theta == THETA
    assert got.kept_fraction < 0.5
    assert physical_bound_ok(got, n_layers=2, batch=2, n_kv_heads=2, head_dim=8)


@pytest.mark.parametrize("params, needle", [
    ({"budget": 0.2, "n_future_positions": 0}, "expected_attention: n_future_positions must be an int >= 1"),
    ({"budget": 0.2, "n_sink": -1}, "expected_attention: n_sink must be an int >= 0"),
    ({"budget": 0.2, "use_vnorm": "yes"}, "expected_attention: use_vnorm must be true or false"),
    ({"budget": 0.2, "epsilon": -1.0}, "expected_attention: epsilon must be a number >= 0"),
    ({}, "needs a budget"),
])
def test_bad_parameters_are_named(params, needle):
    with pytest.raises(ValueError) as err:
        build("expected_attention", **params)
    assert needle in str(err.value)
