"""model_names: the last version number given under each name, so deleted numbers stay taken

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 03:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_names",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("last_version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    # The numbers given so far, as far as the table still shows them (a newest version deleted
    # before this migration has left no trace; its number can be given once more).
    op.execute(
        "INSERT INTO model_names (name, last_version) "
        "SELECT name, MAX(version) FROM model_versions GROUP BY name"
    )


def downgrade() -> None:
    op.drop_table("model_names")
