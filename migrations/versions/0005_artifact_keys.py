"""model versions store artifact keys, not absolute paths

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 22:40:00
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePath

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.alter_column(
            "artifact_dir", new_column_name="artifact_key", existing_type=sa.String(length=500)
        )
    # Every model folder was <data dir>/models/<folder>: the key is models/<folder>.
    table = sa.table("model_versions", sa.column("id"), sa.column("artifact_key", sa.String))
    conn = op.get_bind()
    for row_id, path in conn.execute(sa.select(table.c.id, table.c.artifact_key)).all():
        key = f"models/{PurePath(path).name}"
        conn.execute(table.update().where(table.c.id == row_id).values(artifact_key=key))


def downgrade() -> None:
    # Keys stay relative: a downgraded service reads them relative to its working directory,
    # which is why the data folder is the working directory's ./data by default. Absolute paths
    # cannot be rebuilt here without knowing the data folder.
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.alter_column(
            "artifact_key", new_column_name="artifact_dir", existing_type=sa.String(length=500)
        )
