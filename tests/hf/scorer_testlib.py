"""Helpers of the HF scorer / fine-tuning tests: tiny random Llama / Mistral / Qwen2 / Qwen3 models and
a byte-level tokenizer saved beside them (loadable by AutoTokenizer / AutoModelForCausalLM)."""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 64, 2, 4, 2, 16


def byte_tokenizer():
    """A `PreTrainedTokenizerFast` with one token per UTF-8 byte (id = byte value) plus <s>, </s>, <pad>."""
    from nats_model.models.gpt_to_llama import byte_level_tokenizer

    return byte_level_tokenizer(special_tokens=True)


def tiny_model(kind: str, seed: int = 0, vocab_size: int = 259, **overrides):
    """A random 2-layer model of family `kind` (hidden 64, 4 query heads, 2 KV heads, head_dim 16)."""
    import transformers as tf

    classes = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM), "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
               "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM), "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM)}
    cfg_cls, model_cls = classes[kind]
    kwargs = dict(vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
                  max_position_embeddings=4096, bos_token_id=256, eos_token_id=257, pad_token_id=258)
    if kind == "mistral":
        kwargs["sliding_window"] = None
    kwargs.update(overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_cls(cfg_cls(**kwargs)).eval()


def save_tiny_model(folder: Path, kind: str = "llama", seed: int = 0) -> Path:
    """Save a tiny random model of `kind` and the byte-level tokenizer into `folder`."""
    model = tiny_model(kind, seed)
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder
