"""The GPT -> Hugging Face Llama conversion (nats_model.models.gpt_to_llama): same function, loadable folder."""

from __future__ import annotations

import json

import pytest
import torch

from nats_model.models.gpt import GPT, GPTConfig
from nats_model.models.gpt_to_llama import byte_level_tokenizer, gpt_to_llama, main


def tiny_gpt(**over) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=256, n_layer=2, n_head=4, n_kv_head=2, d_model=64, rope_theta=1e4, max_seq_len=512)
    cfg.update(over)
    model = GPT(GPTConfig(**cfg)).eval()
    with torch.no_grad():  # non-trivial norm weights (a fresh GPT has ones)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def test_llama_computes_the_gpt_function():
    gpt = tiny_gpt()
    llama = gpt_to_llama(gpt)
    ids = torch.randint(0, 256, (2, 50), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(llama(ids).logits, gpt(ids)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="only a full-attention GPT converts"):
        gpt_to_llama(tiny_gpt(attention="nats"))


def test_converted_folder_loads_with_auto_classes_and_generates_like_the_gpt(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nats_model.generate import generate
    from nats_model.policies import build

    gpt = tiny_gpt()
    gpt.save_pretrained(tmp_path / "gpt")
    assert main([str(tmp_path / "gpt"), str(tmp_path / "llama")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["max_abs_logit_diff"] < 1e-5
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "llama").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "llama")
    text = "The pass key is 4217.\nWhat is it? é"
    ids = tok(text, add_special_tokens=True)["input_ids"]
    assert ids == list(text.encode("utf-8")) and tok.decode(ids) == text and len(tok) == 256
    prompt = torch.tensor([ids])
    a = generate(model, prompt, build("full"), 8).tokens
    b = generate(gpt, prompt, build("full"), 8).tokens
    assert torch.equal(a, b)
    assert main([str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2


def test_byte_level_tokenizer_special_tokens():
    tok = byte_level_tokenizer(special_tokens=True)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, len(tok)) == (256, 257, 258, 259)
    assert tok("\x00\xff", add_special_tokens=False)["input_ids"] == [0, 195, 191]
