"""`natsbench results`: one row per stored run, as a table, JSON or CSV."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Any

from orchestrator.commands.common import add_db_argument, checked_db_url
from services.declaration import METRICS, RUN_STATUSES  # import-light: no SQLAlchemy, no torch

FORMATS = ("table", "json", "csv")
# Columns of the table format: (field, header); the metric columns are the declared metrics
# that have a table header (services.declaration).
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("run_key", "key"),
    ("sweep", "sweep"),
    ("model", "model"),
    ("policy", "policy"),
    ("budget", "budget"),
    ("compress", "compress"),  # the compression protocol (streaming / prompt / context)
    ("workload", "workload"),
    ("seed", "seed"),
    ("code_version", "code"),
    ("status", "status"),
    *((m.name, m.header) for m in METRICS if m.header),
    ("attempts", "tries"),
    ("error", "error"),
)
# Marks a run of an older code version in the table: its numbers are not what this code computes.
OLD_MARK = " (old)"


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


def _cell(field: str, value: Any, current: str | None = None) -> str:
    if value is None:
        return "-"
    if field == "code_version":
        return str(value) + (OLD_MARK if current is not None and value != current else "")
    if field == "run_key":
        return str(value)[:12]
    if field == "error":
        text = str(value).splitlines()[0] if str(value) else ""
        return text[:40] + ("..." if len(text) > 40 else "")
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(runs: list[dict[str, Any]], current: str | None = None) -> str:
    """A fixed-width text table of the main fields of each run; with `current` (this code's
    CODE_VERSION) runs of another code version are marked "(old)"."""
    rows = [[header for _, header in TABLE_COLUMNS]]
    rows += [[_cell(field, run.get(field), current) for field, _ in TABLE_COLUMNS] for run in runs]
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
    from services.store import CODE_VERSION, RUN_FIELDS, SchemaError, Store, StoreError

    url = checked_db_url(args.db, "results")
    if url is None:
        return 2
    try:
        with Store(url) as store:
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
            print(format_table(runs, CODE_VERSION))
            old = sum(run.get("code_version") != CODE_VERSION for run in runs)
            note = (f"; {old} of an older code version, marked (old): their numbers are not what code "
                    f"version {CODE_VERSION} computes, and a sweep reruns those cells") if old else ""
            print(f"({len(runs)} runs{note})")
        sys.stdout.flush()
    except BrokenPipeError:  # `natsbench results | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
