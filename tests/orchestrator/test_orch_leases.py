"""Several drivers on one sweep: leases keep their cells apart, a driver that dies loses its cells
to the others once its lease expires, and the exit code says whether every cell is done.

Drivers run the fake runner (`orch_fake_runner`) on the session's Ray cluster: in-process
through `natsbench sweep` for the single-driver cases, as subprocesses for two drivers at once
(one of them SIGKILLed in the second test), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime

import pytest
import yaml
from orch_helpers import FAKE_RUNNER, HERE, REPO, fake_calls

from orchestrator.plan import build_cells
from orchestrator.spec import load_spec, parse_spec
from services.store import Store


def _write_spec(path, name: str, model: str, seeds: int, workers: int = 1):
    spec = parse_spec({
        "name": name,
        "models": [{"name": model}],
        "policies": [{"name": "full"}],
        "workloads": [{"name": "passkey", "params": {"context_length": 128}, "examples": 1}],
        "seeds": list(range(seeds)),
        "resources": {"workers": workers},
    })
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    return load_spec(path)


def _url(backend: str, tmp_path, request) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'leases.sqlite'}"
    return request.getfixturevalue("orch_pg_url")


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_no_wait_reports_a_cell_held_elsewhere_with_exit_3_then_takes_it_over_after_expiry(
        fake_runner, tmp_path, capsys):
    from orchestrator.cli import main

    model = "fake:tag=noWait"
    cfg = tmp_path / "nowait.yaml"
    spec = _write_spec(cfg, "nowait", model, seeds=4)
    url = f"sqlite:///{tmp_path / 'nowait.sqlite'}"
    store = Store(url)
    store.upgrade()
    store.ensure_sweep("nowait")
    keys = sorted(store.ensure_runs("nowait", [c.config for c in build_cells(spec)]))
    held = keys[0]
    assert store.claim(held, owner="another-driver", lease_s=60)  # a live driver elsewhere

    assert main(["sweep", str(cfg), "--db", url, "--no-progress", "--no-wait"]) == 3
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert (summary["done"], summary["running_elsewhere"], summary["failed"]) == (3, 1, 0)
    assert "1 cells still running under other drivers" in captured.err
    assert store.get_run(held)["status"] == "running"  # a live lease is never reset
    assert all(c["config"]["seed"] != store.get_run(held)["seed"] for c in fake_calls(fake_runner["log"], model))

    # The other driver "dies": its lease (1.5 s, never renewed) runs out; a waiting driver takes over.
    store.release_running(owner="another-driver")
    assert store.claim(held, owner="another-driver", lease_s=1.5)
    t_claimed = time.time()
    assert main(["sweep", str(cfg), "--db", url, "--no-progress", "--lease", "5"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["executed"], summary["done"], summary["running_elsewhere"]) == (1, 4, 0)
    row = store.get_run(held)
    assert row["status"] == "done" and row["attempts"] == 3  # two claims by the "other", one here
    assert _epoch(row["started_at"]) >= t_claimed + 1.0, "taken over before the lease expired"


def _start(cfg, url, address, lease_s: float):
    env = dict(os.environ, NATSBENCH_CELL_RUNNER=FAKE_RUNNER, PYTHONPATH=f"{HERE}{os.pathsep}{REPO}",
               NATSBENCH_LEASE_S=str(lease_s))
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "sweep", str(cfg), "--db", url, "--address", address,
         "--no-progress"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout: float = 180) -> tuple[int, dict, str]:
    out, err = proc.communicate(timeout=timeout)
    lines = out.strip().splitlines()
    return proc.returncode, (json.loads(lines[-1]) if lines else {}), err


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_drivers_run_every_cell_exactly_once_and_both_exit_0(fake_runner, tmp_path, request, backend):
    url = _url(backend, tmp_path, request)
    model = f"fake:sleep=0.3,tag=two-{backend}"
    cfg = tmp_path / "two.yaml"
    _write_spec(cfg, "two", model, seeds=12)
    procs = [_start(cfg, url, fake_runner["address"], lease_s=10) for _ in range(2)]
    results = [_finish(p) for p in procs]
    for code, summary, err in results:
        assert code == 0, err[-2000:]
        assert (summary["cells"], summary["done"], summary["failed"], summary["running_elsewhere"]) == (12, 12, 0, 0)
    assert sum(s["executed"] for _, s, _ in results) == 12  # split between them, none twice
    calls = fake_calls(fake_runner["log"], model)
    assert sorted(c["config"]["seed"] for c in calls) == list(range(12))  # each cell executed once
    rows = Store(url).runs("two")
    assert len(rows) == 12 and all(r["status"] == "done" and r["attempts"] == 1 for r in rows)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_killed_drivers_cells_are_finished_by_the_other_after_its_lease_expires(
        fake_runner, tmp_path, request, backend):
    lease_s = 3.0
    url = _url(backend, tmp_path, request)
    model = f"fake:sleep=0.6,tag=kill-{backend}"
    cfg = tmp_path / "kill.yaml"
    _write_spec(cfg, "killone", model, seeds=12)
    victim = _start(cfg, url, fake_runner["address"], lease_s)
    survivor = _start(cfg, url, fake_runner["address"], lease_s)
    store = Store(url)
    mark = f":{victim.pid}:"
    held: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and victim.poll() is None:
        try:
            rows = store.runs("killone")
        except Exception:  # noqa: BLE001 - the drivers have not created the sweep yet
            rows = []
        running = [r["run_key"] for r in rows if r["status"] == "running"]
        states = store.leases(running) if running else {}
        held = [k for k, s in states.items() if s["lease_owner"] and mark in s["lease_owner"]]
        if held and sum(r["status"] == "done" for r in rows) >= 1:
            break
        time.sleep(0.05)
    assert held, "the victim never held a cell"
    victim.send_signal(signal.SIGKILL)
    t_kill = time.time()
    victim.communicate(timeout=30)

    code, summary, err = _finish(survivor)
    assert code == 0, err[-2000:]
    assert (summary["cells"], summary["done"], summary["failed"], summary["running_elsewhere"]) == (12, 12, 0, 0)
    rows = {r["run_key"]: r for r in store.runs("killone")}
    assert len(rows) == 12 and all(r["status"] == "done" for r in rows.values())
    for key in held:
        # claimed by the victim, then by the survivor once the lease ran out (the victim renewed
        # it at most lease/3 before the kill, so it expired >= 2/3 of a lease after the kill)
        assert rows[key]["attempts"] == 2
        assert _epoch(rows[key]["started_at"]) >= t_kill + lease_s * 2 / 3 - 0.5, "a live lease was taken"
    others = [r for k, r in rows.items() if k not in held]
    assert all(r["attempts"] == 1 for r in others)


@pytest.mark.slow
def test_a_running_driver_renews_leases_shorter_than_its_cells(fake_runner, tmp_path):
    """Cells of 2.5 s under a 1 s lease: only renewal keeps them this driver's; a thief trying
    to claim them all along never wins, and each cell runs once."""
    import threading

    from orchestrator.run import run_sweep

    model = "fake:sleep=2.5,tag=renew"
    spec = _write_spec(tmp_path / "renew.yaml", "renew", model, seeds=2)
    url = f"sqlite:///{tmp_path / 'renew.sqlite'}"
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(res=run_sweep(spec, url, progress=False, lease_s=1.0)))
    thread.start()
    thief = Store(url)
    keys = [c.run_key for c in build_cells(spec)]
    tries = 0
    while thread.is_alive():
        try:
            running = [k for k, s in thief.leases(keys).items() if s["status"] == "running"]
        except Exception:  # noqa: BLE001 - the store is not created yet
            running = []
        for key in running:
            assert thief.claim(key, owner="thief", lease_s=1.0) is False, "a renewed lease was taken"
            tries += 1
        time.sleep(0.1)
    thread.join()
    res = out["res"]
    assert (res.done, res.failed, res.executed) == (2, 0, 2)
    assert tries >= 20  # the thief tried through well over one lease length
    assert all(r["attempts"] == 1 for r in thief.runs("renew"))
    assert sorted(c["config"]["seed"] for c in fake_calls(fake_runner["log"], model)) == [0, 1]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_driver_paused_past_its_lease_records_nothing_and_the_new_owners_result_is_kept(
        fake_runner, tmp_path, request, backend):
    """Driver A claims the one cell and is paused (SIGSTOP) while its worker runs it; its lease
    lapses and driver B takes the cell over. A resumes while B's worker is still running the cell:
    A's finished result is refused by the compare-and-set on the lease owner (A says so and counts
    it), and the row ends with B's result."""
    lease_s = 2.0
    url = _url(backend, tmp_path, request)
    model = f"fake:sleep=4,tag=pause-{backend}"
    cfg = tmp_path / "pause.yaml"
    _write_spec(cfg, "pause", model, seeds=1)
    key = build_cells(load_spec(cfg))[0].run_key
    store = Store(url)

    def wait_for(condition, what: str, procs) -> None:
        deadline = time.monotonic() + 120
        while not condition():
            for proc in procs:
                assert proc.poll() is None, f"{what}: a driver exited early: {proc.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    driver_a = _start(cfg, url, fake_runner["address"], lease_s)
    driver_b = None
    try:
        wait_for(lambda: fake_calls(fake_runner["log"], model), "driver A to dispatch its cell", [driver_a])
        driver_a.send_signal(signal.SIGSTOP)  # A's worker goes on with the cell; A cannot renew or record
        assert f":{driver_a.pid}:" in store.leases([key])[key]["lease_owner"]
        wait_for(lambda: not store.leases([key])[key]["lease_live"], "A's lease to lapse", [])
        driver_b = _start(cfg, url, fake_runner["address"], lease_s)
        wait_for(lambda: f":{driver_b.pid}:" in (store.leases([key])[key]["lease_owner"] or ""),
                 "driver B to take the cell over", [driver_b])
    finally:
        driver_a.send_signal(signal.SIGCONT)
    # A's result (ready for seconds) arrives while B's worker still sleeps in the cell
    code_a, summary_a, err_a = _finish(driver_a)
    assert code_a == 3, err_a[-2000:]  # the cell is B's, still running: "not finished" exit
    assert (summary_a["executed"], summary_a["lease_lost"], summary_a["running_elsewhere"]) == (1, 1, 1)
    assert "lost its lease" in err_a
    assert store.leases([key])[key]["status"] == "running"  # A's late write changed nothing
    code_b, summary_b, err_b = _finish(driver_b)
    assert code_b == 0, err_b[-2000:]
    assert (summary_b["executed"], summary_b["done"], summary_b["lease_lost"]) == (1, 1, 0)

    calls = fake_calls(fake_runner["log"], model)
    assert len(calls) == 2 and calls[0]["pid"] != calls[1]["pid"]  # run by both drivers' workers
    row = store.get_run(key)
    assert (row["status"], row["attempts"]) == ("done", 2)
    assert row["extras"]["worker"]["pid"] == calls[1]["pid"]  # B's worker's result, recorded once
    assert len([r for r in store.runs("pause") if r["run_key"] == key]) == 1
