"""Initial schema: sweeps, runs, sweep_runs.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from services.store.clock import db_now

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("spec", JSONType, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=db_now(), nullable=False),
        sa.UniqueConstraint("name", name="uq_sweeps_name"),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_key", sa.String(64), nullable=False),
        sa.Column(
            "sweep_id",
            sa.Integer(),
            sa.ForeignKey("sweeps.id", name="fk_runs_sweep_id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("model", sa.String(500), nullable=False),
        sa.Column("policy", sa.String(100), nullable=False),
        sa.Column("policy_params", JSONType, nullable=False),
        sa.Column("budget", sa.Float(), nullable=True),
        sa.Column("workload", sa.String(100), nullable=False),
        sa.Column("workload_params", JSONType, nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("n_examples", sa.Integer(), nullable=True),
        sa.Column("device", sa.String(50), nullable=True),
        sa.Column("dtype", sa.String(20), nullable=True),
        sa.Column("config", JSONType, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=db_now(), nullable=False),
        sa.Column("environment", JSONType, nullable=True),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.Column("kv_bytes_physical", sa.BigInteger(), nullable=True),
        sa.Column("kv_bytes_full", sa.BigInteger(), nullable=True),
        sa.Column("kept_fraction", sa.Float(), nullable=True),
        sa.Column("ttft_s", sa.Float(), nullable=True),
        sa.Column("tpot_s", sa.Float(), nullable=True),
        sa.Column("tokens_per_s", sa.Float(), nullable=True),
        sa.Column("peak_memory_bytes", sa.BigInteger(), nullable=True),
        sa.Column("extras", JSONType, nullable=True),
        sa.UniqueConstraint("run_key", name="uq_runs_run_key"),
        sa.CheckConstraint("status IN ('pending', 'running', 'done', 'failed')", name="ck_runs_status"),
    )
    op.create_index("ix_runs_sweep_id_status", "runs", ["sweep_id", "status"])
    op.create_table(
        "sweep_runs",
        sa.Column(
            "sweep_id",
            sa.Integer(),
            sa.ForeignKey("sweeps.id", name="fk_sweep_runs_sweep_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "run_id",
            sa.Integer(),
            sa.ForeignKey("runs.id", name="fk_sweep_runs_run_id", ondelete="CASCADE"),
            primary_key=True,
        ),
    )


def downgrade() -> None:
    op.drop_table("sweep_runs")
    op.drop_index("ix_runs_sweep_id_status", table_name="runs")
    op.drop_table("runs")
    op.drop_table("sweeps")
