"""The decode fast paths compute exactly what the general paths compute.

- `attend_uniform_decode` vs `attend_store` on the same store and query: out, attn_sum, probs equal.
- `LayerStore.evict_one` copying the new token from the append's inputs vs from the store.
- The lean HF Llama one-token forward vs transformers' forward through the engine: bitwise equal
  logits and kept sets over many decode steps, for an evicting and an observing policy.
- Where the lean forward is not exact (hooks, other model classes) it is not taken.
"""

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from nats_model.engine.cache import LayerStore
from nats_model.engine.decode_attention import attend_uniform_decode, uniform_decode_ready
from nats_model.engine.generation import _decode_step, _prefill, generate
from nats_model.engine.kv_engine import KVEngine, attend_store
from nats_model.models.bridge import bridge_for
from nats_model.models.hf_decode import lean_decode_problem
from nats_model.policies import build

SMALL = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512)


def filled_store(n_seg=4, kept=37, hd=8, aux=("h2o_score",)):
    g = torch.Generator().manual_seed(0)
    store = LayerStore(n_seg, hd, torch.float32, torch.device("cpu"), aux)
    pos = torch.randperm(200, generator=g)[:kept].sort().values.expand(n_seg, kept)
    store.append(torch.randn(n_seg, kept, hd, generator=g), torch.randn(n_seg, kept, hd, generator=g), pos,
                 torch.ones(n_seg, kept, dtype=torch.bool))
    store.aux["h2o_score"].uniform_(0, 1, generator=g)
    return store, g


@pytest.mark.parametrize("observe", ["none", "sum", "probs"])
@pytest.mark.parametrize("g_heads", [1, 2])
def test_uniform_decode_attention_equals_attend_store(observe, g_heads):
    store, g = filled_store()
    n_seg, hd = store.n_seg, store.head_dim
    store.append(torch.randn(n_seg, 1, hd, generator=g), torch.randn(n_seg, 1, hd, generator=g),
                 torch.full((n_seg, 1), 300), torch.ones(n_seg, 1, dtype=torch.bool), True)
    assert uniform_decode_ready(store, 1, False, True, None, False)
    q = torch.randn(n_seg, g_heads, 1, hd, generator=g)
    fast = attend_uniform_decode(store, q, 0.3, observe)
    ref = attend_store(store, q, torch.full((n_seg, 1), 300), torch.ones(n_seg, 1, dtype=torch.bool), True, 0.3,
                       None, observe, decode=True)
    assert torch.equal(fast[0], ref[0])
    for a, b in zip(fast[1:], ref[1:], strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a, b)


def test_uniform_decode_not_taken_for_masks_windows_or_unequal_lengths():
    store, _ = filled_store()
    assert not uniform_decode_ready(store, 1, False, True, 16, False)  # sliding window
    assert not uniform_decode_ready(store, 1, False, True, None, True)  # a policy visibility mask
    assert not uniform_decode_ready(store, 1, True, True, None, False)  # prefill
    assert not uniform_decode_ready(store, 1, False, False, None, False)  # padding
    store.evict_one(torch.tensor([0, -1, -1, -1]))  # now one segment is shorter
    assert store.common_len() == -1 and not uniform_decode_ready(store, 1, False, True, None, False)


@pytest.mark.parametrize("drop", [[3, 0, 36, 37], [5, -1, 37, 2]])
def test_evict_after_append_copies_the_same_as_from_the_store(drop):
    """evict_one right after a decode append (source: the append's inputs) leaves the store exactly
    as the general copy from the store's last slots does; 37 = the new token itself."""
    stores = []
    for use_append_inputs in (True, False):
        store, g = filled_store()
        n_seg, hd = store.n_seg, store.head_dim
        store.common_len()
        store.append(torch.randn(n_seg, 1, hd, generator=g), torch.randn(n_seg, 1, hd, generator=g),
                     torch.full((n_seg, 1), 300), torch.ones(n_seg, 1, dtype=torch.bool), True)
        store.aux["h2o_score"][store.offsets + 37] = 5.0  # a policy writing the new token's aux field
        if not use_append_inputs:
            store._decode_new = None
        store.evict_one(torch.tensor(drop))
        stores.append(store)
    a, b = stores
    assert torch.equal(a.lens, b.lens) and a.common_len() == b.common_len()
    valid = a.valid_rows()
    for name in ("k", "v", "pos"):
        assert torch.equal(a.rows(getattr(a, name))[valid], b.rows(getattr(b, name))[valid]), name
    assert torch.equal(a.rows(a.aux["h2o_score"])[valid], b.rows(b.aux["h2o_score"])[valid])


def run_steps(model, policy_name, ids, steps, lean: bool):
    """Prefill, then `steps` greedy decode steps; logits and kept positions of every step."""
    bridge = bridge_for(model)
    policy = build(policy_name) if policy_name == "full" else build(policy_name, budget_tokens=12)
    policy.reset()
    engine = KVEngine(policy, ids.shape[0])
    out = []
    with torch.no_grad(), bridge.session(engine):
        assert bridge.lean_decode is True  # the model qualifies
        bridge.lean_decode = lean
        logits = _prefill(bridge, engine, ids, torch.ones_like(ids, dtype=torch.bool), 16)
        tok, pos = logits.argmax(-1), torch.full((ids.shape[0],), ids.shape[1])
        for _ in range(steps):
            logits = _decode_step(bridge, engine, tok, pos)
            store = engine.cache.layers[1]
            kept = store.rows(store.pos, fill=-1).masked_fill(~store.valid_rows(), -1).sort(1).values
            out.append((logits, kept))
            tok, pos = logits.argmax(-1), pos + 1
    return out


@pytest.mark.parametrize("policy_name,dtype", [("streaming_llm", torch.float32), ("h2o", torch.float32),
                                               ("full", torch.float32), ("streaming_llm", torch.bfloat16)])
def test_lean_llama_decode_is_bitwise_transformers(policy_name, dtype):
    torch.manual_seed(3)
    model = LlamaForCausalLM(LlamaConfig(**SMALL)).eval().to(dtype)
    ids = torch.randint(0, SMALL["vocab_size"], (2, 40), generator=torch.Generator().manual_seed(1))
    lean = run_steps(model, policy_name, ids, 12, lean=True)
    full = run_steps(model, policy_name, ids, 12, lean=False)
    for (la, ka), (lb, kb) in zip(lean, full, strict=True):
        assert torch.equal(la, lb)
        assert torch.equal(ka, kb)


def test_lean_decode_only_where_exact():
    torch.manual_seed(3)
    llama = LlamaForCausalLM(LlamaConfig(**SMALL)).eval()
    assert lean_decode_problem(llama) is None
    handle = llama.model.layers[0].self_attn.register_forward_pre_hook(lambda m, a: None)
    assert "hooks" in lean_decode_problem(llama)  # e.g. NAtS scorers feed the engine by a pre-hook
    handle.remove()
    assert lean_decode_problem(llama.train()) == "model in training mode"
    qwen = Qwen2ForCausalLM(Qwen2Config(**SMALL)).eval()
    assert "only LlamaForCausalLM" in lean_decode_problem(qwen)
    # a model that does not qualify still generates (transformers' forward)
    res = generate(qwen, torch.randint(0, 97, (1, 20)), build("streaming_llm", budget_tokens=8), max_new_tokens=3)
    assert res.tokens.shape == (1, 3)


def test_nats_decode_takes_the_uniform_path_with_the_same_output(monkeypatch):
    """A masking policy whose rule hides nothing this step (NAtS decode: `visible` is None) gets the
    mask-free uniform attention, and it equals `attend_store` on the same store and query."""
    from nats_model.engine import kv_engine as gen
    from nats_model.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=61, n_layer=2, n_head=4, n_kv_head=2, d_model=32, max_seq_len=128,
                          attention="nats", window=3, global_bias=0.0)).eval()
    taken = []
    original = gen.attend_uniform_decode

    def checked(store, q, scale, observe):
        fast = original(store, q, scale, observe)
        n_seg = q.shape[0]
        pos = store.rows(store.pos)[:, store.common_len() - 1:store.common_len()]  # the new token's position
        ref = attend_store(store, q, pos, torch.ones(n_seg, 1, dtype=torch.bool), True, scale, None, observe,
                           decode=True)
        assert torch.equal(fast[0], ref[0])
        taken.append(store.common_len())
        return fast

    monkeypatch.setattr(gen, "attend_uniform_decode", checked)
    ids = torch.randint(0, 61, (1, 12), generator=torch.Generator().manual_seed(5))
    generate(model, ids, build("nats", budget_tokens=6), max_new_tokens=10)
    assert len(taken) >= 8  # decode steps of both layers took it


@pytest.mark.parametrize("uniform", [True, False])
def test_add_rows_narrower_than_row_cap_equals_padded(uniform):
    """`add_rows` with (n_seg, w < row_cap) rows (a uniform decode step's attn_sum) adds what the
    zero-padded (n_seg, row_cap) rows add."""
    stores = []
    for narrow in (True, False):
        store, g = filled_store()
        if not uniform:
            store.relayout([40, 37, 60, 37])
        w = 30
        rows = torch.rand(store.n_seg, w, generator=torch.Generator().manual_seed(1))
        store.add_rows(store.aux["h2o_score"], rows if narrow else F.pad(rows, (0, store.row_cap - w)))
        stores.append(store.aux["h2o_score"])
    assert stores[0].shape == stores[1].shape and torch.equal(stores[0], stores[1])
