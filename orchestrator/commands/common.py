"""Options shared by several commands."""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_DB_URL = "sqlite:///results/natsbench.sqlite"
DB_URL_ENV = "NATSBENCH_DB_URL"


def add_db_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        metavar="URL",
        default=None,
        help=f"SQLAlchemy URL of the result store (default: ${DB_URL_ENV}, else {DEFAULT_DB_URL}); "
        "PostgreSQL as postgresql+psycopg://user@host:5432/db",
    )


def resolve_db_url(value: str | None) -> str:
    """--db, then $NATSBENCH_DB_URL, then the SQLite file under results/."""
    return value or os.environ.get(DB_URL_ENV) or DEFAULT_DB_URL


def checked_db_url(value: str | None, command: str) -> str | None:
    """The resolved store URL, or None after printing one line on stderr when it is malformed or
    names an unsupported database (the caller exits 2: a bad input, nothing was touched)."""
    from services.store.engine import parse_url
    from services.store.errors import StoreURLError

    url = resolve_db_url(value)
    try:
        parse_url(url)
    except StoreURLError as exc:
        print(f"natsbench {command}: --db: {exc}", file=sys.stderr)
        return None
    return url
