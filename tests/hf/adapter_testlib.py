"""Shared helpers of the adapter tests: a tiny random Llama saved as a Hugging Face folder
(model + byte-level BPE tokenizer, loadable by `services.models.load_model`) and random
scorer weights for it."""

from __future__ import annotations

from pathlib import Path

import torch

HIDDEN, LAYERS, HEADS, KV_HEADS = 64, 2, 4, 2


def tiny_llama(seed: int = 0, **overrides):
    """A random 2-layer Llama (hidden 64, 4 query heads, 2 KV heads) with a ~400-token tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from services.models import _tiny_bpe_tokenizer

    tok = _tiny_bpe_tokenizer()
    kwargs = dict(vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=8192,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    kwargs.update(overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(**kwargs)).eval()
    return model, tok


def save_tiny_llama(folder: Path, seed: int = 0, **overrides) -> Path:
    model, tok = tiny_llama(seed, **overrides)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def scorer_weights(n_layers: int = LAYERS, n_kv: int = KV_HEADS, hidden: int = HIDDEN, seed: int = 1,
                   scale: float = 1.0) -> dict[int, torch.Tensor]:
    """Random scorer weights {layer: (n_kv*3, hidden)}; `scale` sets how decisive the logits are."""
    g = torch.Generator().manual_seed(seed)
    return {i: torch.randn(n_kv * 3, hidden, generator=g) * scale for i in range(n_layers)}
