"""One declaration of the cell (services.declaration): the spec refuses what a column or a
cell cannot hold, parameter values are normalised before hashing (one cell, one key),
`device: auto` runs, and cells of an older code version are rerun under new keys."""

from __future__ import annotations

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.plan import build_cells, decide
from orchestrator.spec import SpecError, parse_spec
from services.store import Store, keys


def spec_dict(**over):
    spec = {"name": "t", "models": [{"name": "random:tiny-gpt"}], "policies": [{"name": "full"}],
            "workloads": [{"name": "passkey", "params": {"context_length": 128}, "examples": 1}], "seeds": [0]}
    spec.update(over)
    return spec


@pytest.mark.parametrize("change, line", [
    ({"seeds": [-1]}, "seeds[0]: -1 is out of range; allowed: integers in [0, 2147483647]"),
    ({"seeds": [0, 3_000_000_000]}, "seeds[1]: 3000000000 is out of range; allowed: integers in [0, 2147483647]"),
    ({"workloads": [{"name": "passkey", "examples": 2**31}]},
     "workloads[0].examples: 2147483648 is out of range; allowed: integers in [1, 2147483647]"),
    ({"models": [{"name": "random:tiny-gpt", "device": "cuda:x"}]},
     "models[0].device: unknown device 'cuda:x'; allowed: cpu, cuda, cuda:N, auto"),
    ({"workloads": [{"name": "passkey", "params": {"context_length": 128.5}}]},
     "workloads[0].params: workload 'passkey': parameter 'context_length' must be an integer in [16, 1000000], "
     "got 128.5"),
    ({"policies": [{"name": "streaming_llm", "params": {"budget": 0.5, "n_sink": 2.5}}]},
     "policies[0].params: policy 'streaming_llm': parameter 'n_sink' must be an integer, got 2.5"),
])
def test_out_of_range_input_exits_2_with_one_line_and_no_store(tmp_path, capsys, change, line):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(spec_dict(**change)))
    db = tmp_path / "never.sqlite"
    assert main(["sweep", str(cfg), "--db", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err
    problem_lines = [x.strip() for x in err.splitlines() if x.startswith("  ")]
    assert problem_lines == [line], err
    assert not db.exists()


def test_int_parameter_values_make_one_cell_with_one_key():
    spec = parse_spec(spec_dict(
        workloads=[{"name": "passkey", "params": {"context_length": [128, 128.0, "128"]}, "examples": 1}],
        policies=[{"name": "streaming_llm", "params": {"budget": [1, 1.0], "n_sink": [4, 4.0]}}]))
    cells = build_cells(spec)
    assert len(cells) == 1
    [cell] = cells
    assert cell.config["workload_params"] == {"context_length": 128}
    assert cell.config["policy_params"] == {"budget": 1.0, "n_sink": 4}
    assert type(cell.config["policy_params"]["budget"]) is float and type(cell.config["policy_params"]["n_sink"]) is int
    # and that key is the key of the cell written the canonical way
    canonical = parse_spec(spec_dict(
        workloads=[{"name": "passkey", "params": {"context_length": 128}, "examples": 1}],
        policies=[{"name": "streaming_llm", "params": {"budget": 1.0, "n_sink": 4}}]))
    assert [c.run_key for c in build_cells(canonical)] == [cell.run_key]


def test_device_auto_is_accepted_and_kept_in_the_key():
    spec = parse_spec(spec_dict(models=[{"name": "random:tiny-gpt", "device": "auto"}]))
    [cell] = build_cells(spec)
    assert cell.config["device"] == "auto"
    with pytest.raises(SpecError):
        parse_spec(spec_dict(models=[{"name": "random:tiny-gpt", "device": "gpu"}]))


def test_device_auto_runs_a_cell_on_what_it_resolves_to():
    import torch

    from services.models import load_model
    from services.worker import CellWorker

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert load_model("random:tiny-gpt", device="auto").device == expected
    config = {"model": "random:tiny-gpt", "policy": "streaming_llm", "policy_params": {"budget": 0.5},
              "workload": "passkey", "workload_params": {"context_length": 128, "digits": 2}, "n_examples": 1,
              "seed": 0, "device": "auto", "dtype": "float32"}
    record = CellWorker().run(config)  # the body of the Ray actor: load, then run_cell
    assert record["status"] == "done", record["error"]
    assert record["device"] == "auto" and record["environment"]["device"] == expected
    assert record["kept_fraction"] is not None


def test_a_sweep_reruns_cells_of_an_older_code_version(tmp_path, monkeypatch):
    spec = parse_spec(spec_dict(seeds=[0, 1]))
    with Store(f"sqlite:///{tmp_path / 's.sqlite'}") as store:
        store.upgrade()
        monkeypatch.setattr(keys, "CODE_VERSION", "1")
        old_cells = build_cells(spec)
        store.ensure_sweep("t")
        store.ensure_runs("t", [c.config for c in old_cells])
        for c in old_cells:
            store.record({**c.config, "run_key": c.run_key, "sweep": "t", "status": "done", "error": None,
                          "accuracy": 1.0})
        assert not decide("t", old_cells, store.ensure_runs("t", [c.config for c in old_cells]), False).todo
        monkeypatch.setattr(keys, "CODE_VERSION", "2")
        cells = build_cells(spec)
        plan = decide("t", cells, store.ensure_runs("t", [c.config for c in cells]), False)
        assert len(plan.todo) == 2 and not plan.skipped  # old done rows are not reused
        assert store.status_counts("t") == {"pending": 2, "running": 0, "done": 0, "failed": 0}
        [sweep] = store.sweeps()
        assert sweep["total"] == 2 and sweep["stale"] == 2


@pytest.mark.slow
def test_sweep_after_a_code_version_bump_reruns_every_cell_and_counts_only_new_rows(fake_runner, tmp_path,
                                                                                      monkeypatch):
    from orchestrator.run import run_sweep

    spec = parse_spec(spec_dict(name="bump", models=[{"name": "fake:tag=bump"}], seeds=[0, 1, 2]))
    url = f"sqlite:///{tmp_path / 'bump.sqlite'}"
    monkeypatch.setattr(keys, "CODE_VERSION", "1")
    first = run_sweep(spec, url, workers=1, progress=False)
    assert (first.executed, first.done, first.failed) == (3, 3, 0)
    monkeypatch.setattr(keys, "CODE_VERSION", "2")
    again = run_sweep(spec, url, workers=1, progress=False)
    # every cell measured again; the summary counts this version's cells, not the 3 old rows too
    summary = again.summary()
    assert {k: summary[k] for k in ("cells", "executed", "done", "failed", "skipped")} == \
        {"cells": 3, "executed": 3, "done": 3, "failed": 0, "skipped": 0}
    third = run_sweep(spec, url, workers=1, progress=False)
    assert (third.executed, third.skipped, third.done) == (0, 3, 3)
    with Store(url) as store:
        assert store.status_counts("bump") == {"pending": 0, "running": 0, "done": 3, "failed": 0}
        assert sorted(r["code_version"] for r in store.runs("bump")) == ["1", "1", "1", "2", "2", "2"]
        [sweep] = store.sweeps()
        assert (sweep["total"], sweep["stale"]) == (3, 3)


@pytest.mark.slow
def test_device_auto_sweep_runs_on_the_ray_workers(ray_cluster, tmp_path, monkeypatch):
    import torch

    from orchestrator.run import run_sweep

    monkeypatch.delenv("NATSBENCH_CELL_RUNNER", raising=False)  # the real services.evaluation
    spec = parse_spec(spec_dict(name="auto", models=[{"name": "random:tiny-gpt", "device": "auto"}],
                                workloads=[{"name": "passkey", "params": {"context_length": 128, "digits": 2},
                                            "examples": 1}]))
    url = f"sqlite:///{tmp_path / 'auto.sqlite'}"
    result = run_sweep(spec, url, workers=1, progress=False)
    assert (result.done, result.failed) == (1, 0), [r.get("error") for r in result.records]
    with Store(url) as store:
        [row] = store.runs("auto")
    assert row["device"] == "auto"
    assert row["environment"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
