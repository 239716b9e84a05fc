"""The `nats` policy: kept sets from the learned types, checked against a brute-force reference.

`NatsReference` is a drop-in kv_engine written from docs/METHOD.md ("Visibility") with Python lists: after
a step that has seen positions 0..t, a head holds the keys that a query at t+1 may see (types from
every logit received so far; chunk types from the chunk's mean logits once the chunk is complete,
Global before), capped by the documented eviction order. No code is shared with the policy.
"""

import pytest
import torch

from nats_model.engine.generation import generate, score
from nats_model.models.gpt import GPT, GPTConfig
from nats_model.policies import build

from .kv_reference import BruteForceEngine, RecordingEngine, assert_same_run, budget_tokens, drive

G, L, S = 0, 1, 2


def nats_gpt(window=3, chunk_size=None, global_bias=0.0, n_layer=2, seed=0, zero_scorer=False) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=61, n_layer=n_layer, n_head=4, n_kv_head=2, d_model=32, attention="nats",
                          window=window, chunk_size=chunk_size, global_bias=global_bias, max_seq_len=256)).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.scorer.proj.weight.mul_(0.0 if zero_scorer else 10.0)
            block.attn.q_proj.weight.mul_(4.0)
    return model


class NatsReference(BruteForceEngine):
    """Brute-force NAtS cache with the `begin_step` / `attend` API of `KVEngine`."""

    def __init__(self, batch, window, chunk_size=1, global_bias=0.0, budget=None, budget_tokens=None):
        self.batch, self.W, self.C, self.bias = batch, window, chunk_size, global_bias
        self.budget, self.tokens = budget, budget_tokens
        self.store, self.logits, self.history = {}, {}, []
        self.seen = [0] * batch


    def chunk_type(self, lg, c, seen):
        """Type of chunk c given per-position logits lg; None while the chunk is unfinished."""
        if (c + 1) * self.C > seen:
            return None
        rows = [lg[n] for n in range(c * self.C, (c + 1) * self.C)]
        mean = [sum(r[i] for r in rows) / self.C for i in range(3)]
        mean[G] += self.bias
        return G if c == 0 else max(range(3), key=lambda i: (mean[i], -i))

    def visible(self, n, m, typ):
        """Does query m see key n under the NAtS rule? typ(c): chunk type, None while unfinished."""
        c = n // self.C
        t = typ(c)
        if t is None or t == G:
            return True
        if t == S:
            return m <= n + self.W
        # Local: hidden once a later Global chunk has ended before m
        return not any(typ(g) == G and (g + 1) * self.C - 1 < m for g in range(c + 1, m // self.C + 1))

    def evict_order(self, e, typ):
        t = typ(e["pos"] // self.C)
        rank = 3 if e["pos"] == 0 else {L: 0, G: 1, None: 1, S: 2}[t]
        return rank, e["pos"]

    def attend(self, layer, q, k, v, *, positions=None, type_logits=None, scale=None, sliding_window=None):
        B, Hq, T, hd = q.shape
        Hkv = k.shape[1]
        g = Hq // Hkv
        out = torch.zeros_like(q)
        for b in range(B):
            for h in range(Hkv):
                entries = self.store.setdefault((layer, b, h), [])
                lg = self.logits.setdefault((layer, b, h), {})
                for t in range(T):
                    if self.valid[b, t]:
                        p = int(self.pos[b, t])
                        entries.append({"pos": p, "k": k[b, h, t], "v": v[b, h, t]})
                        lg[p] = type_logits[b, h, t].tolist()
                for t in range(T):
                    if self.valid[b, t]:
                        m = int(self.pos[b, t])

                        def typ_m(c, lg=lg, m=m):  # the types known once tokens 0..m have arrived
                            return self.chunk_type(lg, c, m + 1)

                        vis = [e for e in entries if e["pos"] <= m and self.visible(e["pos"], m, typ_m)]
                        K, V = torch.stack([e["k"] for e in vis]), torch.stack([e["v"] for e in vis])
                        for j in range(g):
                            p = torch.softmax((K @ q[b, h * g + j, t]).float() * hd ** -0.5, -1)
                            out[b, h * g + j, t] = p @ V
                seen = self.seen[b]

                def typ(c, lg=lg, seen=seen):
                    return self.chunk_type(lg, c, seen)

                kept = [e for e in entries if self.visible(e["pos"], seen, typ)]  # for the next query
                cap = budget_tokens(seen, self.budget, self.tokens)
                if (self.budget is not None or self.tokens is not None) and len(kept) > cap:
                    drop = sorted(kept, key=lambda e: self.evict_order(e, typ))[: len(kept) - cap]
                    kept = [e for e in kept if e not in drop]
                self.store[(layer, b, h)] = kept
        self.history.append({key: sorted(e["pos"] for e in es) for key, es in self.store.items() if key[0] == layer})
        return out


@pytest.fixture(scope="module")
def prompt():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 61, (2, 23), generator=g)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, :5] = False  # left padding
    return ids, mask


CASES = [  # model (window, chunk_size, global_bias), policy params, prefill chunk
    ((3, None, 0.0), {}, 5),
    ((0, None, 0.3), {}, 23),
    ((5, 4, 0.0), {}, 7),
    ((2, 3, 0.0), {}, 1),
    ((3, None, -0.5), {"budget_tokens": 6}, 4),
    ((4, 3, 0.0), {"budget": 0.3}, 6),
]


@pytest.mark.parametrize("model_cfg, params, chunk", CASES)
def test_kept_positions_match_reference(prompt, model_cfg, params, chunk):
    window, chunk_size, bias = model_cfg
    model = nats_gpt(window, chunk_size, bias)
    ids, mask = prompt
    policy = build("nats", **params)
    policy.bind_model(model)
    engine = RecordingEngine(policy, batch=2)
    ref = NatsReference(2, window, chunk_size or 1, bias, params.get("budget"), params.get("budget_tokens"))
    assert_same_run(model, engine, ref, policy.rope_positions, ids, mask, chunk, n_decode=8)
    final = engine.history[-1]
    assert any(len(kept) < int(mask[b].sum()) + 8 for (_, b, _), kept in final.items())  # tokens were dropped


@pytest.mark.parametrize("batch, model_cfg, params", [
    (1, (3, None, -0.5), {"budget_tokens": 6}),
    (1, (2, None, 0.0), {}),
    (2, (3, None, -0.3), {"budget_tokens": 5}),
    (1, (0, None, 0.3), {"budget_tokens": 5}),
])
def test_decode_fast_path_matches_reference(monkeypatch, batch, model_cfg, params):
    """Unpadded batches, so that heads often hold equal counts and decode takes the order-key path
    (Local drops after a new Global token, the Sliding-window token leaving, the cap candidate):
    kept positions still equal the reference at every step, and the path was really taken."""
    from nats_model.policies.nats import NatsPolicy

    window, _, bias = model_cfg
    model = nats_gpt(window, None, bias)
    ids = torch.randint(0, 61, (batch, 12), generator=torch.Generator().manual_seed(11))
    mask = torch.ones_like(ids, dtype=torch.bool)
    equal_counts = []
    original = NatsPolicy._select_decode

    def spy(self, store, step, ty, w):
        equal_counts.append(store.common_len() >= 0)
        return original(self, store, step, ty, w)

    monkeypatch.setattr(NatsPolicy, "_select_decode", spy)
    policy = build("nats", **params)
    policy.bind_model(model)
    engine = RecordingEngine(policy, batch=batch)
    ref = NatsReference(batch, window, 1, bias, params.get("budget"), params.get("budget_tokens"))
    assert_same_run(model, engine, ref, policy.rope_positions, ids, mask, 4, n_decode=20)
    assert sum(equal_counts) >= 4, equal_counts


@pytest.mark.parametrize("window, chunk_size, step", [(3, None, 1), (3, None, 6), (4, 4, 1), (3, 4, 7)])
def test_streaming_nll_equals_the_models_own_nats_attention(window, chunk_size, step):
    """Each query sees exactly what the NAtS visibility rule allows (kept set between steps, the
    policy's `visible` inside a prefill chunk), so the streaming NLL equals that of the model's dense
    NAtS forward, token by token or in chunks. (Chunk types need W >= C - 1: the dense forward
    knows a chunk's type before the chunk ends, the cache treats it as Global until then.)"""
    model = nats_gpt(window, chunk_size)
    ids = torch.randint(0, 61, (2, 26), generator=torch.Generator().manual_seed(5))
    nll = score(model, ids, build("nats"), prefill_chunk_size=step)
    logits, _ = model(ids)
    dense = -torch.log_softmax(logits.float(), -1)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    torch.testing.assert_close(nll, dense, atol=1e-4, rtol=1e-4)
    assert model.kept_fraction() < 0.9  # the types really hide keys


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_chunked_prefill_keeps_the_same_set_as_prefill_at_once(prompt, chunk_size):
    model = nats_gpt(3, chunk_size)
    ids, mask = prompt
    finals, outs = [], []
    for chunk in (1, 3, 8, 23):
        policy = build("nats")
        policy.bind_model(model)
        engine = RecordingEngine(policy, batch=2)
        toks, logits = drive(model, engine, policy.rope_positions, ids, mask, chunk, n_decode=4)
        finals.append(engine.history[-2:])  # both layers after the last decode step
        outs.append((toks, logits))
    assert all(f == finals[0] for f in finals[1:])
    assert any(len(kept) < int(mask[b].sum()) + 4 for (_, b, _), kept in finals[0][1].items())
    for toks, logits in outs[1:]:
        assert torch.equal(toks, outs[0][0])
        for a, b in zip(logits, outs[0][1], strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_all_global_types_generate_like_the_full_cache(prompt):
    model = nats_gpt(2, zero_scorer=True, global_bias=0.1)  # logits 0 + bias: every token Global
    ids, mask = prompt
    got = generate(model, ids, build("nats"), 10, attention_mask=mask, prefill_chunk_size=6)
    want = generate(model, ids, build("full"), 10, attention_mask=mask, prefill_chunk_size=6)
    assert torch.equal(got.tokens, want.tokens)
    assert got.kept_fraction == 1.0 and got.kv_bytes_physical == want.kv_bytes_physical


@pytest.mark.parametrize("params", [{}, {"budget_tokens": 5}])
def test_physical_bytes_fall_with_the_dropped_tokens(prompt, params):
    model = nats_gpt(2, global_bias=-0.3)
    ids, mask = prompt
    full = generate(model, ids, build("full"), 12, attention_mask=mask)
    got = generate(model, ids, build("nats", **params), 12, attention_mask=mask)
    assert got.kv_bytes_kept < full.kv_bytes_kept
    assert got.kv_bytes_physical < full.kv_bytes_physical
    n_seg_layers = 2 * 2 * 2  # layers x batch x KV heads
    assert got.kv_bytes_physical <= 1.05 * got.kv_bytes_kept + n_seg_layers * 2 * 8 * 4
    if params:
        assert int(got.kept_per_layer_head.max()) <= 5


@pytest.mark.parametrize("params, needle", [
    ({"window": -1}, "nats: window must be None (from the model) or an int >= 0"),
    ({"chunk_size": 0}, "nats: chunk_size must be None (from the model) or an int >= 1"),
    ({"global_bias": "high"}, "nats: global_bias must be None (from the model) or a number"),
    ({"budget": 1.5}, "budget must be a fraction in (0, 1]"),
    ({"budget_tokens": 0}, "budget_tokens must be an int >= 1"),
])
def test_bad_parameters_are_named(params, needle):
    with pytest.raises(ValueError) as err:
        build("nats", **params)
    assert needle in str(err.value)


def test_a_model_without_scorers_is_refused(prompt):
    ids, mask = prompt
    plain = GPT(GPTConfig(vocab_size=61, n_layer=1, n_head=2, n_kv_head=1, d_model=16)).eval()
    with pytest.raises(ValueError, match="no NAtS type scorers .*attention='full'"):
        generate(plain, ids, build("nats"), 2, attention_mask=mask)
    policy = build("nats", window=4)  # window given, but the engine gets no type logits
    with pytest.raises(ValueError, match="layer 0 gave no NAtS type logits"):
        drive(plain, RecordingEngine(policy, batch=2), policy.rope_positions, ids, mask, 5, n_decode=0)
    with pytest.raises(ValueError, match="window unknown"):
        build("nats").settings()


@pytest.mark.slow
def test_hugging_face_model_with_scorer_hooks():
    """An HF Llama whose self_attn pre-hooks store per-token type logits (`nats_type_logits`): the
    window comes from `config.nats_window`; all-Global scorers reproduce `full`, mixed ones drop."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    cfg = LlamaConfig(vocab_size=89, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0)
    cfg.nats_window, cfg.nats_global_bias = 2, 0.0
    model = LlamaForCausalLM(cfg).eval()
    scorers = [torch.nn.Linear(32, 2 * 3, bias=False) for _ in range(2)]

    def hook_for(scorer):
        def hook(module, args, kwargs):
            x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]  # (B, T, d) normed input
            module.nats_type_logits = scorer(x).view(*x.shape[:2], 2, 3).permute(0, 2, 1, 3)  # (B, Hkv, T, 3)
        return hook

    for layer, scorer in zip(model.model.layers, scorers, strict=True):
        layer.self_attn.register_forward_pre_hook(hook_for(scorer), with_kwargs=True)
    ids = torch.randint(1, 89, (2, 15), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    with torch.no_grad():
        for s in scorers:
            s.weight.zero_()  # logits 0: argmax picks Global (index 0) on the tie
    full = generate(model, ids, build("full"), 6, attention_mask=mask, prefill_chunk_size=4)
    same = generate(model, ids, build("nats"), 6, attention_mask=mask, prefill_chunk_size=4)
    assert torch.equal(same.tokens, full.tokens) and same.kept_fraction == 1.0
    with torch.no_grad():
        for s in scorers:
            s.weight.normal_(0, 5.0)
    mixed = generate(model, ids, build("nats"), 6, attention_mask=mask, prefill_chunk_size=4)
    assert mixed.kept_fraction < 0.9 and mixed.kv_bytes_physical < full.kv_bytes_physical
