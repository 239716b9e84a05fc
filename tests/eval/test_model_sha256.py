"""A folder model's weights are part of its cells' identity (`model_sha256`, services.model_hash):
the same folder plans the same run keys again, changed weights at the same path plan new ones,
`random:` test models carry no such field, and a cell planned for other weights than the folder
now holds fails naming `model_sha256` before any work."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from nats_model.adapter import base_weights_sha256
from orchestrator.plan import build_cells
from orchestrator.spec import parse_spec
from services.paths import MODELS_DIR

SHIPPED = MODELS_DIR / "tiny-base"
pytestmark = pytest.mark.skipif(not (SHIPPED / "model.safetensors").is_file(), reason="models/tiny-base absent")


def _copy_model(dst: Path) -> Path:
    dst.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(SHIPPED / name, dst / name)
    return dst


def _retrain(folder: Path) -> None:
    """New weights at the same path (one value changed), written as a training run would."""
    path = folder / "model.safetensors"
    st = path.stat()
    tensors = load_file(path)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1.0
    save_file(tensors, path, metadata={"format": "pt"})
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a later training run


def _spec(model: str):
    return parse_spec({
        "name": "weights",
        "models": [{"name": model}],
        "policies": [{"name": "full"}, {"name": "streaming_llm", "params": {"budget": [0.25, 0.5]}}],
        "workloads": [{"name": "passkey", "params": {"context_length": 128}, "examples": 1}],
        "seeds": [0, 1],
    })


def test_the_same_folder_plans_the_same_keys_and_new_weights_new_ones(tmp_path):
    folder = _copy_model(tmp_path / "my-model")
    first = build_cells(_spec(str(folder)))
    again = build_cells(_spec(str(folder)))
    assert [c.run_key for c in first] == [c.run_key for c in again]  # a rerun executes nothing
    sha = base_weights_sha256(folder)
    assert {c.config["model_sha256"] for c in first} == {sha}

    _retrain(folder)
    retrained = build_cells(_spec(str(folder)))
    assert {c.config["model_sha256"] for c in retrained} == {base_weights_sha256(folder)} != {sha}
    assert not {c.run_key for c in retrained} & {c.run_key for c in first}  # every cell is new
    assert [c.config | {"model_sha256": sha} for c in retrained] == [c.config for c in first]  # only the hash


def test_a_shipped_model_by_name_carries_its_folders_hash_and_random_models_none():
    shipped = build_cells(_spec("tiny-base"))
    assert {c.config["model_sha256"] for c in shipped} == {base_weights_sha256(SHIPPED)}
    random_cells = build_cells(_spec("random:tiny-gpt"))
    assert all("model_sha256" not in c.config for c in random_cells)


def test_a_cell_planned_for_other_weights_fails_naming_model_sha256(tmp_path):
    from services.evaluation import run_cell
    from services.models import load_model

    folder = _copy_model(tmp_path / "my-model")
    config = build_cells(_spec(str(folder)))[0].config
    handle = load_model(str(folder))
    ok = run_cell(handle, config)
    assert ok["status"] == "done", ok["error"]
    assert ok["model_sha256"] == config["model_sha256"]

    stale = {**config, "model_sha256": "0" * 64}
    record = run_cell(handle, stale)
    assert record["status"] == "failed"
    assert "model_sha256" in record["error"] and "changed after the cell was planned" in record["error"]

    unplanned = {k: v for k, v in config.items() if k != "model_sha256"}  # natsbench eval: filled in
    assert run_cell(handle, unplanned)["model_sha256"] == config["model_sha256"]
