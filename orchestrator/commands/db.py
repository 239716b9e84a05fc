"""`natsbench db upgrade|status`: create or upgrade the result store schema, or show its state."""

from __future__ import annotations

import argparse
import sys

from orchestrator.commands.common import add_db_argument, checked_db_url


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="db_command", metavar="SUBCOMMAND")
    up = sub.add_parser(
        "upgrade",
        help="create the schema in an empty database, or upgrade an older one to this version",
        description="Create the natsbench schema (sweeps, runs) in an empty database, or migrate an "
        "older natsbench store to this version with Alembic. Safe to run again: a current store is left as is.",
    )
    add_db_argument(up)
    status = sub.add_parser(
        "status",
        help="print the schema version and row counts (per table and per run status)",
        description="Print the store URL (password masked), its schema version against the one this "
        "natsbench needs, and row counts per table and per run status. Exits 2 if the schema is not current.",
    )
    add_db_argument(status)


def _upgrade(url: str) -> int:
    from services.store import Store

    with Store(url) as store:
        before, after = store.upgrade()
        if before == after:
            print(f"{store.display_url}: schema already at version {after}")
        else:
            print(f"{store.display_url}: schema upgraded from {before or 'empty'} to version {after}")
    return 0


def _status(url: str) -> int:
    from services.store import CODE_VERSION, SchemaError, Store
    from services.store.schema import head_revision

    with Store(url) as store:
        print(f"store:   {store.display_url}")
        version = store.schema_version()
        head = head_revision()
        state = "current" if version == head else "needs `natsbench db upgrade`"
        print(f"schema:  {version or 'none'} (this natsbench needs {head}: {state})")
        try:
            counts = store.row_counts()
        except SchemaError as exc:
            print(f"natsbench db status: {exc}", file=sys.stderr)
            return 2
        print("rows:    " + ", ".join(f"{table} {n}" for table, n in counts.items()))
        by_status = store.status_counts()  # rows of this CODE_VERSION
        older = counts.get("runs", 0) - sum(by_status.values())
        print("runs:    " + ", ".join(f"{status} {n}" for status, n in by_status.items())
              + (f" (code version {CODE_VERSION}); {older} of older code versions" if older else ""))
    return 0


def run(args: argparse.Namespace) -> int:
    from services.store import SchemaError, StoreError

    if args.db_command is None:
        print("natsbench db: name a subcommand: upgrade or status (natsbench db --help)", file=sys.stderr)
        return 2
    url = checked_db_url(args.db, f"db {args.db_command}")
    if url is None:
        return 2
    try:
        return _upgrade(url) if args.db_command == "upgrade" else _status(url)
    except SchemaError as exc:
        print(f"natsbench db {args.db_command}: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"natsbench db {args.db_command}: {exc}", file=sys.stderr)
        return 1
