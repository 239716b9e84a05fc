"""`natsbench adapter import`: the NAtS authors' published `.pth` layout -> our adapter folder."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
import torch
from adapter_testlib import HIDDEN, KV_HEADS, LAYERS, save_tiny_llama, scorer_weights

from nats_model import adapter as A
from nats_model.scorer import infer_types
from orchestrator.cli import main


@pytest.fixture(autouse=True)
def _private_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NATSBENCH_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("base") / "tiny-llama")


def _published(path, weights, prefix=""):
    torch.save({f"{prefix}layers.{i}.self_attn.proj_layer.weight": w for i, w in weights.items()}, path)
    return path


def _import(tmp_path, pth, base_dir, *extra):
    return main(["adapter", "import", str(pth), "--base", str(base_dir), "--out", str(tmp_path / "ad"), *extra])


def test_import_gives_the_types_of_the_weights_applied_by_hand(tmp_path, base_dir, capsys):
    from transformers import AutoModelForCausalLM

    from nats_model.engine.kv_engine import KVEngine
    from nats_model.models.bridge import bridge_for
    from nats_model.policies import build

    weights = scorer_weights(seed=3, scale=0.5)
    assert _import(tmp_path, _published(tmp_path / "nats.pth", weights, prefix="model."), base_dir, "--window", "4") == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["source"] == "imported:nats.pth" and line["window"] == 4 and line["chunk_size"] == 1
    assert line["global_bias"] == 0.1 and line["lam"] == 3e-7 and line["base_sha256"] == A.base_weights_sha256(base_dir)

    model = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True).eval()
    A.attach_adapter(model, tmp_path / "ad", base_dir)
    attn_inputs, engine_logits = {}, {}
    for i, layer in enumerate(model.model.layers):  # what each self_attn receives: the normed input
        layer.self_attn.register_forward_pre_hook(
            lambda m, a, kw, i=i: attn_inputs.__setitem__(i, kw.get("hidden_states", a[0] if a else None)),
            with_kwargs=True)

    class Recorder(KVEngine):
        def attend(self, layer, q, k, v, **kw):
            engine_logits[layer] = kw["type_logits"]
            return super().attend(layer, q, k, v, **kw)

    policy = build("nats")
    policy.bind_model(model)
    policy.reset()
    engine = Recorder(policy, 1)
    ids = torch.randint(3, model.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(40)[None]
    bridge = bridge_for(model)
    with torch.no_grad(), bridge.session(engine):
        engine.begin_step(pos, torch.ones_like(pos, dtype=torch.bool), prefill=True, last_prefill=True)
        bridge.forward(ids, pos, engine)
    counts = torch.zeros(3, dtype=torch.long)
    for i, w in weights.items():
        x = attn_inputs[i][0]  # (T, hidden)
        by_hand = (x @ w.T).view(40, KV_HEADS, 3).permute(1, 0, 2)  # rows head-major: (Hkv, T, 3) in (G, L, S)
        types = infer_types(by_hand, global_bias=0.1)
        assert torch.equal(infer_types(engine_logits[i][0], global_bias=0.1), types)
        counts += torch.bincount(types.flatten(), minlength=3)
    assert (counts > 0).all(), f"the test weights should give every type, got {counts.tolist()}"


def test_unprefixed_keys_and_options_are_written(tmp_path, base_dir, capsys):
    pth = _published(tmp_path / "p.pth", scorer_weights())
    assert _import(tmp_path, pth, base_dir, "--chunk-size", "32", "--global-bias", "0", "--lam", "5e-7") == 0
    cfg, weights = A.load_adapter(tmp_path / "ad", base_dir)
    assert (cfg.chunk_size, cfg.global_bias, cfg.lam, cfg.window) == (32, 0.0, 5e-7, 256)
    for i, w in scorer_weights().items():
        assert torch.equal(weights[i], w)


@pytest.mark.parametrize("mutate, needle", [
    (lambda w: w.pop(1), "missing layers.1.self_attn.proj_layer.weight"),
    (lambda w: w.__setitem__(0, torch.zeros(KV_HEADS * 3, HIDDEN * 2)),
     r"layers.0.self_attn.proj_layer.weight has shape \(6, 128\), expected \(6, 64\)"),
    (lambda w: w.__setitem__(LAYERS, torch.zeros(KV_HEADS * 3, HIDDEN)), "layer 2 is not in the base"),
])
def test_a_mismatch_is_named_and_exits_2(tmp_path, base_dir, capsys, mutate, needle):
    weights = scorer_weights()
    mutate(weights)
    assert _import(tmp_path, _published(tmp_path / "bad.pth", weights), base_dir) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.pth" in err
    assert __import__("re").search(needle, err), err
    assert not (tmp_path / "ad").exists()


def test_a_pickle_is_refused_without_running_it(tmp_path, base_dir, capsys):
    pth = tmp_path / "evil.pth"
    torch.save({"layers.0.self_attn.proj_layer.weight": torch.zeros(1), "note": Fraction(1, 3)}, pth)
    assert _import(tmp_path, pth, base_dir) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refused by torch.load(weights_only=True)" in err and "evil.pth" in err


def test_other_keys_and_missing_files_exit_2(tmp_path, base_dir, capsys):
    torch.save({"layers.0.mlp.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    assert _import(tmp_path, tmp_path / "other.pth", base_dir) == 2
    assert "unexpected key 'layers.0.mlp.weight'" in capsys.readouterr().err
    assert _import(tmp_path, tmp_path / "absent.pth", base_dir) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["adapter", "check", str(tmp_path / "absent")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_check_against_another_base(tmp_path, base_dir, capsys):
    assert _import(tmp_path, _published(tmp_path / "p.pth", scorer_weights()), base_dir) == 0
    assert main(["adapter", "check", str(tmp_path / "ad"), "--base", str(base_dir)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["adapter_sha256"] == \
        A.adapter_hash(tmp_path / "ad")
    other = save_tiny_llama(tmp_path / "other", hidden_size=32, intermediate_size=64)
    assert main(["adapter", "check", str(tmp_path / "ad"), "--base", str(other)]) == 2
    assert "hidden_size is 64 in the adapter but 32 in the base" in capsys.readouterr().err
