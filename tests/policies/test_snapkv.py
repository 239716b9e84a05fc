"""The `snapkv` policy against a brute-force reference written from the SnapKV paper's rule.

`SnapReference` keeps Python lists per (layer, sequence, KV head), computes attention query by
query, remembers each prompt query's attention row (summed over the GQA group) and, after the last
prompt chunk, scores the keys before the observation window with the window's attention, pools
them with explicit loops and keeps the top ones plus the window. Decode steps never evict.
"""

import pytest
import torch

from nats_model.engine.generation import generate
from nats_model.policies import build

from .kv_reference import BruteForceEngine, RecordingEngine, assert_same_run, budget_tokens, drive, tiny_gpt


class SnapReference(BruteForceEngine):
    """Brute-force SnapKV cache with the `begin_step` / `attend` API of `KVEngine`."""

    def __init__(self, batch, window_size, kernel_size, pooling, budget=None, budget_tokens=None):
        self.batch, self.w, self.k, self.pooling = batch, window_size, kernel_size, pooling
        self.budget, self.tokens = budget, budget_tokens
        self.store, self.rows, self.history = {}, {}, []
        self.seen = [0] * batch

    def begin_step(self, positions, valid, *, prefill, last_prefill=False):
        super().begin_step(positions, valid, prefill=prefill, last_prefill=last_prefill)
        self.prefill, self.last = prefill, last_prefill

    def pooled(self, scores):
        r, out = self.k // 2, []
        for i in range(len(scores)):
            near = [scores[j] for j in range(i - r, i + r + 1) if 0 <= j < len(scores)]
            out.append(max(near) if self.pooling == "max" else sum(near) / self.k)  # zero padding counts
        return out

    def compress(self, entries, rows, seen):
        budget = budget_tokens(seen, self.budget, self.tokens)
        if len(entries) <= budget:
            return entries
        n_win = min(self.w, budget, len(entries))
        entries = sorted(entries, key=lambda e: e["pos"])
        prefix, window = entries[: len(entries) - n_win], entries[len(entries) - n_win:]
        queries = sorted(rows)[-self.w:]  # the last window_size prompt queries
        scores = [sum(rows[m].get(e["pos"], 0.0) for m in queries) for e in prefix]
        pooled = self.pooled(scores)
        best = sorted(range(len(prefix)), key=lambda i: (-pooled[i], prefix[i]["pos"]))[: budget - n_win]
        return [prefix[i] for i in sorted(best)] + window

    def attend(self, layer, q, k, v, *, positions=None, type_logits=None, scale=None, sliding_window=None):
        B, Hq, T, hd = q.shape
        Hkv = k.shape[1]
        g = Hq // Hkv
        out = torch.zeros_like(q)
        for b in range(B):
            for h in range(Hkv):
                entries = self.store.setdefault((layer, b, h), [])
                rows = self.rows.setdefault((layer, b, h), {})
                for t in range(T):
                    if self.valid[b, t]:
                        entries.append({"pos": int(self.pos[b, t]), "k": k[b, h, t], "v": v[b, h, t]})
                for t in range(T):
                    if not self.valid[b, t]:
                        continue
                    m = int(self.pos[b, t])
                    vis = [e for e in entries if e["pos"] <= m]
                    K, V = torch.stack([e["k"] for e in vis]), torch.stack([e["v"] for e in vis])
                    row = {}
                    for j in range(g):
                        p = torch.softmax((K @ q[b, h * g + j, t]).float() * hd ** -0.5, -1)
                        out[b, h * g + j, t] = p @ V
                        for e, pe in zip(vis, p.tolist(), strict=True):
                            row[e["pos"]] = row.get(e["pos"], 0.0) + pe
                    if self.prefill:
                        rows[m] = row
                if self.prefill and self.last:
                    self.store[(layer, b, h)] = self.compress(entries, rows, self.seen[b])
        self.history.append({key: sorted(e["pos"] for e in es) for key, es in self.store.items() if key[0] == layer})
        return out


@pytest.fixture(scope="module")
def model():
    return tiny_gpt(seed=2, d_model=32)


@pytest.fixture(scope="module")
def prompt():
    ids = torch.randint(0, 61, (2, 30), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, :7] = False  # left padding: 23 real tokens
    return ids, mask


CASES = [  # policy params, prefill chunk
    ({"budget_tokens": 12, "window_size": 4, "kernel_size": 3}, 5),
    ({"budget": 0.5, "window_size": 3, "kernel_size": 5, "pooling": "avg"}, 30),
    ({"budget_tokens": 10, "window_size": 4, "kernel_size": 1}, 1),
    ({"budget": 0.25, "kernel_size": 7}, 8),  # default window 32 > budget: only budget window tokens
    ({"budget_tokens": 9, "window_size": 5, "pooling": "avg"}, 7),
]


@pytest.mark.parametrize("params, chunk", CASES)
def test_kept_positions_match_reference(model, prompt, params, chunk):
    ids, mask = prompt
    policy = build("snapkv", **params)
    engine = RecordingEngine(policy, batch=2)
    ref = SnapReference(2, policy.window_size, policy.kernel_size, policy.pooling, params.get("budget"),
                        params.get("budget_tokens"))
    assert_same_run(model, engine, ref, policy.rope_positions, ids, mask, chunk, n_decode=6)
    final = engine.history[-1]
    assert all(len(kept) < int(mask[b].sum()) for (_, b, _), kept in final.items())  # the prompt was compressed


def test_chunked_prefill_keeps_the_same_set_as_prefill_at_once(model, prompt):
    ids, mask = prompt
    finals = []
    for chunk in (1, 4, 13, 30):
        policy = build("snapkv", budget_tokens=11, window_size=6)
        engine = RecordingEngine(policy, batch=2)
        drive(model, engine, policy.rope_positions, ids, mask, chunk, n_decode=0)
        finals.append({key: kept for step in engine.history[-2:] for key, kept in step.items()})
    assert all(f == finals[0] for f in finals[1:])
    assert all(len(kept) == 11 for kept in finals[0].values())


def test_decode_appends_without_eviction_and_bytes_fall(model, prompt):
    ids, mask = prompt
    full = generate(model, ids, build("full"), 9, attention_mask=mask)
    got = generate(model, ids, build("snapkv", budget_tokens=10, window_size=4), 9, attention_mask=mask)
    assert got.kept_per_layer_head.eq(10 + 8).all()  # 8 decode steps feed a token each, none evicted
    assert got.kv_bytes_physical < full.kv_bytes_physical
    assert got.kv_bytes_physical <= 1.05 * got.kv_bytes_kept + 2 * 2 * 2 * 2 * 8 * 4  # layers*B*Hkv segments


@pytest.mark.parametrize("params, needle", [
    ({"budget": 0.2, "window_size": 0}, "snapkv: window_size must be an int >= 1"),
    ({"budget": 0.2, "kernel_size": 4}, "snapkv: kernel_size must be odd"),
    ({"budget": 0.2, "kernel_size": 2.0}, "snapkv: kernel_size must be an int >= 1"),
    ({"budget": 0.2, "pooling": "median"}, "snapkv: pooling must be one of ('max', 'avg')"),
    ({"budget_tokens": 32}, "budget_tokens (32) must exceed window_size (32)"),
    ({}, "needs a budget"),
    ({"budget": 0.0}, "budget must be a fraction in (0, 1]"),
])
def test_bad_parameters_are_named(params, needle):
    with pytest.raises(ValueError) as err:
        build("snapkv", **params)
    assert needle in str(err.value)
