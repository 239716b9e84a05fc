"""Convert the small byte-level GPT into a Hugging Face Llama folder (same function, bit for bit up to float rounding).

The GPT block is x + attn(rmsnorm(x)), then x + down(gelu(up(rmsnorm(x)))), with RoPE in the "rotate
half" layout (nats_model.rope), no biases, untied embeddings: everything a `LlamaForCausalLM` has,
except the MLP, which in Llama is gated: down(act(gate(x)) * up(x)). With `mlp_bias=True` and
`hidden_act="gelu"` (exact erf GELU, as `F.gelu`), the GPT's MLP is that gated MLP with
gate = the GPT's `up`, Llama's `up` = weight 0 and bias 1 (a constant 1 gate), zero other biases.
A GPT with `mlp="swiglu"` (gate, up, down: Llama's own MLP) maps one to one onto a plain Llama
(`hidden_act="silu"`, no MLP bias); `natsbench train` writes that form directly with `export: hf_llama`.
So a trained GPT becomes a Llama that `AutoModelForCausalLM.from_pretrained` loads, with a byte-level
tokenizer (`byte_level_tokenizer`: token id = UTF-8 byte, vocabulary 256, no special tokens, like
`nats_model.tokenizer.ByteTokenizer`) saved beside it for `AutoTokenizer`.

`python -m nats_model.models.gpt_to_llama SRC_GPT_DIR OUT_DIR` writes the folder and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (what the ByteLevel pre-tokenizer emits)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, extra = bs[:], 0
    for b in range(256):
        if b not in bs:  # unprintable bytes go to 256, 257, ... in byte order
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def byte_level_tokenizer(special_tokens: bool = False):
    """A `PreTrainedTokenizerFast` with one token per UTF-8 byte, id = byte value (0..255).

    `special_tokens=True` adds <s>, </s>, <pad> as ids 256, 257, 258 (bos / eos / pad); without them
    the vocabulary is exactly the 256 bytes (the GPT's, so converted weights need no new rows).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}  # byte b -> id b
    names = ("<s>", "</s>", "<pad>") if special_tokens else ()
    for i, special in enumerate(names):
        vocab[special] = 256 + i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    kwargs = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"} if special_tokens else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def gpt_to_llama(gpt):
    """A `LlamaForCausalLM` computing the same function as `gpt` (a full-attention `GPT`), float32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    c = gpt.config
    if c.attention != "full":
        raise ValueError(f"only a full-attention GPT converts (NAtS scorers go in an adapter), got {c.attention!r}")
    hidden = gpt.blocks[0].mlp.up.weight.shape[0]
    gated = c.mlp == "swiglu"
    cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=hidden,
                      num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head,
                      head_dim=c.head_dim, hidden_act="silu" if gated else "gelu", mlp_bias=not gated,
                      attention_bias=False,
                      rms_norm_eps=c.norm_eps, max_position_embeddings=c.max_seq_len, tie_word_embeddings=False,
                      rope_parameters={"rope_type": "default", "rope_theta": float(c.rope_theta)},
                      bos_token_id=None, eos_token_id=None, pad_token_id=None)
    llama = LlamaForCausalLM(cfg).eval()
    src = gpt.state_dict()
    dst: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": src["embed.weight"],
        "model.norm.weight": src["norm.weight"],
        "lm_head.weight": src["lm_head.weight"],
    }
    for i in range(c.n_layer):
        b, p = f"blocks.{i}.", f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            dst[f"{p}self_attn.{name}.weight"] = src[f"{b}attn.{name}.weight"]
        dst[f"{p}input_layernorm.weight"] = src[f"{b}attn_norm.weight"]
        dst[f"{p}post_attention_layernorm.weight"] = src[f"{b}mlp_norm.weight"]
        up, down = src[f"{b}mlp.up.weight"], src[f"{b}mlp.down.weight"]  # (H, d), (d, H)
        if gated:
            dst[f"{p}mlp.gate_proj.weight"] = src[f"{b}mlp.gate.weight"]
            dst[f"{p}mlp.up_proj.weight"] = up
            dst[f"{p}mlp.down_proj.weight"] = down
            continue
        dst[f"{p}mlp.gate_proj.weight"] = up
        dst[f"{p}mlp.gate_proj.bias"] = torch.zeros(up.shape[0])
        dst[f"{p}mlp.up_proj.weight"] = torch.zeros_like(up)  # the gate's other factor is the constant 1
        dst[f"{p}mlp.up_proj.bias"] = torch.ones(up.shape[0])
        dst[f"{p}mlp.down_proj.weight"] = down
        dst[f"{p}mlp.down_proj.bias"] = torch.zeros(down.shape[0])
    missing, unexpected = llama.load_state_dict({k: v.float() for k, v in dst.items()}, strict=False)
    missing = [k for k in missing if "rotary_emb" not in k]
    if missing or unexpected:
        raise ValueError(f"conversion does not cover the Llama: missing {missing}, unexpected {unexpected}")
    return llama


def export_llama(gpt, out_dir: str | Path) -> dict:
    """Write `gpt` (a full-attention `GPT`) as a Llama folder + byte-level tokenizer into `out_dir`;
    returns {"out", "max_abs_logit_diff"} measured on a 64-token probe of real text."""
    was_training = gpt.training
    gpt.eval()
    llama = gpt_to_llama(gpt)
    probe = torch.tensor([list(b"Convert the GPT into a Llama; the pass key is 12345. Remember it!!")[:64]])
    with torch.no_grad():
        diff = float((llama(probe).logits - gpt(probe.to(next(gpt.parameters()).device))[0].float().cpu())
                     .abs().max())
    gpt.train(was_training)
    out = Path(out_dir)
    llama.save_pretrained(out)
    byte_level_tokenizer().save_pretrained(out)
    return {"out": str(out), "max_abs_logit_diff": diff}


def convert(src_dir: str | Path, out_dir: str | Path) -> dict:
    """Write the Llama + byte-level tokenizer of the GPT checkpoint in `src_dir` to `out_dir` (`export_llama`)."""
    from nats_model.models.gpt import GPT

    return export_llama(GPT.from_pretrained(src_dir).float().eval(), out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src", help="a full-attention GPT checkpoint folder (e.g. models/tiny-base)")
    parser.add_argument("out", help="the Hugging Face Llama folder to write")
    args = parser.parse_args(argv)
    try:
        result = convert(args.src, args.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"gpt_to_llama: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
