"""The adapter folder format (nats_model.adapter): round trip, refusals, hashes."""

from __future__ import annotations

import json

import pytest
import torch
from adapter_testlib import HIDDEN, KV_HEADS, LAYERS, save_tiny_llama, scorer_weights, tiny_llama

from nats_model import adapter as A


@pytest.fixture(autouse=True)
def _private_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NATSBENCH_CACHE_DIR", str(tmp_path / "cache"))
    A._file_hash_cache.clear()


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("base") / "tiny-llama")


def _config(base_dir, **kw) -> A.AdapterConfig:
    return A.AdapterConfig(**A.base_facts(base_dir), base_sha256=A.base_weights_sha256(base_dir),
                           window=32, chunk_size=1, global_bias=0.1, lam=3e-7, steps=30, **kw)


def test_round_trip_keeps_weights_and_config(tmp_path, base_dir):
    weights = scorer_weights()
    cfg = _config(base_dir)
    A.save_adapter(tmp_path / "ad", weights, cfg)
    assert sorted(p.name for p in (tmp_path / "ad").iterdir()) == sorted([A.CONFIG_FILE, A.WEIGHTS_FILE])
    loaded_cfg, loaded = A.load_adapter(tmp_path / "ad", base_dir)
    assert loaded_cfg == cfg
    assert sorted(loaded) == list(range(LAYERS))
    for i, w in weights.items():
        assert torch.equal(loaded[i], w)
    from safetensors.torch import load_file

    assert sorted(load_file(str(tmp_path / "ad" / A.WEIGHTS_FILE))) == \
        [f"layers.{i}.nats_scorer.weight" for i in range(LAYERS)]
    data = json.loads((tmp_path / "ad" / A.CONFIG_FILE).read_text())
    assert data["format"] == A.FORMAT and data["window"] == 32 and data["source"] == "natsbench-finetune"
    assert data["natsbench_version"]


def test_base_facts_from_folder_and_model_agree(base_dir):
    model, _ = tiny_llama()
    assert A.base_facts(base_dir) == A.base_facts(model) == {
        "base_model_type": "llama", "num_layers": LAYERS, "num_kv_heads": KV_HEADS, "hidden_size": HIDDEN}


def test_missing_files_are_named(tmp_path, base_dir):
    A.save_adapter(tmp_path / "ad", scorer_weights(), _config(base_dir))
    (tmp_path / "ad" / A.WEIGHTS_FILE).unlink()
    with pytest.raises(ValueError, match="missing adapter.safetensors"):
        A.load_adapter(tmp_path / "ad")
    with pytest.raises(ValueError, match="does not exist"):
        A.load_adapter(tmp_path / "nowhere")


def test_wrong_shape_names_the_first_mismatch(tmp_path, base_dir):
    A.save_adapter(tmp_path / "ad", scorer_weights(), _config(base_dir))
    from safetensors.torch import save_file

    bad = {f"layers.{i}.nats_scorer.weight": torch.zeros(KV_HEADS * 3, HIDDEN) for i in range(LAYERS)}
    bad["layers.1.nats_scorer.weight"] = torch.zeros(KV_HEADS * 3, HIDDEN + 1)
    save_file(bad, str(tmp_path / "ad" / A.WEIGHTS_FILE))
    with pytest.raises(ValueError, match=r"adapter\.safetensors: layers\.1\.nats_scorer\.weight has shape "
                                         r"\(6, 65\), expected \(6, 64\)"):
        A.load_adapter(tmp_path / "ad")


def test_save_refuses_weights_that_do_not_fit():
    cfg = A.AdapterConfig(base_model_type="llama", num_layers=3, num_kv_heads=KV_HEADS, hidden_size=HIDDEN,
                          base_sha256=None, window=8)
    with pytest.raises(ValueError, match="missing layers.2.nats_scorer.weight"):
        A.save_adapter("/nonexistent-never-written", scorer_weights(), cfg)


def test_another_base_is_refused_by_config_and_by_hash(tmp_path, base_dir):
    A.save_adapter(tmp_path / "ad", scorer_weights(), _config(base_dir))
    wider = save_tiny_llama(tmp_path / "wider", num_key_value_heads=4)
    with pytest.raises(ValueError, match=r"adapter_config\.json: made for another base model: num_kv_heads is 2 "
                                         r"in the adapter but 4 in the base"):
        A.load_adapter(tmp_path / "ad", wider)
    other_seed = save_tiny_llama(tmp_path / "reseeded", seed=7)  # same shapes, other weights
    with pytest.raises(ValueError, match="made for another base model: base_sha256"):
        A.load_adapter(tmp_path / "ad", other_seed)
    model, _ = tiny_llama(num_hidden_layers=3)
    with pytest.raises(ValueError, match="num_layers is 2 in the adapter but 3"):
        A.load_adapter(tmp_path / "ad", model)


def test_bad_config_field_is_named(tmp_path, base_dir):
    A.save_adapter(tmp_path / "ad", scorer_weights(), _config(base_dir))
    path = tmp_path / "ad" / A.CONFIG_FILE
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "window": -1}))
    with pytest.raises(ValueError, match="adapter_config.json: window must be an int >= 0"):
        A.load_adapter(tmp_path / "ad")
    del data["hidden_size"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="missing field.*hidden_size"):
        A.load_adapter(tmp_path / "ad")


def test_weight_hash_is_content_based_and_cached(tmp_path, base_dir, monkeypatch):
    h = A.base_weights_sha256(base_dir)
    assert len(h) == 64
    calls = []
    real = A.hashlib.sha256
    monkeypatch.setattr(A.hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    A._file_hash_cache.clear()  # the on-disk cache still answers: no file is read again
    assert A.base_weights_sha256(base_dir) == h
    assert len(calls) == 1  # only the combining hash, no per-file hash
    copy = save_tiny_llama(tmp_path / "copy")  # same seed -> same bytes -> same hash at another path
    assert A.base_weights_sha256(copy) == h
    with pytest.raises(ValueError, match="no weight files"):
        (tmp_path / "empty").mkdir()
        A.base_weights_sha256(tmp_path / "empty")


def test_adapter_hash_follows_content_not_path(tmp_path, base_dir):
    cfg = _config(base_dir)
    A.save_adapter(tmp_path / "a", scorer_weights(seed=1), cfg)
    A.save_adapter(tmp_path / "b", scorer_weights(seed=1), cfg)
    A.save_adapter(tmp_path / "c", scorer_weights(seed=2), cfg)
    assert A.adapter_hash(tmp_path / "a") == A.adapter_hash(tmp_path / "b") != A.adapter_hash(tmp_path / "c")
    before = A.adapter_hash(tmp_path / "a")
    A.save_adapter(tmp_path / "a", scorer_weights(seed=3), cfg)  # rewritten in place at once: same size
    assert A.adapter_hash(tmp_path / "a") != before
