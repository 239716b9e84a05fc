"""Where the dashboard's runs come from: the result store, opened read-only.

The dashboard never writes. `readonly_url` turns a store URL into one the database itself
enforces as read-only where it can: SQLite through a `mode=ro` URI, PostgreSQL through
`default_transaction_read_only=on` for the session. `load_runs` reads every run record and
sweep name through `services.store.Store`'s read API. No Streamlit here (testable as data).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url

DB_URL_ENV = "NATSBENCH_DB_URL"
DEFAULT_DB_URL = "sqlite:///results/natsbench.sqlite"


def resolve_db_url(argv: Sequence[str] | None = None) -> str:
    """The store URL: `--db URL` among the script args, then $NATSBENCH_DB_URL, then the default."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--db", default=None)
    known, _ = parser.parse_known_args(list(argv or []))
    return known.db or os.environ.get(DB_URL_ENV) or DEFAULT_DB_URL


def sqlite_path(url: str) -> Path | None:
    """The database file of a file-backed SQLite URL (None for other URLs or in-memory SQLite)."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    db = u.database
    if db.startswith("file:"):
        db = db[len("file:"):]
    return Path(db)


def readonly_url(url: str) -> str:
    """`url` made read-only at the database level where the driver allows it.

    SQLite file -> `sqlite:///file:/ABS/PATH?mode=ro&uri=true`; PostgreSQL -> the libpq
    `options=-c default_transaction_read_only=on`; other URLs unchanged.
    """
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        path = sqlite_path(url)
        if path is None:
            return url
        return u.set(database=f"file:{path.resolve()}", query={**u.query, "mode": "ro", "uri": "true"}).render_as_string(
            hide_password=False)
    if backend == "postgresql":
        options = u.query.get("options", "")
        if "default_transaction_read_only" not in options:
            options = f"{options} -c default_transaction_read_only=on".strip()
        return u.update_query_dict({"options": options}).render_as_string(hide_password=False)
    return url


def display_url(url: str) -> str:
    """`url` with any password masked, for showing on the page."""
    return make_url(url).render_as_string(hide_password=True)


@dataclass
class Snapshot:
    """What one read of the store gave: the run records, the sweep names, and a message.

    `problem` is None when the store was read; otherwise it says why there is nothing to
    show (no database file yet, no schema yet) and `runs` is empty.
    """

    runs: list[dict] = field(default_factory=list)
    sweeps: list[str] = field(default_factory=list)
    problem: str | None = None


def _sweep_name(item: object) -> str:
    if isinstance(item, dict):
        return str(item.get("name") or item.get("sweep") or "")
    return str(getattr(item, "name", item))


def load_runs(url: str) -> Snapshot:
    """Every run record and sweep name in the store at `url`, read through a read-only connection.

    A missing SQLite file or a store without its schema gives an empty Snapshot with a
    `problem`; any other error (bad URL, server down, old schema) propagates.
    """
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return Snapshot(problem=f"no result store yet: {path} does not exist")
    from services.store import Store  # heavy import (SQLAlchemy models) only when reading

    store = Store(readonly_url(url))
    try:
        try:
            runs = list(store.runs())
            sweeps = [_sweep_name(s) for s in store.sweeps()]
        except Exception as exc:  # an empty database: the schema was never created
            if "no such table" in str(exc) or "does not exist" in str(exc) or "UndefinedTable" in type(exc).__name__:
                return Snapshot(problem=f"the store has no schema yet ({type(exc).__name__})")
            raise
    finally:
        dispose = getattr(store, "close", None) or getattr(getattr(store, "engine", None), "dispose", None)
        if callable(dispose):
            dispose()
    return Snapshot(runs=runs, sweeps=[s for s in sweeps if s])
