"""Fusion lineage: one row per source of a fused task's artifact.

Revision ID: 0005_fusion_sources
Revises: 0004_evaluations
Create Date: 2026-12-06

One new table and its indexes, nothing else changes: an existing catalogue upgrades in place and
keeps every row. A fused task (`--method fusion`) records which earlier tasks' adapters it attends
over, by the source artifact's sha256 and store key; `delete` refuses a task named here, and the
source artifact stays referenced (so `gc` keeps it) after a `--force` retrain of its task.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_fusion_sources"
down_revision = "0004_evaluations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the `fusion_sources` table, indexed by source task and by source artifact key."""
    op.create_table(
        "fusion_sources",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("artifact_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("source_task_id", sa.Integer(), nullable=False),
        sa.Column("source_sha256", sa.String(64), nullable=False),
        sa.Column("source_uri", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_fusion_sources"),
        sa.ForeignKeyConstraint(["artifact_id"], ["artifacts.id"], name="fk_fusion_sources_artifact_id_artifacts",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["source_task_id"], ["tasks.id"], name="fk_fusion_sources_source_task_id_tasks"),
        sa.UniqueConstraint("artifact_id", "position", name="uq_fusion_sources_artifact_id_position"),
    )
    op.create_index("ix_fusion_sources_source_task_id", "fusion_sources", ["source_task_id"])
    op.create_index("ix_fusion_sources_source_uri", "fusion_sources", ["source_uri"])


def downgrade() -> None:
    """Drop the lineage table (the other tables are untouched)."""
    op.drop_index("ix_fusion_sources_source_uri", table_name="fusion_sources")
    op.drop_index("ix_fusion_sources_source_task_id", table_name="fusion_sources")
    op.drop_table("fusion_sources")
