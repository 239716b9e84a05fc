"""Database URLs and engines: SQLite (WAL, busy timeout, foreign keys) and PostgreSQL (psycopg 3).

Write transactions on SQLite begin with `BEGIN IMMEDIATE`, so a writer takes the write lock
up front (waiting up to the busy timeout) instead of failing with "database is locked" when
it upgrades a read lock; reads begin a plain deferred transaction and never block writers.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool

from .errors import StoreError, StoreURLError

SQLITE_BUSY_TIMEOUT_S = 30.0
PG_CONNECT_TIMEOUT_S = 3
# Execution option that marks a connection as a writer (SQLite: BEGIN IMMEDIATE).
WRITE_OPTION = "natsbench_write"

URL_HELP = (
    "expected sqlite:///PATH/TO/FILE.sqlite or postgresql+psycopg://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
)
_PG_DRIVERS = {"postgresql", "postgres", "postgresql+psycopg"}
_SQLITE_DRIVERS = {"sqlite", "sqlite+pysqlite"}


def mask_url(url: str | URL) -> str:
    """The URL as text with its password replaced by ***."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", str(url))


def parse_url(url: str) -> URL:
    """Parse and normalise a store URL; `postgresql://` and `postgres://` mean psycopg 3."""
    if not isinstance(url, str) or not url.strip():
        raise StoreURLError(f"empty database URL {url!r}; {URL_HELP}")
    try:
        parsed = make_url(url.strip())
        parsed.port  # noqa: B018 - a non-numeric port raises only when read
    except (ArgumentError, ValueError) as exc:
        raise StoreURLError(f"malformed database URL {mask_url(url)!r}: {exc}; {URL_HELP}") from None
    if parsed.drivername in _PG_DRIVERS:
        parsed = parsed.set(drivername="postgresql+psycopg")
        if not parsed.host and "host" not in parsed.query:
            raise StoreURLError(f"database URL {mask_url(parsed)!r} names no host; {URL_HELP}")
    elif parsed.drivername not in _SQLITE_DRIVERS:
        raise StoreURLError(
            f"unsupported database {parsed.drivername!r} in URL {mask_url(parsed)!r}; "
            f"allowed: sqlite, postgresql (psycopg); {URL_HELP}"
        )
    elif not parsed.database:
        raise StoreURLError(f"database URL {mask_url(parsed)!r} names no file; {URL_HELP}")
    return parsed


def jsonable(value: Any) -> Any:
    """A copy of `value` that JSON (and PostgreSQL JSONB) accepts: NaN/inf -> None,
    numpy scalars/arrays -> Python numbers/lists, tuples -> lists, other objects -> str."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    for method in ("tolist", "item"):  # numpy / torch scalars and arrays
        if hasattr(value, method):
            try:
                return jsonable(getattr(value, method)())
            except (TypeError, ValueError):
                break
    return str(value)


def _json_serializer(value: Any) -> str:
    return json.dumps(jsonable(value), allow_nan=False)


def _sqlite_engine(url: URL) -> Engine:
    database = url.database or ""
    in_memory = database == ":memory:" or database.startswith("file::memory:")
    if not in_memory and not database.startswith("file:"):
        parent = Path(database).expanduser().resolve().parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the folder {parent} for the store {mask_url(url)}: {exc}"
            ) from None
    kwargs: dict[str, Any] = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    if in_memory:  # one shared connection, or every connection would see its own empty database
        kwargs = {"connect_args": {"check_same_thread": False}, "poolclass": StaticPool}
    engine = create_engine(url, json_serializer=_json_serializer, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy's "begin" event (below) issue BEGIN, not the sqlite3 module.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # Per-connection settings only: nothing here writes to the file. WAL (a setting stored in
        # the file) is switched on by `enable_wal` when natsbench creates or upgrades its store,
        # never by merely opening a file, which may be another application's.
        if not in_memory:
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        write = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _postgresql_engine(url: URL) -> Engine:
    connect_args: dict[str, Any] = {"application_name": "natsbench"}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
    # No pool_pre_ping (a round trip per checkout): Store._write retries on a connection the
    # server dropped, and pool_recycle retires idle connections before servers time them out.
    return create_engine(url, connect_args=connect_args, pool_recycle=1800, json_serializer=_json_serializer)


def enable_wal(engine: Engine) -> None:
    """Put a SQLite store file in WAL mode (persistent; readers never block the writer). Runs
    outside any transaction (SQLite refuses to switch inside one); no-op for other databases."""
    database = engine.url.database or ""
    if engine.url.get_backend_name() != "sqlite" or database == ":memory:" or database.startswith("file:"):
        return
    raw = engine.raw_connection()
    try:
        raw.driver_connection.execute("PRAGMA journal_mode=WAL")
    finally:
        raw.close()


def build_engine(url: URL) -> Engine:
    """An engine for a URL from `parse_url` (nothing connects until first use)."""
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    return _postgresql_engine(url)


def connect_error_reason(exc: BaseException) -> str:
    """The short reason of a driver connection error ("connection refused", ...)."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    first = text.splitlines()[0].strip() if text else type(exc).__name__
    if "failed: " in first:
        first = first.rsplit("failed: ", 1)[1]
    first = re.sub(r"^(FATAL|ERROR):\s+", "", first).strip()
    return first[:1].lower() + first[1:] if first else type(exc).__name__
