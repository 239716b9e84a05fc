"""The visibility rule and segment ends against brute force written from docs/METHOD.md, "Visibility"."""

import random

import pytest
import torch

from nats_model.mask import (
    chunk_visibility,
    expand_chunk_types,
    next_global_after,
    previous_global_before,
    segment_ends,
    visibility,
)


def brute_e(types: list[int], n: int) -> int:
    for g in range(n, len(types)):
        if types[g] == 0:
            return g
    return len(types) - 1


def brute_visible(types: list[int], window: int, m: int, n: int) -> bool:
    if n > m:
        return False
    t = types[n]
    if t == 0:
        return True
    if t == 1:
        return m <= brute_e(types, n)
    return m <= n + window


def brute_visibility(types: list[int], window: int) -> torch.Tensor:
    n_pos = len(types)
    return torch.tensor([[brute_visible(types, window, m, n) for n in range(n_pos)] for m in range(n_pos)])


def random_types(rng: random.Random, n_pos: int, force_ends: bool) -> list[int]:
    types = [rng.choice([0, 1, 2, 1, 2]) for _ in range(n_pos)]
    if force_ends:
        types[0] = 0
        types[-1] = 0
    return types


def test_visibility_matches_brute_force_on_random_types():
    rng = random.Random(0)
    for trial in range(300):
        n_pos = rng.randint(1, 14)
        window = rng.choice([0, 1, 2, 3, 5, 16])
        types = random_types(rng, n_pos, force_ends=trial % 2 == 0)
        got = visibility(torch.tensor(types), window)
        assert torch.equal(got, brute_visibility(types, window)), (types, window)


@pytest.mark.parametrize(
    "types,window",
    [
        ([0] + [1] * 8 + [0], 3),  # only the forced Globals
        ([0] + [2] * 8 + [0], 3),
        ([2] * 10, 2),  # all sliding window, no Global at all
        ([0, 2, 1, 2, 1, 1, 2, 0], 100),  # W >= N: SW behaves like full causal
        ([0, 2, 1, 2, 1, 1, 2, 0], 0),  # W = 0: a SW key is seen by itself only
        ([1] * 7, 0),  # Local never followed by a Global: visible to the end (inference rule)
        ([0], 0),
    ],
)
def test_visibility_edge_cases(types, window):
    got = visibility(torch.tensor(types), window)
    assert torch.equal(got, brute_visibility(types, window))
    n_pos = len(types)
    # the diagonal is always visible and nothing above it
    assert got.diagonal().all()
    assert not got.triu(1).any()
    if all(t == 2 for t in types[1:-1]) and window >= n_pos:
        assert got.equal(torch.ones(n_pos, n_pos, dtype=torch.bool).tril())


def test_w0_sliding_keys_only_self_and_all_sliding_is_banded():
    types = torch.full((9,), 2)
    got = visibility(types, 2)
    m = torch.arange(9)[:, None]
    n = torch.arange(9)[None, :]
    assert torch.equal(got, (n <= m) & (m <= n + 2))
    got0 = visibility(torch.tensor([0, 2, 2, 2, 0]), 0)
    assert got0[:, 1].tolist() == [False, True, False, False, False]


def test_leading_dims_match_per_row_results():
    rng = random.Random(1)
    rows = [random_types(rng, 11, force_ends=True) for _ in range(6)]
    batch = torch.tensor(rows).view(2, 3, 11)
    got = visibility(batch, 2)
    assert got.shape == (2, 3, 11, 11)
    for i, types in enumerate(rows):
        assert torch.equal(got.view(6, 11, 11)[i], brute_visibility(types, 2))


def test_segment_ends_next_and_previous_global_by_brute_force():
    rng = random.Random(2)
    for _ in range(200):
        n_pos = rng.randint(1, 15)
        types = random_types(rng, n_pos, force_ends=rng.random() < 0.5)
        t = torch.tensor(types)
        e = segment_ends(t).tolist()
        big_e = next_global_after(t).tolist()
        prev = previous_global_before(t).tolist()
        for n in range(n_pos):
            assert e[n] == brute_e(types, n)
            later = [g for g in range(n + 1, n_pos) if types[g] == 0]
            assert big_e[n] == (later[0] if later else n_pos - 1)
            earlier = [g for g in range(n) if types[g] == 0]
            assert prev[n] == (earlier[-1] if earlier else -1)
            if types[n] == 0:
                assert e[n] == n
            else:
                assert e[n] == big_e[n]


def test_segment_ends_batched_and_dtype():
    t = torch.tensor([[0, 1, 1, 0, 2, 1], [0, 2, 2, 2, 2, 2]])
    e = segment_ends(t)
    assert e.dtype == torch.long
    assert e.tolist() == [[0, 3, 3, 3, 5, 5], [0, 5, 5, 5, 5, 5]]


def test_chunk_visibility_c1_is_token_rule_and_brute_force_otherwise():
    rng = random.Random(3)
    for _ in range(100):
        n_pos = rng.randint(1, 13)
        window = rng.choice([0, 1, 3, 20])
        types = random_types(rng, n_pos, force_ends=True)
        assert torch.equal(chunk_visibility(torch.tensor(types), window, 1, n_pos), visibility(torch.tensor(types), window))
        c = rng.randint(2, 4)
        nc = -(-n_pos // c)
        ctypes = random_types(rng, nc, force_ends=True)
        got = chunk_visibility(torch.tensor(ctypes), window, c, n_pos)
        for m in range(n_pos):
            for n in range(n_pos):
                t = ctypes[n // c]
                if n > m:
                    want = False
                elif t == 0:
                    want = True
                elif t == 1:
                    # visible while the query's chunk is at or before the next Global chunk
                    want = m // c <= brute_e(ctypes, n // c)
                else:
                    want = m <= n + window
                assert bool(got[m, n]) == want, (ctypes, c, n_pos, m, n)


def test_expand_chunk_types_and_errors():
    assert expand_chunk_types(torch.tensor([0, 1, 2]), 3, 7).tolist() == [0, 0, 0, 1, 1, 1, 2]
    with pytest.raises(ValueError, match="chunks"):
        expand_chunk_types(torch.tensor([0, 1]), 3, 7)
    with pytest.raises(ValueError, match="values 0"):
        visibility(torch.tensor([0, 3]), 1)
    with pytest.raises(TypeError, match="integer"):
        visibility(torch.tensor([0.0, 1.0]), 1)
    with pytest.raises(ValueError, match="window"):
        visibility(torch.tensor([0, 1]), -1)
