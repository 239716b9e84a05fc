"""What a policy sees through the contract: probs, type logits, aux state, row form."""

from dataclasses import dataclass
from typing import ClassVar

import torch

from nats_model.engine.generation import generate
from nats_model.models.gpt import GPT, GPTConfig
from nats_model.policies import Policy


@dataclass
class ProbeProbs(Policy):
    """Test policy: records what each step shows and keeps the even positions only."""

    name: ClassVar[str] = ""  # not registered
    observe: ClassVar[str] = "probs"
    aux_fields: ClassVar[tuple[str, ...]] = ("seen_steps",)
    needs_budget: ClassVar[bool] = False

    def __post_init__(self):
        self.steps, self.first_token_counts = [], []

    def select(self, store, step):
        self.steps.append(step)
        store.add_rows(store.aux["seen_steps"], store.valid_rows().float())
        pos = store.rows(store.pos, fill=-1)
        count = store.rows(store.aux["seen_steps"])[(pos == 0) & store.valid_rows()]  # (n_seg,)
        self.first_token_counts.append((step.layer, count.tolist()))
        return store.valid_rows() & ((pos % 2 == 0) | (pos >= step.seen[:, None] - 1))


def test_policy_sees_probs_type_logits_and_keeps_aux_state():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, n_layer=2, n_head=4, n_kv_head=2, d_model=32, attention="nats",
                          window=4)).eval()
    ids = torch.randint(0, 50, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    policy = ProbeProbs()
    res = generate(model, ids, policy, 4, attention_mask=mask, prefill_chunk_size=4)
    assert len(policy.steps) == 2 * (3 + 3)  # layers x (3 prefill chunks + 3 decode steps)
    for step in policy.steps:
        T = step.q_pos.shape[1]
        assert step.type_logits.shape == (2, 2, T, 3)  # NAtS scorer logits of the new tokens
        assert step.probs.shape[:3] == (4, 2, T)  # (B * Hkv, group, T, row_cap)
        sums = step.probs.sum(-1)  # each real query's attention sums to 1, padding queries to 0
        expect = step.q_valid[:, None, :].expand_as(sums).float()
        torch.testing.assert_close(sums, expect, atol=1e-5, rtol=0)
    # kept: even positions plus the newest token, per sequence (seq 1 has 6 + 3 real tokens fed)
    kept = res.kept_per_layer_head
    assert kept[:, 0].tolist() == [[7, 7]] * 2  # positions 0,2,..,10 (6) + 11
    assert kept[:, 1].tolist() == [[5, 5]] * 2  # positions 0,2,4,6 + 7
    # aux state moves with the tokens (evictions swap slots): position 0 was counted at every step
    for layer in (0, 1):
        counts = [c for lay, c in policy.first_token_counts if lay == layer]
        assert counts == [[float(k)] * 4 for k in range(1, 7)]


@dataclass
class EvenOnly(Policy):
    """Test policy: queries see even positions and themselves (an attention rule, no eviction)."""

    name: ClassVar[str] = ""
    masks_attention: ClassVar[bool] = True
    needs_budget: ClassVar[bool] = False

    def visible(self, store, step):
        pos = store.rows(store.pos, fill=-1)[:, None, :]  # (n_seg, 1, row_cap)
        return (pos % 2 == 0) | (pos == step.q_pos[:, :, None])


def test_policy_visibility_mask_applies_inside_a_chunk():
    from nats_model.engine.kv_engine import KVEngine

    g = torch.Generator().manual_seed(0)
    B, Hq, Hkv, T, hd = 2, 4, 2, 6, 8
    q, k, v = (torch.randn(B, h, T, hd, generator=g) for h in (Hq, Hkv, Hkv))
    engine = KVEngine(EvenOnly(), batch=B)
    pos = torch.arange(T).expand(B, T)
    engine.begin_step(pos, torch.ones(B, T, dtype=torch.bool), prefill=True, last_prefill=True)
    out = engine.attend(0, q, k, v)
    allowed = (torch.arange(T)[None, :] <= torch.arange(T)[:, None]) & (
        (torch.arange(T)[None, :] % 2 == 0) | (torch.arange(T)[None, :] == torch.arange(T)[:, None]))
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)  # (B, Hq, T, hd)
    scores = (q @ kk.transpose(-1, -2)) * hd ** -0.5
    ref = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1) @ vv
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_every_policy_keeps_its_state_in_declared_fields_and_reset_clears_it():
    """The state contract (docs/DESIGN.md, Policy contract): after a run every attribute of a registered
    policy is a dataclass field (parameters, `run_state()` / `model_state()` fields, nothing else), and
    `reset` gives every `run_state()` field its fresh value again; a second run gives the same tokens."""
    import dataclasses

    from nats_model.policies import available, build

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, n_layer=2, n_head=4, n_kv_head=2, d_model=32, attention="nats",
                          window=3)).eval()
    ids = torch.randint(0, 50, (2, 40))
    for name in available():
        policy = build(name) if name in ("full", "nats") else build(name, budget=0.5)
        compress = "prompt" if "streaming" not in policy.protocols else None
        first = generate(model, ids, policy, 5, prefill_chunk_size=16, compress=compress).tokens
        declared = {f.name for f in dataclasses.fields(policy)}
        assert set(vars(policy)) <= declared, f"{name}: state outside its fields: {set(vars(policy)) - declared}"
        run_fields = [f for f in dataclasses.fields(policy) if f.metadata.get("run_state")]
        policy.reset()
        for f in run_fields:
            assert getattr(policy, f.name) == f.default_factory(), f"{name}: reset left {f.name} set"
        again = generate(model, ids, policy, 5, prefill_chunk_size=16, compress=compress).tokens
        assert torch.equal(first, again), name
