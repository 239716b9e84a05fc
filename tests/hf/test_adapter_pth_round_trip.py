"""The published-adapter path on trained adapters (issue #22 item 4): an adapter folder's scorers written as a
`.pth` in the NAtS authors' layout (`model.layers.{i}.self_attn.proj_layer.weight`, `(num_kv_heads * 3,
hidden)` head-major in (G, L, S) order: the layout `natsbench adapter import` reads for the published
Llama-3.1-8B scorers) and imported back with `natsbench adapter import` give an adapter that types every token
as the folder does and generates the same greedy tokens, keeping the same cache.

Fast: the shipped tiny pair models/tiny-llama-base + models/tiny-llama-nats. Slow: the real model
models/smollm2-135m-instruct + its trained adapter models/smollm2-135m-nats on the demo's SmolLM2 cell
(passkey @1024 through the chat template). The real model is fetched when missing (cached under
~/.cache/natsbench, as tests/models/test_model_import.py does): never skipped, a failed fetch fails the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nats_model import adapter as A
from orchestrator.cli import main

ROOT = Path(__file__).resolve().parents[2]
# the authors' key layout (read_published also takes it without the "model." prefix)
AUTHORS_KEY = "model.layers.{}.self_attn.proj_layer.weight"


@pytest.fixture(autouse=True)
def _private_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NATSBENCH_CACHE_DIR", str(tmp_path / "cache"))


def _write_authors_pth(adapter_dir: Path, path: Path) -> A.AdapterConfig:
    """The folder's scorers as the authors' `.pth` (a plain dict of tensors); its config."""
    cfg, weights = A.load_adapter(adapter_dir)
    torch.save({AUTHORS_KEY.format(i): w.clone() for i, w in sorted(weights.items())}, path)
    return cfg


def _import(pth: Path, base_dir: Path, out: Path, cfg: A.AdapterConfig, capsys) -> dict:
    """`natsbench adapter import` with the folder's inference settings; the JSON line it prints."""
    args = ["adapter", "import", str(pth), "--base", str(base_dir), "--out", str(out), "--window", str(cfg.window),
            "--chunk-size", str(cfg.chunk_size), "--global-bias", repr(cfg.global_bias)]
    if cfg.lam is not None:
        args += ["--lam", repr(cfg.lam)]
    assert main(args) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _types_and_generation(model_name: str, adapter_dir: Path, ids: list[int], max_new_tokens: int) -> dict:
    """Load `model_name` + the adapter as a sweep cell does (services.models.load_model); the NAtS types
    of every layer over one prefill of `ids` (the type logits the scorers give the engine, through
    nats_model.scorer.infer_types with the adapter's Global bias), then the `nats` policy's greedy tokens and
    what its cache kept (nats_model.engine.generation.generate)."""
    from nats_model.engine.generation import generate
    from nats_model.engine.kv_engine import KVEngine
    from nats_model.models.bridge import bridge_for
    from nats_model.policies import build
    from nats_model.scorer import infer_types
    from services.models import load_model

    handle = load_model(model_name, adapter=str(adapter_dir))
    model, bias = handle.model, handle.info["adapter"]["global_bias"]
    logits: dict[int, torch.Tensor] = {}

    class Recorder(KVEngine):
        def attend(self, layer, q, k, v, **kw):
            logits[layer] = kw["type_logits"]
            return super().attend(layer, q, k, v, **kw)

    policy = build("nats")
    policy.bind_model(model)
    policy.reset()
    engine = Recorder(policy, 1)
    x = torch.tensor([ids])
    pos = torch.arange(x.shape[1])[None]
    bridge = bridge_for(model)
    with torch.no_grad(), bridge.session(engine):
        engine.begin_step(pos, torch.ones_like(pos, dtype=torch.bool), prefill=True, last_prefill=True)
        bridge.forward(x, pos, engine)
    types = {layer: infer_types(t, global_bias=bias) for layer, t in logits.items()}
    result = generate(model, x, build("nats"), max_new_tokens=max_new_tokens)
    return {"types": types, "tokens": result.tokens[0].tolist(), "kept": result.kept_per_layer_head,
            "kv_bytes_physical": result.kv_bytes_physical, "decode": handle.decode,
            "n_layers": model.config.num_hidden_layers}


def _check_round_trip(model_name: str, base_dir: Path, adapter_dir: Path, ids: list[int], max_new_tokens: int,
                      tmp_path: Path, capsys) -> dict:
    """Folder -> authors' .pth -> `natsbench adapter import` -> the same config, weights, types, tokens and
    kept cache; the imported run's results."""
    pth = tmp_path / f"{adapter_dir.name}.pth"
    cfg = _write_authors_pth(adapter_dir, pth)
    assert set(torch.load(pth, weights_only=True)) == {AUTHORS_KEY.format(i) for i in range(cfg.num_layers)}
    out = tmp_path / "imported"
    line = _import(pth, base_dir, out, cfg, capsys)
    assert line["source"] == f"imported:{pth.name}" and line["adapter"] == str(out)
    same = ("base_model_type", "num_layers", "num_kv_heads", "hidden_size", "base_sha256", "window", "chunk_size",
            "global_bias", "lam")
    assert {k: line[k] for k in same} == {k: getattr(cfg, k) for k in same}
    assert main(["adapter", "check", str(out), "--base", str(base_dir)]) == 0
    capsys.readouterr()
    _, folder_w = A.load_adapter(adapter_dir, base_dir)
    _, imported_w = A.load_adapter(out, base_dir)
    assert folder_w.keys() == imported_w.keys() and all(torch.equal(folder_w[i], imported_w[i]) for i in folder_w)

    folder = _types_and_generation(model_name, adapter_dir, ids, max_new_tokens)
    imported = _types_and_generation(model_name, out, ids, max_new_tokens)
    assert sorted(folder["types"]) == sorted(imported["types"]) == list(range(folder["n_layers"]))
    for layer, types in folder["types"].items():
        assert torch.equal(types, imported["types"][layer]), f"layer {layer}: the types differ"
    assert imported["tokens"] == folder["tokens"]
    assert torch.equal(imported["kept"], folder["kept"])
    assert imported["kv_bytes_physical"] == folder["kv_bytes_physical"]
    counts = torch.bincount(torch.cat([t.flatten() for t in folder["types"].values()]), minlength=3)
    assert (counts > 0).sum() >= 2, f"a trained adapter types tokens in more than one way, got {counts.tolist()}"
    return imported


def test_tiny_llama_adapter_round_trips_through_the_authors_pth(tmp_path, capsys):
    """models/tiny-llama-nats (trained on models/tiny-llama-base) on a passkey prompt."""
    from services import workloads
    from services.models import load_model

    base = ROOT / "models" / "tiny-llama-base"
    handle = load_model(str(base))
    (inst,) = workloads.get("passkey").instances({"context_length": 512}, 1, 0, count_tokens=handle.count_tokens)
    ids = handle.encode_instance(inst)
    out = _check_round_trip(str(base), base, ROOT / "models" / "tiny-llama-nats", ids, inst.max_new_tokens,
                            tmp_path, capsys)
    assert len(out["tokens"]) == inst.max_new_tokens


@pytest.mark.slow
def test_smollm2_adapter_round_trips_through_the_authors_pth(tmp_path, capsys):
    """models/smollm2-135m-nats on the real model, the demo's SmolLM2 cell (passkey @1024, chat template, seed
    0): the imported adapter types, generates and keeps what the folder does, and finds the pass key (the
    folder scores 1.0 on passkey@1024: benchmarks/results/quality_vs_kv_smollm2_passkey1024.json)."""
    from services import model_registry, workloads
    from services.models import load_model

    if not model_registry.is_fetched("smollm2-135m-instruct"):
        model_registry.fetch("smollm2-135m-instruct")  # cached wheel; a failure fails the test
    base = ROOT / "models" / "smollm2-135m-instruct"
    handle = load_model("smollm2-135m-instruct")
    (inst,) = workloads.get("passkey").instances({"context_length": 1024, "chat": "on"}, 1, 0,
                                                 count_tokens=handle.count_tokens)
    ids = handle.encode_instance(inst)
    del handle
    out = _check_round_trip("smollm2-135m-instruct", base, ROOT / "models" / "smollm2-135m-nats", ids,
                            inst.max_new_tokens, tmp_path, capsys)
    assert workloads.get("passkey").score(out["decode"](out["tokens"]), inst) == 1.0
