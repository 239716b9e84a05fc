"""Concurrent writers: 8 processes x 500 records into one store give exactly 4000 rows, no error."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from services.store import Store

WRITERS = 8
PER_WRITER = 500
DUPLICATES = 25  # each writer also re-records this many of its neighbour's cells

# One writer process: its own Store; waits for the go file so all start together; records
# PER_WRITER results, then DUPLICATES late duplicates of its neighbour's cells.
WRITER = textwrap.dedent(
    """
    import json, os, sys, time
    from services.store import Store, run_key

    url, index, per_writer, writers, duplicates, go = sys.argv[1:]
    index, per_writer, writers, duplicates = int(index), int(per_writer), int(writers), int(duplicates)

    def record(writer, i):
        config = {"model": "gpt-tiny", "policy": "h2o", "policy_params": {"budget": 0.5},
                  "workload": "kv_recall", "workload_params": {"pairs": 8}, "n_examples": 4,
                  "seed": writer * 100000 + i, "device": "cpu", "dtype": "float32"}
        return {**config, "run_key": run_key(config), "sweep": "concurrency", "status": "done",
                "attempts": 1, "accuracy": i / per_writer, "kv_bytes_physical": 1024 * i,
                "environment": {"writer": writer}}

    store = Store(url)
    store.check_schema()
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.005)
    written = sum(store.record(record(index, i)) for i in range(per_writer))
    late = sum(store.record(record((index + 1) % writers, i)) for i in range(duplicates))
    print(json.dumps({"written": written, "late_written": late}), flush=True)
    """
)


@pytest.mark.slow
def test_eight_concurrent_writers_give_exactly_4000_rows(store_url, tmp_path, record_property):
    go = tmp_path / "go"
    repo = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                store_url,
                str(i),
                str(PER_WRITER),
                str(WRITERS),
                str(DUPLICATES),
                str(go),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=repo,
        )
        for i in range(WRITERS)
    ]

    def kill_all() -> None:  # a hung writer fails the test instead of hanging the suite
        for proc in procs:
            if proc.poll() is None:
                proc.kill()

    watchdog = threading.Timer(300, kill_all)
    watchdog.start()
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        start = time.monotonic()
        go.touch()
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
        elapsed = time.monotonic() - start
    finally:
        watchdog.cancel()
        kill_all()
    rate = WRITERS * (PER_WRITER + DUPLICATES) / elapsed
    record_property("records_per_s", round(rate))
    print(
        f"{WRITERS} writers: {WRITERS * (PER_WRITER + DUPLICATES)} records in {elapsed:.1f} s ({rate:.0f}/s)"
    )
    # A writer's own cells are all new; its late duplicates may land before the owner's
    # write (then the owner's write is the duplicate), but every cell is written exactly once.
    assert sum(r["written"] + r["late_written"] for r in results) == WRITERS * PER_WRITER
    with Store(store_url) as store:
        assert store.row_counts() == {
            "sweeps": 1,
            "runs": WRITERS * PER_WRITER,
            "sweep_runs": WRITERS * PER_WRITER,
        }
        assert store.status_counts() == {
            "pending": 0,
            "running": 0,
            "done": WRITERS * PER_WRITER,
            "failed": 0,
        }
        runs = store.runs(sweep="concurrency")
    assert len({r["run_key"] for r in runs}) == WRITERS * PER_WRITER
    assert all(r["kv_bytes_physical"] == 1024 * (r["seed"] % 100000) for r in runs)
