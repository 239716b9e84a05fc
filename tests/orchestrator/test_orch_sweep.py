"""Sweeps on the session's local Ray cluster: end to end, resume, failures, dead workers,
a killed driver. Cells run the real evaluation (`configs/smoke.yaml`) or the controllable
fake runner (`orch_fake_runner`, steered by the model name)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml
from orch_helpers import FAKE_RUNNER, HERE, REPO, fake_calls

from orchestrator.run import run_sweep
from orchestrator.spec import load_spec, parse_spec
from services.store import Store


def fake_spec(name: str, model: str, seeds: int, workers: int = 2, max_attempts: int = 3):
    return parse_spec({
        "name": name,
        "models": [{"name": model}],
        "policies": [{"name": "full"}],
        "workloads": [{"name": "passkey", "params": {"context_length": 128}, "examples": 1}],
        "seeds": list(range(seeds)),
        "resources": {"workers": workers, "max_attempts": max_attempts},
    })


def rows_by_key(store: Store, sweep: str) -> dict[str, dict]:
    rows = store.runs(sweep)
    keys = [r["run_key"] for r in rows]
    assert len(keys) == len(set(keys)), "a cell has more than one row"
    return {r["run_key"]: r for r in rows}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_smoke_sweep_end_to_end_then_rerun_executes_nothing(ray_cluster, tmp_path, request, backend):
    url = f"sqlite:///{tmp_path / 'smoke.sqlite'}" if backend == "sqlite" else request.getfixturevalue("orch_pg_url")
    spec = load_spec(REPO / "configs" / "smoke.yaml")
    first = run_sweep(spec, url, workers=2, progress=False)
    assert first.cells >= 2 and first.executed == first.cells and first.skipped == 0
    assert first.done == first.cells and first.failed == 0, [r.get("error") for r in first.records]
    rows = rows_by_key(Store(url), spec.name)
    assert len(rows) == first.cells
    for row in rows.values():
        assert row["status"] == "done" and row["accuracy"] is not None and row["kv_bytes_physical"] > 0
    # two workers really shared the work: records name the worker process that ran them
    assert len({r["extras"]["worker"]["pid"] for r in first.records}) == 2
    again = run_sweep(spec, url, workers=2, progress=False)
    assert again.executed == 0 and again.skipped == first.cells and again.done == first.cells


def test_killing_a_worker_actor_mid_sweep_still_completes_one_row_per_cell(fake_runner, tmp_path):
    import ray

    url = f"sqlite:///{tmp_path / 'kill.sqlite'}"
    model = "fake:sleep=0.4,tag=killactor"
    spec = fake_spec("killactor", model, seeds=8)
    out = {}
    thread = threading.Thread(target=lambda: out.update(res=run_sweep(spec, url, progress=False)))
    thread.start()
    deadline = time.monotonic() + 60
    while len(fake_calls(fake_runner["log"], model)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    prefix = f"natsbench-killactor-{os.getpid()}-"
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]
    assert names, "no live worker actor to kill"
    ray.kill(ray.get_actor(names[0], namespace=next(
        a["namespace"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"] == names[0])))
    thread.join(timeout=120)
    res = out["res"]
    assert (res.cells, res.done, res.failed) == (8, 8, 0)
    rows = rows_by_key(Store(url), "killactor")
    assert len(rows) == 8 and all(r["status"] == "done" for r in rows.values())
    assert max(r["attempts"] for r in rows.values()) == 2, "the killed worker's cell was retried once"


def _start_driver(cfg, url, address):
    # A short lease, so the driver after the SIGKILL below takes the killed one's cells over soon.
    env = dict(os.environ, NATSBENCH_CELL_RUNNER=FAKE_RUNNER, PYTHONPATH=f"{HERE}{os.pathsep}{REPO}",
               NATSBENCH_LEASE_S="2")
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "sweep", str(cfg), "--db", url, "--address", address,
         "--no-progress"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_done(proc, store, sweep, at_least):
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = {k for k, r in rows_by_key(store, sweep).items() if r["status"] == "done"}
        except Exception:  # noqa: BLE001 - the driver has not created the sweep yet
            done = set()
        if len(done) >= at_least:
            return
        time.sleep(0.1)
    out, err = proc.communicate(timeout=30) if proc.poll() is not None else ("", "timeout")
    pytest.fail(f"driver did not reach {at_least} done cells: {err[-2000:]}")


@pytest.mark.slow
def test_stopped_then_killed_driver_and_rerun_complete_without_duplicates(fake_runner, tmp_path):
    """SIGTERM (as Ctrl-C): exit 130, running cells back to pending. SIGKILL: cells stay
    `running`; the next run takes them over once their lease expires and finishes; done cells
    never run again."""
    url = f"sqlite:///{tmp_path / 'driver.sqlite'}"
    model = "fake:sleep=0.5,tag=killdriver"
    cfg = tmp_path / "driver.yaml"
    cfg.write_text(yaml.safe_dump(fake_spec("killdriver", model, seeds=12).model_dump(mode="json")))
    store = Store(url)

    proc = _start_driver(cfg, url, fake_runner["address"])
    _wait_done(proc, store, "killdriver", 2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert json.loads(out.strip().splitlines()[-1])["cells"] == 12
    statuses = [r["status"] for r in rows_by_key(store, "killdriver").values()]
    assert "running" not in statuses and statuses.count("done") >= 2

    proc = _start_driver(cfg, url, fake_runner["address"])
    _wait_done(proc, store, "killdriver", statuses.count("done") + 2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    done_before = {k for k, r in rows_by_key(store, "killdriver").items() if r["status"] == "done"}
    assert 4 <= len(done_before) < 12

    res = run_sweep(load_spec(cfg), url, progress=False)
    assert (res.cells, res.done, res.failed) == (12, 12, 0)
    assert res.skipped == len(done_before) and res.executed == 12 - len(done_before)
    rows = rows_by_key(store, "killdriver")
    assert len(rows) == 12 and all(r["status"] == "done" for r in rows.values())
    assert not {r["run_key"] for r in res.records} & done_before, "a cell done before the kill ran again"


def test_cli_sweep_records_raising_and_crashing_cells_failed_and_reruns_only_them(fake_runner, tmp_path, capsys):
    """One sweep through `natsbench sweep`: seed 2 raises inside the cell, seed 1 kills its
    worker process every time (bounded attempts, then failed); the others finish; the table
    and the JSON last line report it; a rerun executes nothing; --rerun-failed only the two."""
    from orchestrator.cli import main

    model = "fake:explode_seed=2,crash_seed=1,tag=cli"
    cfg = tmp_path / "cli.yaml"
    cfg.write_text(yaml.safe_dump(fake_spec("clisweep", model, seeds=5, max_attempts=2).model_dump(mode="json")))
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    assert main(["sweep", str(cfg), "--db", url, "--no-progress"]) == 1  # 1: some cell failed
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1]) == {"sweep": "clisweep", "cells": 5, "executed": 5, "done": 3, "failed": 2,
                                   "skipped": 0, "running_elsewhere": 0, "pending": 0, "lease_lost": 0}
    # (Ray's own worker-died notices may precede the table on stdout)
    assert any(line.split()[:3] == ["model", "policy", "budget"] for line in out)
    assert sum(line.startswith(model[:16]) for line in out) == 5
    rows = rows_by_key(Store(url), "clisweep")
    failed = {r["seed"]: r for r in rows.values() if r["status"] == "failed"}
    assert set(failed) == {1, 2}
    assert "boom" in failed[2]["error"] and failed[2]["attempts"] == 1
    assert "worker died on 2 attempts" in failed[1]["error"] and failed[1]["attempts"] >= 2
    calls = fake_calls(fake_runner["log"], model)
    assert sum(c["config"]["seed"] == 1 for c in calls) == 2  # bounded: exactly max_attempts tries

    assert main(["sweep", str(cfg), "--db", url, "--no-progress"]) == 1
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["executed"] == 0
    assert len(fake_calls(fake_runner["log"], model)) == len(calls)

    assert main(["sweep", str(cfg), "--db", url, "--no-progress", "--rerun-failed"]) == 1
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["executed"], summary["skipped"], summary["done"], summary["failed"]) == (2, 3, 3, 2)
    rerun = fake_calls(fake_runner["log"], model)[len(calls):]
    assert sorted(c["config"]["seed"] for c in rerun) == [1, 1, 2]
