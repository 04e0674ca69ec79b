"""Evaluation history: one row per task re-scored by `streamlearn evaluate`.

Revision ID: 0004_evaluations
Revises: 0003_scale
Create Date: 2026-12-02

One new table and its indexes, nothing else changes: an existing catalogue upgrades in place and
keeps every row. The accuracy matrix R[t, j], BWT and forgetting are queries over these rows
(`streamlearn/catalogue/evaluations.py`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_evaluations"
down_revision = "0003_scale"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the `evaluations` table, indexed for a task's history and for one run's rows."""
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("artifact_sha256", sa.String(64), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("split", sa.String(32), nullable=False),
        sa.Column("examples", sa.Integer(), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=False),
        sa.Column("macro_f1", sa.Float(), nullable=False),
        sa.Column("catalogue_accuracy", sa.Float(), nullable=True),
        sa.Column("drift", sa.Float(), nullable=True),
        sa.Column("majority_accuracy", sa.Float(), nullable=False),
        sa.Column("predicted_classes", sa.Integer(), nullable=False),
        sa.Column("evaluated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_evaluations"),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name="fk_evaluations_task_id_tasks", ondelete="CASCADE"),
    )
    op.create_index("ix_evaluations_task_id_evaluated_at", "evaluations", ["task_id", "evaluated_at"])
    op.create_index("ix_evaluations_run_id", "evaluations", ["run_id"])


def downgrade() -> None:
    """Drop the evaluation history (the other tables are untouched)."""
    op.drop_index("ix_evaluations_run_id", table_name="evaluations")
    op.drop_index("ix_evaluations_task_id_evaluated_at", table_name="evaluations")
    op.drop_table("evaluations")
