"""Prefill asks the model for the last position's logits only (`logits_to_keep=1`), and that changes
nothing: chunked prefill gives the same next-token logits as one-shot prefill under `full`, and the
same as the model's own full forward."""

from __future__ import annotations

import pytest
import torch
from adapter_testlib import tiny_llama

from nats_model.engine.generation import _prefill, generate
from nats_model.engine.kv_engine import KVEngine
from nats_model.models.bridge import bridge_for
from nats_model.models.gpt import GPT, GPTConfig
from nats_model.policies import build


def _models():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=61, n_layer=2, n_head=4, n_kv_head=2, d_model=32, max_seq_len=256)).eval()
    llama, _ = tiny_llama()
    return {"gpt": gpt, "llama": llama}


MODELS = _models()




def _next_logits(model, ids, mask, chunk) -> torch.Tensor:
    policy = build("full")
    bridge = bridge_for(model)
    policy.bind_model(model)
    policy.reset()
    engine = KVEngine(policy, ids.shape[0])
    with torch.no_grad(), bridge.session(engine):
        return _prefill(bridge, engine, ids, mask.bool(), chunk)  # (B, V)


@pytest.mark.parametrize("name", ["gpt", "llama"])
def test_chunked_prefill_gives_the_one_shot_next_token_logits(name):
    model = MODELS[name]
    V = model.config.vocab_size
    ids = torch.randint(3, V, (2, 37), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :6] = 0  # left padding
    one_shot = _next_logits(model, ids, mask, None)
    for chunk in (1, 5, 16):
        torch.testing.assert_close(_next_logits(model, ids, mask, chunk), one_shot, atol=1e-5, rtol=1e-5)
    # and the model's own forward over the unpadded row (no engine, every position's logits)
    with torch.no_grad():
        if name == "gpt":
            dense = model(ids[:1])[0][:, -1]
        else:
            dense = model(input_ids=ids[:1]).logits[:, -1]
    torch.testing.assert_close(one_shot[:1], dense, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["gpt", "llama"])
def test_prefill_computes_one_position_of_logits_per_chunk(name):
    model = MODELS[name]
    rows: list[int] = []  # positions each LM-head call computed (B, T, V) -> T
    hook = model.lm_head.register_forward_hook(lambda m, a, out: rows.append(out.shape[1]))
    ids = torch.randint(3, model.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(2))
    try:
        generate(model, ids, build("full"), max_new_tokens=3, prefill_chunk_size=16)
    finally:
        hook.remove()
    # 3 prefill chunks (16 + 16 + 8 tokens) -> 1 row each; decode steps -> 1 row each
    assert rows[:3] == [1, 1, 1]


def test_gpt_refuses_logits_to_keep_with_targets():
    model = MODELS["gpt"]
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="logits_to_keep needs targets=None"):
        model(ids, ids, logits_to_keep=1)
    assert model(ids, logits_to_keep=2)[0].shape == (1, 2, 61)
