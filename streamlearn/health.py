"""`streamlearn db check`: is the catalogue sound, at the right schema, and in step with the store?

Checks, each reported with what was found:
- integrity: SQLite's `PRAGMA integrity_check` (PostgreSQL checks its pages itself: reported `n/a`);
- schema: the catalogue's Alembic revision against this code's head;
- orphans both ways: artifact rows whose file is missing, tasks whose stored dataset copy is
  missing, dataset copies and artifact files no row refers to, and temporary files (`*.tmp`)
  left by a killed writer. Files are listed, never deleted here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import select, text

from streamlearn.artifacts import ArtifactStore, artifact_files, stored_datasets, temporary_files
from streamlearn.catalogue.models import Artifact, Task
from streamlearn.catalogue.records import summary_mismatches
from streamlearn.catalogue.session import HEAD_REVISION, current_revision, get_engine, resolve_url, session_scope
from streamlearn.settings import get_settings, mask_url

log = logging.getLogger(__name__)


def _integrity(url: str) -> str:
    engine = get_engine(url)
    if engine.dialect.name != "sqlite":
        return "n/a"
    with engine.connect() as conn:
        rows = [r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check").fetchall()]
    return "ok" if rows == ["ok"] else "; ".join(rows[:5])


def check(url: str | None = None) -> dict[str, Any]:
    """Check the catalogue at `url` (default: the settings') and the artifact store.

    Returns:
        `{catalogue, integrity, revision, head, missing_artifacts, missing_datasets,
        unreferenced_datasets, unreferenced_artifacts, temporary_files, stale_summaries, ok}`
        (`stale_summaries`: tasks or artifacts whose summary columns disagree with their jobs); `ok` is False when
        any check found a problem (unreferenced and temporary files count: they waste space).

    Raises:
        CatalogueUnusable: the database is not a readable catalogue at all.
    """
    url = resolve_url(url)
    integrity = _integrity(url)
    revision = current_revision(url)
    store = ArtifactStore(get_settings().artifacts)
    with session_scope(url, readonly=True) as s:
        artifact_uris = list(s.scalars(select(Artifact.uri)))
        task_files = [(name, files) for name, files in s.execute(select(Task.name, Task.files))]
        stale = summary_mismatches(s) if revision == HEAD_REVISION else []
        s.execute(text("SELECT 1"))
    from streamlearn.jobs import artifact_path

    referenced = {artifact_path(uri).resolve() for uri in artifact_uris}
    missing_artifacts = sorted(str(p) for p in referenced if not p.is_file())
    shas = {sha for _, files in task_files for sha in files.values()}
    missing_datasets = sorted(f"{name}: {split} {sha[:12]}" for name, files in task_files
                              for split, sha in files.items() if not store.dataset_path(sha).is_file())
    unreferenced_datasets = sorted(str(p) for sha, p in stored_datasets(store).items() if sha not in shas)
    unreferenced_artifacts = sorted(str(p) for p in artifact_files(store) if (p.resolve() if isinstance(p, Path) else p) not in referenced)
    temporary = [str(p) for p in temporary_files(store)]
    report = {
        "catalogue": mask_url(url), "integrity": integrity, "revision": revision, "head": HEAD_REVISION,
        "missing_artifacts": missing_artifacts, "missing_datasets": missing_datasets,
        "unreferenced_datasets": unreferenced_datasets, "unreferenced_artifacts": unreferenced_artifacts,
        "temporary_files": temporary, "stale_summaries": stale,
    }
    report["ok"] = (integrity in ("ok", "n/a") and revision == HEAD_REVISION
                    and not any(report[k] for k in ("missing_artifacts", "missing_datasets", "unreferenced_datasets",
                                                    "unreferenced_artifacts", "temporary_files", "stale_summaries")))
    return report
