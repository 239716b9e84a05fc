"""Brute-force reference KV engine for the policy tests, written from the papers' rules.

Per (layer, sequence, KV head) it keeps plain Python lists of (position, key, value, score) and
computes attention head by head with explicit loops: no shared code with nats_model.engine.cache or the
policies, so agreement is evidence that both implement the rule.
"""

from __future__ import annotations

import math

import torch

from nats_model.engine.kv_engine import KVEngine
from nats_model.models.gpt import GPT, GPTConfig
from nats_model.rope import apply_rope, rope_cos_sin


def budget_tokens(seen: int, budget: float | None, tokens: int | None) -> int:
    if tokens is not None:
        return tokens
    if budget is None:
        return seen
    return max(1, math.ceil(seen * budget - 1e-9))


def keep_streaming(entries, seen, n_sink, budget):
    """StreamingLLM rule: the first n_sink positions + the most recent, `budget` in all."""
    keep = min(budget, seen)
    sinks = min(n_sink, keep)
    recent = keep - sinks
    return [e for e in entries if e["pos"] < sinks or e["pos"] >= seen - recent]


def keep_knorm(entries, budget):
    """Knorm rule: the `budget` keys of smallest L2 norm (ties: the later position goes first)."""
    if len(entries) <= budget:
        return entries
    ranked = sorted(entries, key=lambda e: (float(e["k"].float().norm()), e["pos"]))  # kept: smallest, earlier
    return sorted(ranked[:budget], key=lambda e: e["pos"])


def keep_h2o(entries, seen, budget, recent_ratio):
    """H2O real-drop rule: recent floor(budget * r) by position + top scores of the rest."""
    if len(entries) <= budget:
        return entries
    n_recent = math.floor(budget * recent_ratio)
    recent = [e for e in entries if e["pos"] >= seen - n_recent]
    others = sorted((e for e in entries if e["pos"] < seen - n_recent), key=lambda e: -e["score"])
    heavy = others[: budget - len(recent)]
    return sorted(recent + heavy, key=lambda e: e["pos"])


class BruteForceEngine:
    """Bookkeeping shared by the brute-force reference engines of the policy tests: tokens seen per
    sequence, and kept counts read from `store[(layer, b, h)]` (a list of kept entries)."""

    batch: int
    store: dict
    seen: list

    def begin_step(self, positions, valid, *, prefill, last_prefill=False):
        self.pos, self.valid = positions, valid
        for b in range(self.batch):
            self.seen[b] += int(valid[b].sum())

    def kept_per_seq(self):
        return torch.tensor([len(self.store.get((0, b, 0), [])) for b in range(self.batch)])


class ReferenceEngine(BruteForceEngine):
    """Drop-in `kv_engine` with the same `begin_step`/`attend` API as `KVEngine`.

    rule: "full", "streaming_llm", "h2o" or "knorm" (its streaming form); rerotate: StreamingLLM positions inside the cache.
    `history` records, after every layer call, {(layer, b, h): sorted kept positions}.
    """

    def __init__(self, rule: str, batch: int, budget=None, budget_tokens=None, n_sink=4,
                 recent_ratio=0.5, rerotate=False, rope_theta=None):
        self.rule, self.batch = rule, batch
        self.budget, self.tokens, self.n_sink, self.recent_ratio = budget, budget_tokens, n_sink, recent_ratio
        self.rerotate, self.rope_theta = rerotate, rope_theta
        self.store: dict = {}
        self.seen = [0] * batch
        self.history: list[dict] = []


    def attend(self, layer, q, k, v, *, positions=None, type_logits=None, scale=None, sliding_window=None):
        B, Hq, T, hd = q.shape
        Hkv = k.shape[1]
        g = Hq // Hkv
        scale = hd ** -0.5 if scale is None else scale
        out = torch.zeros_like(q)
        for b in range(B):
            for h in range(Hkv):
                entries = self.store.setdefault((layer, b, h), [])
                for t in range(T):
                    if self.valid[b, t]:
                        entries.append({"pos": int(self.pos[b, t]), "k": k[b, h, t].clone(),
                                        "v": v[b, h, t].clone(), "score": 0.0, "rope": len(entries)})
                for t in range(T):
                    if not self.valid[b, t]:
                        continue
                    vis = [e for e in entries if e["pos"] <= int(self.pos[b, t])]
                    K = torch.stack([e["k"] for e in vis])
                    V = torch.stack([e["v"] for e in vis])
                    for j in range(g):
                        p = torch.softmax((K @ q[b, h * g + j, t]).float() * scale, -1)
                        out[b, h * g + j, t] = p.to(V.dtype) @ V
                        for e, pe in zip(vis, p.tolist(), strict=True):
                            e["score"] += pe
                seen = self.seen[b]
                budget = budget_tokens(seen, self.budget, self.tokens)
                if self.rule == "streaming_llm":
                    kept = keep_streaming(entries, seen, self.n_sink, budget)
                elif self.rule == "h2o":
                    kept = keep_h2o(entries, seen, budget, self.recent_ratio)
                elif self.rule == "knorm":
                    kept = keep_knorm(entries, budget)
                else:
                    kept = entries
                if self.rerotate and len(kept) < len(entries):
                    kept = sorted(kept, key=lambda e: e["pos"])
                    for i, e in enumerate(kept):  # move every key to its rank inside the cache
                        if e["rope"] != i:
                            cos, sin = rope_cos_sin(torch.tensor(float(i - e["rope"])), hd, self.rope_theta)
                            e["k"], e["rope"] = apply_rope(e["k"], cos, sin), i
                self.store[(layer, b, h)] = kept
        self.history.append({key: sorted(e["pos"] for e in es) for key, es in self.store.items()
                             if key[0] == layer})
        return out


class RecordingEngine(KVEngine):
    """The real engine, recording kept positions per (layer, b, h) after every layer call."""

    def __init__(self, policy, batch):
        super().__init__(policy, batch)
        self.history: list[dict] = []

    def attend(self, layer, q, k, v, **kw):
        out = super().attend(layer, q, k, v, **kw)
        store = self.cache.layers[layer]
        Hkv = k.shape[1]
        rows, valid = store.rows(store.pos), store.valid_rows()
        self.history.append({(layer, s // Hkv, s % Hkv): sorted(rows[s][valid[s]].tolist())
                             for s in range(store.n_seg)})
        return out


class ProtocolEngine(RecordingEngine):
    """The real engine under the "prompt" protocol as the engine contract states it: `Step.evict` is
    False on prefill chunks before the prompt's last and, when the policy's `decode_evicts` is False, on
    decode steps. Set here on the Step the policy receives (the engine sets it itself once it has the
    `compress` parameter)."""

    def begin_step(self, positions, valid, *, prefill, last_prefill=False):
        super().begin_step(positions, valid, prefill=prefill, last_prefill=last_prefill)
        self._evict = bool(last_prefill) if prefill else type(self.policy).decode_evicts

    def attend(self, layer, q, k, v, **kw):
        policy, select, evict = self.policy, type(self.policy).select, self._evict

        def with_evict(store, step):
            step.evict = evict
            return select(policy, store, step)

        policy.__dict__["select"] = with_evict
        try:
            return super().attend(layer, q, k, v, **kw)
        finally:
            del policy.__dict__["select"]


class CaptureEngine(KVEngine):
    """A full-cache engine recording every layer's rotated q (B, Hq, T, hd), k, v (B, Hkv, T, hd) per
    step (`steps[i][layer]`), for references computed from the model's real tensors."""

    def __init__(self, batch):
        from nats_model.policies import build

        super().__init__(build("full"), batch)
        self.steps: list[dict] = []

    def begin_step(self, positions, valid, *, prefill, last_prefill=False):
        super().begin_step(positions, valid, prefill=prefill, last_prefill=last_prefill)
        self.steps.append({})

    def attend(self, layer, q, k, v, **kw):
        self.steps[-1][layer] = (q.clone(), k.clone(), v.clone())
        return super().attend(layer, q, k, v, **kw)


def prompt_tensors(model, ids, mask, chunk):
    """Per layer, the prompt's real rotated q (Hq, n_b, hd), k and v (Hkv, n_b, hd) of each sequence b
    (its real tokens in position order), from a full-cache run: a policy compressing at the end of the
    prompt has evicted nothing before, so these are what it saw. Returns {layer: [(q, k, v) per b]}."""
    engine = CaptureEngine(ids.shape[0])
    drive(model, engine, lambda p, kept, v: p, ids, mask, chunk, n_decode=0)
    out = {}
    for layer in engine.steps[0]:
        q, k, v = (torch.cat([st[layer][i] for st in engine.steps], 2) for i in range(3))
        out[layer] = [(q[b][:, mask[b]], k[b][:, mask[b]], v[b][:, mask[b]]) for b in range(ids.shape[0])]
    return out


def physical_bound_ok(result, n_layers, batch, n_kv_heads, head_dim, itemsize=4) -> bool:
    """The cache invariant: physical K/V bytes <= 1.05 x kept bytes + one slot per segment."""
    slack = n_layers * batch * n_kv_heads * 2 * head_dim * itemsize
    return result.kv_bytes_physical <= 1.05 * result.kv_bytes_kept + slack


def tiny_gpt(seed=0, n_layer=2, n_head=4, n_kv_head=2, d_model=64, sharpen=8.0, rope_theta=1e4) -> GPT:
    """A random GPT with sharpened q/k projections (peaked attention, so score ties do not occur)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=61, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head,
                          d_model=d_model, rope_theta=rope_theta, max_seq_len=512)).eval()
    with torch.no_grad():
        for block in model.blocks:
            for name, p in block.attn.named_parameters():
                if "q_proj" in name or "k_proj" in name:
                    p.mul_(sharpen)
    return model


def drive(model, engine, policy_rope, ids, mask, chunk, n_decode):
    """Teacher-forced run: prefill `ids` (B, P) in chunks, then decode greedy tokens `n_decode`
    times. Returns the greedy tokens (B, n_decode + 1) and the logits of every step."""
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    P = ids.shape[1]
    logits_all = []
    with torch.no_grad():
        for s in range(0, P, chunk):
            e = min(P, s + chunk)
            pos, val = positions[:, s:e], mask[:, s:e]
            rope = policy_rope(pos, engine.kept_per_seq(), val)
            engine.begin_step(pos, val, prefill=True, last_prefill=e == P)
            logits, _ = model(ids[:, s:e], kv_engine=engine, positions=rope)
        toks = [logits[:, -1].argmax(-1)]
        logits_all.append(logits[:, -1])
        pos = mask.long().sum(1)
        for _ in range(n_decode):
            valid = torch.ones(ids.shape[0], 1, dtype=torch.bool)
            rope = policy_rope(pos[:, None], engine.kept_per_seq(), valid)
            engine.begin_step(pos[:, None], valid, prefill=False)
            logits, _ = model(toks[-1][:, None], kv_engine=engine, positions=rope)
            logits_all.append(logits[:, -1])
            toks.append(logits[:, -1].argmax(-1))
            pos = pos + 1
    return torch.stack(toks, 1), logits_all


def assert_same_run(model, engine, ref, policy_rope, ids, mask, chunk, n_decode):
    """Drive the real engine and the brute-force reference on the same prompt; assert equal kept
    positions at every step, equal greedy tokens and close logits. Returns the engine's history."""
    toks, logits = drive(model, engine, policy_rope, ids, mask, chunk, n_decode)
    ref_toks, ref_logits = drive(model, ref, policy_rope, ids, mask, chunk, n_decode)
    assert len(engine.history) == len(ref.history)
    for step, (got, want) in enumerate(zip(engine.history, ref.history, strict=True)):
        assert got == want, f"step {step}: kept positions differ"
    assert torch.equal(toks, ref_toks)
    for a, b in zip(logits, ref_logits, strict=True):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)
    return engine.history
