"""The typed SQLAlchemy 2 ORM schema of the result store.

`sweeps` holds one row per sweep file (name unique, the validated spec as JSON);
`runs` holds one row per benchmark cell, keyed by `run_key` (see `keys.run_key`), with
its config, status, timestamps from the database clock, environment and metrics;
`sweep_runs` says which sweeps contain which runs, because two sweeps that share a cell
share its row (the row's `sweep_id` is the sweep that first planned it). The schema is
created and upgraded only by the Alembic migrations in `migrations/versions`; keep them
in step with this file.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.declaration import (
    DONE,
    FAILED,
    FINISHED_STATUSES,
    METRIC_FIELDS,
    METRICS,
    PENDING,
    RUN_CONFIG_COLUMNS,
    RUN_STATUSES,
    RUNNING,
    ConfigField,
)

from .clock import db_now

__all__ = ["DONE", "FAILED", "FINISHED_STATUSES", "METRIC_FIELDS", "PENDING", "RUNNING", "RUN_STATUSES", "Base", "Run",
           "Sweep", "SweepRun"]

# JSON everywhere; JSONB on PostgreSQL (indexable, compact).
JSONType = JSON().with_variant(JSONB(), "postgresql")


def _column_type(field: ConfigField):
    """The SQL type of a declared config column."""
    return {"str": lambda: String(field.length), "int": lambda: Integer, "float": lambda: Float,
            "dict": lambda: JSONType}[field.type]()


class Base(DeclarativeBase):
    """Declarative base of the natsbench store tables."""


class Sweep(Base):
    """One sweep: a named grid of cells with the spec it was planned from."""

    __tablename__ = "sweeps"
    __table_args__ = (UniqueConstraint("name", name="uq_sweeps_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=db_now(), nullable=False
    )


class Run(Base):
    """One benchmark cell (model x policy x budget x workload x seed) and its measured record."""

    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("run_key", name="uq_runs_run_key"),
        CheckConstraint(f"status IN ({', '.join(repr(s) for s in RUN_STATUSES)})", name="ck_runs_status"),
        Index("ix_runs_sweep_id_status", "sweep_id", "status"),
        Index("ix_runs_lease_owner", "lease_owner"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_key: Mapped[str] = mapped_column(String(64), nullable=False)
    sweep_id: Mapped[int | None] = mapped_column(
        ForeignKey("sweeps.id", name="fk_runs_sweep_id", ondelete="SET NULL"), nullable=True
    )
    # The config, column by column for filtering (one column per services.declaration.RUN_CONFIG_COLUMNS:
    # every config field, `budget` from policy_params and the compression protocol `compress`, which for
    # a config without one holds the policy's default; migration 0004 filled the rows stored before it),
    # and whole in `config`. A new config field needs its declaration and a migration, not an edit here.
    for _field in RUN_CONFIG_COLUMNS:
        locals()[_field.name] = mapped_column(_column_type(_field), nullable=_field.nullable)
    del _field
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    # The CODE_VERSION that planned (and measured) this row; part of its run key.
    code_version: Mapped[str] = mapped_column(String(20), nullable=False)
    # Lifecycle; timestamps come from the database clock.
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=PENDING)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=db_now(), nullable=False
    )
    # The lease of a running run: the driver that claimed it and until when (database clock)
    # the claim holds unless that driver renews it. Another driver takes over a running run
    # only once its lease has expired (the driver died); both are NULL when not running.
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    environment: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    # Metrics: one nullable column per metric of services.declaration.METRICS (ints as BIGINT),
    # so a new metric needs its declaration and a migration, not an edit here.
    for _metric in METRICS:
        locals()[_metric.name] = mapped_column(BigInteger if _metric.type == "int" else Float, nullable=True)
    del _metric
    extras: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)


class SweepRun(Base):
    """Membership: run `run_id` is a cell of sweep `sweep_id`."""

    __tablename__ = "sweep_runs"

    sweep_id: Mapped[int] = mapped_column(
        ForeignKey("sweeps.id", name="fk_sweep_runs_sweep_id", ondelete="CASCADE"), primary_key=True
    )
    run_id: Mapped[int] = mapped_column(
        ForeignKey("runs.id", name="fk_sweep_runs_run_id", ondelete="CASCADE"), primary_key=True
    )
