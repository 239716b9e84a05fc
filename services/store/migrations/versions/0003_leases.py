"""Leases of running runs: runs.lease_owner and runs.lease_expires_at.

A driver that claims a run records its id and a lease expiry (database clock) that it renews
while the run is in flight; another driver takes a running run over only after its lease has
expired. Runs left `running` by drivers older than this revision have no lease to renew:
they get an already expired one, so the next driver takes them over.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from services.store.clock import db_now

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("lease_owner", sa.String(200), nullable=True))
    op.add_column("runs", sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_runs_lease_owner", "runs", ["lease_owner"])
    runs = sa.table("runs", sa.column("status", sa.String()),
                    sa.column("lease_expires_at", sa.DateTime(timezone=True)))
    op.execute(runs.update().where(runs.c.status == "running").values(lease_expires_at=db_now()))


def downgrade() -> None:
    op.drop_index("ix_runs_lease_owner", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
