"""Hardening: a `cancelled` job status, and task names unique without regard to case.

Revision ID: 0002_hardening
Revises: 0001
Create Date: 2026-12-02

Upgrades a catalogue in place, keeping every row. The status CHECK constraint is replaced (batch
mode: SQLite rebuilds the table, PostgreSQL alters it). The unique index on `lower(name)` cannot
be built while two tasks differ only in case; the upgrade then stops with a message naming them,
and nothing changes (the migration runs in one transaction).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_hardening"
down_revision = "0001"
branch_labels = None
depends_on = None

OLD_STATUSES = ("queued", "running", "succeeded", "failed")
STATUSES = (*OLD_STATUSES, "cancelled")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _status_check(values: tuple[str, ...]) -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("ck_jobs_job_status"), type_="check")
        batch.create_check_constraint(op.f("ck_jobs_job_status"), _in("status", values))


def upgrade() -> None:
    """Allow `cancelled`; make task names unique without regard to case."""
    _status_check(STATUSES)
    clashes = op.get_bind().execute(sa.text(
        "SELECT lower(name), count(*) FROM tasks GROUP BY lower(name) HAVING count(*) > 1 ORDER BY 1"
    )).all()
    if clashes:
        names = ", ".join(name for name, _ in clashes[:10])
        raise RuntimeError(
            f"cannot make task names unique without regard to case: tasks differ only in case ({names}); "
            "upgrade with the older streamlearn kept, or rename one of each pair in the tasks table first"
        )
    op.create_index("uq_tasks_name_lower", "tasks", [sa.text("lower(name)")], unique=True)


def downgrade() -> None:
    """Back to 0001: cancelled jobs become failed (with a note), the case-insensitive index goes."""
    op.drop_index("uq_tasks_name_lower", table_name="tasks")
    op.execute(
        "UPDATE jobs SET status = 'failed', error = 'cancelled (recorded as failed by a downgrade)' "
        "WHERE status = 'cancelled'"
    )
    _status_check(OLD_STATUSES)
