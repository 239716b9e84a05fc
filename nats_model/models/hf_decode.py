"""A lean one-token forward for Hugging Face Llama models through the KV engine.

Why: at 10% kept, a decode step of a small Llama on a CPU spends as much time in transformers'
module machinery (hooks, decorators, kwargs plumbing, output records, mask and rotary set-up:
~60 module calls a step) as in its matrix products. This forward reads the same modules' weights
and runs the same tensor ops in the same order as `LlamaForCausalLM.forward` (transformers 5),
so its logits are bitwise those of the full forward (tests/engine/test_hf_lean_decode.py), just
without the machinery. It is used for one-token steps only (decode, token-by-token scoring);
prefill chunks keep transformers' own forward.

It is taken only where that equality is known to hold: exactly `LlamaForCausalLM` (model_type
"llama"), plain RoPE, SiLU MLP, no forward hooks anywhere (the NAtS scorers reach the engine by a
pre-hook, so a model with scorers keeps the full forward), eval mode. `lean_decode_problem(model)`
names the first reason it is not taken.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def lean_decode_problem(model) -> str | None:
    """Why the lean forward cannot stand in for `model`'s forward, or None when it can."""
    if type(model).__name__ != "LlamaForCausalLM" or getattr(model.config, "model_type", None) != "llama":
        return f"only LlamaForCausalLM, got {type(model).__name__}"
    if model.training:
        return "model in training mode"
    rope = getattr(model.config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        return f"rope_type {rope.get('rope_type')!r} (only plain RoPE)"
    if getattr(model.config, "pretraining_tp", 1) not in (None, 1):
        return "pretraining_tp > 1"
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return "global module hooks"
    for name, module in model.named_modules():
        if module._forward_hooks or module._forward_pre_hooks:
            return f"forward hooks on {name or 'the model'}"
    inner = model.model
    if len(inner.layers) != model.config.num_hidden_layers:
        return "layer count differs from the config"
    for layer in inner.layers:
        if not (isinstance(layer.mlp.act_fn, nn.SiLU) or type(layer.mlp.act_fn).__name__ == "SiLUActivation"):
            return f"activation {type(layer.mlp.act_fn).__name__} (only SiLU)"
        if getattr(layer.self_attn, "sliding_window", None) is not None:
            return "sliding-window attention"
    return None


def _rms_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """LlamaRMSNorm.forward, op for op (a `.to` to the dtype a tensor has is the identity: skipped)."""
    input_dtype = x.dtype
    h = x if input_dtype == torch.float32 else x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + norm.variance_epsilon)
    return norm.weight * (h if input_dtype == torch.float32 else h.to(input_dtype))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def _linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    return F.linear(x, layer.weight, layer.bias)


def lean_llama_forward(model, ids: torch.Tensor, positions: torch.Tensor, engine) -> torch.Tensor:
    """ids, positions (B, T) -> logits (B, T, V): `model(input_ids=ids, position_ids=positions)`
    with every attention layer handing q, k, v (RoPE applied) to `engine.attend`."""
    inner = model.model
    h = F.embedding(ids, inner.embed_tokens.weight, inner.embed_tokens.padding_idx)  # (B, T, d)
    B, T, _ = h.shape
    rotary = inner.rotary_emb
    # LlamaRotaryEmbedding.forward: cos / sin (B, T, hd) in float32, then the activations' dtype
    freqs = positions[..., None].float() * rotary.inv_freq.to(device=h.device, dtype=torch.float)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos = (emb.cos() * rotary.attention_scaling).to(dtype=h.dtype).unsqueeze(1)  # (B, 1, T, hd)
    sin = (emb.sin() * rotary.attention_scaling).to(dtype=h.dtype).unsqueeze(1)
    for layer in inner.layers:
        attn = layer.self_attn
        residual = h
        x = _rms_norm(h, layer.input_layernorm)
        shape = (B, T, -1, attn.head_dim)
        q = _linear(x, attn.q_proj).view(shape).transpose(1, 2)  # (B, Hq, T, hd)
        k = _linear(x, attn.k_proj).view(shape).transpose(1, 2)  # (B, Hkv, T, hd)
        v = _linear(x, attn.v_proj).view(shape).transpose(1, 2)
        q = (q * cos) + (_rotate_half(q) * sin)
        k = (k * cos) + (_rotate_half(k) * sin)
        o = engine.attend(attn.layer_idx, q, k, v, scale=attn.scaling)  # (B, Hq, T, hd)
        o = o.transpose(1, 2).contiguous().reshape(B, T, -1).contiguous()
        h = residual + _linear(o, attn.o_proj)
        residual = h
        x = _rms_norm(h, layer.post_attention_layernorm)
        mlp = layer.mlp
        h = residual + _linear(F.silu(_linear(x, mlp.gate_proj)) * _linear(x, mlp.up_proj), mlp.down_proj)
    h = _rms_norm(h, inner.norm)
    return _linear(h, model.lm_head)
