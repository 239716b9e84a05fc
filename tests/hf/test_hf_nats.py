"""NAtS scorers on Hugging Face causal LMs (nats_model.models.hf_nats): attaching, the type logits,
the training attention, gradients, gradient checkpointing and the engine path for every family."""

from __future__ import annotations

import pytest
import torch
from scorer_testlib import FAMILIES, HIDDEN, KV_HEADS, LAYERS, tiny_model

from nats_model import mask as mask_mod
from nats_model.models.gpt import kept_fraction_of
from nats_model.models.hf_nats import (
    TRAIN_ATTN_IMPLEMENTATION,
    attach_nats_scorers,
    last_query_kept_fraction,
    pool_chunk_logits,
)
from nats_model.train.finetune import distill_loss
from nats_model.train.finetune_config import NatsSettings
from nats_model.train.hf_finetune import HFDistill


def ids(b=2, t=40, seed=0):
    return torch.randint(0, 256, (b, t), generator=torch.Generator().manual_seed(seed))


def constant_logits(scorers, gls: tuple[float, float, float]) -> None:
    """Make every layer's scorer give every token the logits `gls` (G, L, S)."""
    def type_logits(layer_idx, x):  # x (B, T, d) -> (B, Hkv, T, 3)
        return torch.tensor(gls).expand(x.shape[0], KV_HEADS, x.shape[1], 3)

    scorers.type_logits = type_logits


def test_unsupported_model_type_is_refused_naming_the_supported_ones():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50))
    with pytest.raises(ValueError, match="unsupported Hugging Face model_type 'gpt2'; "
                                         "supported: llama, mistral, qwen2, qwen3"):
        attach_nats_scorers(model, window=4)


@pytest.mark.parametrize("kind", FAMILIES)
def test_attach_adds_no_base_weight_and_remove_undoes_it(kind):
    model = tiny_model(kind)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_params = len(list(model.parameters()))
    x = ids()
    with torch.no_grad():
        ref = model(x).logits
    scorers = attach_nats_scorers(model, window=8, chunk_size=4, global_bias=0.2)
    assert sorted(model.state_dict()) == sorted(before)  # nothing registered in the base
    assert len(list(model.parameters())) == n_params
    assert not any(m is scorers or m in set(scorers.modules()) for m in model.modules())
    assert (model.config.nats_window, model.config.nats_chunk_size, model.config.nats_global_bias) == (8, 4, 0.2)
    w = scorers.layer_weights()
    assert sorted(w) == list(range(LAYERS)) and all(t.shape == (KV_HEADS * 3, HIDDEN) for t in w.values())
    with torch.no_grad():  # the base's own implementation is untouched by the hooks
        assert torch.equal(model(x).logits, ref)
    assert all(getattr(layer.self_attn, "nats_type_logits", None) is None for layer in model.model.layers)
    scorers.remove()
    assert all(not layer.self_attn._forward_pre_hooks for layer in model.model.layers)
    assert not hasattr(model.config, "nats_window")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    attach_nats_scorers(model, window=8)  # attachable again after remove, but only once
    with pytest.raises(ValueError, match="already has NAtS scorers"):
        attach_nats_scorers(model, window=8)


def test_weights_load_and_shape_errors_name_the_layer():
    model = tiny_model("llama")
    g = torch.Generator().manual_seed(1)
    weights = {i: torch.randn(KV_HEADS * 3, HIDDEN, generator=g) for i in range(LAYERS)}
    scorers = attach_nats_scorers(model, window=8, weights=weights)
    for i, w in scorers.layer_weights().items():
        assert torch.equal(w, weights[i])
    scorers.remove()
    with pytest.raises(ValueError, match=r"layer 1 must have shape \(6, 64\), got \(6, 32\)"):
        attach_nats_scorers(model, window=8, weights={0: weights[0], 1: torch.zeros(6, 32)})
    with pytest.raises(ValueError, match="cover layers 0..1"):
        attach_nats_scorers(model, window=8, weights={0: weights[0]})
    with pytest.raises(ValueError, match="window must be an integer >= 0"):
        attach_nats_scorers(model, window=-1)


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_type_logits_are_head_major_on_the_detached_normed_attention_input(kind):
    model = tiny_model(kind)
    scorers = attach_nats_scorers(model, window=8)
    seen = {}

    def after(module, args, kwargs):  # runs after the scorer hook (registration order)
        x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        seen[module.layer_idx] = (x, module.nats_type_logits)

    for layer in model.model.layers:
        layer.self_attn.register_forward_pre_hook(after, with_kwargs=True)
    normed = {}
    for i, layer in enumerate(model.model.layers):
        layer.input_layernorm.register_forward_hook(lambda m, a, out, i=i: normed.__setitem__(i, out))
    x = ids(2, 24)
    with scorers.implementation(TRAIN_ATTN_IMPLEMENTATION):
        model(x)
    for i in range(LAYERS):
        inp, logits = seen[i]
        assert torch.equal(inp, normed[i])  # what self_attn receives is the pre-normed block input
        w = scorers.proj[str(i)].weight  # (Hkv*3, d), row h*3 + type
        assert logits.shape == (2, KV_HEADS, 24, 3)
        for h in range(KV_HEADS):
            torch.testing.assert_close(logits[:, h], inp @ w[h * 3:(h + 1) * 3].T)
        # the input is detached: the logits carry gradient to the scorer weight only, never to the base
        assert inp.requires_grad and logits.requires_grad
        assert torch.autograd.grad(logits.sum(), inp, retain_graph=True, allow_unused=True)[0] is None
    assert model.config._attn_implementation == "sdpa"  # restored


@pytest.mark.parametrize("kind", FAMILIES)
def test_all_global_training_attention_equals_the_sdpa_teacher(kind):
    """Decisively Global scorers make the student's NAtS attention full causal attention: the same
    hidden states as SDPA (checks GQA, scaling, RoPE and the output layout of the training path)."""
    model = tiny_model(kind)
    dm = HFDistill(model, NatsSettings(window=2, lam=0.0))
    x = ids(2, 32)
    constant_logits(dm.scorers, (60.0, -60.0, -60.0))  # Global beats any Gumbel noise
    teacher = dm.teacher(x)
    student = dm.student(x)
    torch.testing.assert_close(student.hidden, teacher.hidden, atol=2e-5, rtol=1e-4)
    assert dm.kept_fraction() == 1.0
    constant_logits(dm.scorers, (-60.0, -60.0, 60.0))  # all SW (window 2) except the forced ends: differs
    student = dm.student(x)
    assert (student.hidden - teacher.hidden).abs().max() > 1e-2
    assert dm.kept_fraction() < 0.2
    dm.close()
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("kind", FAMILIES)
def test_only_scorers_get_gradients_and_base_stays_bit_identical(kind):
    model = tiny_model(kind)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dm = HFDistill(model, NatsSettings(window=4, lam=1e-3))
    opt = torch.optim.AdamW(dm.trainable_parameters(), lr=1e-2)
    weights = torch.ones(2, 32)
    for step in range(3):
        x = ids(2, 32, seed=step)
        loss = distill_loss(dm.student(x), dm.teacher(x), weights, "hidden_mse")
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in model.parameters())
        grads = [p.grad for p in dm.trainable_parameters()]
        assert len(grads) == LAYERS and all(g is not None and g.abs().sum() > 0 for g in grads)
        opt.step()
    dm.close()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"base tensor {k} changed"


def test_gradient_checkpointing_gives_the_same_scorer_gradients():
    """The checkpointed backward recomputes the layers under the NAtS training attention with the same
    Gumbel draws (the RNG state is restored): identical scorer gradients."""
    grads = []
    for checkpointing in (False, True):
        model = tiny_model("llama")
        dm = HFDistill(model, NatsSettings(window=4, lam=1e-3, chunk_size=4), gradient_checkpointing=checkpointing)
        with torch.no_grad():
            for i, proj in dm.scorers.proj.items():
                proj.weight.copy_(torch.randn(proj.weight.shape, generator=torch.Generator().manual_seed(int(i))))
        x = ids(2, 30)
        teacher = dm.teacher(x)
        torch.manual_seed(7)
        loss = distill_loss(dm.student(x), teacher, torch.ones(2, 30), "hidden_mse")
        loss.backward()
        grads.append([p.grad.clone() for p in dm.trainable_parameters()])
        if checkpointing:
            assert model.model.gradient_checkpointing and model.training
        dm.close()
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_last_query_kept_fraction_matches_the_dense_mask(chunk):
    g = torch.Generator().manual_seed(4)
    n = 23
    nc = n if chunk in (None, 1) else mask_mod.chunk_count(n, chunk)
    for _ in range(5):
        types = torch.randint(0, 3, (2, 3, nc), generator=g)
        got = last_query_kept_fraction(types, 4, chunk, n)
        torch.testing.assert_close(got, kept_fraction_of(types, 4, chunk if chunk != 1 else None, n))


def test_chunk_pooling_of_logits_is_the_pooled_input_scorer():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 10, 8, generator=g)  # (B, N, d)
    w = torch.randn(6, 8, generator=g)  # (Hkv*3, d)
    tok = (x @ w.T).view(2, 10, 2, 3).permute(0, 2, 1, 3)  # (B, Hkv, N, 3)
    from nats_model.scorer import chunk_mean_pool

    pooled_in = chunk_mean_pool(x, 4) @ w.T  # (B, Nc, Hkv*3)
    torch.testing.assert_close(pool_chunk_logits(tok, 4), pooled_in.view(2, 3, 2, 3).permute(0, 2, 1, 3))


def test_qwen3_runs_through_the_engine_with_scorers():
    """Qwen3 (q/k norms) through the KV engine: `full` matches Hugging Face greedy generation; `nats`
    with Global-only scorers equals `full`, with decisive random scorers it keeps less."""
    from nats_model.engine.generation import generate
    from nats_model.policies import build

    model = tiny_model("qwen3")
    x = ids(2, 21, seed=3)
    with torch.no_grad():
        ref = model.generate(x, max_new_tokens=6, do_sample=False, pad_token_id=258)[:, x.shape[1]:]
    full = generate(model, x, build("full"), 6, prefill_chunk_size=5)
    assert torch.equal(full.tokens, ref)
    scorers = attach_nats_scorers(model, window=3, global_bias=0.0)
    with torch.no_grad():
        for proj in scorers.proj.values():
            proj.weight.zero_()  # logits 0: the tie goes to Global (index 0)
    same = generate(model, x, build("nats"), 6, prefill_chunk_size=5)
    assert torch.equal(same.tokens, full.tokens) and same.kept_fraction == 1.0
    with torch.no_grad():
        for proj in scorers.proj.values():
            proj.weight.normal_(0, 5.0)
    mixed = generate(model, x, build("nats"), 6, prefill_chunk_size=5)
    assert mixed.kept_fraction < 0.9
    assert model.config._attn_implementation == "sdpa"
