"""The database clock as a SQL expression.

Every timestamp in the store comes from the database server, never from a worker's clock,
so rows written by different hosts order correctly. SQLite's CURRENT_TIMESTAMP has only
second resolution, so there the clock is rendered as strftime with milliseconds, padded to
the six fractional digits SQLAlchemy's SQLite DateTime stores and parses.
"""

from __future__ import annotations

from sqlalchemy import DateTime
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement


class db_now(FunctionElement):  # noqa: N801 - reads like a SQL function
    """`now()` of the database: UTC, millisecond resolution at least."""

    type = DateTime(timezone=True)
    inherit_cache = True
    name = "db_now"


@compiles(db_now)
def _db_now_default(element, compiler, **kw) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(db_now, "postgresql")
def _db_now_postgresql(element, compiler, **kw) -> str:
    return "statement_timestamp()"


@compiles(db_now, "sqlite")
def _db_now_sqlite(element, compiler, **kw) -> str:
    return "strftime('%Y-%m-%d %H:%M:%f000', 'now')"


class db_later(FunctionElement):  # noqa: N801 - reads like a SQL function
    """The database clock `seconds` from now (a lease expiry): same format as `db_now`, so the
    two compare correctly on SQLite (text) and PostgreSQL (timestamptz)."""

    type = DateTime(timezone=True)
    # The seconds are rendered into the SQL text, so the compiled form must not be cached
    # across different values.
    inherit_cache = False
    name = "db_later"

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = float(seconds)


@compiles(db_later)
def _db_later_default(element, compiler, **kw) -> str:
    return f"CURRENT_TIMESTAMP + INTERVAL '{element.seconds:.3f} seconds'"


@compiles(db_later, "postgresql")
def _db_later_postgresql(element, compiler, **kw) -> str:
    return f"(statement_timestamp() + make_interval(secs => {element.seconds:.3f}))"


@compiles(db_later, "sqlite")
def _db_later_sqlite(element, compiler, **kw) -> str:
    return f"strftime('%Y-%m-%d %H:%M:%f000', 'now', '{element.seconds:+.3f} seconds')"
