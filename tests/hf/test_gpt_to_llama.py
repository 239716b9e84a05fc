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

    from nats_model.engine.generation import generate
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


def test_swiglu_gpt_is_a_plain_silu_llama():
    gpt = tiny_gpt(mlp="swiglu", mlp_ratio=2.75)
    assert gpt.blocks[0].mlp.gate.weight.shape == (176, 64)
    llama = gpt_to_llama(gpt)
    assert llama.config.hidden_act == "silu" and not llama.config.mlp_bias and llama.config.intermediate_size == 176
    assert not any(name.endswith("mlp.up_proj.bias") for name, _ in llama.named_parameters())
    ids = torch.randint(0, 256, (2, 50), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(llama(ids).logits, gpt(ids)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="GPTConfig.mlp must be one of"):
        GPTConfig(mlp="relu")


def test_train_with_export_hf_llama_writes_a_loadable_llama_and_resumes(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nats_model.train.config import ConfigError, parse_config
    from nats_model.train.trainer import train

    raw = {"model": {"n_layer": 1, "d_model": 32, "n_head": 2, "n_kv_head": 1, "mlp": "swiglu", "mlp_ratio": 2.5},
           "data": {"text_weight": 1.0, "text_max_bytes": 100_000},
           "stages": [{"seq_len": 64, "steps": 3, "batch_size": 2}],
           "eval": {"interval": 3, "text_batches": 1, "batch_size": 2, "examples_per_task": 1},
           "checkpoint_interval": 3, "export": "hf_llama"}
    train(parse_config(raw), tmp_path, progress=False)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"
    model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert len(AutoTokenizer.from_pretrained(tmp_path)) == 256
    state = GPT.from_pretrained(tmp_path / "train_state")  # resume state stays a GPT checkpoint
    ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, state(ids)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="export: hf_llama needs model.mlp 'swiglu'"):
        parse_config({**raw, "model": {**raw["model"], "mlp": "gelu"}})
    with pytest.raises(ConfigError, match="export must be one of"):
        parse_config({**raw, "export": "onnx"})
