"""The catalogue's tables: backbones, tasks, jobs, artifacts and metrics (SQLAlchemy 2.0 typed models).

The migration in `migrations/versions/` creates these tables; a test checks that the
models and the migration agree. Every timestamp is timezone-aware UTC, also on SQLite, which keeps
naive strings: `UTCDateTime` converts on the way in and tags UTC on the way out.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Fixed constraint names so the hand-written migration and the models name things identically
# on every dialect (Alembic needs names to drop or alter a constraint later).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """A timestamp stored as UTC and always read back timezone-aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the catalogue stores aware UTC timestamps only")
        value = value.astimezone(timezone.utc)
        # SQLite's DATETIME drops the offset silently, so store the UTC wall time without it.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class JobStatus(enum.StrEnum):
    """The one status enum of a job; `records.TRANSITIONS` says which changes are allowed."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobKind(enum.StrEnum):
    """What a job does: train one configuration, or fan a sweep out into trials."""

    TRAIN = "train"
    SWEEP = "sweep"
    TRIAL = "trial"


def _str_enum(cls: type[enum.StrEnum], name: str) -> Enum:
    # A VARCHAR plus a CHECK constraint, not a native PostgreSQL ENUM: adding a value later is then
    # a plain migration on both dialects.
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class Base(DeclarativeBase):
    """Declarative base holding the catalogue's metadata."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[str]: JSON()}


class Backbone(Base):
    """A frozen encoder that artifacts were trained on, identified by the sha256 of its tensors."""

    __tablename__ = "backbones"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    path: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    layers: Mapped[int] = mapped_column(Integer)
    hidden: Mapped[int] = mapped_column(Integer)
    params: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Task(Base):
    """A labelled dataset that arrived in the stream; arrival order is the order of `id`."""

    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_name_pattern", "name", postgresql_ops={"name": "varchar_pattern_ops"}),
        Index("ix_tasks_latest_status_id", "latest_status", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    dataset_sha256: Mapped[str] = mapped_column(String(64))
    files: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """Split name -> sha256 of the stored file (a carved validation split has no file)."""
    rows: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """Split name -> number of examples."""
    labels: Mapped[list[str]] = mapped_column(default=list)
    """Sorted label names; a label's index is its position here."""
    text_field: Mapped[str] = mapped_column(String(100), default="text")
    label_field: Mapped[str] = mapped_column(String(100), default="label")
    pair_field: Mapped[str | None] = mapped_column(String(100))
    latest_job_id: Mapped[str | None] = mapped_column(String(36))
    """The task's newest non-trial job (set when a job is created; `tasks` shows its status)."""
    latest_status: Mapped[str | None] = mapped_column(String(16))
    """That job's status, kept by every status change (`records`), so `tasks --status S` reads an index."""

    jobs: Mapped[list[Job]] = relationship(back_populates="task", order_by="Job.created_at")


# Names are unique without regard to case (`streamlearn.names`); the index makes it hold under races.
Index("uq_tasks_name_lower", func.lower(Task.name), unique=True)


class Job(Base):
    """One unit of work on a task: a training run, a sweep, or one trial of a sweep."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_task_id_status", "task_id", "status"),
        Index("ix_jobs_status_heartbeat_at", "status", "heartbeat_at"),
        Index("ix_jobs_status_enqueued_at", "status", "enqueued_at"),
        Index("ix_jobs_parent_id", "parent_id"),
        Index("ix_jobs_created_at", "created_at"),
        Index("ix_jobs_task_id_created_at", "task_id", "created_at"),
        Index("ix_jobs_status_created_at_id", "status", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    kind: Mapped[JobKind] = mapped_column(_str_enum(JobKind, "job_kind"), default=JobKind.TRAIN)
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    method: Mapped[str] = mapped_column(String(32))
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    spec_sha256: Mapped[str] = mapped_column(String(64))
    """sha256 of the canonical JSON of (method, hyperparameters): finds an identical resubmit."""
    status: Mapped[JobStatus] = mapped_column(_str_enum(JobStatus, "job_status"), default=JobStatus.QUEUED)
    epoch: Mapped[int | None] = mapped_column(Integer)
    step: Mapped[int | None] = mapped_column(Integer)
    total_steps: Mapped[int | None] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    """How many times the job was put back in the queue after its first enqueue."""
    worker_host: Mapped[str | None] = mapped_column(String(255))
    worker_pid: Mapped[int | None] = mapped_column(Integer)
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    chosen: Mapped[bool] = mapped_column(Boolean, default=False)
    """True on the trial a sweep selected; its artifact then is the task's artifact."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    enqueued_at: Mapped[datetime] = mapped_column(default=utcnow)
    """When the job last entered the queue; a queued job older than the queued timeout is re-sent."""
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()

    task: Mapped[Task] = relationship(back_populates="jobs")
    artifact: Mapped[Artifact | None] = relationship(back_populates="job")
    metrics: Mapped[list[Metric]] = relationship(back_populates="job", order_by="Metric.id")

    @property
    def worker(self) -> str | None:
        """`host:pid` of the worker process that ran (or runs) the job."""
        if self.worker_host is None:
            return None
        return f"{self.worker_host}:{self.worker_pid}"


class Artifact(Base):
    """The stored per-task tensors of one succeeded job (at most one per job)."""

    __tablename__ = "artifacts"
    __table_args__ = (
        Index("ix_artifacts_uri", "uri"),
        Index("ix_artifacts_task_id_visible_id", "task_id", "visible", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    backbone_id: Mapped[int] = mapped_column(ForeignKey("backbones.id"), index=True)
    uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    trainable_params: Mapped[int] = mapped_column(BigInteger)
    stored_params: Mapped[int] = mapped_column(BigInteger)
    method: Mapped[str] = mapped_column(String(32))
    adapter_size: Mapped[int | None] = mapped_column(Integer)
    classes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Copied from the job when the row is written (revision 0006 filled them in for older rows), so
    # the storage report's totals read this table alone, in one scan: its job's task, whether it is
    # visible (a training job's, or a sweep's chosen trial's), and the storage law's shape keys.
    task_id: Mapped[int | None] = mapped_column(Integer)
    visible: Mapped[bool | None] = mapped_column(Boolean)
    drop_layers: Mapped[int | None] = mapped_column(Integer)
    store_dtype: Mapped[str | None] = mapped_column(String(16))
    fusion_rank: Mapped[int | None] = mapped_column(Integer)
    current: Mapped[bool | None] = mapped_column(Boolean)
    """The task's current artifact (its newest visible one, else its newest): the one the storage law
    counts. `records.refresh_current` keeps it whenever a task's artifacts change."""

    job: Mapped[Job] = relationship(back_populates="artifact")
    backbone: Mapped[Backbone] = relationship()


class Metric(Base):
    """One number measured by a job, e.g. split `validation`, name `accuracy`."""

    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("job_id", "split", "name", name="uq_metrics_job_id_split_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    split: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)

    job: Mapped[Job] = relationship(back_populates="metrics")


class Evaluation(Base):
    """One task re-scored by `streamlearn evaluate` (CLI, demo or HTTP): its stored artifact on a stored split.

    The rows are the history behind the accuracy matrix R[t, j] (see `catalogue/evaluations.py`).
    They name the artifact by its job and sha256 rather than by a foreign key, so the history stays
    when a sweep deletes a losing artifact.
    """

    __tablename__ = "evaluations"
    __table_args__ = (
        Index("ix_evaluations_task_id_evaluated_at", "task_id", "evaluated_at"),
        Index("ix_evaluations_run_id", "run_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(String(36))
    """One id per `evaluate` run: the rows of tasks scored together share it."""
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    job_id: Mapped[str] = mapped_column(String(36))
    """The job that produced the artifact scored."""
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))
    """Who asked: `cli`, `demo` or `http`."""
    split: Mapped[str] = mapped_column(String(32))
    examples: Mapped[int] = mapped_column(Integer)
    accuracy: Mapped[float] = mapped_column(Float)
    macro_f1: Mapped[float] = mapped_column(Float)
    catalogue_accuracy: Mapped[float | None] = mapped_column(Float)
    """The accuracy the training job recorded on the same split (None if it recorded none)."""
    drift: Mapped[float | None] = mapped_column(Float)
    """Largest absolute difference from the recorded accuracy and macro-F1 (0: nothing forgotten)."""
    majority_accuracy: Mapped[float] = mapped_column(Float)
    """Accuracy of always answering the split's most frequent label (the collapsed-run baseline)."""
    predicted_classes: Mapped[int] = mapped_column(Integer)
    """How many distinct labels the artifact predicted on the split (1: a collapsed run)."""
    evaluated_at: Mapped[datetime] = mapped_column(default=utcnow)
    """When the run read the stored artifacts it scores (its snapshot of the stream)."""


class FusionSource(Base):
    """One source of a fused task's artifact: the task whose adapter it attends over, and that
    adapter's artifact by sha256 and store key (the exact file it was trained with, kept while used).

    The rows go with the fused artifact (ON DELETE CASCADE); a source task is never deleted while
    a row names it (`retention.delete_task` refuses, naming the fused tasks).
    """

    __tablename__ = "fusion_sources"
    __table_args__ = (
        UniqueConstraint("artifact_id", "position", name="uq_fusion_sources_artifact_id_position"),
        Index("ix_fusion_sources_source_task_id", "source_task_id"),
        Index("ix_fusion_sources_source_uri", "source_uri"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    artifact_id: Mapped[int] = mapped_column(ForeignKey("artifacts.id", ondelete="CASCADE"))
    """The fused task's artifact."""
    position: Mapped[int] = mapped_column(Integer)
    """Order of the source in the fusion (0 = the first earlier task)."""
    source_task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    """The source task."""
    source_sha256: Mapped[str] = mapped_column(String(64))
    """sha256 of the source artifact the fused task was trained with."""
    source_uri: Mapped[str] = mapped_column(Text)
    """Store key of that artifact (it may no longer be its task's current one after a --force retrain)."""
