"""The `tova` policy against a brute-force reference written from the TOVA paper's rule.

`TovaReference` keeps Python lists per (layer, sequence, KV head) and computes attention query by
query. After every step, per (layer, sequence), while over budget it scores every cached position
by the attention of the step's last query averaged over all query heads of the layer, and drops
the lowest ones (ties: the later position first), the same positions from every KV head.
"""

import pytest
import torch

from nats_model.engine.generation import generate
from nats_model.policies import build

from .kv_reference import BruteForceEngine, RecordingEngine, assert_same_run, budget_tokens, drive, tiny_gpt


class TovaReference(BruteForceEngine):
    """Brute-force TOVA cache with the `begin_step` / `attend` API of `KVEngine`."""

    def __init__(self, batch, budget=None, budget_tokens=None):
        self.batch, self.budget, self.tokens = batch, budget, budget_tokens
        self.store, self.history = {}, []
        self.seen = [0] * batch


    def attend(self, layer, q, k, v, *, positions=None, type_logits=None, scale=None, sliding_window=None):
        B, Hq, T, hd = q.shape
        Hkv = k.shape[1]
        g = Hq // Hkv
        out = torch.zeros_like(q)
        for b in range(B):
            last_scores = {}  # position -> summed attention of the step's last real query, all heads
            real = [t for t in range(T) if self.valid[b, t]]
            for h in range(Hkv):
                entries = self.store.setdefault((layer, b, h), [])
                for t in real:
                    entries.append({"pos": int(self.pos[b, t]), "k": k[b, h, t], "v": v[b, h, t]})
                for t in real:
                    vis = [e for e in entries if e["pos"] <= int(self.pos[b, t])]
                    K, V = torch.stack([e["k"] for e in vis]), torch.stack([e["v"] for e in vis])
                    for j in range(g):
                        p = torch.softmax((K @ q[b, h * g + j, t]).float() * hd ** -0.5, -1)
                        out[b, h * g + j, t] = p @ V
                        if t == real[-1]:
                            for e, pe in zip(vis, p.tolist(), strict=True):
                                last_scores[e["pos"]] = last_scores.get(e["pos"], 0.0) + pe / Hq
            cap = budget_tokens(self.seen[b], self.budget, self.tokens)
            n_drop = len(self.store.get((layer, b, 0), [])) - cap
            if real and n_drop > 0:
                drop = sorted(last_scores, key=lambda n: (last_scores[n], -n))[:n_drop]
                for h in range(Hkv):
                    self.store[(layer, b, h)] = [e for e in self.store[(layer, b, h)] if e["pos"] not in drop]
        self.history.append({key: sorted(e["pos"] for e in es) for key, es in self.store.items() if key[0] == layer})
        return out


@pytest.fixture(scope="module")
def model():
    return tiny_gpt(seed=3, d_model=32)


@pytest.fixture(scope="module")
def prompt():
    ids = torch.randint(0, 61, (2, 26), generator=torch.Generator().manual_seed(6))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, :6] = False  # left padding: 20 real tokens
    return ids, mask


CASES = [  # policy params, prefill chunk
    ({"budget_tokens": 8}, 5),
    ({"budget": 0.3}, 26),
    ({"budget_tokens": 6}, 1),
    ({"budget": 0.5}, 9),
]


@pytest.mark.parametrize("params, chunk", CASES)
def test_kept_positions_match_reference(model, prompt, params, chunk):
    ids, mask = prompt
    policy = build("tova", **params)  # the engine gives Step.n_kv_heads: no bind_model needed
    engine = RecordingEngine(policy, batch=2)
    ref = TovaReference(2, params.get("budget"), params.get("budget_tokens"))
    history = assert_same_run(model, engine, ref, policy.rope_positions, ids, mask, chunk, n_decode=8)
    for got in history:
        for (layer, b, _h), kept in got.items():  # layer-wise scores: every KV head keeps the same positions
            assert kept == got[(layer, b, 0)]


@pytest.mark.parametrize("batch, params", [(1, {"budget_tokens": 7}), (2, {"budget": 0.4})])
def test_decode_fast_path_matches_reference(model, monkeypatch, batch, params):
    """Unpadded batches: every segment holds the same count, so decode takes `_decode_pick` (scores
    of the occupied slots only); kept positions still equal the reference at every step."""
    from nats_model.policies.tova import TOVAPolicy

    picks = []
    original = TOVAPolicy._decode_pick

    def spy(store, step, hkv, n):
        picks.append(original(store, step, hkv, n))
        return picks[-1]

    monkeypatch.setattr(TOVAPolicy, "_decode_pick", staticmethod(spy))
    ids = torch.randint(0, 61, (batch, 20), generator=torch.Generator().manual_seed(7))
    mask = torch.ones_like(ids, dtype=torch.bool)
    policy = build("tova", **params)
    engine = RecordingEngine(policy, batch=batch)
    ref = TovaReference(batch, params.get("budget"), params.get("budget_tokens"))
    assert_same_run(model, engine, ref, policy.rope_positions, ids, mask, 6, n_decode=12)
    assert sum(p is not None for p in picks) >= 12


def test_decode_evicts_one_token_per_step_at_budget_and_bytes_fall(model, prompt):
    ids, mask = prompt
    full = generate(model, ids, build("full"), 10, attention_mask=mask)
    got = generate(model, ids, build("tova", budget_tokens=7), 10, attention_mask=mask, prefill_chunk_size=4)
    assert got.kept_per_layer_head.eq(7).all()
    assert got.kv_bytes_physical < full.kv_bytes_physical
    assert got.kv_bytes_physical <= 1.05 * got.kv_bytes_kept + 2 * 2 * 2 * 2 * 8 * 4  # layers*B*Hkv segments
    policy = build("tova", budget_tokens=7)
    policy.bind_model(model)
    engine = RecordingEngine(policy, batch=2)
    drive(model, engine, policy.rope_positions, ids, mask, 26, n_decode=3)
    before = engine.history[1][(1, 0, 0)]  # layer 1 after the prefill (2 layers per step)
    for i, step in enumerate(engine.history[3::2]):
        after = step[(1, 0, 0)]
        new_pos = 26 + i
        assert len(after) == 7  # exactly one of the 7 old tokens and the new one was dropped
        assert len(set(before) - set(after)) + (new_pos not in after) == 1
        before = after


@pytest.mark.parametrize("params, needle", [
    ({}, "tova: needs a budget"),
    ({"budget": 2.0}, "budget must be a fraction in (0, 1]"),
    ({"budget_tokens": -3}, "budget_tokens must be an int >= 1"),
    ({"budget": 0.5, "recent_ratio": 0.5}, "no parameter 'recent_ratio'; allowed: budget, budget_tokens"),
])
def test_bad_parameters_are_named(params, needle):
    with pytest.raises(ValueError) as err:
        build("tova", **params)
    assert needle in str(err.value)


def test_unknown_kv_head_count_is_refused(model, prompt):
    """Without Step.n_kv_heads (an engine that does not give it) and without bind_model: a clear error."""
    from nats_model.policies.tova import TOVAPolicy

    class NoHeadCount(TOVAPolicy):
        def select(self, store, step):
            step.n_kv_heads = 0
            return super().select(store, step)

    ids, mask = prompt
    policy = NoHeadCount(budget_tokens=4)
    with pytest.raises(ValueError, match="KV head count None unknown"):
        drive(model, RecordingEngine(policy, batch=2), policy.rope_positions, ids, mask, 26, n_decode=0)
    policy.bind_model(model)  # the count read from the model config
    drive(model, RecordingEngine(policy, batch=2), policy.rope_positions, ids, mask, 26, n_decode=0)


@pytest.mark.parametrize("budget", [5, 3])  # one drop (decode fast path) / several
def test_heads_with_differently_ordered_rows_drop_the_same_positions(budget):
    """Scores are added up by position, not by row, when a sequence's heads order rows differently."""
    from nats_model.engine.cache import LayerStore
    from nats_model.policies.base import Step

    g = torch.Generator().manual_seed(0)
    p_by_pos = torch.softmax(torch.randn(2, 6, generator=g), -1)  # (head, position) attention of the query
    kept = {}
    for perm in (torch.arange(6), torch.tensor([3, 0, 5, 1, 4, 2])):
        store = LayerStore(2, 4, torch.float32, torch.device("cpu"))
        pos = torch.stack([torch.arange(6), perm])  # head 1 stores the positions in another order
        store.append(torch.randn(2, 6, 4, generator=g), torch.randn(2, 6, 4, generator=g), pos,
                     torch.ones(2, 6, dtype=torch.bool))
        probs = torch.zeros(2, 1, 1, store.row_cap)
        probs[:, 0, 0, :6] = torch.stack([p_by_pos[0], p_by_pos[1][perm]])
        step = Step(layer=0, prefill=False, last_prefill=False, seen=torch.tensor([6, 6]),
                    q_pos=torch.tensor([[5], [5]]), q_valid=torch.ones(2, 1, dtype=torch.bool),
                    new_slots=torch.tensor([[5], [5]]), attn_sum=None, probs=probs, type_logits=None,
                    q=torch.zeros(2, 1, 1, 4), k_new=torch.zeros(2, 1, 4), v_new=torch.zeros(2, 1, 4), n_kv_heads=2)
        keep = build("tova", budget_tokens=budget).select(store, step)
        if keep.dtype == torch.long:
            store.evict_one(keep)
        else:
            store.compact(keep)
        rows, valid = store.rows(store.pos), store.valid_rows()
        kept[perm[0].item()] = [sorted(rows[s][valid[s]].tolist()) for s in range(2)]
    want = sorted(p_by_pos.mean(0).argsort(descending=True)[:budget].tolist())
    assert kept[0] == kept[3] == [want, want]
