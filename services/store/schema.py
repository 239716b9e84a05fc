"""Schema versioning with Alembic: upgrade to head, read and check the version.

Alembic runs programmatically on a connection the store opened (no alembic.ini needed):
`migrations/` holds the environment and the versions. A store whose version is not the
head of those migrations is refused with a message telling the user to run
`natsbench db upgrade`.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text

from .errors import SchemaError

if TYPE_CHECKING:  # Alembic is imported only to upgrade or to explain a wrong version
    from alembic.config import Config
    from alembic.script import ScriptDirectory

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version"
# The newest revision under migrations/versions: what this code reads and writes. A test
# checks it against Alembic's head, so a new migration cannot forget to bump it.
HEAD_REVISION = "0004"


def alembic_config() -> Config:
    """An Alembic Config pointing at the natsbench migrations."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


@cache
def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The revision this natsbench's code expects."""
    return HEAD_REVISION


def alembic_head() -> str | None:
    """The head revision of the migration scripts (equal to HEAD_REVISION)."""
    return _script().get_current_head()


def known_revisions() -> set[str]:
    """Every revision natsbench has ever shipped."""
    return {rev.revision for rev in _script().walk_revisions()}


def current_revision(conn: Connection) -> str | None:
    """The revision recorded in the database, None when it has no version table (or it is empty)."""
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    if len(rows) > 1:
        return ",".join(sorted(rows))
    return rows[0] if rows else None


def upgrade_hint(display_url: str) -> str:
    return f"run `natsbench db upgrade --db {display_url}`"


def check(conn: Connection, display_url: str) -> None:
    """Raise SchemaError unless the database holds the head revision of the natsbench schema."""
    revision = current_revision(conn)
    head = head_revision()
    if revision == head:
        return
    hint = upgrade_hint(display_url)
    if revision is None:
        tables = sorted(inspect(conn).get_table_names())
        if not tables:
            raise SchemaError(f"the store at {display_url} is empty (no natsbench schema yet): {hint}")
        raise SchemaError(
            f"the database at {display_url} holds tables {tables[:8]} but no natsbench schema version; "
            f"point --db at a natsbench store or an empty database and {hint}"
        )
    if revision in known_revisions():
        raise SchemaError(
            f"the store at {display_url} has schema version {revision}, this natsbench needs {head}: {hint}"
        )
    raise SchemaError(
        f"the database at {display_url} has a foreign schema (version {revision!r} is not a natsbench "
        f"revision: another application's, or a newer natsbench's); point --db at a natsbench store "
        f"or an empty database and {hint}"
    )


def upgrade(conn: Connection, display_url: str) -> tuple[str | None, str]:
    """Create or upgrade the schema to head on `conn` (inside its transaction).

    Returns (revision before, revision after). A foreign version raises SchemaError.
    """
    if conn.dialect.name == "postgresql":
        # Two processes upgrading the same database at once: the second waits here, before it
        # reads anything, then finds head. Reading first raced: under READ COMMITTED the version
        # table could be missing for one statement and the other's committed tables present for
        # the next, which looked like another application's database. (SQLite needs no lock:
        # the write transaction began with BEGIN IMMEDIATE.)
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.natsbench_schema'))"))
    before = current_revision(conn)
    if before is not None and before not in known_revisions():
        check(conn, display_url)  # raises the foreign-schema message
    if before is None:
        tables = sorted(inspect(conn).get_table_names())
        if tables:  # another application's database: add nothing to it
            raise SchemaError(
                f"the database at {display_url} is not a natsbench store and not empty (it holds tables "
                f"{tables[:8]} and no natsbench schema version); nothing was written to it: point --db "
                "at a natsbench store or an empty database"
            )
    from alembic import command
    from alembic.util import CommandError

    config = alembic_config()
    config.attributes["connection"] = conn
    try:
        command.upgrade(config, "head")
    except CommandError as exc:
        raise SchemaError(f"cannot upgrade the store at {display_url}: {exc}") from None
    return before, head_revision()
