"""`natsbench sweep CONFIG`: validate, plan, run on Ray, print a table and a JSON last line.

Exit codes: 0 every cell done, 1 some cell failed, 2 a bad sweep file (nothing ran), 130
interrupted (the cells in flight went back to pending; rerun to resume).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from orchestrator.commands.common import add_db_argument, resolve_db_url

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
        if rec.get("status") == "failed" and rec.get("error"):
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


def run(args: argparse.Namespace) -> int:
    from orchestrator.spec import SpecError, load_spec

    try:
        spec = load_spec(args.config)
    except SpecError as exc:
        print(f"natsbench sweep: {exc}", file=sys.stderr)
        return 2
    db_url = resolve_db_url(args.db)
    if args.workers is not None and args.workers < 1:
        print(f"natsbench sweep: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    if args.dry_run:
        return _dry_run(spec, db_url)
    from orchestrator.run import open_store, run_sweep
    from services.store import StoreError

    try:
        store = open_store(db_url)
        result = run_sweep(spec, db_url, address=args.address, workers=args.workers,
                           rerun_failed=args.rerun_failed, progress=not args.no_progress, store=store)
    except StoreError as exc:
        print(f"natsbench sweep: {exc}", file=sys.stderr)
        return 1
    except ConnectionError as exc:
        print(f"natsbench sweep: cannot join the Ray cluster at {args.address!r}: {exc}", file=sys.stderr)
        return 1
    keys = set(result.plan_keys)
    print(format_table([r for r in store.runs(spec.name) if r["run_key"] in keys]))
    if result.interrupted:
        print("interrupted: cells in flight are pending again; rerun the same command to resume",
              file=sys.stderr)
    print(json.dumps(result.summary()))
    sys.stdout.flush()
    if result.interrupted:
        return 130
    return 1 if result.failed else 0
