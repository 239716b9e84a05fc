"""The code version on every run: runs.code_version.

`CODE_VERSION` (services/store/keys.py) takes part in every run key, so rows of an older code
version are never reused by a sweep; this column says which version produced a row, so the
CLI and the dashboard can mark old results. Rows stored before this revision were made by
code version "1" (the only version before it).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("code_version", sa.String(20), nullable=True))
    runs = sa.table("runs", sa.column("code_version", sa.String(20)))
    op.execute(runs.update().values(code_version="1"))
    # NOT NULL once every row has a value (batch: SQLite cannot alter a column in place)
    with op.batch_alter_table("runs") as batch:
        batch.alter_column("code_version", existing_type=sa.String(20), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("code_version")
