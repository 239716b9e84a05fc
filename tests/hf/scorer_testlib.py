"""Helpers of the HF scorer / fine-tuning tests: tiny random Llama / Mistral / Qwen2 / Qwen3 models and
a byte-level tokenizer saved beside them (loadable by AutoTokenizer / AutoModelForCausalLM)."""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 64, 2, 4, 2, 16


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (what the ByteLevel pre-tokenizer emits)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), 256))
    cs, extra = bs[:], 0
    for b in range(256):
        if b not in bs:  # unprintable bytes go to 256, 257, ... in byte order
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def byte_tokenizer():
    """A `PreTrainedTokenizerFast` with one token per UTF-8 byte (id = byte value) plus <s>, </s>, <pad>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}  # byte b -> id b
    for i, special in enumerate(("<s>", "</s>", "<pad>")):
        vocab[special] = 256 + i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


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
