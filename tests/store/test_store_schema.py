"""Schema versioning: upgrade creates/keeps the schema; empty, old and foreign stores are refused."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text

from services.store import SchemaError, Store, schema
from services.store.engine import parse_url
from services.store.models import Base


def _execute(url: str, *statements: str) -> None:
    """Run SQL on the database behind `url` without natsbench (a foreign application's tables)."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed)
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
    engine.dispose()


def test_empty_store_asks_for_db_upgrade(empty_url):
    with Store(empty_url) as store:
        assert store.schema_version() is None
        with pytest.raises(SchemaError, match=r"empty.*run `natsbench db upgrade --db "):
            store.runs()
        with pytest.raises(SchemaError, match="natsbench db upgrade"):
            store.ensure_sweep("grid", {})  # checked before anything is written


def test_upgrade_creates_then_keeps_the_schema(empty_url):
    with Store(empty_url) as store:
        assert store.upgrade() == (None, schema.head_revision())
        assert store.upgrade() == (schema.head_revision(), schema.head_revision())
        assert store.schema_version() == schema.head_revision()
        assert store.row_counts() == {"sweeps": 0, "runs": 0, "sweep_runs": 0}


def test_head_revision_constant_is_the_newest_migration():
    assert schema.alembic_head() == schema.head_revision() == schema.HEAD_REVISION
    assert schema.HEAD_REVISION in schema.known_revisions()


def test_migrations_match_the_models(store_url):
    engine = create_engine(parse_url(store_url))
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    assert diff == []


def test_foreign_alembic_version_is_refused(empty_url):
    _execute(
        empty_url,
        "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)",
        "INSERT INTO alembic_version VALUES ('beefcafe1234')",
    )
    with Store(empty_url) as store:
        with pytest.raises(SchemaError, match=r"foreign schema.*'beefcafe1234'.*natsbench db upgrade"):
            store.status_counts()
        with pytest.raises(SchemaError, match="foreign schema"):
            store.upgrade()  # never migrates someone else's database
        assert store.schema_version() == "beefcafe1234"


def test_unversioned_tables_are_refused(empty_url):
    _execute(empty_url, "CREATE TABLE experiments (id INTEGER PRIMARY KEY)")
    with (
        Store(empty_url) as store,
        pytest.raises(SchemaError, match=r"\['experiments'\].*natsbench db upgrade"),
    ):
        store.runs()


def test_old_schema_asks_for_db_upgrade(store_url, monkeypatch):
    # This natsbench "needs" a newer revision than the store holds.
    monkeypatch.setattr(schema, "head_revision", lambda: "9999")
    with (
        Store(store_url) as store,
        pytest.raises(SchemaError, match=rf"version {schema.HEAD_REVISION}, this natsbench needs 9999.*db upgrade"),
    ):
        store.sweeps()


def test_concurrent_upgrades_of_an_empty_database_all_succeed(empty_url, monkeypatch):
    """Drivers starting together on an empty database: one creates the schema, the others wait and find it.

    Reading the version is slowed down, so that a driver which reads before it waits for the others sees
    their tables appear between its two reads (the race CI once hit on PostgreSQL)."""
    import threading

    read_version = schema.current_revision

    def slow_read(conn):
        revision = read_version(conn)
        time.sleep(0.3)
        return revision

    monkeypatch.setattr(schema, "current_revision", slow_read)
    n = 6
    barrier = threading.Barrier(n)
    outcomes: list[object] = [None] * n

    def upgrade(i: int) -> None:
        try:
            with Store(empty_url) as store:
                barrier.wait(timeout=30)
                time.sleep(0.15 * i)  # staggered: some read while the first one is still creating tables
                outcomes[i] = store.upgrade()[1]
        except Exception as exc:  # recorded, asserted below
            outcomes[i] = exc

    threads = [threading.Thread(target=upgrade, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert outcomes == [schema.head_revision()] * n
    with Store(empty_url) as store:
        store.check_schema()
