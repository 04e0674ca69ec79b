"""Summary columns for a catalogue of 100,000 tasks: `tasks --status` and `storage` without a scan of every job.

Revision ID: 0006_catalogue_summary
Revises: 0005_fusion_sources
Create Date: 2026-12-06

Columns are added and filled in from the rows already there, in this one transaction; nothing
is removed, so an existing catalogue upgrades in place and keeps every row:
- `tasks.latest_job_id`, `tasks.latest_status`: the task's newest non-trial job and its status
  (kept by the service from now on), indexed `(latest_status, id)`: `tasks --status failed` reads
  one index range instead of checking every failed job for a newer one;
- `artifacts.task_id`, `visible`, `drop_layers`, `store_dtype`, `fusion_rank`: copied from the
  artifact's job (its task; a training job's or a chosen trial's; the storage law's shape keys,
  0 / float32 / 0 for jobs of release 0.1.0 that recorded none), indexed `(task_id, visible, id)`;
  and `artifacts.current`, the task's current artifact (newest visible, else newest): the storage
  totals are then one scan of this table instead of every artifact joined to its job and ranked.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_catalogue_summary"
down_revision = "0005_fusion_sources"
branch_labels = None
depends_on = None

_jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("task_id", sa.Integer), sa.column("kind", sa.String),
                 sa.column("chosen", sa.Boolean), sa.column("status", sa.String), sa.column("created_at", sa.DateTime),
                 sa.column("hyperparameters", sa.JSON))
_tasks = sa.table("tasks", sa.column("id", sa.Integer), sa.column("latest_job_id", sa.String),
                  sa.column("latest_status", sa.String))
_artifacts = sa.table("artifacts", sa.column("job_id", sa.String), sa.column("task_id", sa.Integer),
                      sa.column("visible", sa.Boolean), sa.column("drop_layers", sa.Integer),
                      sa.column("store_dtype", sa.String), sa.column("fusion_rank", sa.Integer),
                      sa.column("id", sa.Integer), sa.column("current", sa.Boolean))


def upgrade() -> None:
    """Add the columns and their indexes, then fill them in from `jobs`."""
    op.add_column("tasks", sa.Column("latest_job_id", sa.String(36), nullable=True))
    op.add_column("tasks", sa.Column("latest_status", sa.String(16), nullable=True))
    for name, column in (("task_id", sa.Integer()), ("visible", sa.Boolean()), ("drop_layers", sa.Integer()),
                         ("store_dtype", sa.String(16)), ("fusion_rank", sa.Integer()), ("current", sa.Boolean())):
        op.add_column("artifacts", sa.Column(name, column, nullable=True))

    newest = (sa.select(_jobs.c.id).where(_jobs.c.task_id == _tasks.c.id, _jobs.c.kind != "trial")
              .order_by(_jobs.c.created_at.desc(), _jobs.c.id.desc()).limit(1).scalar_subquery())
    op.execute(_tasks.update().values(latest_job_id=newest))
    status = sa.select(_jobs.c.status).where(_jobs.c.id == _tasks.c.latest_job_id).scalar_subquery()
    op.execute(_tasks.update().values(latest_status=status))

    def from_job(expression):
        return sa.select(expression).where(_jobs.c.id == _artifacts.c.job_id).scalar_subquery()

    hp = _jobs.c.hyperparameters
    op.execute(_artifacts.update().values(
        task_id=from_job(_jobs.c.task_id),
        visible=from_job(sa.or_(_jobs.c.kind == "train", _jobs.c.chosen.is_(True))),
        drop_layers=from_job(sa.func.coalesce(hp[("method", "drop_layers")].as_integer(), 0)),
        store_dtype=from_job(sa.func.coalesce(hp[("train", "store_dtype")].as_string(), "float32")),
        fusion_rank=from_job(sa.func.coalesce(hp[("method", "fusion_rank")].as_integer(), 0)),
    ))
    op.create_index("ix_tasks_latest_status_id", "tasks", ["latest_status", "id"])
    op.create_index("ix_artifacts_task_id_visible_id", "artifacts", ["task_id", "visible", "id"])
    other = sa.alias(_artifacts, "other")
    best = (sa.select(other.c.id).where(other.c.task_id == _artifacts.c.task_id)
            .order_by(other.c.visible.desc(), other.c.id.desc()).limit(1).scalar_subquery())
    op.execute(_artifacts.update().values(current=_artifacts.c.id == best))


def downgrade() -> None:
    """Drop the indexes and columns (the service before this revision does not read them)."""
    op.drop_index("ix_artifacts_task_id_visible_id", table_name="artifacts")
    op.drop_index("ix_tasks_latest_status_id", table_name="tasks")
    # ALTER TABLE ... DROP COLUMN on both dialects (SQLite >= 3.35), not a batch rebuild: a rebuilt
    # SQLite table would lose the expression index uq_tasks_name_lower, which cannot be reflected.
    for name in ("current", "fusion_rank", "store_dtype", "drop_layers", "visible", "task_id"):
        op.drop_column("artifacts", name)
    op.drop_column("tasks", "latest_status")
    op.drop_column("tasks", "latest_job_id")
