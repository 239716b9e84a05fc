"""The shipped Hugging Face models of issue #12 item 7: `models/tiny-llama-base` (tiny-base converted
exactly into a Llama folder) and its NAtS adapter `models/tiny-llama-nats`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nats_model import adapter as A

MODELS = Path(__file__).resolve().parents[2] / "models"
BASE, ADAPTER = MODELS / "tiny-llama-base", MODELS / "tiny-llama-nats"

pytestmark = pytest.mark.skipif(not BASE.is_dir(), reason="models/tiny-llama-base is not shipped")


def test_tiny_llama_base_loads_with_auto_classes_and_is_tiny_base():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nats_model.models.gpt import GPT

    model = AutoModelForCausalLM.from_pretrained(BASE, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(BASE, local_files_only=True)
    assert model.config.model_type == "llama" and len(tok) == 256
    text = "The pass key is 90210. Remember it."
    ids = torch.tensor([tok(text)["input_ids"]])
    assert ids[0].tolist() == list(text.encode("utf-8"))
    gpt = GPT.from_pretrained(MODELS / "tiny-base").eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, gpt(ids)[0], atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not ADAPTER.is_dir(), reason="models/tiny-llama-nats is not shipped")
def test_tiny_llama_nats_adapter_is_checked_against_its_base(tmp_path, monkeypatch):
    monkeypatch.setenv("NATSBENCH_CACHE_DIR", str(tmp_path / "cache"))
    cfg, weights = A.load_adapter(ADAPTER, BASE)  # facts and the sha256 of the base's weights
    assert cfg.base_model_type == "llama" and cfg.source == "natsbench-finetune"
    assert sorted(weights) == list(range(cfg.num_layers))
    card = (ADAPTER / "MODEL_CARD.md").read_text()
    result = json.loads((ADAPTER / "eval.json").read_text())
    assert "scripts/tiny_llama_cards.py" in card and set(result["met"]) == {
        "full_passkey", "nats_passkey", "nats_niah_multikey", "nats_kept_max"}
