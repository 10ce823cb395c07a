"""domain adaptation: datasets.kind (labelled or unlabeled), uploads.kind, the jobs' target,
labelled-target and eval datasets, and job_metrics' eval_loss, eval_accuracy and extra

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 03:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Job columns naming a dataset in one more role; SET NULL on delete, as jobs.dataset_id.
JOB_DATASET_COLUMNS = ("target_dataset_id", "labeled_target_dataset_id", "eval_dataset_id")


def upgrade() -> None:
    # Every dataset uploaded so far is labelled (class folders or labels.csv).
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=16), server_default="labelled", nullable=False)
        )
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=16), server_default="labelled", nullable=False)
        )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for column in JOB_DATASET_COLUMNS:
            batch_op.add_column(sa.Column(column, sa.Uuid(), nullable=True))
            batch_op.create_index(op.f(f"ix_jobs_{column}"), [column], unique=False)
            batch_op.create_foreign_key(
                op.f(f"fk_jobs_{column}_datasets"), "datasets", [column], ["id"],
                ondelete="SET NULL",
            )  # fmt: skip
    with op.batch_alter_table("job_metrics", schema=None) as batch_op:
        batch_op.add_column(sa.Column("eval_loss", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("eval_accuracy", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("extra", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_metrics", schema=None) as batch_op:
        batch_op.drop_column("extra")
        batch_op.drop_column("eval_accuracy")
        batch_op.drop_column("eval_loss")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for column in reversed(JOB_DATASET_COLUMNS):
            batch_op.drop_constraint(op.f(f"fk_jobs_{column}_datasets"), type_="foreignkey")
            batch_op.drop_index(op.f(f"ix_jobs_{column}"))
            batch_op.drop_column(column)
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.drop_column("kind")
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_column("kind")
