"""The small GPT: shapes, causality, GQA, NAtS vs full attention, checkpoints, the kv_engine hook."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
import torch.nn.functional as F

from nats_model import scorer as scorer_mod
from nats_model.models.gpt import GPT, GPTConfig


def tiny(**kw) -> GPTConfig:
    base = dict(n_layer=2, d_model=32, n_head=4, n_kv_head=2, window=4)
    base.update(kw)
    return GPTConfig(**base)


def test_shapes_loss_and_causality():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    idx = torch.randint(0, 256, (2, 12))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 12, 256)
    assert loss.ndim == 0 and 4.0 < float(loss.detach()) < 7.0  # near log(256) at init
    assert model(idx)[1] is None
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 256
    logits2, _ = model(changed)
    assert torch.allclose(logits[:, :7], logits2[:, :7], atol=1e-6)  # the past never sees the future
    assert not torch.allclose(logits[:, 7:], logits2[:, 7:])


def test_gqa_equals_mha_with_repeated_kv_weights():
    torch.manual_seed(0)
    gqa = GPT(tiny(n_kv_head=2)).eval()
    mha = GPT(tiny(n_kv_head=4)).eval()
    state = gqa.state_dict()
    hd = gqa.config.head_dim
    for key, value in list(state.items()):
        if key.endswith(("k_proj.weight", "v_proj.weight")):
            # (Hkv*hd, d) -> (Hq*hd, d): query head h uses KV head h // group
            state[key] = value.view(2, hd, -1).repeat_interleave(2, dim=0).reshape(4 * hd, -1)
    mha.load_state_dict(state)
    idx = torch.randint(0, 256, (2, 10))
    assert torch.allclose(gqa(idx)[0], mha(idx)[0], atol=1e-5)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="n_kv_head"):
        GPTConfig(n_head=4, n_kv_head=3)
    with pytest.raises(ValueError, match="attention"):
        GPTConfig(attention="sparse")
    with pytest.raises(ValueError, match="bogus"):
        GPTConfig.from_dict({"bogus": 1})


def _full_twin(nats: GPT) -> GPT:
    full = GPT(GPTConfig(**{**nats.config.to_dict(), "attention": "full"}))
    full.load_state_dict({k: v for k, v in nats.state_dict().items() if ".scorer." not in k})
    return full


def test_nats_all_global_equals_full_attention_eval():
    torch.manual_seed(0)
    nats = GPT(tiny(attention="nats", global_bias=1e4)).eval()  # bias makes every type Global
    full = _full_twin(nats).eval()
    idx = torch.randint(0, 256, (2, 20))
    assert torch.allclose(nats(idx)[0], full(idx)[0], atol=1e-5)
    assert nats.kept_fraction() == pytest.approx(1.0)
    # a small window with the real argmax types drops keys and changes the output
    nats.config.global_bias = -1e4
    assert nats(idx)[0].sub(full(idx)[0]).abs().max() > 1e-4
    assert nats.kept_fraction() < 1.0


def test_nats_all_global_equals_full_attention_training(monkeypatch):
    torch.manual_seed(0)
    nats = GPT(tiny(attention="nats")).train()
    full = _full_twin(nats).train()

    def all_global(logits, *a, **k):  # straight-through one-hot that is Global everywhere
        hard = torch.zeros_like(logits)
        hard[..., 0] = 1
        return hard - logits.softmax(-1).detach() + logits.softmax(-1)

    monkeypatch.setattr(scorer_mod, "sample_train_types", all_global)
    idx = torch.randint(0, 256, (2, 16))
    _, loss_n = nats(idx, idx)
    _, loss_f = full(idx, idx)
    assert torch.allclose(loss_n, loss_f, atol=1e-5)
    loss_n.backward()
    loss_f.backward()
    for name, p in full.named_parameters():
        assert torch.allclose(p.grad, dict(nats.named_parameters())[name].grad, atol=1e-5), name
    assert nats.blocks[1].attn.scorer.proj.weight.grad is not None


def test_save_load_round_trip_without_pickle(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = GPT(tiny(attention="nats", chunk_size=4)).eval()
    model.save_pretrained(tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["attention"] == "nats" and cfg["chunk_size"] == 4

    def forbidden(*a, **k):
        raise AssertionError("loading must not unpickle")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    loaded = GPT.from_pretrained(tmp_path / "ckpt")
    idx = torch.randint(0, 256, (1, 9))
    assert torch.equal(model(idx)[0], loaded(idx)[0])
    model.save_pretrained(tmp_path / "bf16", dtype=torch.bfloat16)
    assert (tmp_path / "bf16" / "model.safetensors").stat().st_size < (tmp_path / "ckpt" / "model.safetensors").stat().st_size
    with pytest.raises(FileNotFoundError, match="config.json"):
        GPT.from_pretrained(tmp_path)


class FakeEngine:
    """Plain causal attention over a cache that accumulates every key and value."""

    def __init__(self, config: GPTConfig):
        self.config = config
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}
        self.calls: list[tuple] = []

    def attend(self, layer_idx, q, k, v, *, positions, type_logits):
        cfg = self.config
        B, T = positions.shape
        assert q.shape == (B, cfg.n_head, T, cfg.head_dim)
        assert k.shape == v.shape == (B, cfg.n_kv_head, T, cfg.head_dim)
        self.calls.append((layer_idx, T, None if type_logits is None else tuple(type_logits.shape)))
        if layer_idx in self.k:
            k = torch.cat([self.k[layer_idx], k], dim=2)
            v = torch.cat([self.v[layer_idx], v], dim=2)
        self.k[layer_idx], self.v[layer_idx] = k, v
        S = k.shape[2]
        # query i (absolute S - T + i) sees keys 0..S-T+i
        mask = torch.arange(S)[None, :] <= torch.arange(S - T, S)[:, None]  # (T, S)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


@pytest.mark.parametrize("attention", ["full", "nats"])
@pytest.mark.parametrize("lean_decode", [False, True])  # no_grad one-token steps take GPT._decode
def test_kv_engine_hook_reproduces_full_forward(attention, lean_decode):
    torch.manual_seed(0)
    model = GPT(tiny(attention=attention, global_bias=1e4)).eval()
    idx = torch.randint(0, 256, (2, 14))
    ref, _ = model(idx)
    engine = FakeEngine(model.config)
    outs = [model(idx[:, :6], kv_engine=engine, positions=torch.arange(6).expand(2, 6))[0]]  # prefill
    for t in range(6, 14):  # decode one token at a time
        with torch.set_grad_enabled(not lean_decode):
            outs.append(model(idx[:, t : t + 1], kv_engine=engine, positions=torch.full((2, 1), t))[0])
    assert torch.allclose(torch.cat(outs, dim=1), ref, atol=1e-5)
    assert [c[0] for c in engine.calls[:2]] == [0, 1] and len(engine.calls) == 2 * 9
    expect = None if attention == "full" else (2, 2, 1, 3)
    assert engine.calls[-1][2] == expect
    if attention == "nats":
        assert model.blocks[0].attn.scorer is not None
    else:
        assert model.blocks[0].attn.scorer is None


def test_positions_shape_is_checked():
    model = GPT(tiny())
    with pytest.raises(ValueError, match="positions"):
        model(torch.zeros(2, 4, dtype=torch.long), positions=torch.arange(4))


def test_cpu_decode_layout_keeps_values_and_outputs_and_saves_contiguous(tmp_path):
    torch.manual_seed(0)
    model = GPT(tiny(attention="nats", global_bias=1e4)).eval()
    idx = torch.randint(0, 256, (2, 14))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref, _ = model(idx)
    assert model.cpu_decode_layout() is model
    up = model.blocks[0].mlp.up.weight  # more outputs than inputs: column-major now
    assert up.shape == before["blocks.0.mlp.up.weight"].shape and not up.is_contiguous() and up.t().is_contiguous()
    assert model.blocks[0].mlp.down.weight.is_contiguous()  # wider input: stays row-major
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    engine = FakeEngine(model.config)
    outs = [model(idx[:, :6], kv_engine=engine, positions=torch.arange(6).expand(2, 6))[0]]
    with torch.no_grad():
        for t in range(6, 14):
            outs.append(model(idx[:, t : t + 1], kv_engine=engine, positions=torch.full((2, 1), t))[0])
    assert torch.allclose(torch.cat(outs, dim=1), ref, atol=1e-5)
    model.save_pretrained(tmp_path)
    again = GPT.from_pretrained(tmp_path)
    assert all(torch.equal(v, before[k]) for k, v in again.state_dict().items())
