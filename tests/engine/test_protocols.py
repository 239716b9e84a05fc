"""Compression protocols in the engine (`compress`): when a policy may evict.

On a tiny random Llama, with the engine's stores read after every step: under "prompt" H2O and TOVA
keep every token until the prompt's last chunk and exactly the budget after it; under "context" the
tokens kept after prefill are decided at the context's end, before the question tokens exist (the
same set as compressing the context alone; every question token kept); "streaming" evicts on every
step. Unsupported protocols and a missing context end are refused before any work.
"""

from __future__ import annotations

import pytest
import torch

import nats_model.engine.generation as gen
from nats_model.engine.generation import generate, prefill_steps
from nats_model.policies import build

BUDGET = 12
P, CHUNK, CONTEXT = 60, 16, 38


@pytest.fixture(scope="module")
def model():
    from services.models import load_model

    torch.manual_seed(0)
    return load_model("random:tiny-llama").model


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 200, (1, P), generator=torch.Generator().manual_seed(1))


def run(model, ids, policy, monkeypatch, **kw):
    """generate() with the kept positions of layer 0, KV head 0 recorded after each step:
    [(prefill, evict, compress_point, seen, kept positions)]."""
    steps = []
    original = gen.KVEngine.attend

    def attend(self, layer_idx, q, k, v, **kwargs):
        out = original(self, layer_idx, q, k, v, **kwargs)
        if layer_idx == 0:
            store = self.cache.layers[0]
            n = int(store.lens[0])
            kept = sorted(store.pos[store.offsets[0]:store.offsets[0] + n].tolist())
            st = self._step
            steps.append((st["prefill"], st["evict"], st["cpoint"], int(self.cache.seen[0]), kept))
        return out

    monkeypatch.setattr(gen.KVEngine, "attend", attend)
    result = generate(model, ids, policy, max_new_tokens=4, prefill_chunk_size=CHUNK, **kw)
    monkeypatch.setattr(gen.KVEngine, "attend", original)
    return result, steps


def test_prefill_steps_split_at_the_context_end():
    assert prefill_steps(P, CHUNK, "streaming") == [(0, 16, True, False), (16, 32, True, False),
                                                    (32, 48, True, False), (48, 60, True, True)]
    assert [s[2] for s in prefill_steps(P, CHUNK, "prompt")] == [False, False, False, True]
    context = prefill_steps(P, CHUNK, "context", CONTEXT)
    assert [(s, e) for s, e, _, _ in context] == [(0, 16), (16, 32), (32, 38), (38, 54), (54, 60)]
    assert [(s[2], s[3]) for s in context] == [(False, False), (False, False), (True, True),
                                               (False, False), (False, False)]


@pytest.mark.parametrize("name", ["h2o", "tova"])
def test_prompt_keeps_everything_until_the_prompts_end_then_the_budget(model, ids, name, monkeypatch):
    _, steps = run(model, ids, build(name, budget_tokens=BUDGET), monkeypatch, compress="prompt")
    prefill = [s for s in steps if s[0]]
    assert len(prefill) == 4
    for _, evict, _, seen, kept in prefill[:-1]:
        assert not evict and kept == list(range(seen))  # every token so far, none evicted
    assert prefill[-1][1] and prefill[-1][2] and len(prefill[-1][4]) == BUDGET
    decode = [s for s in steps if not s[0]]
    assert decode and all(s[1] and len(s[4]) == BUDGET for s in decode)  # decode_evicts: back to the budget


@pytest.mark.parametrize("name", ["h2o", "tova"])
def test_streaming_evicts_on_every_step(model, ids, name, monkeypatch):
    plain, steps = run(model, ids, build(name, budget_tokens=BUDGET), monkeypatch)
    assert all(s[1] for s in steps)
    assert all(len(s[4]) == min(BUDGET, s[3]) for s in steps)
    explicit, _ = run(model, ids, build(name, budget_tokens=BUDGET), monkeypatch, compress="streaming")
    assert torch.equal(plain.tokens, explicit.tokens)


@pytest.mark.parametrize("name, params", [("h2o", {"budget_tokens": BUDGET}), ("tova", {"budget_tokens": BUDGET}),
                                          ("snapkv", {"budget_tokens": BUDGET, "window_size": 4})])
def test_context_decides_before_the_question_exists(model, ids, name, params, monkeypatch):
    _, steps = run(model, ids, build(name, **params), monkeypatch, compress="context", context_len=CONTEXT)
    prefill = [s for s in steps if s[0]]
    at_point = [s for s in prefill if s[2]]
    assert len(at_point) == 1 and at_point[0][3] == CONTEXT and len(at_point[0][4]) == BUDGET
    assert all(not s[1] for s in prefill if not s[2])  # no other prefill step evicts
    after = prefill[-1][4]
    assert [p for p in after if p >= CONTEXT] == list(range(CONTEXT, P))  # every question token kept
    assert [p for p in after if p < CONTEXT] == at_point[0][4]
    # the same kept context as compressing the context alone: the question played no part
    _, alone = run(model, ids[:, :CONTEXT], build(name, **params), monkeypatch, compress="prompt")
    assert [s for s in alone if s[0]][-1][4] == at_point[0][4]


def test_snapkv_context_grows_during_decode(model, ids, monkeypatch):
    _, steps = run(model, ids, build("snapkv", budget_tokens=BUDGET, window_size=4), monkeypatch,
                   compress="context", context_len=CONTEXT)
    decode = [s for s in steps if not s[0]]
    assert all(not s[1] for s in decode)  # decode_evicts False: nothing dropped after the compression
    assert [len(s[4]) for s in decode] == [BUDGET + P - CONTEXT + i + 1 for i in range(len(decode))]


def test_unsupported_protocol_and_missing_context_end_are_refused(model, ids):
    with pytest.raises(ValueError, match=r"compress: policy 'snapkv' does not support 'streaming'; allowed: "
                                         r"prompt, context"):
        generate(model, ids, build("snapkv", budget=0.5), max_new_tokens=1, compress="streaming")
    with pytest.raises(ValueError, match=r"context_len: compress='context' needs"):
        generate(model, ids, build("h2o", budget=0.5), max_new_tokens=1, compress="context")
    with pytest.raises(ValueError, match=r"context_len"):
        generate(model, ids, build("h2o", budget=0.5), max_new_tokens=1, compress="context", context_len=P)
    with pytest.raises(ValueError, match=r"score_run has no question"):
        gen.score_run(model, ids, build("h2o", budget=0.5), compress="context")


@pytest.mark.parametrize("chat", [False, True])
def test_encode_split_finds_the_context_end_in_the_models_tokens(chat, monkeypatch):
    from services import workloads
    from services.evaluation import encode_split
    from services.models import load_model

    handle = load_model("random:tiny-llama")
    if chat:  # a minimal template: the user turn verbatim between markers
        monkeypatch.setattr(handle.tokenizer, "chat_template",
                            "{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}"
                            "{% if add_generation_prompt %}<a>{% endif %}", raising=False)
    params = {"context_length": 96, "chat": "on" if chat else "off"}
    for name in ("passkey", "kv_recall"):
        inst = workloads.get(name).instances(params, 1, 0, count_tokens=handle.count_tokens)[0]
        ids, n = encode_split(handle, inst)
        assert ids == handle.encode_instance(inst) and 0 < n < len(ids)
        question = inst.prompt[inst.context_chars:]
        text = handle.tokenizer.decode(ids[n:])
        # the question's text is all after the split, and the context's last word before it
        assert question.split("\n")[0].split("?")[0].strip() in text
        context_words = inst.prompt[:inst.context_chars].split()
        assert context_words[-1] in handle.tokenizer.decode(ids[:n])
