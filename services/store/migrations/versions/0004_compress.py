"""The compression protocol of every run: runs.compress.

A cell's `compress` (streaming, prompt or context: services.declaration.PROTOCOLS) says when its
policy may evict. Rows stored before this revision ran each policy's default protocol, the one it
had before the parameter existed: SnapKV and the one-shot policies built like it (pyramidkv, adakv,
knorm, expected_attention) compressed once at the end of the prompt ("prompt"); every other policy
evicted as tokens arrived ("streaming"). The names are written here, not read from the policy
classes, so this revision means the same whatever the policies become.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The policies whose only behaviour before this revision was a compression at the end of the prompt.
PROMPT_POLICIES = ("snapkv", "pyramidkv", "adakv", "knorm", "expected_attention")


def upgrade() -> None:
    op.add_column("runs", sa.Column("compress", sa.String(20), nullable=True))
    runs = sa.table("runs", sa.column("compress", sa.String(20)), sa.column("policy", sa.String(100)))
    op.execute(runs.update().values(
        compress=sa.case((runs.c.policy.in_(PROMPT_POLICIES), "prompt"), else_="streaming")))
    # NOT NULL once every row has a value (batch: SQLite cannot alter a column in place)
    with op.batch_alter_table("runs") as batch:
        batch.alter_column("compress", existing_type=sa.String(20), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("compress")
