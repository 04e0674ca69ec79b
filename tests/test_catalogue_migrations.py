"""The schema comes from the Alembic migration, on SQLite and PostgreSQL, and opening upgrades it."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from catalogue_fixtures import db_url, pg_database, pg_url, sqlite_url  # noqa: F401
from sqlalchemy import inspect, text

from streamlearn.catalogue import models, records, session
from streamlearn.errors import StreamlearnError, TransientError

TABLES = {"alembic_version", "backbones", "tasks", "jobs", "artifacts", "metrics", "evaluations", "fusion_sources"}
ROOT = Path(__file__).resolve().parent.parent


def test_upgrade_creates_the_schema_from_empty(db_url: str) -> None:
    """An empty database has no revision; `upgrade` brings it to head with every table of the models."""
    assert session.current_revision(db_url) is None
    assert session.upgrade(db_url) == session.HEAD_REVISION
    with session.get_engine(db_url).connect() as conn:
        assert set(inspect(conn).get_table_names()) == TABLES


def test_upgrade_twice_is_a_no_op(db_url: str) -> None:
    """Running the migrations on an up-to-date catalogue changes nothing and keeps the data."""
    with session.session_scope(db_url) as s:
        records.ensure_backbone(s, {"name": "b", "path": "/b", "fingerprint": "1" * 64, "layers": 1,
                                    "hidden": 2, "params": 3, "bytes": 12})
    assert session.upgrade(db_url) == session.HEAD_REVISION
    with session.session_scope(db_url) as s:
        assert s.scalar(text("SELECT count(*) FROM backbones")) == 1


def test_opening_an_empty_database_upgrades_it(db_url: str) -> None:
    """The first session on a fresh database creates the schema, so a new user never runs `db upgrade`."""
    with session.session_scope(db_url) as s:
        assert s.scalar(text("SELECT count(*) FROM tasks")) == 0
    assert session.current_revision(db_url) == session.HEAD_REVISION


def test_models_and_migration_agree(db_url: str) -> None:
    """Autogenerate finds no difference between the migrated schema and the SQLAlchemy models."""
    session.upgrade(db_url)
    with session.get_engine(db_url).connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, models.Base.metadata) == []


def test_migration_downgrades_to_empty(db_url: str) -> None:
    """Downgrading revision 0001 removes every table it created."""
    session.upgrade(db_url)
    config = Config()
    config.set_main_option("script_location", str(session.migrations_dir()))
    with session.get_engine(db_url).begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    with session.get_engine(db_url).connect() as conn:
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}


def test_head_revision_constant_matches_the_scripts() -> None:
    """`session.HEAD_REVISION`, used for the instant on-open check, is the scripts' real head."""
    config = Config()
    config.set_main_option("script_location", str(session.migrations_dir()))
    assert ScriptDirectory.from_config(config).get_current_head() == session.HEAD_REVISION


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without PYTHONPATH or streamlearn settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("STREAMLEARN_")}
    return {**env, **extra}


def _tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as con:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_alembic_upgrade_head_works_from_the_repository_root(tmp_path: Path) -> None:
    """`alembic upgrade head` at the root (alembic.ini, migrations/) creates the catalogue named by STREAMLEARN_DATABASE_URL."""
    db = tmp_path / "catalogue.db"
    proc = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, capture_output=True, text=True,
                          env=_clean_env(PYTHONPATH=str(ROOT), STREAMLEARN_DATABASE_URL=f"sqlite:///{db}"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert _tables(db) == TABLES
    assert session.current_revision(f"sqlite:///{db}") == session.HEAD_REVISION


@pytest.mark.slow
def test_a_wheel_install_carries_the_migrations_and_upgrades_a_catalogue(tmp_path: Path) -> None:
    """A wheel built from the checkout, installed into a fresh venv, holds every migration and creates a catalogue."""
    source = tmp_path / "source"
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.split("\n")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source), "-w",
                    str(wheels)], check=True, capture_output=True, env=_clean_env(), timeout=300)
    (wheel,) = wheels.glob("streamlearn-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n for n in zf.namelist() if n.startswith("streamlearn/migrations/")}
    expected = {f"streamlearn/migrations/{p.relative_to(ROOT / 'migrations').as_posix()}"
                for p in (ROOT / "migrations").rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert expected <= shipped and "streamlearn/migrations/versions/0001_initial.py" in shipped

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    # This interpreter's installed dependencies, added as a plain path (its .pth files, such as an
    # editable install of some checkout, are not processed), so only the wheel provides streamlearn.
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "deps.pth").write_text("\n".join(deps) + "\n", encoding="utf-8")
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, env=_clean_env(), timeout=300)
    db = tmp_path / "installed.db"
    code = ("import json, streamlearn.catalogue.session as s; "
            "print(json.dumps([s.__file__, str(s.migrations_dir()), s.upgrade()]))")
    proc = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=_clean_env(STREAMLEARN_DATABASE_URL=f"sqlite:///{db}"))
    assert proc.returncode == 0, proc.stderr
    module, folder, revision = json.loads(proc.stdout)
    assert module.startswith(str(site)) and folder == str(site / "streamlearn" / "migrations")
    assert revision == session.HEAD_REVISION and _tables(db) == TABLES


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(sqlite_url: str) -> None:
    """The SQLite catalogue's folder is created, and connections use WAL and a 30 s busy timeout."""
    with session.get_engine(sqlite_url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == session.SQLITE_BUSY_TIMEOUT_MS
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert Path(sqlite_url.removeprefix("sqlite:///")).exists()


def test_default_url_lives_under_streamlearn_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without STREAMLEARN_DATABASE_URL the catalogue is `catalogue.db` under STREAMLEARN_HOME."""
    from streamlearn.settings import get_settings

    monkeypatch.setenv("STREAMLEARN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("STREAMLEARN_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        assert session.resolve_url() == f"sqlite:///{tmp_path / 'home' / 'catalogue.db'}"
        with session.session_scope() as s:
            s.execute(text("SELECT 1"))
        assert (tmp_path / "home" / "catalogue.db").exists()
    finally:
        session.reset_engines()
        get_settings.cache_clear()


def test_plain_postgresql_urls_use_psycopg() -> None:
    """`postgresql://` and `postgres://` URLs are mapped to the installed psycopg 3 driver."""
    assert session.resolve_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert session.resolve_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert session.resolve_url("sqlite:///x.db") == "sqlite:///x.db"


def test_a_newer_schema_is_refused(sqlite_url: str) -> None:
    """A catalogue stamped by a newer streamlearn is not touched: opening it raises a clear error."""
    session.upgrade(sqlite_url)
    with session.get_engine(sqlite_url).begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    session.reset_engines()
    with pytest.raises(StreamlearnError, match="newer"):
        session.get_engine(sqlite_url)


def test_unreachable_database_is_a_transient_error_with_a_masked_url() -> None:
    """A PostgreSQL that does not answer raises TransientError whose message hides the password."""
    url = "postgresql+psycopg://user:hunter2@127.0.0.1:1/nothing?connect_timeout=2"
    try:
        with pytest.raises(TransientError) as caught:
            session.get_engine(url)
    finally:
        session.reset_engines()
    assert "hunter2" not in str(caught.value) and "***" in str(caught.value)


def test_timestamps_round_trip_as_aware_utc(db_url: str) -> None:
    """A timestamp written in another zone is read back as the same instant, tagged UTC."""
    local = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=5)))
    with session.session_scope(db_url) as s:
        task, job, _ = records.create_task_and_job(
            s, name="t", dataset_sha256="0" * 64, method="adapter", hyperparameters={})
        job.heartbeat_at = local
        job_id = job.id
    session.reset_engines()
    with session.session_scope(db_url) as s:
        job = s.get(models.Job, job_id)
        assert job.heartbeat_at == local and job.heartbeat_at.utcoffset() == timedelta(0)
        assert job.created_at.tzinfo is not None
