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
    """What one read of the store gave: the run records, the sweeps, and a message.

    `sweeps` holds the dicts of `Store.sweeps()` (name, counts per status, total, updated_at).
    `problem` is None when the store was read; otherwise it says why there is nothing to
    show (no database file yet, no schema yet) and `runs` is empty.
    """

    runs: list[dict] = field(default_factory=list)
    sweeps: list[dict] = field(default_factory=list)
    problem: str | None = None


def load_runs(url: str) -> Snapshot:
    """Every run record and sweep in the store at `url`, read through a read-only connection.

    A missing SQLite file, a database without the natsbench schema, or a SQLite file that is
    no natsbench store gives an empty Snapshot with a `problem`; any other error (bad URL,
    server down, old schema: `services.store.StoreError` / `SchemaError`) propagates.
    """
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return Snapshot(problem=f"no result store yet: {path} does not exist")
    from services.store import Store, StoreError  # heavy import only when reading

    with Store(readonly_url(url)) as store:
        try:
            version = store.schema_version()
        except StoreError as exc:
            # natsbench stores are WAL-mode SQLite; a file in another journal mode cannot be
            # opened read-only by the store's engine (it would switch the file to WAL).
            if path is not None and "readonly" in str(exc):
                return Snapshot(problem=f"{path} is not a natsbench store (cannot open it read-only)")
            raise
        if version is None:
            return Snapshot(problem="the database has no natsbench schema yet (`natsbench db upgrade`)")
        runs, sweeps = store.runs(), store.sweeps()
    return Snapshot(runs=runs, sweeps=[s for s in sweeps if s.get("name")])
