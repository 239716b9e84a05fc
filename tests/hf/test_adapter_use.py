"""Using an adapter: `natsbench eval --adapter`, sweep files (`adapter:` on a model entry), the worker,
the run key and the dashboard label. Refusals come before any cell runs, exit 2, one line."""

from __future__ import annotations

import json

import pytest
from adapter_testlib import save_tiny_llama, scorer_weights

from nats_model import adapter as A
from orchestrator.cli import main

CELL = ["--policy", "nats", "--workload", "passkey", "--workload-param", "context_length=60", "--n", "1"]


@pytest.fixture(autouse=True)
def _private_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NATSBENCH_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapter-use")
    base = save_tiny_llama(root / "tiny-llama")
    cfg = A.AdapterConfig(**A.base_facts(base), base_sha256=A.base_weights_sha256(base), window=4, chunk_size=1,
                          global_bias=0.0, lam=3e-7, steps=0)
    A.save_adapter(root / "ad", scorer_weights(seed=5, scale=0.5), cfg)
    other = save_tiny_llama(root / "other", seed=4)
    return base, root / "ad", other


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_eval_with_adapter_runs_nats_with_the_adapters_window(folders, capsys):
    base, ad, _ = folders
    assert main(["eval", "--model", str(base), "--adapter", str(ad), *CELL]) == 0
    rec = _last_json(capsys)
    assert rec["status"] == "done", rec["error"]
    assert rec["adapter"] == str(ad) and rec["adapter_sha256"] == A.adapter_hash(ad)
    info = rec["extras"]["model_info"]["adapter"]
    assert (info["window"], info["chunk_size"], info["sha256"]) == (4, 1, A.adapter_hash(ad))
    assert 0 < rec["kept_fraction"] < 0.6  # W = 4 of ~60 prompt tokens plus what the types keep
    from services.store import run_key

    keys = ("model", "policy", "policy_params", "workload", "workload_params", "n_examples", "seed", "device", "dtype")
    plain = {k: rec[k] for k in keys}
    # a folder model's weights are part of the key too (services.model_hash)
    assert rec["model_sha256"] == A.base_weights_sha256(base)
    assert rec["run_key"] == run_key({**plain, "model_sha256": rec["model_sha256"], "adapter": str(ad),
                                      "adapter_sha256": rec["adapter_sha256"]})
    assert rec["run_key"] != run_key(plain)


def test_nats_on_the_base_without_adapter_is_a_clear_failure(folders, capsys):
    base, _, _ = folders
    assert main(["eval", "--model", str(base), *CELL]) == 1  # fails inside the cell: no scorers, no window
    rec = _last_json(capsys)
    assert rec["status"] == "failed" and "window unknown" in rec["error"]


@pytest.mark.parametrize("case, needle", [
    ("other_base", "made for another base model: base_sha256"),
    ("missing", "missing adapter.safetensors"),
    ("gpt", "NAtS adapters are for Hugging Face models"),
])
def test_eval_refuses_a_wrong_adapter_before_loading(folders, tmp_path, capsys, case, needle):
    base, ad, other = folders
    model, adapter = str(base), str(ad)
    if case == "other_base":
        model = str(other)
    elif case == "missing":
        (tmp_path / "broken").mkdir()
        (tmp_path / "broken" / A.CONFIG_FILE).write_text((ad / A.CONFIG_FILE).read_text())
        adapter = str(tmp_path / "broken")
    else:
        model = "random:tiny-gpt-nats"
    assert main(["eval", "--model", model, "--adapter", adapter, *CELL]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and len(err.splitlines()) == 1 and needle in err, err


def _spec(base, ad, **model_extra):
    return {"name": "adapter-sweep", "models": [{"name": str(base), "adapter": str(ad), **model_extra},
                                                {"name": str(base)}],
            "policies": [{"name": "nats", "models": [str(base)]}, {"name": "full"}],
            "workloads": [{"name": "passkey", "params": {"context_length": 60}, "examples": 1}]}


def test_sweep_cells_carry_the_adapter_and_a_worker_loads_base_plus_adapter(folders):
    from orchestrator.plan import build_cells
    from orchestrator.spec import parse_spec
    from services.worker import CellWorker

    base, ad, _ = folders
    cells = build_cells(parse_spec(_spec(base, ad)))
    with_ad = [c for c in cells if c.config.get("adapter")]
    without = [c for c in cells if not c.config.get("adapter")]
    assert {c.config["policy"] for c in with_ad} == {"nats", "full"} and len(without) == 2  # nats on both models
    assert all(c.config["adapter_sha256"] == A.adapter_hash(ad) for c in with_ad)
    assert {c.model_key for c in with_ad} == {(str(base), "cpu", "float32", str(ad))}
    assert all("adapter" not in c.config for c in without)
    worker = CellWorker()
    nats_cell = next(c for c in with_ad if c.config["policy"] == "nats")
    rec = worker.run({**nats_cell.config, "run_key": nats_cell.run_key})
    assert rec["status"] == "done", rec["error"]
    assert rec["adapter"] == str(ad) and rec["run_key"] == nats_cell.run_key
    plain = next(c for c in without if c.config["policy"] == "full")
    rec = worker.run({**plain.config, "run_key": plain.run_key})  # the base alone: loaded again, no scorers
    assert rec["status"] == "done" and rec["extras"]["worker"]["load_s"] > 0 and "adapter" not in rec
    assert worker.info()["model"] == (str(base), "cpu", "float32", None)


def test_a_cell_whose_adapter_differs_from_the_loaded_one_fails(folders):
    from services.evaluation import run_cell
    from services.models import load_model

    base, ad, _ = folders
    handle = load_model(str(base), adapter=str(ad))
    cell = {"model": str(base), "policy": "nats", "workload": "passkey", "workload_params": {"context_length": 60}}
    rec = run_cell(handle, cell)  # the cell names no adapter but the model carries one
    assert rec["status"] == "failed" and "loaded with adapter=" in rec["error"]
    rec = run_cell(handle, {**cell, "adapter": str(ad), "adapter_sha256": "0" * 64})
    assert rec["status"] == "failed" and "the folder changed since the sweep was planned" in rec["error"]


def test_sweep_refuses_an_adapter_for_another_base(folders, tmp_path):
    from orchestrator.spec import SpecError, parse_spec

    base, ad, other = folders
    with pytest.raises(SpecError) as err:
        parse_spec(_spec(other, ad))
    assert any(p.startswith("models[0].adapter: ") and "made for another base model" in p for p in err.value.problems)
    with pytest.raises(SpecError) as err:
        parse_spec(_spec(base, tmp_path / "nowhere"))
    assert any("models[0].adapter: adapter folder" in p and "does not exist" in p for p in err.value.problems)


def test_dashboard_labels_base_plus_adapter_as_one_model(folders):
    from dashboard.data import records_frame

    base, ad, _ = folders
    rows = [{"run_key": "a", "model": "llama", "policy": "nats", "status": "done",
             "config": {"model": "llama", "adapter": "/x/llama-nats/"}},
            {"run_key": "b", "model": "llama", "policy": "full", "status": "done", "config": {"model": "llama"}}]
    df = records_frame(rows)
    assert df["model"].tolist() == ["llama + llama-nats", "llama"]
    assert df["adapter"].tolist() == ["/x/llama-nats/", ""]
