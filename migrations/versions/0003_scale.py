"""Indexes of a 100,000-task catalogue: paging, filters and retention stay index lookups.

Revision ID: 0003_scale
Revises: 0002_hardening
Create Date: 2026-12-02

Indexes only (no table changes), so this revision can sit on top of any other:
- `jobs(task_id, created_at)`: a task's newest job (the `tasks --status` filter, the task table);
- `jobs(status, created_at, id)`: `jobs --status S --limit N [--after J]` reads one index range;
- `artifacts(uri)`: `delete` and `gc` ask whether any row still references a file;
- `tasks(name varchar_pattern_ops)` on PostgreSQL: `--name-like 'prefix%'` under a non-C collation
  (a plain B-tree cannot serve LIKE there); on SQLite a plain index on the name.
"""

from __future__ import annotations

from alembic import op

revision = "0003_scale"
down_revision = "0002_hardening"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the four indexes."""
    op.create_index("ix_jobs_task_id_created_at", "jobs", ["task_id", "created_at"])
    op.create_index("ix_jobs_status_created_at_id", "jobs", ["status", "created_at", "id"])
    op.create_index("ix_artifacts_uri", "artifacts", ["uri"])
    op.create_index("ix_tasks_name_pattern", "tasks", ["name"], postgresql_ops={"name": "varchar_pattern_ops"})


def downgrade() -> None:
    """Drop them."""
    op.drop_index("ix_tasks_name_pattern", table_name="tasks")
    op.drop_index("ix_artifacts_uri", table_name="artifacts")
    op.drop_index("ix_jobs_status_created_at_id", table_name="jobs")
    op.drop_index("ix_jobs_task_id_created_at", table_name="jobs")
