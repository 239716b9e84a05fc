"""`full` through the engine reproduces Hugging Face greedy generation; `score` equals full NLL."""

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from nats_model.engine.generation import generate, score
from nats_model.policies import build

SMALL = dict(vocab_size=89, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0)


def make(kind):
    torch.manual_seed(3)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**SMALL)).eval()
    if kind == "mistral":
        return MistralForCausalLM(MistralConfig(**SMALL, sliding_window=None)).eval()
    return Qwen2ForCausalLM(Qwen2Config(**SMALL)).eval()


def left_padded_batch():
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, 89, (2, 13), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    ids[0, :4] = 0
    return ids, mask


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2"])
def test_full_matches_hf_generate_greedy_with_left_padding(kind):
    model = make(kind)
    ids, mask = left_padded_batch()
    with torch.no_grad():
        ref = model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False)[:, ids.shape[1]:]
    got = generate(model, ids, build("full"), 10, attention_mask=mask, prefill_chunk_size=5)
    assert torch.equal(got.tokens, ref)
    assert got.kept_fraction == 1.0
    assert got.kv_bytes_kept == got.kv_bytes_full  # full keeps every real token and no padding
    seen = int(mask.sum()) + 2 * 9  # the last generated token is never fed back
    assert got.kv_bytes_full == seen * 2 * 2 * 2 * 16 * 4  # tokens x layers x KV heads x (K,V) x hd x fp32
    assert got.kept_per_layer_head.shape == (2, 2, 2)
    assert model.config._attn_implementation != "natsbench_kv"  # restored after the run


def test_mistral_sliding_window_is_respected():
    torch.manual_seed(3)
    model = MistralForCausalLM(MistralConfig(**SMALL, sliding_window=6)).eval()
    ids, mask = left_padded_batch()
    ids, mask = ids[1:], mask[1:]
    with torch.no_grad():
        ref = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)[:, ids.shape[1]:]
    assert torch.equal(generate(model, ids, build("full"), 8, prefill_chunk_size=4).tokens, ref)


def test_score_equals_full_sequence_nll():
    model = make("llama")
    ids = torch.randint(1, 89, (2, 17), generator=torch.Generator().manual_seed(2))
    nll = score(model, ids, build("full"))
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits.float(), -1)
    ref = -logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    assert nll.shape == (2, 16)
    torch.testing.assert_close(nll, ref, atol=1e-4, rtol=1e-4)
    # a policy that evicts changes the streaming NLL once the budget binds, not before
    nll_sl = score(model, ids, build("streaming_llm", budget_tokens=6, n_sink=2))
    torch.testing.assert_close(nll_sl[:, :5], ref[:, :5], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(nll_sl[:, 8:], ref[:, 8:], atol=1e-3)


def test_sampling_is_seeded_and_greedy_is_default():
    model = make("qwen2")
    ids = torch.randint(1, 89, (1, 6), generator=torch.Generator().manual_seed(4))
    a = generate(model, ids, build("full"), 6, do_sample=True, temperature=1.5, top_k=20, seed=11).tokens
    b = generate(model, ids, build("full"), 6, do_sample=True, temperature=1.5, top_k=20, seed=11).tokens
    c = generate(model, ids, build("full"), 6, do_sample=True, temperature=1.5, top_k=20, seed=12).tokens
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("kwargs, needle", [
    ({"max_new_tokens": 0}, "max_new_tokens must be an int >= 1"),
    ({"attention_mask": torch.tensor([[1, 1, 0]])}, "only left padding"),
    ({"attention_mask": torch.tensor([[1, 1]])}, "attention_mask shape"),
    ({"prefill_chunk_size": 0}, "prefill_chunk_size must be None or an int >= 1"),
    ({"do_sample": True, "temperature": 0.0}, "temperature must be > 0"),
])
def test_bad_generate_arguments(kwargs, needle):
    model = make("llama")
    args = {"max_new_tokens": 2, **kwargs}
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        generate(model, torch.tensor([[5, 6, 7]]), build("full"), **args)


def test_unsupported_model_is_rejected():
    with pytest.raises(ValueError, match="model must be nats_model.models.gpt.GPT or a Hugging Face"):
        generate(torch.nn.Linear(2, 2), torch.tensor([[1]]), build("full"), 1)


def test_score_run_reports_the_cache_and_a_prompt_lets_snapkv_compress():
    from nats_model.engine.generation import score_run

    model = make("llama")
    ids = torch.randint(1, 89, (1, 40), generator=torch.Generator().manual_seed(6))
    full = score_run(model, ids, build("full"))
    assert full.kept_fraction == 1.0 and full.kv_bytes_kept == full.kv_bytes_full
    # 2 layers x 2 KV heads x 39 fed tokens x K and V x head_dim 16 x 4 bytes
    assert full.kv_bytes_full == 2 * 2 * 39 * 2 * 16 * 4
    assert full.kv_bytes_kept <= full.kv_bytes_physical <= 1.05 * full.kv_bytes_kept + 2 * 2 * 2 * 16 * 4
    # a prompt fed in chunks gives the same NLL as streaming when nothing is evicted
    prompted = score_run(model, ids, build("full"), prompt_len=25, prompt_chunk_size=10)
    torch.testing.assert_close(prompted.nll, full.nll, atol=1e-4, rtol=1e-4)

    sl = score_run(model, ids, build("streaming_llm", budget_tokens=8, n_sink=2))
    assert sl.kv_bytes_kept == 2 * 2 * 8 * 2 * 16 * 4 and sl.kept_fraction == pytest.approx(8 / 39)

    # SnapKV only compresses at the end of a prompt: streaming leaves it a full cache
    streamed = score_run(model, ids, build("snapkv", budget_tokens=12, window_size=4))
    assert streamed.kept_fraction == 1.0
    snap = score_run(model, ids, build("snapkv", budget_tokens=12, window_size=4), prompt_len=30, prompt_chunk_size=7)
    # 12 prompt tokens kept, then the 9 scored tokens after the prompt are appended (never evicted)
    assert snap.kept_per_layer_head.flatten().tolist() == [12 + 9] * 4
    torch.testing.assert_close(snap.nll[:, :29], full.nll[:, :29], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(snap.nll[:, 30:], full.nll[:, 30:], atol=1e-3)


def test_score_run_rejects_a_bad_prompt_len():
    from nats_model.engine.generation import score_run

    model = make("llama")
    ids = torch.randint(1, 89, (1, 10), generator=torch.Generator().manual_seed(6))
    with pytest.raises(ValueError, match="prompt_len"):
        score_run(model, ids, build("full"), prompt_len=-1)
