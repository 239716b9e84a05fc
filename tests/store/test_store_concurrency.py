"""Concurrent writers: 8 processes x 500 records into one store give exactly 4000 rows, no error.

The writers are separate processes (each opens its own Store, so each has its own
connections, file locks and transactions), started together on an event.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import traceback

import pytest

from services.store import Store, run_key

WRITERS = 8
PER_WRITER = 500
DUPLICATES = 25  # each writer also re-records this many of its neighbour's cells (late duplicates)
SWEEP = "concurrency"


def _record(writer: int, i: int) -> dict:
    config = {
        "model": "gpt-tiny",
        "policy": "h2o",
        "policy_params": {"budget": 0.5},
        "workload": "kv_recall",
        "workload_params": {"pairs": 8},
        "n_examples": 4,
        "seed": writer * 100_000 + i,
        "device": "cpu",
        "dtype": "float32",
    }
    return {
        **config,
        "run_key": run_key(config),
        "sweep": SWEEP,
        "status": "done",
        "attempts": 1,
        "accuracy": i / PER_WRITER,
        "kv_bytes_physical": 1024 * i,
        "environment": {"writer": writer},
    }


def _writer(url: str, index: int, ready, go, results) -> None:
    """One writer process: its own Store; PER_WRITER records, then DUPLICATES of its neighbour's."""
    try:
        store = Store(url)
        store.check_schema()
        ready.put(index)
        go.wait(60)
        written = sum(store.record(_record(index, i)) for i in range(PER_WRITER))
        late = sum(store.record(_record((index + 1) % WRITERS, i)) for i in range(DUPLICATES))
        store.close()
        results.put((index, written, late, None))
    except BaseException:  # noqa: BLE001 - every failure goes back to the test
        results.put((index, 0, 0, traceback.format_exc()))


@pytest.mark.slow
def test_eight_concurrent_writers_give_exactly_4000_rows(store_url, record_property):
    # fork: no re-import per writer (fast on a busy machine); spawn when this process already
    # runs threads (an earlier test's Ray or torch pool), where forking is not safe.
    ctx = multiprocessing.get_context("fork" if threading.active_count() == 1 else "spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_writer, args=(store_url, i, ready, go, results)) for i in range(WRITERS)]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            ready.get(timeout=120)
        start = time.monotonic()
        go.set()
        outcomes = [results.get(timeout=300) for _ in procs]
        elapsed = time.monotonic() - start
        for proc in procs:
            proc.join(timeout=30)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
    errors = [error for *_, error in outcomes if error]
    assert errors == [], errors[0]
    assert all(proc.exitcode == 0 for proc in procs)
    rate = WRITERS * (PER_WRITER + DUPLICATES) / elapsed
    record_property("records_per_s", round(rate))
    print(
        f"{WRITERS} writers: {WRITERS * (PER_WRITER + DUPLICATES)} records in {elapsed:.1f} s ({rate:.0f}/s)"
    )
    # A writer's late duplicates may land before the owner's own write (which is then the
    # duplicate), but every cell is written exactly once.
    assert sum(written + late for _, written, late, _ in outcomes) == WRITERS * PER_WRITER
    with Store(store_url) as store:
        n = WRITERS * PER_WRITER
        assert store.row_counts() == {"sweeps": 1, "runs": n, "sweep_runs": n}
        assert store.status_counts() == {"pending": 0, "running": 0, "done": n, "failed": 0}
        runs = store.runs(sweep=SWEEP)
    assert len({r["run_key"] for r in runs}) == WRITERS * PER_WRITER
    assert all(r["kv_bytes_physical"] == 1024 * (r["seed"] % 100_000) for r in runs)
