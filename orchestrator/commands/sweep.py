"""`natsbench sweep CONFIG`: validate, plan, run on Ray, print a table and a JSON last line.

Before the store is touched or Ray starts, the sweep file, `--db`, `--address`, the GPUs the
local Ray can give and every model are checked; a bad one is one line on stderr and exit 2.
Several drivers may run the same sweep at once (each claim is a renewed lease; see
orchestrator/run.py). Exit codes are in EXIT_CODES (printed by `--help`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from orchestrator.commands.common import add_db_argument, checked_db_url
from services.declaration import FAILED

EXIT_CODES = (
    "exit codes: 0 every cell of the sweep is done; "
    "1 some cell failed (rerun with --rerun-failed) or the store failed mid-sweep; "
    "2 bad input (sweep file, --db, --address, GPUs, models): nothing written, Ray not started; "
    "3 no cell failed but some are still running under other drivers' live leases (--no-wait) or "
    "pending; "
    "130 interrupted: this driver's cells in flight went back to pending, rerun to resume"
)

TABLE_COLUMNS = [
    ("model", 16), ("policy", 13), ("budget", 6), ("workload", 12), ("workload_params", 22),
    ("seed", 4), ("status", 6), ("accuracy", 8), ("kept_fraction", 8), ("kv_bytes_physical", 10),
    ("tokens_per_s", 9),
]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="sweep file (YAML or JSON), e.g. configs/smoke.yaml")
    add_db_argument(parser)
    parser.add_argument("--address", metavar="RAY", default=None,
                        help="join this Ray cluster (e.g. 127.0.0.1:6379 or 'auto'); default: an "
                        "in-process Ray on 127.0.0.1")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="worker actors at once (default: resources.workers of the sweep file)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (cells, keys, run/skip) and exit")
    parser.add_argument("--rerun-failed", action="store_true", help="run cells that failed before again")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--lease", type=float, default=None, metavar="SECONDS",
                        help="how long a claimed cell stays this driver's without renewal; renewed every "
                        "third of it, taken over by another driver once it expires (default: "
                        "$NATSBENCH_LEASE_S, else 60)")
    parser.add_argument("--no-wait", action="store_true",
                        help="do not wait for cells other drivers are running: exit 3 and say how many")
    parser.epilog = EXIT_CODES


def _cell_value(rec: dict[str, Any], name: str) -> str:
    if name == "budget":
        value = (rec.get("policy_params") or {}).get("budget", rec.get("budget"))
    elif name == "workload_params":
        value = ",".join(f"{k}={v}" for k, v in (rec.get("workload_params") or {}).items())
    else:
        value = rec.get(name)
    if value is None:
        return "-"
    if name == "kv_bytes_physical":
        return f"{value / 1024:.1f}K"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def format_table(records: list[dict[str, Any]]) -> str:
    """Fixed-width table of run records, one line each (errors shortened to one line)."""
    head = " ".join(f"{name[:w]:<{w}}" for name, w in TABLE_COLUMNS)
    lines = [head, "-" * len(head)]
    for rec in records:
        lines.append(" ".join(f"{_cell_value(rec, n)[:w]:<{w}}" for n, w in TABLE_COLUMNS))
        if rec.get("status") == FAILED and rec.get("error"):
            lines.append(f"    error: {str(rec['error']).strip().splitlines()[0][:150]}")
    return "\n".join(lines)


def _dry_run(spec: Any, db_url: str) -> int:
    from orchestrator.plan import build_cells, decide, format_plan

    cells = build_cells(spec)
    statuses: dict[str, str] = {}
    try:  # read-only: the plan reflects the store if there is one, nothing is written
        from services.store import Store

        statuses = {r["run_key"]: r["status"] for r in Store(db_url).runs(spec.name)}
    except Exception as exc:  # noqa: BLE001 - no store yet: every cell is new
        print(f"(store {db_url} not readable: {str(exc).splitlines()[0] if str(exc) else exc}; "
              "showing every cell as new)", file=sys.stderr)
    print(format_plan(decide(spec.name, cells, statuses, rerun_failed=False)))
    return 0


def _refuse(message: str) -> int:
    print(f"natsbench sweep: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    import os

    from orchestrator import preflight
    from orchestrator.spec import SpecError, load_spec

    try:
        spec = load_spec(args.config)
    except SpecError as exc:
        print(f"natsbench sweep: {exc}", file=sys.stderr)
        return 2
    db_url = checked_db_url(args.db, "sweep")
    if db_url is None:
        return 2
    if args.workers is not None and args.workers < 1:
        return _refuse(f"--workers must be >= 1, got {args.workers}")
    from orchestrator.run import lease_seconds

    try:
        lease_s = lease_seconds(args.lease)
    except ValueError as exc:
        return _refuse(f"--lease: {exc}")
    if args.dry_run:
        return _dry_run(spec, db_url)
    from services.worker import DEFAULT_RUNNER, RUNNER_ENV

    runner = os.environ.get(RUNNER_ENV) or DEFAULT_RUNNER
    for problem in (preflight.check_address(args.address), preflight.check_gpus(spec, args.address),
                    preflight.check_models(spec, runner)):
        if problem:
            return _refuse(problem)
    from orchestrator.run import open_store, run_sweep
    from services.store import StoreError

    try:
        store = open_store(db_url)
    except StoreError as exc:  # not natsbench's database, unreachable server: nothing was written
        return _refuse(f"--db: {exc}")
    try:
        result = run_sweep(spec, db_url, address=args.address, workers=args.workers,
                           rerun_failed=args.rerun_failed, progress=not args.no_progress, store=store,
                           runner=runner, lease_s=lease_s, wait_elsewhere=not args.no_wait)
    except StoreError as exc:
        print(f"natsbench sweep: {exc}", file=sys.stderr)
        return 1
    except ConnectionError as exc:
        print(f"natsbench sweep: cannot join the Ray cluster at {args.address!r}: {exc}", file=sys.stderr)
        return 1
    keys = set(result.plan_keys)
    print(format_table([r for r in store.runs(spec.name) if r["run_key"] in keys]))
    if result.interrupted:
        print("interrupted: this driver's cells in flight are pending again; rerun the same command to resume",
              file=sys.stderr)
    elif result.running_elsewhere or result.pending:
        print(f"not finished: {result.running_elsewhere} cells still running under other drivers, "
              f"{result.pending} pending, {result.failed} failed, {result.done} of {result.cells} done; "
              "rerun the same command to wait for them", file=sys.stderr)
    elif result.failed:
        print(f"{result.failed} of {result.cells} cells failed; rerun with --rerun-failed to retry them",
              file=sys.stderr)
    print(json.dumps(result.summary()))
    sys.stdout.flush()
    if result.interrupted:
        return 130
    if result.failed:
        return 1
    return 3 if result.running_elsewhere or result.pending else 0
