"""`natsbench results`: one row per stored run, as a table, JSON or CSV."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Any

from orchestrator.commands.common import add_db_argument, resolve_db_url

# Kept here (not imported) so that configure() stays import-light; equal to services.store.RUN_STATUSES.
RUN_STATUSES = ("pending", "running", "done", "failed")
FORMATS = ("table", "json", "csv")
# Columns of the table format: (field, header).
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("run_key", "key"),
    ("sweep", "sweep"),
    ("model", "model"),
    ("policy", "policy"),
    ("budget", "budget"),
    ("workload", "workload"),
    ("seed", "seed"),
    ("status", "status"),
    ("accuracy", "acc"),
    ("kv_bytes_physical", "kv_bytes"),
    ("kept_fraction", "kept"),
    ("ttft_s", "ttft_s"),
    ("tpot_s", "tpot_s"),
    ("tokens_per_s", "tok/s"),
    ("attempts", "tries"),
    ("error", "error"),
)


def configure(parser: argparse.ArgumentParser) -> None:
    add_db_argument(parser)
    parser.add_argument("--sweep", metavar="NAME", default=None, help="only the runs of this sweep")
    parser.add_argument("--status", choices=RUN_STATUSES, default=None, help="only runs with this status")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="table (default, for reading), json (one JSON list of objects, every field), "
        "csv (every field; dict fields as JSON text)",
    )


def _cell(field: str, value: Any) -> str:
    if value is None:
        return "-"
    if field == "run_key":
        return str(value)[:12]
    if field == "error":
        text = str(value).splitlines()[0] if str(value) else ""
        return text[:40] + ("..." if len(text) > 40 else "")
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(runs: list[dict[str, Any]]) -> str:
    """A fixed-width text table of the main fields of each run."""
    rows = [[header for _, header in TABLE_COLUMNS]]
    rows += [[_cell(field, run.get(field)) for field, _ in TABLE_COLUMNS] for run in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_csv(runs: list[dict[str, Any]], fields: tuple[str, ...], out) -> None:
    """Every field, one run per line; dict/list fields as compact JSON, None as empty."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(fields)
    for run in runs:
        row = []
        for field in fields:
            value = run.get(field)
            if isinstance(value, dict | list):
                value = json.dumps(value, sort_keys=True, separators=(",", ":"))
            row.append("" if value is None else value)
        writer.writerow(row)


def run(args: argparse.Namespace) -> int:
    from services.store import RUN_FIELDS, SchemaError, Store, StoreError

    try:
        with Store(resolve_db_url(args.db)) as store:
            runs = store.runs(sweep=args.sweep, status=args.status)
    except SchemaError as exc:
        print(f"natsbench results: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"natsbench results: {exc}", file=sys.stderr)
        return 1
    try:
        if args.format == "json":
            print(json.dumps(runs, indent=2))
        elif args.format == "csv":
            write_csv(runs, RUN_FIELDS, sys.stdout)
        else:
            print(format_table(runs))
            print(f"({len(runs)} runs)")
        sys.stdout.flush()
    except BrokenPipeError:  # `natsbench results | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
