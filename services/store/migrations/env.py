"""Alembic environment of the natsbench store.

natsbench runs Alembic programmatically (`services.store.schema.upgrade`): the caller opens
a connection inside a transaction and passes it as `config.attributes["connection"]`, so
migrations run on exactly the engine (and SQLite pragmas / PostgreSQL search_path) of the
store. Offline (SQL script) mode renders against the URL in `sqlalchemy.url`.
"""

from __future__ import annotations

from alembic import context

from services.store.models import Base

target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("natsbench migrations run through services.store (natsbench db upgrade)")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: later migrations rebuild tables in batch mode.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
