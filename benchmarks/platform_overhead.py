"""Platform overhead of a sweep: what scheduling (Ray) and the store add to each cell.

Runs a sweep (default `configs/smoke.yaml`) into a fresh store (a temporary SQLite file unless
`--db`) on an in-process Ray, then splits every executed cell's driver-side time (dispatch ->
record stored) into the worker's own time for the cell (model load + workload + policy +
generation, measured inside the actor) and the rest: Ray scheduling, argument/result transfer,
the driver's store write. The first cell of each worker also pays the actor's start-up; that
one-time cost is reported apart and left out of `overhead_fraction`.

    .venv/bin/python benchmarks/platform_overhead.py [--config configs/smoke.yaml] [--workers 2]

The last line is JSON: cells, model_s, overhead_s, per_cell_overhead_ms (mean, p50, max),
store_ms_mean, actor_startup_s, overhead_fraction (= overhead_s / model_s; target <= 0.05).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "smoke.yaml"))
    parser.add_argument("--db", default=None, help="store URL (default: a fresh temporary SQLite file)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--quick", action="store_true",
                        help="accepted for make bench QUICK=1: the smoke sweep is already the quick variant")
    args = parser.parse_args(argv)

    from orchestrator.run import run_sweep
    from orchestrator.spec import load_spec

    spec = load_spec(args.config)
    tmp = tempfile.mkdtemp(prefix="natsbench-overhead-")
    db = args.db or f"sqlite:///{tmp}/overhead.sqlite"
    t0 = time.perf_counter()
    result = run_sweep(spec, db, workers=args.workers, progress=False)
    total_s = time.perf_counter() - t0
    if not result.timings:
        print("nothing executed (every cell already done in that store); use a fresh --db", file=sys.stderr)
        return 1

    # The first cell each worker ran includes the actor's process start-up.
    first: dict[int, int] = {}
    for i, rec in enumerate(result.records):
        pid = rec["extras"]["worker"]["pid"]
        first.setdefault(pid, i)
    startup_s = sum(result.timings[i]["wall_s"] - result.timings[i]["cell_s"] for i in first.values())
    steady = [t for i, t in enumerate(result.timings) if i not in first.values()] or result.timings
    model_s = sum(t["cell_s"] for t in result.timings)
    per_cell = [max(0.0, t["wall_s"] - t["cell_s"]) for t in steady]
    overhead_s = sum(per_cell) * len(result.timings) / len(steady)  # steady rate over every cell
    report = {
        "config": os.path.relpath(args.config, REPO),
        "cells": len(result.timings),
        "workers": len(first),
        "done": result.done,
        "failed": result.failed,
        "sweep_wall_s": round(total_s, 3),
        "model_s": round(model_s, 4),
        "overhead_s": round(overhead_s, 4),
        "per_cell_overhead_ms": {"mean": round(1e3 * statistics.mean(per_cell), 2),
                                 "p50": round(1e3 * statistics.median(per_cell), 2),
                                 "max": round(1e3 * max(per_cell), 2)},
        "store_ms_mean": round(1e3 * statistics.mean(t["store_s"] for t in result.timings), 2),
        "actor_startup_s": round(startup_s, 3),
        "overhead_fraction": round(overhead_s / model_s, 4) if model_s > 0 else None,
    }
    print(f"platform overhead on {report['config']}: {report['cells']} cells on {report['workers']} workers, "
          f"model {report['model_s']} s, overhead {report['overhead_s']} s "
          f"({report['per_cell_overhead_ms']['mean']} ms/cell, store {report['store_ms_mean']} ms), "
          f"actor start-up {report['actor_startup_s']} s (one-time, excluded)")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
